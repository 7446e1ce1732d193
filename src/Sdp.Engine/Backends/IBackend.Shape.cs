namespace Sdp.Engine.Backends;

public partial interface IBackend
{
    /// <summary>
    /// Axis permutation as a strided copy: y[i_0, ..., i_{r-1}] (=|+=) x[j] where j[perm[a]] = i_a, so
    /// y.Shape[a] = x.Shape[perm[a]]. x (d_0, ..., d_{r-1}) -> y (d_perm[0], ..., d_perm[r-1]).
    /// Overwrites y, or ACCUMULATES into it when <paramref name="accumulate"/> (the backward: dx += permute(dy, perm⁻¹)).
    /// Any dtype; y must not alias x.
    /// </summary>
    void Permute(Tensor x, int[] perm, Tensor y, bool accumulate);

    /// <summary>
    /// Reads a window along one axis: dst (=|+=) src[..., start : start + dst.Shape[axis], ...].
    /// src (outer, N, inner), dst (outer, n, inner) with the other dims equal. The forward of a slice
    /// (assign) and the backward of a concat (accumulate into each input's gradient). Any dtype.
    /// </summary>
    void ReadSlice(Tensor src, int axis, int start, Tensor dst, bool accumulate);

    /// <summary>
    /// Writes a window along one axis: dst[..., start : start + src.Shape[axis], ...] (=|+=) src.
    /// src (outer, n, inner), dst (outer, N, inner) with the other dims equal; elements of dst outside the
    /// window are untouched. The forward of a concat (assign) and the backward of a slice (accumulate). Any dtype.
    /// </summary>
    void WriteSlice(Tensor src, int axis, int start, Tensor dst, bool accumulate);
}
