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
    public LlamaDecoderLayer(LlamaConfig config, Rng rng, DType dtype = DType.Float32)
    {
        ArgumentNullException.ThrowIfNull(config);
        // Registration order is HF's (self_attn, mlp, input_layernorm, post_attention_layernorm), so
        // NamedParameters() lists names exactly as LlamaForCausalLM.named_parameters() does.
        SelfAttn = RegisterModule("self_attn", new LlamaAttention(config, rng, dtype));
        Mlp = RegisterModule("mlp", new LlamaMlp(config, rng, dtype));
        InputLayernorm = RegisterModule("input_layernorm", new RmsNorm(config.HiddenSize, config.RmsNormEps, dtype));
        PostAttentionLayernorm = RegisterModule("post_attention_layernorm", new RmsNorm(config.HiddenSize, config.RmsNormEps, dtype));
    }

    /// <summary>Whether the attention sub-block runs (false when SDP dropped it from a forward-masked subnetwork).</summary>
    public bool HasAttention => !SelfAttn.IsDropped;

    /// <summary>Whether the MLP sub-block runs.</summary>
    public bool HasMlp => !Mlp.IsDropped;

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

    public RmsNorm InputLayernorm { get; }

    public LlamaAttention SelfAttn { get; }

    public RmsNorm PostAttentionLayernorm { get; }

    public LlamaMlp Mlp { get; }

    /// <summary>
    /// A sub-block that lost all its units (no head or no hidden unit held) takes its pre-norm with it, so the
    /// subnetwork lacks that shared tensor and the trainer refuses the plan, naming the empty group.
    /// </summary>
    protected override void OnSubnetworkCut()
    {
        if (SelfAttn.IsDropped && !InputLayernorm.IsDropped) DropChild(InputLayernorm);
        if (Mlp.IsDropped && !PostAttentionLayernorm.IsDropped) DropChild(PostAttentionLayernorm);
    }

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
}
