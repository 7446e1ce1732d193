namespace Sdp.Engine.Backends.Cuda;

public sealed partial class CudaBackend
{
    public void MatMul(Tensor a, Tensor b, Tensor c, int batch, int m, int n, int k, bool transA, bool transB, double alpha, bool accumulate) => throw Pending();
}
