namespace Sdp.Engine.Backends;

/// <summary>
/// SDP backward masking (<see cref="Tensor.Held"/>): moving held slices between a full-shape tensor and
/// its compact form, and weight gradients computed for held slices only. Viewing a full tensor as
/// (outer, N, inner) split at held.Axis, its compact form is (outer, K, inner) with K = held.Count and
/// compact[o, k, i] ↔ full[o, held.Indices[k], i]. Indices are valid for the tensors passed (the caller
/// checked them when <see cref="Tensor.Held"/> was set).
/// </summary>
public partial interface IBackend
{
    /// <summary>compact (=|+=) the held slices of full (same dtype); ACCUMULATES when <paramref name="accumulate"/>.</summary>
    void GatherHeld(Tensor full, HeldSlices held, Tensor compact, bool accumulate);

    /// <summary>full[held slices] = compact (same dtype); the other slices of full are not touched.</summary>
    void ScatterHeld(Tensor compact, HeldSlices held, Tensor full);

    /// <summary>
    /// The Linear weight gradient restricted to held slices, with the += contract: for y = x·Wᵀ, W (out, in),
    /// dy (tokens, out) and x (tokens, in) (any leading dims, flattened to tokens):
    /// <code>
    /// held.Axis 0 (output features): dwCompact (K, in)  += dy[:, idx]ᵀ · x
    /// held.Axis 1 (input features):  dwCompact (out, K) += dyᵀ · x[:, idx]
    /// </code>
    /// No gradient of an unheld slice is computed.
    /// </summary>
    void MatMulWeightGradHeld(Tensor dy, Tensor x, HeldSlices held, Tensor dwCompact);
}
