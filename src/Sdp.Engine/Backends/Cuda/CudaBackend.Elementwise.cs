using System.Runtime.InteropServices;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Memory;
using Sdp.Kernels.Cuda;

namespace Sdp.Engine.Backends.Cuda;

/// <summary>
/// Elementwise ops, broadcasting, axis reductions and the sum of squares (kernels.cu §3, §4 and §10). Float ops
/// dispatch on the dtype like the CPU backend: float32, else float64. Where a kernel sums in the CPU's order the
/// result is bit for bit the CPU's (Binary, SumToShape and ReduceAxis on their one-thread-per-output paths,
/// MaxAxisBackward, all of Max); the paths chosen for few outputs with long sums regroup the sum (deterministic,
/// about 1e-6 relative in float32), see <see cref="SumToShape"/> and <see cref="ReduceAxis"/>.
/// </summary>
public sealed unsafe partial class CudaBackend
{
    public void Unary(UnaryOp op, Tensor x, Tensor y, double p)
    {
        long n = x.Numel;
        if (n == 0) return;
        var args = new KernelArgs().Add((int)op).Add(Ptr(x)).Add(Ptr(y)).Add(n);
        Launch1D($"unary_{Sfx(x.DType)}", n, AddFloat(args, x.DType, p));
    }

    public void UnaryBackward(UnaryOp op, Tensor x, Tensor y, Tensor dy, Tensor dx, double p)
    {
        long n = dx.Numel;
        if (n == 0) return;
        var args = new KernelArgs().Add((int)op).Add(Ptr(x)).Add(Ptr(y)).Add(Ptr(dy)).Add(Ptr(dx)).Add(n);
        Launch1D($"unary_backward_{Sfx(dx.DType)}", n, AddFloat(args, dx.DType, p));
    }

    public void Binary(BinaryOp op, Tensor a, Tensor b, Tensor y)
    {
        long n = y.Numel;
        if (n == 0) return;
        string sfx = Sfx(y.DType);
        var args = new KernelArgs().Add((int)op).Add(Ptr(a)).Add(Ptr(b)).Add(Ptr(y)).Add(n);
        if (a.Numel == n && b.Numel == n)
        {
            Launch1D($"binary_{sfx}", n, args);
            return;
        }
        bool scalarB = b.Numel == 1 && a.Numel == n;
        if (scalarB || (a.Numel == 1 && b.Numel == n))
        {
            // One single-element operand (a scalar on the device, e.g. the holder count): no index arithmetic.
            Launch1D($"binary_scalar_{sfx}", n, args.Add(scalarB ? 1 : 0));
            return;
        }
        var desc = BroadcastDescriptor(y.Shape, CpuBackend.BroadcastStrides(a.Shape, y.Shape), CpuBackend.BroadcastStrides(b.Shape, y.Shape), "binary");
        Launch1D($"binary_bcast_{sfx}", n, args.Add(desc));
    }

    /// <summary>Outputs from which the one-thread-per-output sums fill the GPU by themselves (H100/H200: 132 SMs × 2048 threads ≈ 270 K).</summary>
    private const long ManyOutputs = 8192;

    /// <summary>Sums shorter than this run one thread per output, however few the outputs.</summary>
    private const long ShortSum = 256;

    /// <summary>
    /// dst += src summed over the broadcast axes. One thread per dst element adds its sources in increasing source
    /// order onto dst, the CPU's exact sequence (bit for bit), when dst has at least <see cref="ManyOutputs"/>
    /// elements or the sums are shorter than <see cref="ShortSum"/>. Otherwise (a bias gradient over many tokens)
    /// each sum is split into chunks of consecutive sources summed in parallel into a float scratch, and a second
    /// pass adds dst + Σ chunks in chunk order: deterministic, about 1e-6 relative to the CPU in float32.
    /// </summary>
    public void SumToShape(Tensor src, Tensor dst)
    {
        long m = dst.Numel;
        if (src.Numel == 0 || m == 0) return;
        var desc = BroadcastDescriptor(src.Shape, src.Shape.Strides(), CpuBackend.BroadcastStrides(dst.Shape, src.Shape), "sum_to_shape");
        long count = src.Numel / m; // sources per dst element
        string sfx = Sfx(src.DType);
        if (m >= ManyOutputs || count < ShortSum)
        {
            Launch1D($"sum_to_shape_{sfx}", m, new KernelArgs().Add(Ptr(src)).Add(Ptr(dst)).Add(m).Add(desc));
            return;
        }
        // About 64 K work items in all, each a chunk of at least 64 consecutive sources.
        long chunks = Math.Clamp(65536 / m, 2, (count + 63) / 64);
        long chunkLen = (count + chunks - 1) / chunks;
        chunks = (count + chunkLen - 1) / chunkLen;
        using var partials = Tensor.Allocate(new Shape(checked((int)(chunks * m))), src.DType, this, MemoryCategory.Workspace, registerInScope: false);
        Launch1D($"sum_to_shape_partial_{sfx}", chunks * m, new KernelArgs().Add(Ptr(src)).Add(Ptr(partials)).Add(m).Add(chunks).Add(chunkLen).Add(desc));
        Launch1D($"sum_to_shape_finish_{sfx}", m, new KernelArgs().Add(Ptr(partials)).Add(Ptr(dst)).Add(m).Add(chunks));
    }

    /// <summary>
    /// Sum or max along one axis, x (outer, r, inner) -> y (outer, inner). With at least <see cref="ManyOutputs"/>
    /// outputs, or r below <see cref="ShortSum"/>, one thread per output scans k in order: the CPU's result bit for
    /// bit. Few outputs with a long axis (a full sum, a max over a long row) take one block of 256 threads per
    /// output: Max is still exact (same value, same first index, NaN first), Sum is regrouped (deterministic, about
    /// 1e-6 relative in float32).
    /// </summary>
    public void ReduceAxis(ReduceOp op, Tensor x, int axis, Tensor y, Tensor? argmax)
    {
        long outer = x.Shape.Product(0, axis), r = x.Shape[axis], inner = x.Shape.Product(axis + 1, x.Rank);
        long n = outer * inner;
        if (n == 0) return;
        var args = new KernelArgs().Add((int)op).Add(Ptr(x)).Add(Ptr(y)).Add(PtrOrNull(argmax)).Add(outer).Add(r).Add(inner);
        string sfx = Sfx(x.DType);
        if (n >= ManyOutputs || r < ShortSum)
        {
            Launch1D($"reduce_axis_{sfx}", n, args);
            return;
        }
        Launch($"reduce_axis_block_{sfx}", new Dim3((uint)Math.Min(n, 65535)), new Dim3(Threads1D), args);
    }

    public void MaxAxisBackward(Tensor dy, Tensor argmax, int axis, Tensor dx)
    {
        long n = dy.Numel;
        if (n == 0) return;
        long r = dx.Shape[axis], inner = dx.Shape.Product(axis + 1, dx.Rank);
        Launch1D($"max_axis_backward_{Sfx(dx.DType)}", n, new KernelArgs().Add(Ptr(dy)).Add(Ptr(argmax)).Add(Ptr(dx)).Add(n).Add(r).Add(inner));
    }

    /// <summary>Block count of the first sum-of-squares pass (kernels.cu §3): from n alone, so the float64 result does not depend on the GPU.</summary>
    private const int SumOfSquaresMaxBlocks = 1024;

    /// <summary>
    /// total += Σx² / divisor in float64, in two launches (per-block partial sums into a 1024-double workspace
    /// tensor, then one block adds them in a fixed order): no host read, no atomics, deterministic. The CPU sums
    /// in index order, so the two agree to float64 rounding.
    /// </summary>
    public void AddSumOfSquares(Tensor x, double divisor, Tensor total)
    {
        long n = x.Numel;
        int blocks = (int)Math.Min(Math.Max((n + Threads1D - 1) / Threads1D, 1), SumOfSquaresMaxBlocks);
        using var partials = Tensor.Allocate(new Shape(blocks), DType.Float64, this, MemoryCategory.Workspace, registerInScope: false);
        if (n > 0)
            Launch($"sdp_sumsq_partial_{Sfx(x.DType)}", new Dim3((uint)blocks), new Dim3(Threads1D), new KernelArgs().Add(Ptr(x)).Add(n).Add(Ptr(partials)));
        // With n = 0 the finish still runs over no partials, adding 0 / divisor as the CPU does.
        Launch("sdp_sumsq_finish", new Dim3(1), new Dim3(Threads1D), new KernelArgs().Add(Ptr(partials)).Add(n > 0 ? blocks : 0).Add(divisor).Add(Ptr(total)));
    }

    /// <summary>Appends <paramref name="value"/> as the kernel's float (float32 tensors) or double (float64) scalar.</summary>
    private static KernelArgs AddFloat(KernelArgs args, DType dtype, double value) =>
        dtype == DType.Float32 ? args.Add((float)value) : args.Add(value);

    /// <summary>
    /// kernels.cu's <c>SdpBcast</c> (200 bytes, passed by value): a shape of up to 8 axes and two element-stride
    /// arrays over it. Binary uses it as (y's shape, a's strides, b's strides), SumToShape as (src's shape, src's
    /// strides, dst's strides), 0 marking a broadcast axis in both.
    /// </summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct SdpBcast
    {
        public fixed long Shape[MaxKernelRank];
        public fixed long Sa[MaxKernelRank];
        public fixed long Sb[MaxKernelRank];
        public int Rank;
        public int Pad;
    }

    /// <summary>Axes the by-value descriptors of kernels.cu (<c>SdpBcast</c>, <c>SdpStrided</c>) hold.</summary>
    private const int MaxKernelRank = 8;

    private static SdpBcast BroadcastDescriptor(Shape shape, long[] first, long[] second, string op)
    {
        var (dims, strides) = CoalesceAxes(shape, [first, second]);
        if (dims.Length > MaxKernelRank)
            throw new NotSupportedException($"{op} on cuda: {shape} does not coalesce to {MaxKernelRank} axes or fewer (it needs {dims.Length})");
        var d = new SdpBcast { Rank = dims.Length };
        for (int a = 0; a < dims.Length; a++)
        {
            d.Shape[a] = dims[a];
            d.Sa[a] = strides[0][a];
            d.Sb[a] = strides[1][a];
        }
        return d;
    }

    /// <summary>
    /// Simplifies a multi-axis walk over <paramref name="shape"/> that addresses several tensors, one element-stride
    /// array each: size-1 axes are dropped, and an axis merges into the one before it when every tensor steps
    /// through the pair as through one axis (stride before = stride · size). The walk visits the same elements in
    /// the same order; only the index arithmetic shrinks (e.g. a bias add becomes rank 2 whatever the leading dims).
    /// </summary>
    private static (long[] Dims, long[][] Strides) CoalesceAxes(IReadOnlyList<int> shape, long[][] strides)
    {
        var dims = new List<long>();
        var kept = strides.Select(_ => new List<long>()).ToArray();
        for (int a = 0; a < shape.Count; a++)
        {
            long d = shape[a];
            if (d == 1) continue;
            int last = dims.Count - 1;
            bool merge = last >= 0;
            for (int t = 0; merge && t < strides.Length; t++) merge = kept[t][last] == strides[t][a] * d;
            if (merge)
            {
                dims[last] *= d;
                for (int t = 0; t < strides.Length; t++) kept[t][last] = strides[t][a];
                continue;
            }
            dims.Add(d);
            for (int t = 0; t < strides.Length; t++) kept[t].Add(strides[t][a]);
        }
        return ([.. dims], [.. kept.Select(k => k.ToArray())]);
    }
}
