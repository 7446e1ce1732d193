namespace Sdp.Engine.Backends.Cuda;

public sealed partial class CudaBackend
{
    public void Embedding(Tensor weight, Tensor ids, Tensor y) => throw Pending();
    public void EmbeddingBackward(Tensor dy, Tensor ids, Tensor dweight) => throw Pending();
    public void RmsNorm(Tensor x, Tensor weight, Tensor rstd, Tensor y, double eps) => throw Pending();
    public void RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd, Tensor? dx, Tensor? dweight) => throw Pending();
    public void Rope(Tensor x, Tensor cos, Tensor sin, Tensor? positions, int offset, Tensor y) => throw Pending();
    public void RopeBackward(Tensor dy, Tensor cos, Tensor sin, Tensor? positions, int offset, Tensor dx) => throw Pending();
    public void AttentionSwapHeads(Tensor src, Tensor dst, int b, int p, int q, int d, bool accumulate) => throw Pending();
    public void CausalAttention(Tensor q, Tensor k, Tensor v, Tensor y, Tensor lse) => throw Pending();
    public void CausalAttentionBackward(Tensor q, Tensor k, Tensor v, Tensor lse, Tensor dy, Tensor? dq, Tensor? dk, Tensor? dv) => throw Pending();
}
