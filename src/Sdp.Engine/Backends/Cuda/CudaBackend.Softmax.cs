using Sdp.Engine.Memory;
using Sdp.Kernels.Cuda;

namespace Sdp.Engine.Backends.Cuda;

/// <summary>
/// Softmax, log-softmax and fused cross-entropy (kernels.cu §6), float32 and float64. Row kernels: one block per
/// row. Cross-entropy validates its targets on the device: a target outside [0, V) that is not the ignore index
/// raises the device error flag (code 3), the forward kernels then write nothing, and the next host read
/// (Download / Synchronize) throws <see cref="ArgumentOutOfRangeException"/> naming the row and target. So the op
/// queues work without a host read, as a training step needs, while keeping "nothing is written" for a bad target.
/// </summary>
public sealed partial class CudaBackend
{
    /// <summary>Most blocks of a row kernel; the kernels loop over further rows (grid-stride).</summary>
    private const long MaxRowBlocks = 65535;

    /// <summary>The block of a row kernel over rows of <paramref name="length"/> elements: the smallest power of two
    /// covering the row, clamped to [32, 256] (kernels.cu §6: a multiple of 32 for float shuffles, a power of two
    /// for the double tree). It depends only on the row length, so the reduction order is fixed.</summary>
    internal static int RowThreads(long length)
    {
        int t = 32;
        while (t < length && t < Threads1D) t <<= 1;
        return t;
    }

    /// <summary>Queues a row kernel over <paramref name="rows"/> rows of <paramref name="length"/> elements (nothing for no rows).</summary>
    private void LaunchRows(string kernel, long rows, long length, KernelArgs args)
    {
        if (rows <= 0) return;
        Launch(kernel, new Dim3((uint)Math.Min(rows, MaxRowBlocks)), new Dim3((uint)RowThreads(length)), args);
    }

    public void Softmax(Tensor x, Tensor y, bool log)
    {
        int v = x.Shape[-1];
        if (v == 0) return;
        long rows = x.Numel / v;
        LaunchRows($"softmax_forward_{Sfx(x.DType)}", rows, v, new KernelArgs().Add(Ptr(x)).Add(Ptr(y)).Add(rows).Add(v).Add(log ? 1 : 0));
    }

    public void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx, bool log)
    {
        int v = y.Shape[-1];
        if (v == 0) return;
        long rows = y.Numel / v;
        LaunchRows($"softmax_backward_{Sfx(y.DType)}", rows, v,
            new KernelArgs().Add(Ptr(y)).Add(Ptr(dy)).Add(Ptr(dx)).Add(rows).Add(v).Add(log ? 1 : 0));
    }

    public void CrossEntropy(Tensor logits, Tensor targets, int ignoreIndex, CrossEntropyReduction reduction, Tensor loss, Tensor lse)
    {
        int v = logits.Shape[-1];
        long rows = targets.Numel;
        int targets64 = targets.DType == DType.Int64 ? 1 : 0;
        string sfx = Sfx(logits.DType);
        bool perRow = reduction == CrossEntropyReduction.None;
        var flag = ErrorFlag();
        // Validation first, on the same stream: the kernels after it see the flag and skip every write.
        Launch1D("cross_entropy_check_targets", rows,
            new KernelArgs().Add(Ptr(targets)).Add(targets64).Add(ignoreIndex).Add(rows).Add(v).Add(flag));
        LaunchRows($"cross_entropy_forward_{sfx}", rows, v,
            new KernelArgs().Add(Ptr(logits)).Add(Ptr(targets)).Add(targets64).Add(ignoreIndex).Add(rows).Add(v)
                .Add(Ptr(lse)).Add(perRow ? Ptr(loss) : default).Add(flag));
        if (perRow) return;
        // Sum or Mean: one block, float64, in a fixed order (also for no rows: the loss is then 0).
        Launch($"cross_entropy_reduce_{sfx}", new Dim3(1), new Dim3(Threads1D),
            new KernelArgs().Add(Ptr(logits)).Add(Ptr(targets)).Add(targets64).Add(ignoreIndex).Add(rows).Add(v)
                .Add(Ptr(lse)).Add(reduction == CrossEntropyReduction.Mean ? 1 : 0).Add(Ptr(loss)).Add(flag));
    }

    public void CrossEntropyBackward(Tensor logits, Tensor targets, int ignoreIndex, CrossEntropyReduction reduction, Tensor lse, Tensor dloss, Tensor dlogits)
    {
        int v = logits.Shape[-1];
        long rows = targets.Numel;
        if (rows == 0) return;
        int targets64 = targets.DType == DType.Int64 ? 1 : 0;
        string sfx = Sfx(logits.DType);
        // The row gradient g: dloss per row (None), dloss[0] (Sum), or dloss[0] / count (Mean), the count of
        // non-ignored rows taken on the device so nothing is read back.
        using var meanScale = reduction == CrossEntropyReduction.Mean
            ? Tensor.Allocate(new Shape(1), logits.DType, this, MemoryCategory.Workspace, registerInScope: false)
            : null;
        if (meanScale is not null)
        {
            Launch($"cross_entropy_mean_scale_{sfx}", new Dim3(1), new Dim3(Threads1D),
                new KernelArgs().Add(Ptr(targets)).Add(targets64).Add(ignoreIndex).Add(rows).Add(Ptr(dloss)).Add(Ptr(meanScale)));
        }
        LaunchRows($"cross_entropy_backward_{sfx}", rows, v,
            new KernelArgs().Add(Ptr(logits)).Add(Ptr(targets)).Add(targets64).Add(ignoreIndex).Add(rows).Add(v).Add(Ptr(lse))
                .Add(Ptr(meanScale ?? dloss)).Add(reduction == CrossEntropyReduction.None ? 1 : 0).Add(Ptr(dlogits)).Add(ErrorFlag()));
    }
}
