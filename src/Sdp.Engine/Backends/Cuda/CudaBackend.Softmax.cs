namespace Sdp.Engine.Backends.Cuda;

public sealed partial class CudaBackend
{
    public void Softmax(Tensor x, Tensor y, bool log) => throw Pending();
    public void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx, bool log) => throw Pending();
    public void CrossEntropy(Tensor logits, Tensor targets, int ignoreIndex, CrossEntropyReduction reduction, Tensor loss, Tensor lse) => throw Pending();
    public void CrossEntropyBackward(Tensor logits, Tensor targets, int ignoreIndex, CrossEntropyReduction reduction, Tensor lse, Tensor dloss, Tensor dlogits) => throw Pending();
}
