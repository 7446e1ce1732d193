using System.Numerics;
using System.Numerics.Tensors;
using Sdp.Kernels.Cpu;

namespace Sdp.Engine.Backends.Cpu;

/// <summary>
/// CNN layers on the CPU. Convolution is im2col + GEMM: a group of G images is unfolded into a column
/// matrix cols (K = C·KH·KW, G·P) with P = OH·OW, and y_g (O, G·P) = W (O, K) · cols. Small planes batch
/// several images per GEMM so the GEMM stays wide (ResNet's 4x4 stages); 1x1 stride-1 convolutions of one
/// image skip im2col and multiply x directly.
///
/// Threading: with at least as many image groups as threads, each thread owns a slot (its own column
/// buffer) and runs whole groups with a single-threaded GEMM — no synchronisation inside a group. With
/// fewer groups (small batches, tiny late-stage planes) groups run one after another and the GEMM, im2col
/// and col2im thread themselves. The weight gradient always sums over groups in a fixed order with a
/// threaded GEMM, so it is deterministic and needs no per-thread copies of dW. Column buffers are Tensors,
/// charged to the current memory account as workspace, and freed when the call returns.
/// </summary>
public sealed unsafe partial class CpuBackend
{
    /// <summary>Target GEMM width (columns) for one single-threaded slot. Tuning and test hook.</summary>
    internal static int ConvSlotColumns { get; set; } = 256;

    /// <summary>Target GEMM width (columns) for a GEMM that threads itself. Tuning and test hook.</summary>
    internal static int ConvThreadedColumns { get; set; } = 1024;

    /// <summary>Target inner dimension (columns of dY and cols) of each weight-gradient GEMM: wider means
    /// fewer passes over dW. Tuning and test hook.</summary>
    internal static int ConvWeightGradColumns { get; set; } = 4096;

    /// <summary>Upper bound on one group's column matrix, in elements, so workspace stays bounded.</summary>
    private const long ConvMaxGroupElements = 1L << 22;

    private readonly record struct ConvGeom(int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW, int Stride, int Pad)
    {
        /// <summary>Output pixels per image.</summary>
        public int P => OH * OW;

        /// <summary>Rows of the column matrix.</summary>
        public int K => C * KH * KW;

        public int HW => H * W;

        /// <summary>1x1, stride 1, no padding: an image's column matrix is the image itself.</summary>
        public bool Direct => KH == 1 && KW == 1 && Stride == 1 && Pad == 0;

        /// <summary>Images per group so the group's GEMM is about <paramref name="columns"/> wide, within the workspace cap.</summary>
        public int GroupSize(int columns)
        {
            long g = Math.Clamp((columns + P - 1) / P, 1, Math.Max(1, N));
            g = Math.Min(g, Math.Max(1, ConvMaxGroupElements / Math.Max(1, (long)P * K)));
            return (int)g;
        }
    }

    /// <summary>How a pass over the batch is split: G images per group, run in <see cref="Slots"/> parallel
    /// slots (single-threaded GEMMs), or sequentially with threaded GEMMs when <see cref="Slots"/> is 1 and
    /// <see cref="Threaded"/>.</summary>
    private readonly record struct ConvPlan(int G, int Groups, int Slots, bool Threaded)
    {
        public static ConvPlan For(in ConvGeom g)
        {
            int threads = Math.Max(1, CpuParallel.MaxThreads);
            int gs = g.GroupSize(ConvSlotColumns);
            int groups = (g.N + gs - 1) / gs;
            if (threads == 1 || groups >= threads) return new ConvPlan(gs, groups, Math.Min(threads, groups), false);
            int gt = g.GroupSize(ConvThreadedColumns);
            return new ConvPlan(gt, (g.N + gt - 1) / gt, 1, true);
        }

        /// <summary>The weight-gradient plan: always sequential, group size from the shape alone (deterministic sums).</summary>
        public static ConvPlan ForWeightGrad(in ConvGeom g)
        {
            int gs = g.GroupSize(ConvWeightGradColumns);
            return new ConvPlan(gs, (g.N + gs - 1) / gs, 1, true);
        }

        public int Threads => Threaded ? Math.Max(1, CpuParallel.MaxThreads) : 1;
    }

    /// <summary>Runs body over [0, count), on the pool when <paramref name="parallel"/>, else inline.</summary>
    private static void Loop(long count, bool parallel, Action<long, long> body)
    {
        if (parallel) CpuParallel.For(count, 1, body);
        else if (count > 0) body(0, count);
    }

    /// <summary>Runs each slot's contiguous share of the groups, one slot per thread.</summary>
    private static void ForEachGroup(in ConvPlan plan, Action<int, int> groupInSlot)
    {
        int slots = plan.Slots, groups = plan.Groups;
        CpuParallel.For(slots, 1, (s0, s1) =>
        {
            for (long s = s0; s < s1; s++)
            {
                long g0 = groups * s / slots, g1 = groups * (s + 1) / slots;
                for (long grp = g0; grp < g1; grp++) groupInSlot((int)s, (int)grp);
            }
        });
    }

    private static void GemmT<T>(bool transA, bool transB, int m, int n, int k, T* a, int lda, T* b, int ldb, bool accumulate, T* c, int ldc, int threads)
        where T : unmanaged
    {
        if (typeof(T) == typeof(float)) Gemm.Sgemm(transA, transB, m, n, k, 1f, (float*)a, lda, (float*)b, ldb, accumulate ? 1f : 0f, (float*)c, ldc, threads);
        else Gemm.Dgemm(transA, transB, m, n, k, 1.0, (double*)a, lda, (double*)b, ldb, accumulate ? 1.0 : 0.0, (double*)c, ldc, threads);
    }

    // ---- conv2d forward ---------------------------------------------------------------------------------

    public void Conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor y, int stride, int padding)
    {
        var g = new ConvGeom(x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3], weight.Shape[0], weight.Shape[2], weight.Shape[3], y.Shape[2], y.Shape[3], stride, padding);
        if (y.Numel == 0) return;
        if (x.DType == DType.Float32) Conv2dCore<float>(g, x, weight, bias, y);
        else Conv2dCore<double>(g, x, weight, bias, y);
    }

    private void Conv2dCore<T>(ConvGeom g, Tensor xt, Tensor wt, Tensor? bt, Tensor yt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var plan = ConvPlan.For(g);
        int G = plan.G, P = g.P, K = g.K, O = g.O;
        long colsLen = g.Direct && G == 1 ? 0 : (long)K * G * P;
        long ybufLen = G == 1 ? 0 : (long)O * G * P;
        long slotLen = colsLen + ybufLen;
        using var ws = Tensor.Empty(new Shape((int)Math.Max(1, plan.Slots * slotLen)), xt.DType, this);
        nint xp = (nint)Ptr<T>(xt), wp = (nint)Ptr<T>(wt), bp = bt is null ? 0 : (nint)Ptr<T>(bt), yp = (nint)Ptr<T>(yt), wsp = (nint)Ptr<T>(ws);
        bool par = plan.Threaded;
        int threads = plan.Threads;

        ForEachGroup(plan, (slot, grp) =>
        {
            int n0 = grp * G, count = Math.Min(G, g.N - n0), ld = count * P;
            T* cols = (T*)wsp + slot * slotLen;
            T* ybuf = cols + colsLen;
            T* b;
            int ldb;
            if (g.Direct && count == 1)
            {
                b = (T*)xp + (long)n0 * g.C * g.HW;
                ldb = P;
            }
            else
            {
                Im2ColGroup<T>(g, (T*)xp, n0, count, cols, ld, par);
                b = cols;
                ldb = ld;
            }

            if (count == 1)
            {
                T* yn = (T*)yp + (long)n0 * O * P;
                GemmT(false, false, O, P, K, (T*)wp, K, b, ldb, false, yn, P, threads);
                if (bp != 0) Loop(O, par, (o0, o1) => { for (long o = o0; o < o1; o++) TensorPrimitives.Add(new ReadOnlySpan<T>(yn + o * P, P), ((T*)bp)[o], new Span<T>(yn + o * P, P)); });
                return;
            }

            GemmT(false, false, O, ld, K, (T*)wp, K, b, ldb, false, ybuf, ld, threads);
            // Scatter y_g (O, count·P) into y (N, O, P), adding the bias on the way.
            Loop((long)count * O, par, (r0, r1) =>
            {
                for (long r = r0; r < r1; r++)
                {
                    long i = r / O, o = r % O;
                    var src = new ReadOnlySpan<T>(ybuf + o * ld + i * P, P);
                    var dst = new Span<T>((T*)yp + ((n0 + i) * O + o) * P, P);
                    if (bp != 0) TensorPrimitives.Add(src, ((T*)bp)[o], dst);
                    else src.CopyTo(dst);
                }
            });
        });
    }

    /// <summary>Unfolds images [n0, n0+count) of x into cols (K, ld), image i in columns [i·P, (i+1)·P).</summary>
    private static void Im2ColGroup<T>(ConvGeom g, T* x, int n0, int count, T* cols, int ld, bool parallel) where T : unmanaged, IFloatingPointIeee754<T>
    {
        nint xp = (nint)x, cp = (nint)cols;
        Loop((long)count * g.C, parallel, (t0, t1) =>
        {
            for (long t = t0; t < t1; t++)
            {
                int i = (int)(t / g.C), c = (int)(t % g.C);
                Im2ColChannel(g, (T*)xp + ((long)(n0 + i) * g.C + c) * g.HW, c, (T*)cp + (long)i * g.P, ld);
            }
        });
    }

    /// <summary>Valid output columns [lo, hi) for kernel column kw: those whose input column ow·s - p + kw lies in [0, W).</summary>
    private static (int Lo, int Hi) ValidRange(int kOffset, int size, int outSize, int stride, int pad)
    {
        int a = pad - kOffset; // ow·s >= a
        int lo = a <= 0 ? 0 : (a + stride - 1) / stride;
        int b = size - 1 + pad - kOffset; // ow·s <= b
        int hi = b < 0 ? 0 : Math.Min(outSize, b / stride + 1);
        return (lo, Math.Max(lo, hi));
    }

    private static void Im2ColChannel<T>(in ConvGeom g, T* xc, int c, T* cols, int ld) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int s = g.Stride, p = g.Pad, OW = g.OW;
        for (int kh = 0; kh < g.KH; kh++)
        {
            for (int kw = 0; kw < g.KW; kw++)
            {
                T* row = cols + (long)((c * g.KH + kh) * g.KW + kw) * ld;
                var (lo, hi) = ValidRange(kw, g.W, OW, s, p);
                for (int oh = 0; oh < g.OH; oh++)
                {
                    T* dst = row + oh * OW;
                    int ih = oh * s - p + kh;
                    if ((uint)ih >= (uint)g.H)
                    {
                        new Span<T>(dst, OW).Clear();
                        continue;
                    }
                    T* src = xc + ih * g.W - p + kw; // src[ow·s] is input column ow·s - p + kw
                    for (int ow = 0; ow < lo; ow++) dst[ow] = T.Zero;
                    if (s == 1) new ReadOnlySpan<T>(src + lo, hi - lo).CopyTo(new Span<T>(dst + lo, hi - lo));
                    else for (int ow = lo; ow < hi; ow++) dst[ow] = src[ow * s];
                    for (int ow = hi; ow < OW; ow++) dst[ow] = T.Zero;
                }
            }
        }
    }

    /// <summary>dx[images n0..n0+count) += fold(dcols (K, ld)), the adjoint of <see cref="Im2ColGroup"/>.</summary>
    private static void Col2ImGroup<T>(ConvGeom g, T* dcols, int n0, int count, int ld, T* dx, bool parallel) where T : unmanaged, IFloatingPointIeee754<T>
    {
        nint dxp = (nint)dx, cp = (nint)dcols;
        Loop((long)count * g.C, parallel, (t0, t1) =>
        {
            for (long t = t0; t < t1; t++)
            {
                int i = (int)(t / g.C), c = (int)(t % g.C);
                Col2ImChannel(g, (T*)cp + (long)i * g.P, ld, c, (T*)dxp + ((long)(n0 + i) * g.C + c) * g.HW);
            }
        });
    }

    private static void Col2ImChannel<T>(in ConvGeom g, T* cols, int ld, int c, T* dxc) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int s = g.Stride, p = g.Pad, OW = g.OW;
        for (int kh = 0; kh < g.KH; kh++)
        {
            for (int kw = 0; kw < g.KW; kw++)
            {
                T* row = cols + (long)((c * g.KH + kh) * g.KW + kw) * ld;
                var (lo, hi) = ValidRange(kw, g.W, OW, s, p);
                if (hi <= lo) continue;
                for (int oh = 0; oh < g.OH; oh++)
                {
                    int ih = oh * s - p + kh;
                    if ((uint)ih >= (uint)g.H) continue;
                    T* src = row + oh * OW;
                    T* dst = dxc + ih * g.W - p + kw;
                    if (s == 1)
                    {
                        var d = new Span<T>(dst + lo, hi - lo);
                        TensorPrimitives.Add(d, new ReadOnlySpan<T>(src + lo, hi - lo), d);
                    }
                    else
                    {
                        for (int ow = lo; ow < hi; ow++) dst[ow * s] += src[ow];
                    }
                }
            }
        }
    }

    // ---- conv2d backward --------------------------------------------------------------------------------

    public void Conv2dBackward(Tensor? x, Tensor? weight, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, int stride, int padding)
    {
        if (dbias is not null)
        {
            if (dy.DType == DType.Float32) ConvBiasGrad<float>(dy, dbias);
            else ConvBiasGrad<double>(dy, dbias);
        }
        if (dx is null && dweight is null) return;
        var xs = (x ?? dx)!.Shape;
        var ks = (weight ?? dweight)!.Shape;
        var g = new ConvGeom(xs[0], xs[1], xs[2], xs[3], ks[0], ks[2], ks[3], dy.Shape[2], dy.Shape[3], stride, padding);
        if (g.N == 0 || g.P == 0) return;
        if (dy.DType == DType.Float32)
        {
            if (dweight is not null) Conv2dWeightGrad<float>(g, x!, dy, dweight);
            if (dx is not null) Conv2dInputGrad<float>(g, weight!, dy, dx);
        }
        else
        {
            if (dweight is not null) Conv2dWeightGrad<double>(g, x!, dy, dweight);
            if (dx is not null) Conv2dInputGrad<double>(g, weight!, dy, dx);
        }
    }

    /// <summary>dbias (O) += Σ_{n,p} dy[n, o, p], one channel per task, planes summed in order.</summary>
    private static void ConvBiasGrad<T>(Tensor dyt, Tensor dbt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int n = dyt.Shape[0], o = dyt.Shape[1];
        int plane = (int)dyt.Shape.Product(2, 4);
        nint dyp = (nint)Ptr<T>(dyt), dbp = (nint)Ptr<T>(dbt);
        CpuParallel.For(o, Math.Max(1, ElementwiseGrain / Math.Max(1, (long)n * plane)), (o0, o1) =>
        {
            for (long c = o0; c < o1; c++)
            {
                double acc = 0;
                for (long i = 0; i < n; i++) acc += double.CreateTruncating(TensorPrimitives.Sum(new ReadOnlySpan<T>((T*)dyp + (i * o + c) * plane, plane)));
                ((T*)dbp)[c] += T.CreateTruncating(acc);
            }
        });
    }

    /// <summary>Copies dy of images [n0, n0+count) into buf (O, count·P), image i in columns [i·P, (i+1)·P).</summary>
    private static void GatherDy<T>(in ConvGeom g, T* dy, int n0, int count, T* buf, bool parallel) where T : unmanaged
    {
        int P = g.P, O = g.O, ld = count * P;
        nint dyp = (nint)dy, bp = (nint)buf;
        Loop((long)count * O, parallel, (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                long i = r / O, o = r % O;
                new ReadOnlySpan<T>((T*)dyp + ((n0 + i) * O + o) * P, P).CopyTo(new Span<T>((T*)bp + o * ld + i * P, P));
            }
        });
    }

    /// <summary>dW (O, K) += Σ_groups dY_g (O, G·P) · cols_gᵀ, groups in order, each GEMM threaded.</summary>
    private void Conv2dWeightGrad<T>(ConvGeom g, Tensor xt, Tensor dyt, Tensor dwt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var plan = ConvPlan.ForWeightGrad(g);
        int G = plan.G, P = g.P, K = g.K, O = g.O;
        long colsLen = g.Direct && G == 1 ? 0 : (long)K * G * P;
        long dyLen = G == 1 ? 0 : (long)O * G * P;
        using var ws = Tensor.Empty(new Shape((int)Math.Max(1, colsLen + dyLen)), xt.DType, this);
        T* x = Ptr<T>(xt), dy = Ptr<T>(dyt), dw = Ptr<T>(dwt), cols = Ptr<T>(ws), dybuf = cols + colsLen;
        int threads = plan.Threads;
        for (int grp = 0; grp < plan.Groups; grp++)
        {
            int n0 = grp * G, count = Math.Min(G, g.N - n0), ld = count * P;
            T* a = dy + (long)n0 * O * P;
            if (count > 1)
            {
                GatherDy(g, dy, n0, count, dybuf, parallel: true);
                a = dybuf;
            }
            T* b = x + (long)n0 * g.C * g.HW;
            if (!(g.Direct && count == 1))
            {
                Im2ColGroup(g, x, n0, count, cols, ld, parallel: true);
                b = cols;
            }
            GemmT(false, true, O, K, ld, a, ld, b, ld, true, dw, K, threads);
        }
    }

    /// <summary>dX += col2im(Wᵀ (K, O) · dY_g (O, G·P)) per group; 1x1 stride-1 single images accumulate straight into dX.</summary>
    private void Conv2dInputGrad<T>(ConvGeom g, Tensor wt, Tensor dyt, Tensor dxt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var plan = ConvPlan.For(g);
        int G = plan.G, P = g.P, K = g.K, O = g.O;
        long colsLen = g.Direct && G == 1 ? 0 : (long)K * G * P;
        long dyLen = G == 1 ? 0 : (long)O * G * P;
        long slotLen = colsLen + dyLen;
        using var ws = Tensor.Empty(new Shape((int)Math.Max(1, plan.Slots * slotLen)), dxt.DType, this);
        nint wp = (nint)Ptr<T>(wt), dyp = (nint)Ptr<T>(dyt), dxp = (nint)Ptr<T>(dxt), wsp = (nint)Ptr<T>(ws);
        bool par = plan.Threaded;
        int threads = plan.Threads;

        ForEachGroup(plan, (slot, grp) =>
        {
            int n0 = grp * G, count = Math.Min(G, g.N - n0), ld = count * P;
            T* dcols = (T*)wsp + slot * slotLen;
            T* a = (T*)dyp + (long)n0 * O * P;
            if (count > 1)
            {
                GatherDy(g, (T*)dyp, n0, count, dcols + colsLen, par);
                a = dcols + colsLen;
            }
            if (g.Direct && count == 1)
            {
                GemmT(true, false, K, P, O, (T*)wp, K, a, P, true, (T*)dxp + (long)n0 * g.C * g.HW, P, threads);
                return;
            }
            GemmT(true, false, K, ld, O, (T*)wp, K, a, ld, false, dcols, ld, threads);
            Col2ImGroup(g, dcols, n0, count, ld, (T*)dxp, par);
        });
    }

    // ---- batchnorm2d ------------------------------------------------------------------------------------

    /// <summary>Elements summed in T before the running total is carried in float64.</summary>
    private const int BatchNormBlock = 1024;

    public void BatchNorm2d(Tensor x, Tensor weight, Tensor bias, Tensor runningMean, Tensor runningVar, Tensor y, Tensor mean, Tensor rstd, bool training, double momentum, double eps)
    {
        if (x.DType == DType.Float32) BatchNorm2dCore<float>(x, weight, bias, runningMean, runningVar, y, mean, rstd, training, momentum, eps);
        else BatchNorm2dCore<double>(x, weight, bias, runningMean, runningVar, y, mean, rstd, training, momentum, eps);
    }

    private static void BatchNorm2dCore<T>(Tensor xt, Tensor wt, Tensor bt, Tensor rmt, Tensor rvt, Tensor yt, Tensor meant, Tensor rstdt, bool training, double momentum, double eps)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int n = xt.Shape[0], channels = xt.Shape[1];
        int plane = (int)xt.Shape.Product(2, 4);
        long m = (long)n * plane;
        nint xp = (nint)Ptr<T>(xt), wp = (nint)Ptr<T>(wt), bp = (nint)Ptr<T>(bt), rmp = (nint)Ptr<T>(rmt), rvp = (nint)Ptr<T>(rvt);
        nint yp = (nint)Ptr<T>(yt), meanp = (nint)Ptr<T>(meant), rstdp = (nint)Ptr<T>(rstdt);
        CpuParallel.For(channels, Math.Max(1, ElementwiseGrain / Math.Max(1, m)), (c0, c1) =>
        {
            T* rm = (T*)rmp, rv = (T*)rvp;
            for (long c = c0; c < c1; c++)
            {
                double mu, rs;
                if (training)
                {
                    double sum = 0;
                    for (long i = 0; i < n; i++) sum += BlockedSum((T*)xp + (i * channels + c) * plane, plane);
                    mu = sum / m;
                    double sq = 0;
                    for (long i = 0; i < n; i++) sq += BlockedSumSquaredDeviation((T*)xp + (i * channels + c) * plane, plane, T.CreateTruncating(mu));
                    double variance = sq / m;
                    rs = 1.0 / Math.Sqrt(variance + eps);
                    rm[c] = T.CreateTruncating((1 - momentum) * double.CreateTruncating(rm[c]) + momentum * mu);
                    rv[c] = T.CreateTruncating((1 - momentum) * double.CreateTruncating(rv[c]) + momentum * variance * m / (m - 1));
                }
                else
                {
                    mu = double.CreateTruncating(rm[c]);
                    rs = 1.0 / Math.Sqrt(double.CreateTruncating(rv[c]) + eps);
                }
                ((T*)meanp)[c] = T.CreateTruncating(mu);
                ((T*)rstdp)[c] = T.CreateTruncating(rs);
                double scale = double.CreateTruncating(((T*)wp)[c]) * rs;
                T ts = T.CreateTruncating(scale), tb = T.CreateTruncating(double.CreateTruncating(((T*)bp)[c]) - mu * scale);
                for (long i = 0; i < n; i++)
                {
                    long off = (i * channels + c) * plane;
                    var dst = new Span<T>((T*)yp + off, plane);
                    TensorPrimitives.Multiply(new ReadOnlySpan<T>((T*)xp + off, plane), ts, dst);
                    TensorPrimitives.Add(dst, tb, dst);
                }
            }
        });
    }

    /// <summary>Σ p[0..len), vectorised in T over blocks, blocks accumulated in float64.</summary>
    private static double BlockedSum<T>(T* p, int len) where T : unmanaged, IFloatingPointIeee754<T>
    {
        double total = 0;
        for (int s = 0; s < len; s += BatchNormBlock) total += double.CreateTruncating(TensorPrimitives.Sum(new ReadOnlySpan<T>(p + s, Math.Min(BatchNormBlock, len - s))));
        return total;
    }

    /// <summary>Σ (p - mu)² over [0, len), vectorised in T over blocks, blocks accumulated in float64.</summary>
    private static double BlockedSumSquaredDeviation<T>(T* p, int len, T mu) where T : unmanaged, IFloatingPointIeee754<T>
    {
        double total = 0;
        var vmu = new Vector<T>(mu);
        for (int s = 0; s < len; s += BatchNormBlock)
        {
            int e = Math.Min(len, s + BatchNormBlock), i = s;
            var acc = Vector<T>.Zero;
            for (; i + Vector<T>.Count <= e; i += Vector<T>.Count)
            {
                var d = Vector.Load(p + i) - vmu;
                acc += d * d;
            }
            T tail = Vector.Sum(acc);
            for (; i < e; i++)
            {
                T d = p[i] - mu;
                tail += d * d;
            }
            total += double.CreateTruncating(tail);
        }
        return total;
    }

    /// <summary>Σ dy·(x - mu) over [0, len), vectorised in T over blocks, blocks accumulated in float64.</summary>
    private static double BlockedDotDeviation<T>(T* dy, T* x, int len, T mu) where T : unmanaged, IFloatingPointIeee754<T>
    {
        double total = 0;
        var vmu = new Vector<T>(mu);
        for (int s = 0; s < len; s += BatchNormBlock)
        {
            int e = Math.Min(len, s + BatchNormBlock), i = s;
            var acc = Vector<T>.Zero;
            for (; i + Vector<T>.Count <= e; i += Vector<T>.Count) acc += Vector.Load(dy + i) * (Vector.Load(x + i) - vmu);
            T tail = Vector.Sum(acc);
            for (; i < e; i++) tail += dy[i] * (x[i] - mu);
            total += double.CreateTruncating(tail);
        }
        return total;
    }

    public void BatchNorm2dBackward(Tensor? x, Tensor? weight, Tensor mean, Tensor rstd, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, bool training)
    {
        if (dy.DType == DType.Float32) BatchNorm2dBackwardCore<float>(x, weight, mean, rstd, dy, dx, dweight, dbias, training);
        else BatchNorm2dBackwardCore<double>(x, weight, mean, rstd, dy, dx, dweight, dbias, training);
    }

    private static void BatchNorm2dBackwardCore<T>(Tensor? xt, Tensor? wt, Tensor meant, Tensor rstdt, Tensor dyt, Tensor? dxt, Tensor? dwt, Tensor? dbt, bool training)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int n = dyt.Shape[0], channels = dyt.Shape[1];
        int plane = (int)dyt.Shape.Product(2, 4);
        long m = (long)n * plane;
        nint xp = xt is null ? 0 : (nint)Ptr<T>(xt), wp = wt is null ? 0 : (nint)Ptr<T>(wt), meanp = (nint)Ptr<T>(meant), rstdp = (nint)Ptr<T>(rstdt);
        nint dyp = (nint)Ptr<T>(dyt), dxp = dxt is null ? 0 : (nint)Ptr<T>(dxt), dwp = dwt is null ? 0 : (nint)Ptr<T>(dwt), dbp = dbt is null ? 0 : (nint)Ptr<T>(dbt);
        bool needDyX = dwp != 0 || (dxp != 0 && training);
        bool needDy = dbp != 0 || (dxp != 0 && training);
        CpuParallel.For(channels, Math.Max(1, ElementwiseGrain / Math.Max(1, m)), (c0, c1) =>
        {
            for (long c = c0; c < c1; c++)
            {
                double mu = double.CreateTruncating(((T*)meanp)[c]), rs = double.CreateTruncating(((T*)rstdp)[c]);
                T tmu = ((T*)meanp)[c];
                double sumDy = 0, sumDyXc = 0; // Σ dy and Σ dy·(x - mean)
                for (long i = 0; i < n; i++)
                {
                    long off = (i * channels + c) * plane;
                    if (needDy) sumDy += BlockedSum((T*)dyp + off, plane);
                    if (needDyX) sumDyXc += BlockedDotDeviation((T*)dyp + off, (T*)xp + off, plane, tmu);
                }
                if (dbp != 0) ((T*)dbp)[c] += T.CreateTruncating(sumDy);
                if (dwp != 0) ((T*)dwp)[c] += T.CreateTruncating(sumDyXc * rs);
                if (dxp == 0) continue;

                double k = double.CreateTruncating(((T*)wp)[c]) * rs;
                if (!training)
                {
                    T tk = T.CreateTruncating(k);
                    for (long i = 0; i < n; i++)
                    {
                        long off = (i * channels + c) * plane;
                        var d = new Span<T>((T*)dxp + off, plane);
                        TensorPrimitives.MultiplyAdd(new ReadOnlySpan<T>((T*)dyp + off, plane), tk, d, d);
                    }
                    continue;
                }
                // dx += k·(dy - Σdy/M - x̂·Σ(dy·x̂)/M) = k·dy + B·x + C0 with x̂ = (x - mean)·rstd,
                // B = -k·rstd²·Σ(dy·(x - mean))/M, C0 = -k·Σdy/M - B·mean.
                double bcoef = -k * rs * rs * sumDyXc / m;
                double c0coef = -k * sumDy / m - bcoef * mu;
                T a = T.CreateTruncating(k), b = T.CreateTruncating(bcoef), c0v = T.CreateTruncating(c0coef);
                Vector<T> va = new(a), vb = new(b), vc = new(c0v);
                for (long i = 0; i < n; i++)
                {
                    long off = (i * channels + c) * plane;
                    T* dy = (T*)dyp + off, x = (T*)xp + off, dx = (T*)dxp + off;
                    int j = 0;
                    for (; j + Vector<T>.Count <= plane; j += Vector<T>.Count)
                        Vector.Store(Vector.Load(dx + j) + va * Vector.Load(dy + j) + vb * Vector.Load(x + j) + vc, dx + j);
                    for (; j < plane; j++) dx[j] += a * dy[j] + b * x[j] + c0v;
                }
            }
        });
    }

    // ---- max pooling ------------------------------------------------------------------------------------

    public void MaxPool2d(Tensor x, Tensor y, Tensor argmax, int kernel, int stride, int padding)
    {
        if (x.DType == DType.Float32) MaxPool2dCore<float>(x, y, argmax, kernel, stride, padding);
        else MaxPool2dCore<double>(x, y, argmax, kernel, stride, padding);
    }

    private static void MaxPool2dCore<T>(Tensor xt, Tensor yt, Tensor argt, int kernel, int stride, int padding) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int h = xt.Shape[2], w = xt.Shape[3], oh = yt.Shape[2], ow = yt.Shape[3];
        long planes = xt.Shape.Product(0, 2);
        bool wide = argt.DType == DType.Int64;
        nint xp = (nint)Ptr<T>(xt), yp = (nint)Ptr<T>(yt), ap = wide ? (nint)Ptr<long>(argt) : (nint)Ptr<int>(argt);
        long work = (long)oh * ow * kernel * kernel;
        CpuParallel.For(planes, Math.Max(1, ElementwiseGrain / Math.Max(1, work)), (p0, p1) =>
        {
            for (long pl = p0; pl < p1; pl++)
            {
                T* x = (T*)xp + pl * h * w, y = (T*)yp + pl * oh * ow;
                for (int i = 0; i < oh; i++)
                {
                    int hs = i * stride - padding, he = Math.Min(hs + kernel, h);
                    hs = Math.Max(hs, 0);
                    for (int j = 0; j < ow; j++)
                    {
                        int ws = j * stride - padding, we = Math.Min(ws + kernel, w);
                        ws = Math.Max(ws, 0);
                        T best = T.NegativeInfinity;
                        int at = hs * w + ws;
                        for (int r = hs; r < he; r++)
                        {
                            for (int q = ws; q < we; q++)
                            {
                                T v = x[r * w + q];
                                if (v > best || T.IsNaN(v))
                                {
                                    best = v;
                                    at = r * w + q;
                                }
                            }
                        }
                        long o = (long)i * ow + j;
                        y[o] = best;
                        if (wide) ((long*)ap)[pl * oh * ow + o] = at;
                        else ((int*)ap)[pl * oh * ow + o] = at;
                    }
                }
            }
        });
    }

    public void MaxPool2dBackward(Tensor dy, Tensor argmax, Tensor dx)
    {
        if (dx.DType == DType.Float32) MaxPool2dBackwardCore<float>(dy, argmax, dx);
        else MaxPool2dBackwardCore<double>(dy, argmax, dx);
    }

    private static void MaxPool2dBackwardCore<T>(Tensor dyt, Tensor argt, Tensor dxt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long planes = dxt.Shape.Product(0, 2), inPlane = dxt.Shape.Product(2, 4), outPlane = dyt.Shape.Product(2, 4);
        bool wide = argt.DType == DType.Int64;
        nint dyp = (nint)Ptr<T>(dyt), dxp = (nint)Ptr<T>(dxt), ap = wide ? (nint)Ptr<long>(argt) : (nint)Ptr<int>(argt);
        // One plane per task: overlapping windows scatter into the same plane, never across planes.
        CpuParallel.For(planes, Math.Max(1, ElementwiseGrain / Math.Max(1, outPlane)), (p0, p1) =>
        {
            for (long pl = p0; pl < p1; pl++)
            {
                T* dy = (T*)dyp + pl * outPlane, dx = (T*)dxp + pl * inPlane;
                long ao = pl * outPlane;
                if (wide)
                {
                    long* arg = (long*)ap + ao;
                    for (long o = 0; o < outPlane; o++) dx[arg[o]] += dy[o];
                }
                else
                {
                    int* arg = (int*)ap + ao;
                    for (long o = 0; o < outPlane; o++) dx[arg[o]] += dy[o];
                }
            }
        });
    }

    // ---- adaptive average pooling -----------------------------------------------------------------------

    private static int BinStart(int i, int inSize, int outSize) => (int)((long)i * inSize / outSize);

    private static int BinEnd(int i, int inSize, int outSize) => (int)(((long)(i + 1) * inSize + outSize - 1) / outSize);

    public void AdaptiveAvgPool2d(Tensor x, Tensor y)
    {
        if (x.DType == DType.Float32) AdaptiveAvgPool2dCore<float>(x, y, backward: false);
        else AdaptiveAvgPool2dCore<double>(x, y, backward: false);
    }

    public void AdaptiveAvgPool2dBackward(Tensor dy, Tensor dx)
    {
        if (dx.DType == DType.Float32) AdaptiveAvgPool2dCore<float>(dx, dy, backward: true);
        else AdaptiveAvgPool2dCore<double>(dx, dy, backward: true);
    }

    /// <summary>Forward: y = bin means of x. Backward: x += y / bin size over each bin (x is dx, y is dy).</summary>
    private static void AdaptiveAvgPool2dCore<T>(Tensor xt, Tensor yt, bool backward) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int h = xt.Shape[2], w = xt.Shape[3], oh = yt.Shape[2], ow = yt.Shape[3];
        long planes = xt.Shape.Product(0, 2);
        nint xp = (nint)Ptr<T>(xt), yp = (nint)Ptr<T>(yt);
        CpuParallel.For(planes, Math.Max(1, ElementwiseGrain / Math.Max(1, (long)h * w)), (p0, p1) =>
        {
            for (long pl = p0; pl < p1; pl++)
            {
                T* x = (T*)xp + pl * h * w, y = (T*)yp + pl * oh * ow;
                for (int i = 0; i < oh; i++)
                {
                    int hs = BinStart(i, h, oh), he = BinEnd(i, h, oh);
                    for (int j = 0; j < ow; j++)
                    {
                        int ws = BinStart(j, w, ow), we = BinEnd(j, w, ow);
                        T count = T.CreateTruncating((he - hs) * (we - ws));
                        if (backward)
                        {
                            T g = y[i * ow + j] / count;
                            for (int r = hs; r < he; r++)
                            {
                                var row = new Span<T>(x + r * w + ws, we - ws);
                                TensorPrimitives.Add(row, g, row);
                            }
                        }
                        else
                        {
                            T acc = T.Zero;
                            for (int r = hs; r < he; r++) acc += TensorPrimitives.Sum(new ReadOnlySpan<T>(x + r * w + ws, we - ws));
                            y[i * ow + j] = acc / count;
                        }
                    }
                }
            }
        });
    }
}
