using Sdp.Engine;
using Sdp.Engine.Nn;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Training;

namespace Sdp.Models.Llama;

/// <summary>
/// A LLaMA decoder-only language model with Hugging Face LlamaForCausalLM's parameter names
/// ("model.embed_tokens.weight", "model.layers.{i}.self_attn.q_proj.weight", ..., "model.norm.weight",
/// "lm_head.weight"), so checkpoints map one to one. Weights are drawn from N(0, initializer_range²)
/// (HF's _init_weights) with a seeded <see cref="Rng"/>; norm weights start at one. With
/// tie_word_embeddings the logits reuse model.embed_tokens.weight and there is no lm_head.
/// SDP cuts its forward-masked subnetworks from it by the units it declares (<see cref="DeclareUnits"/>).
/// <code>
/// x = embed_tokens(ids)                                  // (B, T, C)
/// for each layer: x = x + self_attn(input_layernorm(x))  // RoPE, causal GQA
///                 x = x + mlp(post_attention_layernorm(x))  // SwiGLU
/// logits = lm_head(norm(x))                              // (B, T, V)
/// </code>
/// </summary>
public sealed class LlamaForCausalLM : Module, IModuleConfig
{
    public LlamaForCausalLM(LlamaConfig config, Rng rng, DType dtype = DType.Float32)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(rng);
        config.Validate();
        if (!dtype.IsFloatingPoint()) throw new ArgumentException($"LlamaForCausalLM: parameters must be float32 or float64, got {dtype.Name()}", nameof(dtype));
        Config = config;
        DType = dtype;
        Model = RegisterModule("model", new LlamaModel(config, rng, dtype));
        if (!config.TieWordEmbeddings) LmHead = RegisterModule("lm_head", LlamaInit.Linear(config.HiddenSize, config.VocabSize, config, rng, dtype));
    }

    public LlamaConfig Config { get; }

    /// <summary>The configuration stored in checkpoints.</summary>
    public string ConfigJson => Config.ToJson();

    /// <summary>Element type of every parameter and activation.</summary>
    public DType DType { get; }

    /// <summary>The decoder stack ("model").</summary>
    public LlamaModel Model { get; }

    /// <summary>The output projection ("lm_head"), or null when embeddings are tied.</summary>
    public Linear? LmHead { get; }

    /// <summary>Convenience for <c>Model.Layers</c> (some <see cref="Module.IsDropped"/> in a forward-masked subnetwork).</summary>
    public IReadOnlyList<LlamaDecoderLayer> Layers => Model.Layers;

    /// <summary>The (V, C) matrix that turns hidden states into logits: lm_head.weight, or embed_tokens.weight when tied.</summary>
    public Tensor OutputWeight => LmHead?.Weight ?? Model.EmbedTokens.Weight;

    /// <summary>ids (B, T) int32/int64 in [0, V) -> logits (B, T, V).</summary>
    /// <summary>
    /// SDP's units (method reference §3). Neuron level: per layer, the MLP's hidden units (rows of gate_proj and
    /// up_proj, columns of down_proj), and with <paramref name="maskHeads"/> first its attention heads by key/value
    /// group. Block level: the decoder layers, or with <paramref name="splitSublayers"/> their attention and MLP
    /// sub-blocks, each with its pre-norm. Embeddings, the final norm and lm_head are shared.
    /// </summary>
    public IEnumerable<UnitDeclaration> DeclareUnits(SubnetLevel level, bool maskHeads = false, bool splitSublayers = false)
    {
        foreach (var layer in Layers)
        {
            var (attention, mlp) = (layer.SelfAttn, layer.Mlp);
            if (level == SubnetLevel.Block && !splitSublayers) yield return Units.Block(layer);
            if (level == SubnetLevel.Block && splitSublayers)
            {
                yield return Units.Block(attention, layer.InputLayernorm);
                yield return Units.Block(mlp, layer.PostAttentionLayernorm);
            }
            if (level != SubnetLevel.Neuron) continue;
            if (maskHeads) yield return Units.Heads(attention.QProj, attention.KProj, attention.VProj, attention.OProj, attention.HeadDim);
            yield return Units.Hidden(mlp.UpProj, mlp.DownProj, mlp.GateProj);
        }
    }

    public Tensor Forward(Tensor ids)
    {
        using var hidden = Model.Forward(ids);
        return Ops.Linear(hidden, OutputWeight);
    }

    /// <summary>
    /// Mean next-token cross-entropy over the B·T positions: ids (B, T), targets (B, T) int (already
    /// shifted, so targets[b, t] is the token after ids[b, t]; -100 marks positions to ignore) -> loss ().
    /// The logits are not kept beyond what the fused cross-entropy saves for backward.
    /// </summary>
    public Tensor Loss(Tensor ids, Tensor targets)
    {
        ArgumentNullException.ThrowIfNull(ids);
        ArgumentNullException.ThrowIfNull(targets);
        if (targets.Shape != ids.Shape)
            throw new ArgumentException($"LlamaForCausalLM.Loss: targets {targets.Shape} must have the shape of ids {ids.Shape} (B, T)", nameof(targets));
        using var logits = Forward(ids);
        return Ops.CrossEntropy(logits, targets, ignoreIndex: -100);
    }
}
