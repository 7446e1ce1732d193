using System.Runtime.InteropServices;
using Sdp.Kernels.Cuda;

namespace Sdp.Engine.Backends.Cuda;

/// <summary>Permute and axis windows (kernels.cu §10 permute_*, §2 sdp_slice_copy_*): pure data movement, any dtype, bit for bit the CPU's.</summary>
public sealed unsafe partial class CudaBackend
{
    public void Permute(Tensor x, int[] perm, Tensor y, bool accumulate)
    {
        long n = y.Numel;
        if (n == 0) return;
        // The output walk with each output axis's stride in x, coalesced as the CPU does (CoalesceAxes drops
        // size-1 axes and merges output neighbours that are neighbours, in order, in x): e.g. an identity is one axis.
        var xs = x.Shape.Strides();
        var (dims, strides) = CoalesceAxes(perm.Select(a => x.Shape[a]).ToArray(), [perm.Select(a => xs[a]).ToArray()]);
        if (dims.Length > MaxKernelRank)
            throw new NotSupportedException($"permute on cuda: {x.Shape} by ({string.Join(", ", perm)}) needs {dims.Length} axes after coalescing; the kernel takes {MaxKernelRank}");
        var view = new SdpStrided { Rank = dims.Length };
        for (int a = 0; a < dims.Length; a++)
        {
            view.Dims[a] = dims[a];
            view.Strides[a] = strides[0][a];
        }
        Launch1D($"permute_{Sfx(x.DType)}", n, new KernelArgs().Add(Ptr(x)).Add(Ptr(y)).Add(n).Add(view).Add(accumulate ? 1 : 0));
    }

    public void ReadSlice(Tensor src, int axis, int start, Tensor dst, bool accumulate)
    {
        // src (outer, N, inner) window [start, start + n) -> dst (outer, n, inner)
        long outer = src.Shape.Product(0, axis), inner = src.Shape.Product(axis + 1, src.Rank);
        SliceCopy(src, dst, default, default, outer, src.Shape[axis], dst.Shape[axis], dst.Shape[axis], inner, start, 0, accumulate);
    }

    public void WriteSlice(Tensor src, int axis, int start, Tensor dst, bool accumulate)
    {
        // src (outer, n, inner) -> dst (outer, N, inner) window [start, start + n)
        long outer = dst.Shape.Product(0, axis), inner = dst.Shape.Product(axis + 1, dst.Rank);
        SliceCopy(src, dst, default, default, outer, src.Shape[axis], dst.Shape[axis], src.Shape[axis], inner, 0, start, accumulate);
    }

    /// <summary>
    /// kernels.cu §2 <c>sdp_slice_copy_&lt;T&gt;</c>: dst[o, dmap(k), i] (=|+=) src[o, smap(k), i] for k &lt; <paramref name="k"/>,
    /// src viewed as (outer, srcN, inner) and dst as (outer, dstN, inner); smap(k) = srcMap[k] or srcStart + k (null
    /// map), dmap likewise. Float variants get divisor 1 (no division).
    /// </summary>
    private void SliceCopy(Tensor src, Tensor dst, CUdeviceptr srcMap, CUdeviceptr dstMap, long outer, long srcN, long dstN, long k, long inner,
        long srcStart, long dstStart, bool accumulate)
    {
        long n = outer * k * inner;
        if (n == 0) return;
        var args = new KernelArgs().Add(Ptr(src)).Add(Ptr(dst)).Add(srcMap).Add(dstMap).Add(outer).Add(srcN).Add(dstN).Add(k).Add(inner)
            .Add(srcStart).Add(dstStart).Add(accumulate ? 1 : 0);
        if (src.DType is DType.Float32 or DType.Float64) AddFloat(args, src.DType, 1).Add(default(CUdeviceptr));
        Launch1D($"sdp_slice_copy_{Sfx(src.DType)}", n, args);
    }

    /// <summary>kernels.cu's <c>SdpStrided</c> (136 bytes, by value): output dims and the source stride of each.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct SdpStrided
    {
        public fixed long Dims[MaxKernelRank];
        public fixed long Strides[MaxKernelRank];
        public int Rank;
        public int Pad;
    }
}
