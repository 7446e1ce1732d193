using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;

namespace Sdp.Engine;

/// <summary>
/// LLaMA building blocks with Hugging Face transformers semantics (LlamaRMSNorm, LlamaRotaryEmbedding
/// with apply_rotary_pos_emb, eager causal attention with repeat_kv), so a model built from them can be
/// compared value for value with PyTorch.
///
/// Layout used by a LLaMA block (the projections come from <see cref="Linear"/>):
/// <code>
/// q = Linear(x, wq).Reshape(B, T, H, D);   k = Linear(x, wk).Reshape(B, T, KVH, D);   v likewise
/// q = Rope(q, cos, sin);                   k = Rope(k, cos, sin)          // (B, T, heads, D)
/// y = CausalAttention(SplitHeads(q), SplitHeads(k), SplitHeads(v))      // (B, H, T, D), as HF
/// out = Linear(MergeHeads(y), wo)                                        // (B, T, H·D)
/// </code>
/// </summary>
public static partial class Ops
{
    // ---- embedding ------------------------------------------------------------------------------------

    /// <summary>
    /// Token embedding lookup (torch.nn.Embedding): weight (V, C), ids (...) int32 or int64 -> y (..., C)
    /// with y[..., :] = weight[ids[...], :]. Ids must lie in [0, V). Differentiable in weight: backward
    /// scatter-adds rows of dy into dweight (deterministically, repeated ids included).
    /// </summary>
    public static Tensor Embedding(Tensor weight, Tensor ids)
    {
        const string op = "embedding";
        RequireFloat(op, weight);
        RequireRank(op, weight, 2, "(vocab, channels)");
        RequireIndex(op, ids);
        TransformerSameDevice(op, weight, ids);
        var y = Empty(new Shape([.. ids.Shape.Dims, weight.Shape[1]]), weight);
        RunOrDispose(y, () => weight.Backend.Embedding(weight, ids, y));
        return NeedsGrad(weight) ? Record(new EmbeddingNode(y, weight, ids)) : y;
    }

    /// <summary>The error a backend raises for an embedding id outside the vocabulary (flat position <paramref name="flat"/> of ids).</summary>
    internal static ArgumentOutOfRangeException EmbeddingIdOutOfRange(Tensor weight, Tensor ids, long flat)
    {
        int vocab = weight.Shape[0];
        return new ArgumentOutOfRangeException(nameof(ids),
            $"embedding: id {TransformerIndexValue(ids, flat)} at position {TransformerUnravel(ids.Shape, flat)} of ids {ids.Describe()} is out of range for the vocabulary of weight {weight.Describe()}: ids must lie in [0, {vocab}) (V = {vocab})");
    }

    /// <summary>The error a backend raises for a RoPE position outside the cos/sin tables.</summary>
    internal static ArgumentOutOfRangeException RopePositionOutOfRange(Tensor positions, Tensor cos, long flat)
    {
        int rows = cos.Shape[0];
        return new ArgumentOutOfRangeException(nameof(positions),
            $"rope: position id {TransformerIndexValue(positions, flat)} at {TransformerUnravel(positions.Shape, flat)} of {positions.Describe()} is outside the {rows} rows of the cos/sin tables {cos.Describe()}: positions must lie in [0, {rows})");
    }

    /// <summary>Runs a kernel that writes <paramref name="output"/>; if it throws, the output is freed before the error propagates.</summary>
    private static void RunOrDispose(Tensor output, Action kernel)
    {
        try
        {
            kernel();
        }
        catch
        {
            output.Dispose();
            throw;
        }
    }

    private sealed class EmbeddingNode : TapeNode
    {
        private readonly Tensor _ids;

        public EmbeddingNode(Tensor y, Tensor weight, Tensor ids) : base(y, weight) => _ids = Save(ids);

        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var dw = grads.For(Inputs[0]);
            if (dw is not null) dw.Backend.EmbeddingBackward(dy, _ids, dw);
        }
    }

    // ---- RMSNorm --------------------------------------------------------------------------------------

    /// <summary>
    /// Fused RMSNorm (LlamaRMSNorm): x (..., C), weight (C) -> y (..., C) with
    /// y = (x · rsqrt(mean(x², last axis) + eps)) · weight, computed in float32 (float64 for float64 x).
    /// Saves x and the per-row rstd (N = numel / C values) for backward, which computes dx and dweight
    /// in one pass over the rows. Hugging Face's default eps is 1e-6 (LLaMA configs use 1e-5 or 1e-6).
    /// </summary>
    public static Tensor RmsNorm(Tensor x, Tensor weight, double eps = 1e-6)
    {
        const string op = "rms_norm";
        RequireFloat(op, x);
        RequireSame(op, x, weight);
        if (x.Rank < 1 || x.Shape[-1] == 0) throw new ArgumentException($"{op}: input must have a non-empty last (channel) axis, got {x.Describe()}");
        RequireShape(op, weight, new Shape(x.Shape[-1]), "weight (the channel count of x)");
        if (!(eps >= 0) || double.IsInfinity(eps)) throw new ArgumentOutOfRangeException(nameof(eps), $"{op}: eps must be finite and >= 0, got {eps}");
        var y = EmptyLike(x);
        using var rstd = Empty(new Shape(checked((int)(x.Numel / x.Shape[-1]))), x);
        x.Backend.RmsNorm(x, weight, rstd, y, eps);
        return NeedsGrad(x, weight) ? Record(new RmsNormNode(y, x, weight, rstd)) : y;
    }

    private sealed class RmsNormNode : TapeNode
    {
        private readonly Tensor _x, _weight, _rstd;

        public RmsNormNode(Tensor y, Tensor x, Tensor weight, Tensor rstd) : base(y, x, weight)
        {
            _x = Save(x);
            _weight = Save(weight);
            _rstd = Save(rstd);
        }

        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var dx = grads.For(Inputs[0]);
            var dw = grads.For(Inputs[1]);
            if (dx is not null || dw is not null) dy.Backend.RmsNormBackward(dy, _x, _weight, _rstd, dx, dw);
        }
    }

    // ---- rotary position embedding ----------------------------------------------------------------------

    /// <summary>
    /// The cos and sin tables (maxSeq, headDim) of LlamaRotaryEmbedding (default rope type):
    /// inv_freq_i = theta^(−2i/headDim) for i in [0, headDim/2), freqs = t·inv_freq,
    /// emb = cat(freqs, freqs), cos = cos(emb), sin = sin(emb) for positions t in [0, maxSeq).
    /// Like transformers, the angles and their cos/sin are computed in float32 (inv_freq and t·inv_freq
    /// rounded to float32 as PyTorch does) and then converted to <paramref name="dtype"/>, so the tables
    /// match Hugging Face's to float32 rounding in either dtype. (Scaled variants such as llama3 rope
    /// scaling are not applied.)
    /// </summary>
    public static (Tensor Cos, Tensor Sin) RopeTables(int maxSeq, int headDim, double theta = 10000.0, DType dtype = DType.Float32, IBackend? backend = null)
    {
        const string op = "rope_tables";
        if (maxSeq < 0) throw new ArgumentOutOfRangeException(nameof(maxSeq), $"{op}: maxSeq must be >= 0, got {maxSeq}");
        if (headDim <= 0 || headDim % 2 != 0) throw new ArgumentOutOfRangeException(nameof(headDim), $"{op}: headDim must be positive and even, got {headDim}");
        if (!(theta > 0) || double.IsInfinity(theta)) throw new ArgumentOutOfRangeException(nameof(theta), $"{op}: theta must be finite and > 0, got {theta}");
        if (!dtype.IsFloatingPoint()) throw new ArgumentException($"{op}: tables must be float32 or float64, got {dtype.Name()}");
        int half = headDim / 2;
        var invFreq = new float[half];
        for (int i = 0; i < half; i++) invFreq[i] = 1f / MathF.Pow((float)theta, (float)(2 * i) / headDim);
        var cos = new double[(long)maxSeq * headDim];
        var sin = new double[cos.Length];
        for (int t = 0; t < maxSeq; t++)
        {
            for (int i = 0; i < half; i++)
            {
                float angle = t * invFreq[i];
                long at = (long)t * headDim + i;
                cos[at] = cos[at + half] = MathF.Cos(angle);
                sin[at] = sin[at + half] = MathF.Sin(angle);
            }
        }
        var shape = new Shape(maxSeq, headDim);
        return (Tensor.FromDoubles(cos, shape, dtype, backend), Tensor.FromDoubles(sin, shape, dtype, backend));
    }

    /// <summary>
    /// Rotary position embedding, Hugging Face rotate-half convention (apply_rotary_pos_emb):
    /// x (B, T, H, D) -> y (B, T, H, D), y = x·cos[p] + rotate_half(x)·sin[p] with
    /// rotate_half(x) = cat(−x[D/2:], x[:D/2]) and position p = t + <paramref name="positionOffset"/>.
    /// cos and sin are (S, D) tables from <see cref="RopeTables"/> in x's dtype, with S ≥ offset + T.
    /// The layout is (B, T, heads, D), as the projections produce it; <see cref="SplitHeads"/> then gives
    /// attention's (B, H, T, D). Differentiable in x only: the tables are constants.
    /// </summary>
    public static Tensor Rope(Tensor x, Tensor cos, Tensor sin, int positionOffset = 0) => RopeWith(x, cos, sin, null, positionOffset);

    /// <summary>
    /// <see cref="Rope(Tensor, Tensor, Tensor, int)"/> at explicit positions: positionIds (B, T), (1, T) or
    /// (T), int32 or int64, each in [0, S). x (B, T, H, D) -> y (B, T, H, D).
    /// </summary>
    public static Tensor Rope(Tensor x, Tensor cos, Tensor sin, Tensor positionIds) => RopeWith(x, cos, sin, positionIds, 0);

    private static Tensor RopeWith(Tensor x, Tensor cos, Tensor sin, Tensor? positions, int offset)
    {
        const string op = "rope";
        RequireFloat(op, x);
        RequireRank(op, x, 4, "(B, T, heads, head_dim)");
        int b = x.Shape[0], t = x.Shape[1], d = x.Shape[3];
        if (d % 2 != 0) throw new ArgumentException($"{op}: head_dim must be even to rotate halves, got {x.Describe()} with head_dim {d}");
        RequireSame(op, x, cos);
        RequireSame(op, x, sin);
        RequireRank(op, cos, 2, "(positions, head_dim)");
        RequireShape(op, sin, cos.Shape, "sin (the shape of cos)");
        if (cos.Shape[1] != d) throw new ArgumentException($"{op}: tables {cos.Describe()} must have head_dim {d} columns to match x {x.Describe()}");
        int rows = cos.Shape[0];
        if (positions is null)
        {
            if (offset < 0 || (long)offset + t > rows)
                throw new ArgumentOutOfRangeException(nameof(offset), $"{op}: positions [{offset}, {(long)offset + t}) of x {x.Describe()} need offset >= 0 and lie outside the {rows} rows of the cos/sin tables {cos.Describe()}");
        }
        else
        {
            RequireIndex(op, positions);
            TransformerSameDevice(op, x, positions);
            bool ok = positions.Rank == 1 && positions.Shape[0] == t
                || positions.Rank == 2 && positions.Shape[1] == t && (positions.Shape[0] == b || positions.Shape[0] == 1);
            if (!ok) throw new ArgumentException($"{op}: position ids must have shape ({b}, {t}), (1, {t}) or ({t},) for x {x.Describe()}, got {positions.Describe()}");
        }
        var y = EmptyLike(x);
        RunOrDispose(y, () => x.Backend.Rope(x, cos, sin, positions, offset, y));
        return NeedsGrad(x) ? Record(new RopeNode(y, x, cos, sin, positions, offset)) : y;
    }

    private sealed class RopeNode : TapeNode
    {
        private readonly Tensor _cos, _sin;
        private readonly Tensor? _positions;
        private readonly int _offset;

        public RopeNode(Tensor y, Tensor x, Tensor cos, Tensor sin, Tensor? positions, int offset) : base(y, x)
        {
            _cos = Save(cos);
            _sin = Save(sin);
            _positions = positions is null ? null : Save(positions);
            _offset = offset;
        }

        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var dx = grads.For(Inputs[0]);
            if (dx is not null) dx.Backend.RopeBackward(dy, _cos, _sin, _positions, _offset, dx);
        }
    }

    // ---- head layout ------------------------------------------------------------------------------------

    /// <summary>Heads before time, HF's q.view(B, T, H, D).transpose(1, 2): x (B, T, H, D) -> y (B, H, T, D).</summary>
    public static Tensor SplitHeads(Tensor x)
    {
        const string op = "split_heads";
        RequireFloat(op, x);
        RequireRank(op, x, 4, "(B, T, heads, head_dim)");
        int b = x.Shape[0], t = x.Shape[1], h = x.Shape[2], d = x.Shape[3];
        var y = Empty(new Shape(b, h, t, d), x);
        x.Backend.AttentionSwapHeads(x, y, b, t, h, d, accumulate: false);
        return NeedsGrad(x) ? Record(new SwapHeadsNode(y, x, b, t, h, d)) : y;
    }

    /// <summary>Time before heads, flattened for the output projection: x (B, H, T, D) -> y (B, T, H·D).</summary>
    public static Tensor MergeHeads(Tensor x)
    {
        const string op = "merge_heads";
        RequireFloat(op, x);
        RequireRank(op, x, 4, "(B, heads, T, head_dim)");
        int b = x.Shape[0], h = x.Shape[1], t = x.Shape[2], d = x.Shape[3];
        var y = Empty(new Shape(b, t, checked(h * d)), x);
        x.Backend.AttentionSwapHeads(x, y, b, h, t, d, accumulate: false);
        return NeedsGrad(x) ? Record(new SwapHeadsNode(y, x, b, h, t, d)) : y;
    }

    /// <summary>y (b, q, p, d) = x (b, p, q, d); the gradient swaps back.</summary>
    private sealed class SwapHeadsNode(Tensor y, Tensor x, int b, int p, int q, int d) : TapeNode(y, x)
    {
        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var dx = grads.For(Inputs[0]);
            if (dx is not null) dx.Backend.AttentionSwapHeads(dy, dx, b, q, p, d, accumulate: true);
        }
    }

    // ---- attention ------------------------------------------------------------------------------------

    /// <summary>
    /// Causal scaled-dot-product attention with grouped-query heads, as HF LLaMA (repeat_kv, scale 1/√D,
    /// causal mask, softmax over keys j ≤ i): q (B, H, T, D), k and v (B, KVH, T, D) -> y (B, H, T, D),
    /// where H is a multiple of KVH and query head h attends with kv head h / (H / KVH).
    /// K and V are never repeated in memory. Saves q, k, v and the per-row log-sum-exp (B, H, T); the
    /// probabilities are recomputed in backward, which gives dq, dk and dv.
    /// </summary>
    public static Tensor CausalAttention(Tensor q, Tensor k, Tensor v)
    {
        const string op = "causal_attention";
        RequireFloat(op, q);
        RequireSame(op, q, k);
        RequireSame(op, q, v);
        RequireRank(op, q, 4, "q (B, heads, T, head_dim)");
        RequireRank(op, k, 4, "k (B, kv_heads, T, head_dim)");
        RequireShape(op, v, k.Shape, "v (the shape of k)");
        int b = q.Shape[0], h = q.Shape[1], t = q.Shape[2], d = q.Shape[3], kvh = k.Shape[1];
        if (k.Shape[0] != b || k.Shape[2] != t || k.Shape[3] != d)
            throw new ArgumentException($"{op}: k {k.Describe()} must be ({b}, kv_heads, {t}, {d}) to match q {q.Describe()}");
        if (d == 0) throw new ArgumentException($"{op}: head_dim must be positive, got q {q.Describe()}");
        if (kvh == 0 || h % kvh != 0)
            throw new ArgumentException($"{op}: the {h} query heads of q {q.Describe()} must be a multiple of the {kvh} kv heads of k {k.Describe()}");
        var y = EmptyLike(q);
        using var lse = Empty(new Shape(b, h, t), q);
        q.Backend.CausalAttention(q, k, v, y, lse);
        return NeedsGrad(q, k, v) ? Record(new CausalAttentionNode(y, q, k, v, lse)) : y;
    }

    private sealed class CausalAttentionNode : TapeNode
    {
        private readonly Tensor _q, _k, _v, _lse;

        public CausalAttentionNode(Tensor y, Tensor q, Tensor k, Tensor v, Tensor lse) : base(y, q, k, v)
        {
            _q = Save(q);
            _k = Save(k);
            _v = Save(v);
            _lse = Save(lse);
        }

        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var dq = grads.For(Inputs[0]);
            var dk = grads.For(Inputs[1]);
            var dv = grads.For(Inputs[2]);
            dy.Backend.CausalAttentionBackward(_q, _k, _v, _lse, dy, dq, dk, dv);
        }
    }

    // ---- helpers --------------------------------------------------------------------------------------

    private static void TransformerSameDevice(string op, Tensor a, Tensor b)
    {
        if (a.Device != b.Device) throw new ArgumentException($"{op}: {a.Describe()} is on {a.Device} but {b.Describe()} is on {b.Device}");
    }

    /// <summary>The value at flat index <paramref name="flat"/> of an int32/int64 tensor (error paths only: it copies to the host).</summary>
    private static long TransformerIndexValue(Tensor indices, long flat)
        => indices.DType == DType.Int64 ? indices.ToArray<long>()[flat] : indices.ToArray<int>()[flat];

    /// <summary>Flat row-major index -> "(i0, i1, ...)".</summary>
    private static string TransformerUnravel(Shape shape, long flat)
    {
        var idx = new long[shape.Rank];
        for (int a = shape.Rank - 1; a >= 0; a--)
        {
            idx[a] = flat % shape[a];
            flat /= shape[a];
        }
        return "(" + string.Join(", ", idx) + (idx.Length == 1 ? ",)" : ")");
    }
}
