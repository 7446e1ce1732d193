namespace Sdp.Engine.Backends.Cuda;

public sealed partial class CudaBackend
{
    public void SgdStep(Tensor param, Tensor grad, Tensor? momentumBuffer, double lr, double momentum, double dampening, bool nesterov, double weightDecay, bool firstStep) => throw Pending();
    public void AdamWStep(Tensor param, Tensor grad, Tensor m, Tensor v, double lr, double beta1, double beta2, double eps, double weightDecay, long step) => throw Pending();
}
