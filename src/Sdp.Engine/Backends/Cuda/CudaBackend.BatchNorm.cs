using Sdp.Kernels.Cuda;

namespace Sdp.Engine.Backends.Cuda;

/// <summary>
/// Batch normalisation (kernels.cu §8b): one block per channel computes the channel's statistics (float64
/// sums in a fixed order), updates the running statistics in place, and normalises; the backward pass likewise
/// forms Σdy and Σdy·(x - mean) per channel and applies them. Deterministic, no atomics, no host reads.
/// </summary>
public sealed partial class CudaBackend
{
    /// <summary>Threads per channel block of the BatchNorm kernels (a power of two, for the block reductions).</summary>
    private const int BatchNormThreads = 256;

    public void BatchNorm2d(Tensor x, Tensor weight, Tensor bias, Tensor runningMean, Tensor runningVar, Tensor y, Tensor mean, Tensor rstd, bool training, double momentum, double eps)
    {
        int n = x.Shape[0], c = x.Shape[1];
        if (c == 0) return;
        long plane = x.Shape.Product(2, 4);
        Launch($"batchnorm2d_forward_{Sfx(x.DType)}", new Dim3((uint)Math.Min(c, 65535)), new Dim3(BatchNormThreads),
            new KernelArgs().Add(Ptr(x)).Add(Ptr(weight)).Add(Ptr(bias)).Add(Ptr(runningMean)).Add(Ptr(runningVar)).Add(Ptr(y)).Add(Ptr(mean)).Add(Ptr(rstd))
                .Add(n).Add(c).Add(plane).Add(training ? 1 : 0).Add(momentum).Add(eps));
    }

    public void BatchNorm2dBackward(Tensor? x, Tensor? weight, Tensor mean, Tensor rstd, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, bool training, bool overwrite = false)
    {
        if (overwrite) ZeroForOverwrite(dx, dweight, dbias);
        if (dx is null && dweight is null && dbias is null) return;
        int n = dy.Shape[0], c = dy.Shape[1];
        if (c == 0) return;
        long plane = dy.Shape.Product(2, 4);
        Launch($"batchnorm2d_backward_{Sfx(dy.DType)}", new Dim3((uint)Math.Min(c, 65535)), new Dim3(BatchNormThreads),
            new KernelArgs().Add(PtrOrNull(x)).Add(PtrOrNull(weight)).Add(Ptr(mean)).Add(Ptr(rstd)).Add(Ptr(dy)).Add(PtrOrNull(dx)).Add(PtrOrNull(dweight))
                .Add(PtrOrNull(dbias)).Add(n).Add(c).Add(plane).Add(training ? 1 : 0));
    }
}
