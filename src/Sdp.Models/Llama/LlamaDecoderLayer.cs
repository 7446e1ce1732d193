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
    public LlamaDecoderLayer(LlamaConfig config, Rng rng, DType dtype = DType.Float32)
    {
        // Registration order is HF's (self_attn, mlp, input_layernorm, post_attention_layernorm), so
        // NamedParameters() lists names exactly as LlamaForCausalLM.named_parameters() does.
        SelfAttn = RegisterModule("self_attn", new LlamaAttention(config, rng, dtype));
        Mlp = RegisterModule("mlp", new LlamaMlp(config, rng, dtype));
        InputLayernorm = RegisterModule("input_layernorm", new RmsNorm(config.HiddenSize, config.RmsNormEps, dtype));
        PostAttentionLayernorm = RegisterModule("post_attention_layernorm", new RmsNorm(config.HiddenSize, config.RmsNormEps, dtype));
    }

    public RmsNorm InputLayernorm { get; }

    public LlamaAttention SelfAttn { get; }

    public RmsNorm PostAttentionLayernorm { get; }

    public LlamaMlp Mlp { get; }

    /// <summary>x (B, T, C) -> y (B, T, C). The input is left to the caller; intermediates are disposed here.</summary>
    public Tensor Forward(Tensor x, LlamaRotary rope)
    {
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
}

/// <summary>
/// Causal grouped-query self-attention (HF LlamaAttention, eager path): q/k/v projections without bias,
/// rotate-half RoPE on q and k, softmax(q·kᵀ/√D) over keys j ≤ i with each group of
/// num_attention_heads / num_key_value_heads query heads sharing one key/value head, then o_proj.
/// </summary>
public sealed class LlamaAttention : Module
{
    public LlamaAttention(LlamaConfig config, Rng rng, DType dtype = DType.Float32)
    {
        NumHeads = config.NumAttentionHeads;
        NumKeyValueHeads = config.NumKeyValueHeads;
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

/// <summary>SwiGLU feed-forward (HF LlamaMLP): down_proj(silu(gate_proj(x)) · up_proj(x)), no biases.</summary>
public sealed class LlamaMlp : Module
{
    public LlamaMlp(LlamaConfig config, Rng rng, DType dtype = DType.Float32)
    {
        IntermediateSize = config.IntermediateSize;
        GateProj = RegisterModule("gate_proj", LlamaInit.Linear(config.HiddenSize, IntermediateSize, config, rng, dtype));
        UpProj = RegisterModule("up_proj", LlamaInit.Linear(config.HiddenSize, IntermediateSize, config, rng, dtype));
        DownProj = RegisterModule("down_proj", LlamaInit.Linear(IntermediateSize, config.HiddenSize, config, rng, dtype));
    }

    /// <summary>Hidden units (columns of the gate and up projections, rows of down_proj's input).</summary>
    public int IntermediateSize { get; }

    public Linear GateProj { get; }

    public Linear UpProj { get; }

    public Linear DownProj { get; }

    /// <summary>x (B, T, C) -> y (B, T, C).</summary>
    public Tensor Forward(Tensor x)
    {
        using var hidden = Hidden(x);
        return DownProj.Forward(hidden);
    }

    /// <summary>The hidden activations silu(gate_proj(x)) · up_proj(x): x (B, T, C) -> (B, T, intermediate).</summary>
    public Tensor Hidden(Tensor x)
    {
        using var gate = GateProj.Forward(x);
        using var activated = Ops.Silu(gate);
        using var up = UpProj.Forward(x);
        return Ops.Mul(activated, up);
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
