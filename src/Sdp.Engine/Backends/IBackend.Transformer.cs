namespace Sdp.Engine.Backends;

/// <summary>
/// Transformer (LLaMA) building blocks: token embedding, RMSNorm, rotary position embedding,
/// causal grouped-query attention and the head-layout permutes around it. Semantics follow
/// Hugging Face transformers' LLaMA implementation; see the ops in Ops.Transformer.cs.
/// Index tensors (ids, position ids) may be int32 or int64.
/// </summary>
public partial interface IBackend
{
    /// <summary>
    /// y (N, C) = weight (V, C) [ids (N)]. An id outside [0, V) is the caller's error (the loaders validate
    /// ids where they enter); a backend reports it without a host read: the CPU throws
    /// <see cref="ArgumentOutOfRangeException"/> at once, a device backend raises its device error flag,
    /// which its next host read checks and throws (like a device-side assert). y is then unspecified.
    /// </summary>
    void Embedding(Tensor weight, Tensor ids, Tensor y);

    /// <summary>dweight (V, C)[ids[n]] += dy (N, C)[n] for every n, in increasing n (deterministic);
    /// ids were validated by the forward pass.</summary>
    void EmbeddingBackward(Tensor dy, Tensor ids, Tensor dweight);

    /// <summary>
    /// Per row n of x (N, C): rstd[n] = 1/sqrt(mean_j x[n,j]² + eps), y[n,j] = (x[n,j]·rstd[n])·weight[j].
    /// weight (C), y (N, C) in x's dtype; rstd (N) is float32 for float32 x and float64 for float64 x.
    /// </summary>
    void RmsNorm(Tensor x, Tensor weight, Tensor rstd, Tensor y, double eps);

    /// <summary>
    /// dx (N, C) += ∂y/∂x·dy and dweight (C) += Σ_n dy[n]·x[n]·rstd[n], from the saved x and rstd.
    /// Either gradient may be null (not needed). The dweight sum runs in a fixed order.
    /// </summary>
    void RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd, Tensor? dx, Tensor? dweight);

    /// <summary>
    /// Rotary embedding, rotate-half convention, on x (B, T, H, D) with D even:
    /// y[b,t,h,i] = x[i]·cos[p,i] − x[i+D/2]·sin[p,i] and y[b,t,h,i+D/2] = x[i+D/2]·cos[p,i+D/2] + x[i]·sin[p,i+D/2]
    /// for i &lt; D/2, where cos and sin are (S, D) tables and the position is p = positions[b,t] (positions
    /// (B, T) or (T) shared by the batch) or, when positions is null, p = t + offset.
    /// A position outside [0, S) is reported as for <see cref="Embedding"/> (y is then unspecified).
    /// </summary>
    void Rope(Tensor x, Tensor cos, Tensor sin, Tensor? positions, int offset, Tensor y);

    /// <summary>dx (B, T, H, D) += Rᵀ·dy, the transpose of <see cref="Rope"/>'s rotation (rotation by −θ).</summary>
    void RopeBackward(Tensor dy, Tensor cos, Tensor sin, Tensor? positions, int offset, Tensor dx);

    /// <summary>
    /// Swaps axes 1 and 2: src viewed as (b, p, q, d) -> dst viewed as (b, q, p, d); dst = src, or
    /// dst += src when <paramref name="accumulate"/>. Used for (B, T, H, D) &lt;-&gt; (B, H, T, D).
    /// </summary>
    void AttentionSwapHeads(Tensor src, Tensor dst, int b, int p, int q, int d, bool accumulate);

    /// <summary>
    /// Causal scaled-dot-product attention with grouped-query heads, as Hugging Face LLaMA with repeat_kv:
    /// q (B, H, T, D), k and v (B, KVH, T, D), H = G·KVH, query head h reads kv head h / G;
    /// y[b,h,i] = Σ_{j≤i} softmax_j(q[b,h,i]·k[b,h/G,j] / √D) · v[b,h/G,j].
    /// Writes y (B, H, T, D) and lse (B, H, T), the log-sum-exp of each row's scaled, masked scores,
    /// which is all backward needs besides q, k, v. Scratch memory is charged as workspace.
    /// </summary>
    void CausalAttention(Tensor q, Tensor k, Tensor v, Tensor y, Tensor lse);

    /// <summary>
    /// Gradients of <see cref="CausalAttention"/> given dy (B, H, T, D) and the saved lse (probabilities
    /// are recomputed): dq (B, H, T, D) +=, dk and dv (B, KVH, T, D) +=; any may be null (not needed).
    /// </summary>
    void CausalAttentionBackward(Tensor q, Tensor k, Tensor v, Tensor lse, Tensor dy, Tensor? dq, Tensor? dk, Tensor? dv);
}
