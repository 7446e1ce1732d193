namespace Sdp.Engine.Backends.Cuda;

public sealed partial class CudaBackend
{
    public void Permute(Tensor x, int[] perm, Tensor y, bool accumulate) => throw Pending();
    public void ReadSlice(Tensor src, int axis, int start, Tensor dst, bool accumulate) => throw Pending();
    public void WriteSlice(Tensor src, int axis, int start, Tensor dst, bool accumulate) => throw Pending();
}
