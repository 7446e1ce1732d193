using Sdp.Engine;
using Sdp.Engine.Nn;

namespace Sdp.Models.Llama;

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
