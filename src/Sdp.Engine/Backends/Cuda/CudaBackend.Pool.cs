namespace Sdp.Engine.Backends.Cuda;

public sealed partial class CudaBackend
{
    public void MaxPool2d(Tensor x, Tensor y, Tensor argmax, int kernel, int stride, int padding) => throw Pending();
    public void MaxPool2dBackward(Tensor dy, Tensor argmax, Tensor dx) => throw Pending();
    public void AdaptiveAvgPool2d(Tensor x, Tensor y) => throw Pending();
    public void AdaptiveAvgPool2dBackward(Tensor dy, Tensor dx) => throw Pending();
}
