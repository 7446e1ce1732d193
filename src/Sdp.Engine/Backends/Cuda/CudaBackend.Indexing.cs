using Sdp.Kernels.Cuda;

namespace Sdp.Engine.Backends.Cuda;

/// <summary>
/// Gather and scatter-add along one axis (kernels.cu §10 index_select_*, index_add_*), any dtype, int32 or int64
/// indices. The contract wants a bad index to throw before anything is written, as the CPU does; these ops run
/// when models are split into subnetworks or assembled, and in user code (Ops.IndexSelect, Ops.ScatterAdd), never
/// in a training step of the models here, so the indices are read back to the host and validated there (one
/// host wait per call), which keeps the CPU's exact exception and message.
/// </summary>
public sealed unsafe partial class CudaBackend
{
    public void IndexSelect(Tensor x, int axis, Tensor indices, Tensor y, bool accumulate)
    {
        long n = x.Shape[axis];
        ValidateIndicesOnHost(indices, axis, n);
        long outer = x.Shape.Product(0, axis), inner = x.Shape.Product(axis + 1, x.Rank), k = indices.Numel;
        long total = outer * k * inner;
        if (total == 0) return;
        Launch1D($"index_select_{Sfx(x.DType)}", total, new KernelArgs().Add(Ptr(x)).Add(Ptr(y)).Add(Ptr(indices)).Add(indices.DType == DType.Int64 ? 1 : 0)
            .Add(outer).Add(n).Add(k).Add(inner).Add(accumulate ? 1 : 0));
    }

    /// <summary>One thread per (o, i) column walks k in order, so repeated indices add up in increasing k with no atomics: the CPU's sums, bit for bit.</summary>
    public void IndexAdd(Tensor src, int axis, Tensor indices, Tensor dst)
    {
        long n = dst.Shape[axis];
        ValidateIndicesOnHost(indices, axis, n);
        long outer = dst.Shape.Product(0, axis), inner = dst.Shape.Product(axis + 1, dst.Rank), k = indices.Numel;
        long columns = outer * inner;
        if (columns == 0 || k == 0) return;
        Launch1D($"index_add_{Sfx(dst.DType)}", columns, new KernelArgs().Add(Ptr(src)).Add(Ptr(dst)).Add(Ptr(indices)).Add(indices.DType == DType.Int64 ? 1 : 0)
            .Add(outer).Add(n).Add(k).Add(inner));
    }

    /// <summary>Reads the indices back (waiting for the stream) and throws the CPU's exception for the first one outside [0, size).</summary>
    private void ValidateIndicesOnHost(Tensor indices, int axis, long size)
    {
        long k = indices.Numel;
        if (k == 0) return;
        long[] values;
        if (indices.DType == DType.Int64)
        {
            values = new long[k];
            Download<long>(indices, values);
        }
        else
        {
            var narrow = new int[k];
            Download<int>(indices, narrow);
            values = Array.ConvertAll(narrow, v => (long)v);
        }
        for (long i = 0; i < k; i++)
        {
            long v = values[i];
            if ((ulong)v >= (ulong)size) throw new ArgumentOutOfRangeException(null, $"index {v} at position {i} is out of range for axis {axis} of size {size}");
        }
    }
}
