namespace Sdp.Engine.Backends.Cuda;

public sealed partial class CudaBackend
{
    public void Conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor y, int stride, int padding) => throw Pending();
    public void Conv2dBackward(Tensor? x, Tensor? weight, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, int stride, int padding) => throw Pending();
}
