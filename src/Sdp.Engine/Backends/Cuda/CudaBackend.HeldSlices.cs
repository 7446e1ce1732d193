using Sdp.Kernels.Cuda;

namespace Sdp.Engine.Backends.Cuda;

/// <summary>
/// SDP backward masking on the device: held-slice gathers and scatters (kernels.cu §2 sdp_slice_copy_*) and the
/// compact Linear weight gradient (§1 sdp_weight_grad_rows / _cols, and their float64 instantiations _f64 of the
/// same tiled body). Held indices are int32, strictly increasing, validated when Tensor.Held was set.
/// </summary>
public sealed unsafe partial class CudaBackend
{
    public void GatherHeld(Tensor full, int axis, Tensor indices, Tensor compact, bool accumulate)
    {
        long outer = full.Shape.Product(0, axis), inner = full.Shape.Product(axis + 1, full.Rank), k = indices.Numel;
        SliceCopy(full, compact, Ptr(indices), default, outer, full.Shape[axis], k, k, inner, 0, 0, accumulate);
    }

    public void ScatterHeld(Tensor compact, int axis, Tensor indices, Tensor full)
    {
        long outer = full.Shape.Product(0, axis), inner = full.Shape.Product(axis + 1, full.Rank), k = indices.Numel;
        SliceCopy(compact, full, default, Ptr(indices), outer, k, full.Shape[axis], k, inner, 0, 0, accumulate: false);
    }

    /// <summary>
    /// dwCompact += the held rows (axis 0) or columns (axis 1) of dyᵀ·x, read through the index array inside the
    /// GEMM's tile loads: no gathered copy, no full-size dW. Each output sums tokens in increasing order (fp32
    /// accumulation for float32, fp64 for float64), so it agrees with the CPU's masked GEMM to float rounding.
    /// </summary>
    public void MatMulWeightGradHeld(Tensor dy, Tensor x, int axis, Tensor indices, Tensor dwCompact)
    {
        int outDim = dy.Shape[-1], inDim = x.Shape[-1], k = checked((int)indices.Numel);
        int tokens = checked((int)(x.Numel / Math.Max(1, inDim)));
        if (tokens == 0 || k == 0 || outDim == 0 || inDim == 0) return;
        string f64 = dy.DType == DType.Float64 ? "_f64" : "";
        var args = new KernelArgs().Add(Ptr(dy)).Add(Ptr(x)).Add(Ptr(indices)).Add(Ptr(dwCompact)).Add(tokens).Add(outDim).Add(inDim).Add(k)
            .Add(1); // dy (axis 0) or x (axis 1) is the full tensor, read at the held indices
        AddFloat(args, dy.DType, 1); // beta 1: the += contract
        if (axis == 0) Launch($"sdp_weight_grad_rows{f64}", new Dim3(GemmTiles(inDim), GemmTiles(k)), new Dim3(GemmThreads), args);
        else Launch($"sdp_weight_grad_cols{f64}", new Dim3(GemmTiles(k), GemmTiles(outDim)), new Dim3(GemmThreads), args);
    }

    /// <summary>Threads per block of the §1 tiled GEMMs (SDP_GEMM_THREADS).</summary>
    private const int GemmThreads = 256;

    /// <summary>Grid extent over <paramref name="n"/> rows or columns of a §1 GEMM's 128-wide output tiles.</summary>
    private static uint GemmTiles(int n) => (uint)((n + 127) / 128);
}
