namespace Sdp.Engine.Backends.Cuda;

public sealed partial class CudaBackend
{
    public void Dropout(Tensor x, double p, ulong seed, Tensor mask, Tensor y) => throw Pending();
    public void DropoutBackward(Tensor dy, Tensor mask, Tensor dx) => throw Pending();
}
