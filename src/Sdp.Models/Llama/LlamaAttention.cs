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
    {
        ArgumentNullException.ThrowIfNull(config);
        HeadDim = config.HeadDim;
        int c = config.HiddenSize, kv = config.NumKeyValueHeads * HeadDim;
        QProj = RegisterModule("q_proj", LlamaInit.Linear(c, config.NumAttentionHeads * HeadDim, config, rng, dtype));
        KProj = RegisterModule("k_proj", LlamaInit.Linear(c, kv, config, rng, dtype));
        VProj = RegisterModule("v_proj", LlamaInit.Linear(c, kv, config, rng, dtype));
        OProj = RegisterModule("o_proj", LlamaInit.Linear(config.NumAttentionHeads * HeadDim, c, config, rng, dtype));
    }

    /// <summary>Query heads this attention holds (num_attention_heads when dense; fewer with SDP's head units).</summary>
    public int NumHeads => QProj.OutFeatures / HeadDim;

    /// <summary>Key/value heads it holds; each serves NumHeads / NumKeyValueHeads query heads.</summary>
    public int NumKeyValueHeads => KProj.OutFeatures / HeadDim;

    public int HeadDim { get; }

    public Linear QProj { get; }

    public Linear KProj { get; }

    public Linear VProj { get; }

    public Linear OProj { get; }

    /// <summary>x (B, T, C) -> y (B, T, C).</summary>
    public Tensor Forward(Tensor x, LlamaRotary rope)
    {
        ArgumentNullException.ThrowIfNull(x);
        _seqLen = x.Shape[1];
        using var q = Heads(QProj, x, NumHeads, rope);          // (B, H, T, D)
        using var k = Heads(KProj, x, NumKeyValueHeads, rope);  // (B, KVH, T, D)
        using var v = Heads(VProj, x, NumKeyValueHeads, null);  // (B, KVH, T, D)
        using var y = Ops.CausalAttention(q, k, v);             // (B, H, T, D)
        using var merged = Ops.MergeHeads(y);                   // (B, T, H·D)
        return OProj.Forward(merged);
    }

    // Tokens per sequence of the last input: the scores and weighted values cost 4·D FLOPs per head and key-query pair.
    private long _seqLen = 1;

    /// <summary>Per sequence: q·kᵀ and the weighted sum of values, 2·T²·D FLOPs each per query head (causality not discounted).</summary>
    protected override long OwnFlops => 4L * NumHeads * HeadDim * _seqLen * _seqLen;

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
