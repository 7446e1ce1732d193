using Sdp.Engine;
using Sdp.Engine.Nn;

namespace Sdp.Models.Llama;

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

    /// <summary>
    /// Factor on the attention branch, x + s·self_attn(input_layernorm(x)): 1 by default; the stochastic-depth
    /// evaluation rules set it (the branch's coverage at test time, or its inverse in training).
    /// </summary>
    public double AttentionBranchScale
    {
        get => _attentionBranchScale;
        set => _attentionBranchScale = CheckScale(value);
    }

    /// <summary>Factor on the MLP branch, h + s·mlp(post_attention_layernorm(h)); see <see cref="AttentionBranchScale"/>.</summary>
    public double MlpBranchScale
    {
        get => _mlpBranchScale;
        set => _mlpBranchScale = CheckScale(value);
    }

    private double _attentionBranchScale = 1.0;
    private double _mlpBranchScale = 1.0;

    private static double CheckScale(double value) => double.IsFinite(value) && value > 0 ? value
        : throw new ArgumentOutOfRangeException(nameof(value), value, $"LlamaDecoderLayer: branch scale must be a positive finite number, got {value}");

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

    /// <summary>x + s·self_attn(input_layernorm(x)), s = <see cref="AttentionBranchScale"/>: (B, T, C) -> (B, T, C).</summary>
    public Tensor AttentionResidual(Tensor x, LlamaRotary rope)
    {
        using var normed = InputLayernorm.Forward(x);
        using var attended = SelfAttn.Forward(normed, rope);
        return AddBranch(x, attended, AttentionBranchScale);
    }

    /// <summary>h + s·mlp(post_attention_layernorm(h)), s = <see cref="MlpBranchScale"/>: (B, T, C) -> (B, T, C).</summary>
    public Tensor MlpResidual(Tensor h)
    {
        using var normed = PostAttentionLayernorm.Forward(h);
        using var mixed = Mlp.Forward(normed);
        return AddBranch(h, mixed, MlpBranchScale);
    }

    /// <summary>stream + scale·branch; scale 1 adds no op, so an unscaled layer computes exactly what it did before branch scaling existed.</summary>
    private static Tensor AddBranch(Tensor stream, Tensor branch, double scale)
    {
        using var scaled = scale == 1.0 ? null : Ops.Scale(branch, scale);
        return Ops.Add(stream, scaled ?? branch);
    }

    private static InvalidOperationException Absent(string name)
        => new($"LlamaDecoderLayer: {name} is not part of this forward-masked layer (its sub-block was dropped)");
}
