namespace Sdp.Engine.Backends.Cuda;

public sealed partial class CudaBackend
{
    public void IndexSelect(Tensor x, int axis, Tensor indices, Tensor y, bool accumulate) => throw Pending();
    public void IndexAdd(Tensor src, int axis, Tensor indices, Tensor dst) => throw Pending();
}
