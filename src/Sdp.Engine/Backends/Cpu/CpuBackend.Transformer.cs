using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using Sdp.Engine.Memory;

namespace Sdp.Engine.Backends.Cpu;

public sealed unsafe partial class CpuBackend
{
    /// <summary>Most elements of attention scores held at once (workspace); larger problems run in chunks
    /// of whole (batch, kv head) slices. Settable so tests can force chunking.</summary>
    internal static long AttentionScratchElements { get; set; } = 1L << 24;

    /// <summary>Upper bound on the row blocks whose partial dweight rows RMSNorm backward sums.</summary>
    private const int RmsNormMaxBlocks = 64;

    /// <summary>Minimum rows per RMSNorm backward block.</summary>
    private const int RmsNormMinBlockRows = 8;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static long TransformerIndexAt(nint p, bool is64, long i) => is64 ? ((long*)p)[i] : ((int*)p)[i];

    /// <summary>Flat index of the first index value outside [0, limit), or -1.</summary>
    private static long TransformerFirstBadIndex(Tensor indices, long limit)
    {
        nint p = (nint)Ptr<byte>(indices);
        bool is64 = indices.DType == DType.Int64;
        long n = indices.Numel;
        for (long i = 0; i < n; i++)
        {
            long v = TransformerIndexAt(p, is64, i);
            if (v < 0 || v >= limit) return i;
        }
        return -1;
    }

    private Tensor TransformerScratch(long elements, DType dtype)
        => Tensor.Allocate(new Shape(checked((int)elements)), dtype, this, MemoryCategory.Workspace, registerInScope: false);

    // ---- embedding --------------------------------------------------------------------------------

    public void Embedding(Tensor weight, Tensor ids, Tensor y)
    {
        long bad = TransformerFirstBadIndex(ids, weight.Shape[0]);
        if (bad >= 0) throw Ops.EmbeddingIdOutOfRange(weight, ids, bad);
        int c = weight.Shape[1];
        long rowBytes = (long)c * weight.DType.ElementSize();
        nint wp = (nint)Ptr<byte>(weight), yp = (nint)Ptr<byte>(y), ip = (nint)Ptr<byte>(ids);
        bool is64 = ids.DType == DType.Int64;
        CpuParallel.For(ids.Numel, Math.Max(1, ElementwiseGrain / Math.Max(1, c)), (s, e) =>
        {
            for (long i = s; i < e; i++)
            {
                byte* src = (byte*)wp + TransformerIndexAt(ip, is64, i) * rowBytes;
                Buffer.MemoryCopy(src, (byte*)yp + i * rowBytes, rowBytes, rowBytes);
            }
        });
    }

    public void EmbeddingBackward(Tensor dy, Tensor ids, Tensor dweight)
    {
        if (dweight.DType == DType.Float32) EmbeddingBackwardCore<float>(dy, ids, dweight);
        else EmbeddingBackwardCore<double>(dy, ids, dweight);
    }

    private static void EmbeddingBackwardCore<T>(Tensor dyt, Tensor idt, Tensor dwt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int c = dwt.Shape[1];
        long n = idt.Numel;
        nint dyp = (nint)Ptr<T>(dyt), dwp = (nint)Ptr<T>(dwt), ip = (nint)Ptr<byte>(idt);
        bool is64 = idt.DType == DType.Int64;
        // Each thread owns a block of channels of the whole table and walks every id in order, so rows
        // hit by repeated ids accumulate without races and in the same order on any core count.
        long minChannels = Math.Max(16, ElementwiseGrain / Math.Max(1, n));
        CpuParallel.For(c, minChannels, (c0, c1) =>
        {
            int w = (int)(c1 - c0);
            for (long i = 0; i < n; i++)
            {
                var dst = new Span<T>((T*)dwp + TransformerIndexAt(ip, is64, i) * c + c0, w);
                TensorPrimitives.Add(dst, new ReadOnlySpan<T>((T*)dyp + i * c + c0, w), dst);
            }
        });
    }

    // ---- RMSNorm --------------------------------------------------------------------------------------

    public void RmsNorm(Tensor x, Tensor weight, Tensor rstd, Tensor y, double eps)
    {
        if (x.DType == DType.Float32) RmsNormCore<float>(x, weight, rstd, y, eps);
        else RmsNormCore<double>(x, weight, rstd, y, eps);
    }

    private static void RmsNormCore<T>(Tensor xt, Tensor wt, Tensor rt, Tensor yt, double eps) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int c = wt.Shape[0];
        long n = c == 0 ? 0 : xt.Numel / c;
        nint xp = (nint)Ptr<T>(xt), wp = (nint)Ptr<T>(wt), rp = (nint)Ptr<T>(rt), yp = (nint)Ptr<T>(yt);
        T epsT = T.CreateChecked(eps), count = T.CreateChecked(c);
        CpuParallel.For(n, Math.Max(1, ElementwiseGrain / Math.Max(1, c)), (s, e) =>
        {
            var w = new ReadOnlySpan<T>((T*)wp, c);
            for (long row = s; row < e; row++)
            {
                var x = new ReadOnlySpan<T>((T*)xp + row * c, c);
                var y = new Span<T>((T*)yp + row * c, c);
                // As LlamaRMSNorm: variance = mean(x²); x·rsqrt(variance + eps), then times weight.
                T r = T.One / T.Sqrt(TensorPrimitives.SumOfSquares(x) / count + epsT);
                ((T*)rp)[row] = r;
                TensorPrimitives.Multiply(x, r, y);
                TensorPrimitives.Multiply(y, w, y);
            }
        });
    }

    public void RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd, Tensor? dx, Tensor? dweight)
    {
        if (x.DType == DType.Float32) RmsNormBackwardCore<float>(dy, x, weight, rstd, dx, dweight);
        else RmsNormBackwardCore<double>(dy, x, weight, rstd, dx, dweight);
    }

    private void RmsNormBackwardCore<T>(Tensor dyt, Tensor xt, Tensor wt, Tensor rt, Tensor? dxt, Tensor? dwt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int c = wt.Shape[0];
        long n = c == 0 ? 0 : xt.Numel / c;
        if (n == 0 || (dxt is null && dwt is null)) return;
        nint dyp = (nint)Ptr<T>(dyt), xp = (nint)Ptr<T>(xt), wp = (nint)Ptr<T>(wt), rp = (nint)Ptr<T>(rt);
        nint dxp = dxt is null ? 0 : (nint)Ptr<T>(dxt);
        T invC = T.One / T.CreateChecked(c);

        // One pass per row: with d = Σ_j w_j·dy_j·x_j and r = rstd,
        //   dx_k += r·w_k·dy_k − x_k·r³·d/C   and   partial dweight_k += dy_k·x_k·r.
        void Rows(long s, long e, T* partial)
        {
            T* w = (T*)wp;
            for (long row = s; row < e; row++)
            {
                T* x = (T*)xp + row * c, dy = (T*)dyp + row * c;
                T r = ((T*)rp)[row];
                if (dxp != 0)
                {
                    T d = T.Zero;
                    for (int j = 0; j < c; j++) d += w[j] * dy[j] * x[j];
                    T k = r * r * r * d * invC;
                    T* dx = (T*)dxp + row * c;
                    // Elementwise, so vectors round exactly as the scalar loop does (the JIT never fuses a·b + c).
                    var vr = new Vector<T>(r);
                    var vk = new Vector<T>(k);
                    int i = 0;
                    for (; i + Vector<T>.Count <= c; i += Vector<T>.Count)
                        Vector.Store(Vector.Load(dx + i) + (vr * Vector.Load(w + i) * Vector.Load(dy + i) - Vector.Load(x + i) * vk), dx + i);
                    for (int j = i; j < c; j++) dx[j] += r * w[j] * dy[j] - x[j] * k;
                }
                if (partial != null)
                {
                    var vr = new Vector<T>(r);
                    int i = 0;
                    for (; i + Vector<T>.Count <= c; i += Vector<T>.Count)
                        Vector.Store(Vector.Load(partial + i) + Vector.Load(dy + i) * Vector.Load(x + i) * vr, partial + i);
                    for (int j = i; j < c; j++) partial[j] += dy[j] * x[j] * r;
                }
            }
        }

        if (dwt is null)
        {
            CpuParallel.For(n, Math.Max(1, ElementwiseGrain / c), (s, e) => Rows(s, e, null));
            return;
        }

        // dweight: a partial row per fixed block of rows (the partition depends on N only, not on the
        // thread count), then the partials summed in block order: deterministic everywhere.
        int blocks = (int)Math.Min(RmsNormMaxBlocks, (n + RmsNormMinBlockRows - 1) / RmsNormMinBlockRows);
        using var partials = TransformerScratch((long)blocks * c, xt.DType);
        nint pp = (nint)Ptr<T>(partials);
        new Span<T>((T*)pp, blocks * c).Clear();
        CpuParallel.For(blocks, 1, (b0, b1) =>
        {
            for (long b = b0; b < b1; b++) Rows(n * b / blocks, n * (b + 1) / blocks, (T*)pp + b * c);
        });
        nint dwp = (nint)Ptr<T>(dwt);
        CpuParallel.For(c, 256, (j0, j1) =>
        {
            T* dw = (T*)dwp, part = (T*)pp;
            for (long j = j0; j < j1; j++)
            {
                T acc = T.Zero;
                for (int b = 0; b < blocks; b++) acc += part[(long)b * c + j];
                dw[j] += acc;
            }
        });
    }

    // ---- rotary embedding -------------------------------------------------------------------------

    public void Rope(Tensor x, Tensor cos, Tensor sin, Tensor? positions, int offset, Tensor y)
    {
        if (positions is not null)
        {
            long bad = TransformerFirstBadIndex(positions, cos.Shape[0]);
            if (bad >= 0) throw Ops.RopePositionOutOfRange(positions, cos, bad);
        }
        if (x.DType == DType.Float32) RopeCore<float>(x, cos, sin, positions, offset, y, backward: false);
        else RopeCore<double>(x, cos, sin, positions, offset, y, backward: false);
    }

    public void RopeBackward(Tensor dy, Tensor cos, Tensor sin, Tensor? positions, int offset, Tensor dx)
    {
        if (dy.DType == DType.Float32) RopeCore<float>(dy, cos, sin, positions, offset, dx, backward: true);
        else RopeCore<double>(dy, cos, sin, positions, offset, dx, backward: true);
    }

    /// <summary>
    /// Forward: y = R·x per (i, i+D/2) pair, R = [[c_i, −s_i], [s_{i+h}, c_{i+h}]] (the rotate-half form).
    /// Backward: dx += Rᵀ·dy, exact for any table, a rotation by −θ for HF tables where both halves match.
    /// </summary>
    private static void RopeCore<T>(Tensor src, Tensor cos, Tensor sin, Tensor? positions, int offset, Tensor dst, bool backward) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int bsz = src.Shape[0], t = src.Shape[1], heads = src.Shape[2], d = src.Shape[3], half = d / 2;
        long rowLen = (long)heads * d;
        nint sp = (nint)Ptr<T>(src), dp = (nint)Ptr<T>(dst), cp = (nint)Ptr<T>(cos), snp = (nint)Ptr<T>(sin);
        nint pp = positions is null ? 0 : (nint)Ptr<byte>(positions);
        bool is64 = positions?.DType == DType.Int64;
        bool shared = positions is not null && positions.Numel == t;
        CpuParallel.For((long)bsz * t, Math.Max(1, ElementwiseGrain / Math.Max(1, rowLen)), (s, e) =>
        {
            for (long row = s; row < e; row++)
            {
                long ti = row % t;
                long p = pp == 0 ? ti + offset : TransformerIndexAt(pp, is64, shared ? ti : row);
                T* c = (T*)cp + p * d, sn = (T*)snp + p * d;
                for (int h = 0; h < heads; h++)
                {
                    T* a = (T*)sp + row * rowLen + (long)h * d;
                    T* o = (T*)dp + row * rowLen + (long)h * d;
                    for (int i = 0; i < half; i++)
                    {
                        T a1 = a[i], a2 = a[i + half];
                        if (!backward)
                        {
                            // q·cos + rotate_half(q)·sin, with rotate_half(q) = cat(−q[h:], q[:h]).
                            o[i] = a1 * c[i] - a2 * sn[i];
                            o[i + half] = a2 * c[i + half] + a1 * sn[i + half];
                        }
                        else
                        {
                            o[i] += a1 * c[i] + a2 * sn[i + half];
                            o[i + half] += a2 * c[i + half] - a1 * sn[i];
                        }
                    }
                }
            }
        });
    }

    // ---- head layout ----------------------------------------------------------------------------------

    public void AttentionSwapHeads(Tensor src, Tensor dst, int b, int p, int q, int d, bool accumulate)
    {
        if (src.DType == DType.Float32) AttentionSwapHeadsCore<float>(src, dst, b, p, q, d, accumulate);
        else AttentionSwapHeadsCore<double>(src, dst, b, p, q, d, accumulate);
    }

    private static void AttentionSwapHeadsCore<T>(Tensor st, Tensor dt, int b, int p, int q, int d, bool accumulate) where T : unmanaged, IFloatingPointIeee754<T>
    {
        nint sp = (nint)Ptr<T>(st), dp = (nint)Ptr<T>(dt);
        long rows = (long)b * q * p;
        CpuParallel.For(rows, Math.Max(1, ElementwiseGrain / Math.Max(1, d)), (s, e) =>
        {
            for (long r = s; r < e; r++)
            {
                // dst row (bi, qi, pi) <- src row (bi, pi, qi)
                long pi = r % p, rest = r / p, qi = rest % q, bi = rest / q;
                var from = new ReadOnlySpan<T>((T*)sp + ((bi * p + pi) * q + qi) * d, d);
                var to = new Span<T>((T*)dp + r * d, d);
                if (accumulate) TensorPrimitives.Add(to, from, to);
                else from.CopyTo(to);
            }
        });
    }

    // ---- causal grouped-query attention ---------------------------------------------------------------

    /// <summary>
    /// The GQA view: q (B, H, T, D) is (B·KVH, G·T, D), since the G query heads sharing a kv head are
    /// adjacent; each of the B·KVH slices is served by one (T, D) slice of k and v, and score row r of a
    /// slice is query position r mod T. No repeated K/V is ever materialised.
    /// </summary>
    private readonly record struct AttentionGeometry(int Slices, int Rows, int T, int D, double Scale, int Chunk)
    {
        public static AttentionGeometry Of(Tensor q, Tensor k)
        {
            int b = q.Shape[0], h = q.Shape[1], t = q.Shape[2], d = q.Shape[3], kvh = k.Shape[1];
            int rows = h / kvh * t;
            int slices = b * kvh;
            long perSlice = Math.Max(1L, (long)rows * t);
            int chunk = (int)Math.Clamp(AttentionScratchElements / perSlice, 1, Math.Max(1, slices));
            return new AttentionGeometry(slices, rows, t, d, 1.0 / Math.Sqrt(d), chunk);
        }
    }

    /// <summary>Slices [first, first + count) of t viewed as (slices, rows, cols); a handle outside any scope.</summary>
    private static Tensor AttentionSlice(Tensor t, long first, int count, int rows, int cols)
        => t.Alias(new Shape(count, rows, cols), t.Offset + first * rows * cols, registerInScope: false);

    public void CausalAttention(Tensor q, Tensor k, Tensor v, Tensor y, Tensor lse)
    {
        var g = AttentionGeometry.Of(q, k);
        if (y.Numel == 0) return;
        using var scores = TransformerScratch((long)g.Chunk * g.Rows * g.T, q.DType);
        for (int s0 = 0; s0 < g.Slices; s0 += g.Chunk)
        {
            int n = Math.Min(g.Chunk, g.Slices - s0);
            using var qs = AttentionSlice(q, s0, n, g.Rows, g.D);
            using var ks = AttentionSlice(k, s0, n, g.T, g.D);
            using var vs = AttentionSlice(v, s0, n, g.T, g.D);
            using var ys = AttentionSlice(y, s0, n, g.Rows, g.D);
            using var ls = AttentionSlice(lse, s0, n, g.Rows, 1);
            using var sc = AttentionSlice(scores, 0, n, g.Rows, g.T);
            // S = q·kᵀ/√D (n, G·T, T); P = causal softmax(S) in place; y = P·v.
            MatMul(qs, ks, sc, n, g.Rows, g.T, g.D, transA: false, transB: true, g.Scale, accumulate: false);
            if (q.DType == DType.Float32) AttentionCausalSoftmaxRows<float>(sc, ls, g.T);
            else AttentionCausalSoftmaxRows<double>(sc, ls, g.T);
            MatMul(sc, vs, ys, n, g.Rows, g.D, g.T, transA: false, transB: false, 1.0, accumulate: false);
        }
    }

    public void CausalAttentionBackward(Tensor q, Tensor k, Tensor v, Tensor lse, Tensor dy, Tensor? dq, Tensor? dk, Tensor? dv)
    {
        if (dq is null && dk is null && dv is null) return;
        var g = AttentionGeometry.Of(q, k);
        if (dy.Numel == 0) return;
        bool f32 = q.DType == DType.Float32;
        long scratch = (long)g.Chunk * g.Rows * g.T;
        using var probs = TransformerScratch(scratch, q.DType);
        using var dprobs = dq is null && dk is null ? null : TransformerScratch(scratch, q.DType);
        for (int s0 = 0; s0 < g.Slices; s0 += g.Chunk)
        {
            int n = Math.Min(g.Chunk, g.Slices - s0);
            using var qs = AttentionSlice(q, s0, n, g.Rows, g.D);
            using var ks = AttentionSlice(k, s0, n, g.T, g.D);
            using var vs = AttentionSlice(v, s0, n, g.T, g.D);
            using var dys = AttentionSlice(dy, s0, n, g.Rows, g.D);
            using var ls = AttentionSlice(lse, s0, n, g.Rows, 1);
            using var p = AttentionSlice(probs, 0, n, g.Rows, g.T);
            // Recompute P = exp(q·kᵀ/√D − lse) under the causal mask.
            MatMul(qs, ks, p, n, g.Rows, g.T, g.D, transA: false, transB: true, g.Scale, accumulate: false);
            if (f32) AttentionProbsFromLse<float>(p, ls, g.T);
            else AttentionProbsFromLse<double>(p, ls, g.T);
            if (dv is not null)
            {
                // dv (T, D) += Pᵀ·dy; the G·T rows of a slice sum the query heads that share the kv head.
                using var dvs = AttentionSlice(dv, s0, n, g.T, g.D);
                MatMul(p, dys, dvs, n, g.T, g.D, g.Rows, transA: true, transB: false, 1.0, accumulate: true);
            }
            if (dprobs is null) continue;
            using var dp = AttentionSlice(dprobs, 0, n, g.Rows, g.T);
            // dP = dy·vᵀ; dS = P ⊙ (dP − rowsum(P ⊙ dP)); dq += dS·k/√D; dk += dSᵀ·q/√D.
            MatMul(dys, vs, dp, n, g.Rows, g.T, g.D, transA: false, transB: true, 1.0, accumulate: false);
            if (f32) AttentionSoftmaxBackwardRows<float>(p, dp, g.T);
            else AttentionSoftmaxBackwardRows<double>(p, dp, g.T);
            if (dq is not null)
            {
                using var dqs = AttentionSlice(dq, s0, n, g.Rows, g.D);
                MatMul(dp, ks, dqs, n, g.Rows, g.D, g.T, transA: false, transB: false, g.Scale, accumulate: true);
            }
            if (dk is not null)
            {
                using var dks = AttentionSlice(dk, s0, n, g.T, g.D);
                MatMul(dp, qs, dks, n, g.T, g.D, g.Rows, transA: true, transB: false, g.Scale, accumulate: true);
            }
        }
    }

    /// <summary>In place on scores (rows, T): row r (position r mod T) becomes softmax over columns j ≤ r mod T
    /// and 0 beyond; lse[r] = max + log Σ exp(s − max).</summary>
    private static void AttentionCausalSoftmaxRows<T>(Tensor scores, Tensor lse, int t) where T : unmanaged, IFloatingPointIeee754<T>
    {
        nint sp = (nint)Ptr<T>(scores), lp = (nint)Ptr<T>(lse);
        long rows = scores.Numel / t;
        CpuParallel.For(rows, Math.Max(1, ElementwiseGrain / t), (s, e) =>
        {
            for (long r = s; r < e; r++)
            {
                var row = new Span<T>((T*)sp + r * t, t);
                int live = (int)(r % t) + 1;
                var x = row[..live];
                T max = TensorPrimitives.Max<T>(x);
                TensorPrimitives.Subtract(x, max, x);
                TensorPrimitives.Exp<T>(x, x);
                T sum = TensorPrimitives.Sum<T>(x);
                TensorPrimitives.Multiply(x, T.One / sum, x);
                row[live..].Clear();
                ((T*)lp)[r] = max + T.Log(sum);
            }
        });
    }

    /// <summary>In place on scores (rows, T): P = exp(s − lse[r]) for j ≤ r mod T, 0 beyond.</summary>
    private static void AttentionProbsFromLse<T>(Tensor scores, Tensor lse, int t) where T : unmanaged, IFloatingPointIeee754<T>
    {
        nint sp = (nint)Ptr<T>(scores), lp = (nint)Ptr<T>(lse);
        long rows = scores.Numel / t;
        CpuParallel.For(rows, Math.Max(1, ElementwiseGrain / t), (s, e) =>
        {
            for (long r = s; r < e; r++)
            {
                var row = new Span<T>((T*)sp + r * t, t);
                int live = (int)(r % t) + 1;
                var x = row[..live];
                TensorPrimitives.Subtract(x, ((T*)lp)[r], x);
                TensorPrimitives.Exp<T>(x, x);
                row[live..].Clear();
            }
        });
    }

    /// <summary>In place on dp (rows, T): dS = P ⊙ (dP − Σ_j P·dP) on the causal part, 0 beyond.</summary>
    private static void AttentionSoftmaxBackwardRows<T>(Tensor probs, Tensor dprobs, int t) where T : unmanaged, IFloatingPointIeee754<T>
    {
        nint pp = (nint)Ptr<T>(probs), dp = (nint)Ptr<T>(dprobs);
        long rows = probs.Numel / t;
        CpuParallel.For(rows, Math.Max(1, ElementwiseGrain / t), (s, e) =>
        {
            for (long r = s; r < e; r++)
            {
                int live = (int)(r % t) + 1;
                var p = new ReadOnlySpan<T>((T*)pp + r * t, live);
                var drow = new Span<T>((T*)dp + r * t, t);
                var d = drow[..live];
                T dot = TensorPrimitives.Dot(p, d);
                TensorPrimitives.Subtract(d, dot, d);
                TensorPrimitives.Multiply(d, p, d);
                drow[live..].Clear();
            }
        });
    }
}
