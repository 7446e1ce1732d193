namespace Sdp.Engine.Backends;

public partial interface IBackend
{
    /// <summary>
    /// Gather along one axis: y[o, k, i] (=|+=) x[o, indices[k], i], viewing x as (outer, N, inner) split
    /// at <paramref name="axis"/> and y as (outer, K, inner) with K = indices.Numel. indices: int32 or
    /// int64, rank 1. Overwrites y, or ACCUMULATES into it when <paramref name="accumulate"/> (the
    /// backward of <see cref="IndexAdd"/>). Any dtype.
    /// Every index is validated before anything is written: one outside [0, N) throws
    /// <see cref="ArgumentOutOfRangeException"/> (no parameter name) whose message gives the index, its
    /// position, the axis and N, e.g. "index 7 at position 2 is out of range for axis 0 of size 5".
    /// </summary>
    void IndexSelect(Tensor x, int axis, Tensor indices, Tensor y, bool accumulate);

    /// <summary>
    /// Scatter-accumulate along one axis (PyTorch index_add_): dst[o, indices[k], i] += src[o, k, i],
    /// src (outer, K, inner), dst (outer, N, inner). Repeated indices accumulate, in increasing k, so the
    /// result is deterministic (the CPU splits the work over o and i, never over k). The backward of
    /// <see cref="IndexSelect"/>. Indices are validated as there, before anything is written. Any dtype.
    /// </summary>
    void IndexAdd(Tensor src, int axis, Tensor indices, Tensor dst);
}
