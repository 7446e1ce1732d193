using Sdp.Engine.Backends.Cpu;
using Sdp.Kernels.Cuda;

namespace Sdp.Engine.Backends.Cuda;

/// <summary>
/// Dropout (kernels.cu §9): the counter-based SplitMix64 mask of <see cref="IBackend.Dropout"/>, bit for bit the
/// CPU backend's (the threshold and the keep scale are computed on the host by the CPU backend's own helpers).
/// </summary>
public sealed partial class CudaBackend
{
    public void Dropout(Tensor x, double p, ulong seed, Tensor mask, Tensor y)
    {
        ulong threshold = CpuBackend.DropoutThreshold(p);
        double keep = p >= 1 ? 0 : 1.0 / (1.0 - p);
        var args = new KernelArgs().Add(Ptr(x)).Add(Ptr(mask)).Add(Ptr(y)).Add(x.Numel).Add(seed).Add(threshold);
        if (x.DType == DType.Float32) args.Add((float)keep); else args.Add(keep);
        Launch1D($"dropout_forward_{Sfx(x.DType)}", x.Numel, args);
    }

    public void DropoutBackward(Tensor dy, Tensor mask, Tensor dx)
    {
        Launch1D($"dropout_backward_{Sfx(dy.DType)}", dy.Numel, new KernelArgs().Add(Ptr(dy)).Add(Ptr(mask)).Add(Ptr(dx)).Add(dy.Numel));
    }
}
