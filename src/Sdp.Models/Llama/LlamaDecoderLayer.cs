using Sdp.Engine;
using Sdp.Engine.Nn;

namespace Sdp.Models.Llama;

/// <summary>
/// The rotary cos/sin tables (T, head_dim) for one forward call, shared by every layer; position of token t is t.
/// </summary>
public readonly record struct LlamaRotary(Tensor Cos, Tensor Sin);

/// <summary>
/// Pre-norm decoder block (HF LlamaDecoderLayer): x + self_attn(input_layernorm(x)), then
/// h + mlp(post_attention_layernorm(h)). Children are named input_layernorm, self_attn,
/// post_attention_layernorm and mlp, as in Hugging Face.
/// </summary>
public sealed class LlamaDecoderLayer : Module
{
    private readonly LlamaAttention? _selfAttn;
    private readonly LlamaMlp? _mlp;
    private readonly RmsNorm? _inputLayernorm;
    private readonly RmsNorm? _postAttentionLayernorm;

    public LlamaDecoderLayer(LlamaConfig config, Rng rng, DType dtype = DType.Float32)
        : this(config, rng, dtype, config.IntermediateSize, config.NumKeyValueHeads, 1.0)
    {
    }

    /// <summary>
    /// A forward-masked layer (see <see cref="LlamaSubnetShape"/>): an MLP of <paramref name="mlpWidth"/>
    /// hidden units whose hidden activation is multiplied by <paramref name="mlpScale"/>, and attention with
    /// <paramref name="keyValueHeads"/> key/value groups. A width or head count of 0 leaves that sub-block
    /// (and its pre-norm) out: its residual branch is the identity. At least one sub-block must remain.
    /// </summary>
    public LlamaDecoderLayer(LlamaConfig config, Rng rng, DType dtype, int mlpWidth, int keyValueHeads, double mlpScale)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (mlpWidth == 0 && keyValueHeads == 0)
            throw new ArgumentException("LlamaDecoderLayer: a layer needs attention (keyValueHeads > 0) or an MLP (mlpWidth > 0); an absent layer is not built");
        // Registration order is HF's (self_attn, mlp, input_layernorm, post_attention_layernorm), so
        // NamedParameters() lists names exactly as LlamaForCausalLM.named_parameters() does.
        if (keyValueHeads > 0) _selfAttn = RegisterModule("self_attn", new LlamaAttention(config, rng, dtype, keyValueHeads));
        if (mlpWidth > 0) _mlp = RegisterModule("mlp", new LlamaMlp(config, rng, dtype, mlpWidth, mlpScale));
        if (keyValueHeads > 0) _inputLayernorm = RegisterModule("input_layernorm", new RmsNorm(config.HiddenSize, config.RmsNormEps, dtype));
        if (mlpWidth > 0) _postAttentionLayernorm = RegisterModule("post_attention_layernorm", new RmsNorm(config.HiddenSize, config.RmsNormEps, dtype));
    }

    /// <summary>Whether the attention sub-block exists (always, except in a forward-masked subnetwork).</summary>
    public bool HasAttention => _selfAttn is not null;

    /// <summary>Whether the MLP sub-block exists (always, except in a forward-masked subnetwork).</summary>
    public bool HasMlp => _mlp is not null;

    /// <summary>The attention pre-norm; throws when the attention sub-block is absent (<see cref="HasAttention"/>).</summary>
    public RmsNorm InputLayernorm => _inputLayernorm ?? throw Absent("input_layernorm");

    /// <summary>The attention; throws when it is absent (<see cref="HasAttention"/>).</summary>
    public LlamaAttention SelfAttn => _selfAttn ?? throw Absent("self_attn");

    /// <summary>The MLP pre-norm; throws when the MLP sub-block is absent (<see cref="HasMlp"/>).</summary>
    public RmsNorm PostAttentionLayernorm => _postAttentionLayernorm ?? throw Absent("post_attention_layernorm");

    /// <summary>The MLP; throws when it is absent (<see cref="HasMlp"/>).</summary>
    public LlamaMlp Mlp => _mlp ?? throw Absent("mlp");

    /// <summary>
    /// x (B, T, C) -> y (B, T, C), always a new tensor. The input is left to the caller; intermediates are
    /// disposed here. An absent sub-block contributes nothing (identity residual).
    /// </summary>
    public Tensor Forward(Tensor x, LlamaRotary rope)
    {
        if (!HasAttention) return MlpResidual(x);
        if (!HasMlp) return AttentionResidual(x, rope);
        using var h = AttentionResidual(x, rope);
        return MlpResidual(h);
    }

    /// <summary>x + self_attn(input_layernorm(x)): (B, T, C) -> (B, T, C).</summary>
    public Tensor AttentionResidual(Tensor x, LlamaRotary rope)
    {
        using var normed = InputLayernorm.Forward(x);
        using var attended = SelfAttn.Forward(normed, rope);
        return Ops.Add(x, attended);
    }

    /// <summary>h + mlp(post_attention_layernorm(h)): (B, T, C) -> (B, T, C).</summary>
    public Tensor MlpResidual(Tensor h)
    {
        using var normed = PostAttentionLayernorm.Forward(h);
        using var mixed = Mlp.Forward(normed);
        return Ops.Add(h, mixed);
    }

    private static InvalidOperationException Absent(string name)
        => new($"LlamaDecoderLayer: {name} is not part of this forward-masked layer (its sub-block was dropped)");
}

/// <summary>
/// Causal grouped-query self-attention (HF LlamaAttention, eager path): q/k/v projections without bias,
/// rotate-half RoPE on q and k, softmax(q·kᵀ/√D) over keys j ≤ i with each group of
/// num_attention_heads / num_key_value_heads query heads sharing one key/value head, then o_proj.
/// </summary>
public sealed class LlamaAttention : Module
{
    public LlamaAttention(LlamaConfig config, Rng rng, DType dtype = DType.Float32)
        : this(config, rng, dtype, config.NumKeyValueHeads)
    {
    }

    /// <summary>
    /// Attention with <paramref name="keyValueHeads"/> of the config's key/value groups, each with its
    /// GroupSize query heads: q_proj (kvh·GroupSize·head_dim, C), k_proj/v_proj (kvh·head_dim, C),
    /// o_proj (C, kvh·GroupSize·head_dim). Query head h uses key/value head h / GroupSize, as in HF.
    /// </summary>
    public LlamaAttention(LlamaConfig config, Rng rng, DType dtype, int keyValueHeads)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (keyValueHeads < 1 || keyValueHeads > config.NumKeyValueHeads)
            throw new ArgumentOutOfRangeException(nameof(keyValueHeads), keyValueHeads, $"LlamaAttention: keyValueHeads must be in [1, num_key_value_heads = {config.NumKeyValueHeads}], got {keyValueHeads}");
        NumHeads = keyValueHeads * config.GroupSize;
        NumKeyValueHeads = keyValueHeads;
        HeadDim = config.HeadDim;
        int c = config.HiddenSize, kv = NumKeyValueHeads * HeadDim;
        QProj = RegisterModule("q_proj", LlamaInit.Linear(c, NumHeads * HeadDim, config, rng, dtype));
        KProj = RegisterModule("k_proj", LlamaInit.Linear(c, kv, config, rng, dtype));
        VProj = RegisterModule("v_proj", LlamaInit.Linear(c, kv, config, rng, dtype));
        OProj = RegisterModule("o_proj", LlamaInit.Linear(NumHeads * HeadDim, c, config, rng, dtype));
    }

    public int NumHeads { get; }

    public int NumKeyValueHeads { get; }

    public int HeadDim { get; }

    public Linear QProj { get; }

    public Linear KProj { get; }

    public Linear VProj { get; }

    public Linear OProj { get; }

    /// <summary>x (B, T, C) -> y (B, T, C).</summary>
    public Tensor Forward(Tensor x, LlamaRotary rope)
    {
        using var q = Heads(QProj, x, NumHeads, rope);          // (B, H, T, D)
        using var k = Heads(KProj, x, NumKeyValueHeads, rope);  // (B, KVH, T, D)
        using var v = Heads(VProj, x, NumKeyValueHeads, null);  // (B, KVH, T, D)
        using var y = Ops.CausalAttention(q, k, v);             // (B, H, T, D)
        using var merged = Ops.MergeHeads(y);                   // (B, T, H·D)
        return OProj.Forward(merged);
    }

    /// <summary>Projection, view as (B, T, heads, D), optional RoPE, then heads before time: (B, heads, T, D).</summary>
    private Tensor Heads(Linear proj, Tensor x, int heads, LlamaRotary? rope)
    {
        using var flat = proj.Forward(x);
        using var split = flat.Reshape(x.Shape[0], x.Shape[1], heads, HeadDim);
        if (rope is not { } r) return Ops.SplitHeads(split);
        using var rotated = Ops.Rope(split, r.Cos, r.Sin);
        return Ops.SplitHeads(rotated);
    }
}

/// <summary>
/// SwiGLU feed-forward (HF LlamaMLP): down_proj(silu(gate_proj(x)) · up_proj(x)), no biases. A
/// forward-masked MLP has fewer hidden units and may scale its hidden activation (§2.4 neuronScale).
/// </summary>
public sealed class LlamaMlp : Module
{
    public LlamaMlp(LlamaConfig config, Rng rng, DType dtype = DType.Float32)
        : this(config, rng, dtype, config.IntermediateSize, 1.0)
    {
    }

    /// <summary>
    /// An MLP of <paramref name="width"/> hidden units: gate_proj/up_proj (width, C), down_proj (C, width);
    /// the hidden activation is multiplied by <paramref name="scale"/> before down_proj.
    /// </summary>
    public LlamaMlp(LlamaConfig config, Rng rng, DType dtype, int width, double scale)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (width < 1 || width > config.IntermediateSize)
            throw new ArgumentOutOfRangeException(nameof(width), width, $"LlamaMlp: width must be in [1, intermediate_size = {config.IntermediateSize}], got {width}");
        if (!(double.IsFinite(scale) && scale > 0))
            throw new ArgumentOutOfRangeException(nameof(scale), scale, $"LlamaMlp: scale must be a positive finite number, got {scale}");
        IntermediateSize = width;
        Scale = scale;
        GateProj = RegisterModule("gate_proj", LlamaInit.Linear(config.HiddenSize, IntermediateSize, config, rng, dtype));
        UpProj = RegisterModule("up_proj", LlamaInit.Linear(config.HiddenSize, IntermediateSize, config, rng, dtype));
        DownProj = RegisterModule("down_proj", LlamaInit.Linear(IntermediateSize, config.HiddenSize, config, rng, dtype));
    }

    /// <summary>Hidden units (columns of the gate and up projections, rows of down_proj's input).</summary>
    public int IntermediateSize { get; }

    /// <summary>Factor on the hidden activation (1: none, the dense model).</summary>
    public double Scale { get; }

    public Linear GateProj { get; }

    public Linear UpProj { get; }

    public Linear DownProj { get; }

    /// <summary>x (B, T, C) -> y (B, T, C).</summary>
    public Tensor Forward(Tensor x)
    {
        using var hidden = Hidden(x);
        return DownProj.Forward(hidden);
    }

    /// <summary>The hidden activations Scale · silu(gate_proj(x)) · up_proj(x): x (B, T, C) -> (B, T, intermediate).</summary>
    public Tensor Hidden(Tensor x)
    {
        using var gate = GateProj.Forward(x);
        using var activated = Ops.Silu(gate);
        using var up = UpProj.Forward(x);
        // Scale 1 adds no op, so the dense model computes exactly what it did before scaling existed.
        if (Scale == 1.0) return Ops.Mul(activated, up);
        using var product = Ops.Mul(activated, up);
        return Ops.Scale(product, Scale);
    }
}

/// <summary>Hugging Face's LlamaPreTrainedModel._init_weights: N(0, initializer_range²) weights, no biases.</summary>
internal static class LlamaInit
{
    public static Linear Linear(int inFeatures, int outFeatures, LlamaConfig config, Rng rng, DType dtype)
    {
        // Linear draws PyTorch's default uniform init first; it is overwritten here, as HF's _init_weights does.
        var linear = new Linear(inFeatures, outFeatures, bias: false, rng, dtype);
        Init.Normal(linear.Weight, rng, config.InitializerRange);
        return linear;
    }
}
