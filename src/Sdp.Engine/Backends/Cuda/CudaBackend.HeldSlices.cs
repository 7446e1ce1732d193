namespace Sdp.Engine.Backends.Cuda;

public sealed partial class CudaBackend
{
    public void GatherHeld(Tensor full, int axis, Tensor indices, Tensor compact, bool accumulate) => throw Pending();
    public void ScatterHeld(Tensor compact, int axis, Tensor indices, Tensor full) => throw Pending();
    public void MatMulWeightGradHeld(Tensor dy, Tensor x, int axis, Tensor indices, Tensor dwCompact) => throw Pending();
}
