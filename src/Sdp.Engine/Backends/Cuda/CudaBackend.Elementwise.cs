namespace Sdp.Engine.Backends.Cuda;

public sealed partial class CudaBackend
{
    public void Unary(UnaryOp op, Tensor x, Tensor y, double p) => throw Pending();
    public void UnaryBackward(UnaryOp op, Tensor x, Tensor y, Tensor dy, Tensor dx, double p) => throw Pending();
    public void Binary(BinaryOp op, Tensor a, Tensor b, Tensor y) => throw Pending();
    public void SumToShape(Tensor src, Tensor dst) => throw Pending();
    public void ReduceAxis(ReduceOp op, Tensor x, int axis, Tensor y, Tensor? argmax) => throw Pending();
    public void MaxAxisBackward(Tensor dy, Tensor argmax, int axis, Tensor dx) => throw Pending();
    public void AddSumOfSquares(Tensor x, double divisor, Tensor total) => throw Pending();
}
