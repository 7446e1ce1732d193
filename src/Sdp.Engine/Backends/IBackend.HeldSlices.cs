namespace Sdp.Engine.Backends;

/// <summary>
/// SDP backward masking (<see cref="Tensor.Held"/>): moving held slices between a full-shape tensor and
/// its compact form, and weight gradients computed for held slices only. Viewing a full tensor as
/// (outer, N, inner) split at <c>axis</c>, its compact form is (outer, K, inner) with K = indices.Numel and
/// compact[o, k, i] ↔ full[o, indices[k], i]. <c>indices</c> is an int32 tensor on this device, strictly
/// increasing and valid for the tensors passed (checked on the host when <see cref="Tensor.Held"/> was set,
/// which also built the tensor: <see cref="Tensor.HeldIndices"/>).
/// </summary>
public partial interface IBackend
{
    /// <summary>compact (=|+=) the held slices of full (same dtype); ACCUMULATES when <paramref name="accumulate"/>.</summary>
    void GatherHeld(Tensor full, int axis, Tensor indices, Tensor compact, bool accumulate);

    /// <summary>full[held slices] = compact (same dtype); the other slices of full are not touched.</summary>
    void ScatterHeld(Tensor compact, int axis, Tensor indices, Tensor full);

    /// <summary>
    /// The Linear weight gradient restricted to held slices, with the += contract: for y = x·Wᵀ, W (out, in),
    /// dy (tokens, out) and x (tokens, in) (any leading dims, flattened to tokens):
    /// <code>
    /// axis 0 (output features): dwCompact (K, in)  += dy[:, idx]ᵀ · x
    /// axis 1 (input features):  dwCompact (out, K) += dyᵀ · x[:, idx]
    /// </code>
    /// No gradient of an unheld slice is computed.
    /// </summary>
    void MatMulWeightGradHeld(Tensor dy, Tensor x, int axis, Tensor indices, Tensor dwCompact);
}
