using Sdp.Kernels.Cuda;

namespace Sdp.Engine.Backends.Cuda;

/// <summary>
/// Fused optimizer updates (kernels.cu §5 sgd_step_*, adamw_step_*): the CPU's formulas in the CPU's operation
/// order, with the scalars computed on the host in float64 exactly as CpuBackend.Optim does, then rounded to the
/// tensor's dtype. On the emulated device (no FMA contraction) the results are the CPU's bit for bit; NVRTC
/// contracts a·b + c into FMA by default, which moves float32 results by about an ulp.
/// </summary>
public sealed unsafe partial class CudaBackend
{
    public void SgdStep(Tensor param, Tensor grad, Tensor? momentumBuffer, double lr, double momentum, double dampening, bool nesterov, double weightDecay, bool firstStep)
    {
        long n = param.Numel;
        if (n == 0) return;
        var dt = param.DType;
        var args = new KernelArgs().Add(Ptr(param)).Add(Ptr(grad)).Add(PtrOrNull(momentumBuffer)).Add(n);
        AddFloat(args, dt, lr);
        AddFloat(args, dt, momentum);
        AddFloat(args, dt, 1 - dampening);
        AddFloat(args, dt, weightDecay);
        args.Add(weightDecay != 0 ? 1 : 0).Add(firstStep ? 1 : 0).Add(nesterov ? 1 : 0);
        Launch1D($"sgd_step_{Sfx(dt)}", n, args);
    }

    public void AdamWStep(Tensor param, Tensor grad, Tensor m, Tensor v, double lr, double beta1, double beta2, double eps, double weightDecay, long step)
    {
        long n = param.Numel;
        if (n == 0) return;
        var dt = param.DType;
        double bias1 = 1 - Math.Pow(beta1, step);
        double bias2Sqrt = Math.Sqrt(1 - Math.Pow(beta2, step));
        double lerpWeight = 1 - beta1;
        var args = new KernelArgs().Add(Ptr(param)).Add(Ptr(grad)).Add(Ptr(m)).Add(Ptr(v)).Add(n);
        AddFloat(args, dt, 1 - lr * weightDecay);
        args.Add(weightDecay != 0 ? 1 : 0);
        AddFloat(args, dt, lerpWeight);
        args.Add(lerpWeight < 0.5 ? 1 : 0); // torch.lerp's branch: from the nearer end
        AddFloat(args, dt, beta2);
        AddFloat(args, dt, 1 - beta2);
        AddFloat(args, dt, eps);
        AddFloat(args, dt, -(lr / bias1));
        AddFloat(args, dt, bias2Sqrt);
        Launch1D($"adamw_step_{Sfx(dt)}", n, args);
    }
}
