using Sdp.Engine.Memory;

namespace Sdp.Engine.Backends.Cpu;

/// <summary>
/// A backend that runs every kernel through the CPU backend but owns its tensors (they report it as their
/// backend, so every op on them comes back here) and sees every call: <see cref="Enter"/> before the kernel,
/// with the tensors it touches, and <see cref="Exit"/> after. The profiler times kernels this way, and the
/// tests' counting backend checks that no tensor comes from another device. Kernels the CPU backend calls
/// from inside a kernel (a convolution's GEMMs) are part of the outer call.
/// </summary>
public abstract class CpuBackendDecorator : IBackend
{
    /// <summary>Where every kernel runs.</summary>
    protected static CpuBackend Inner => CpuBackend.Instance;

    public Device Device => Inner.Device;

    public BackendDiagnostics Diagnostics => Inner.Diagnostics;

    public Storage Allocate(long bytes, MemoryCategory category, MemoryAccount account) => new CpuStorage(this, bytes, category, account);

    /// <summary>
    /// Called before <paramref name="kernel"/> (the <see cref="IBackend"/> member's name) runs on <paramref name="tensors"/>
    /// (null where an optional tensor is absent); returns what <see cref="Exit"/> gets back.
    /// </summary>
    protected abstract long Enter(string kernel, params ReadOnlySpan<Tensor?> tensors);

    /// <summary>Called after <paramref name="kernel"/> returned, with what its <see cref="Enter"/> returned.</summary>
    protected virtual void Exit(string kernel, long started)
    {
    }

    public void Upload<T>(ReadOnlySpan<T> src, Tensor dst) where T : unmanaged
    {
        long started = Enter(nameof(Upload), dst);
        Inner.Upload(src, dst);
        Exit(nameof(Upload), started);
    }

    public void Download<T>(Tensor src, Span<T> dst) where T : unmanaged
    {
        long started = Enter(nameof(Download), src);
        Inner.Download(src, dst);
        Exit(nameof(Download), started);
    }

    public void Conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor y, int stride, int padding)
    {
        long started = Enter(nameof(Conv2d), x, weight, bias, y);
        Inner.Conv2d(x, weight, bias, y, stride, padding);
        Exit(nameof(Conv2d), started);
    }

    public void Conv2dBackward(Tensor? x, Tensor? weight, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, int stride, int padding, bool overwrite = false)
    {
        long started = Enter(nameof(Conv2dBackward), x, weight, dy, dx, dweight, dbias);
        Inner.Conv2dBackward(x, weight, dy, dx, dweight, dbias, stride, padding, overwrite);
        Exit(nameof(Conv2dBackward), started);
    }

    public void BatchNorm2d(Tensor x, Tensor weight, Tensor bias, Tensor runningMean, Tensor runningVar, Tensor y, Tensor mean, Tensor rstd, bool training, double momentum, double eps)
    {
        long started = Enter(nameof(BatchNorm2d), x, weight, bias, runningMean, runningVar, y, mean, rstd);
        Inner.BatchNorm2d(x, weight, bias, runningMean, runningVar, y, mean, rstd, training, momentum, eps);
        Exit(nameof(BatchNorm2d), started);
    }

    public void BatchNorm2dBackward(Tensor? x, Tensor? weight, Tensor mean, Tensor rstd, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, bool training, bool overwrite = false)
    {
        long started = Enter(nameof(BatchNorm2dBackward), x, weight, mean, rstd, dy, dx, dweight, dbias);
        Inner.BatchNorm2dBackward(x, weight, mean, rstd, dy, dx, dweight, dbias, training, overwrite);
        Exit(nameof(BatchNorm2dBackward), started);
    }

    public void MaxPool2d(Tensor x, Tensor y, Tensor argmax, int kernel, int stride, int padding)
    {
        long started = Enter(nameof(MaxPool2d), x, y, argmax);
        Inner.MaxPool2d(x, y, argmax, kernel, stride, padding);
        Exit(nameof(MaxPool2d), started);
    }

    public void MaxPool2dBackward(Tensor dy, Tensor argmax, Tensor dx)
    {
        long started = Enter(nameof(MaxPool2dBackward), dy, argmax, dx);
        Inner.MaxPool2dBackward(dy, argmax, dx);
        Exit(nameof(MaxPool2dBackward), started);
    }

    public void AdaptiveAvgPool2d(Tensor x, Tensor y)
    {
        long started = Enter(nameof(AdaptiveAvgPool2d), x, y);
        Inner.AdaptiveAvgPool2d(x, y);
        Exit(nameof(AdaptiveAvgPool2d), started);
    }

    public void AdaptiveAvgPool2dBackward(Tensor dy, Tensor dx)
    {
        long started = Enter(nameof(AdaptiveAvgPool2dBackward), dy, dx);
        Inner.AdaptiveAvgPool2dBackward(dy, dx);
        Exit(nameof(AdaptiveAvgPool2dBackward), started);
    }

    public void Dropout(Tensor x, double p, ulong seed, Tensor mask, Tensor y)
    {
        long started = Enter(nameof(Dropout), x, mask, y);
        Inner.Dropout(x, p, seed, mask, y);
        Exit(nameof(Dropout), started);
    }

    public void DropoutBackward(Tensor dy, Tensor mask, Tensor dx)
    {
        long started = Enter(nameof(DropoutBackward), dy, mask, dx);
        Inner.DropoutBackward(dy, mask, dx);
        Exit(nameof(DropoutBackward), started);
    }

    public void Unary(UnaryOp op, Tensor x, Tensor y, double p = 0)
    {
        long started = Enter(nameof(Unary), x, y);
        Inner.Unary(op, x, y, p);
        Exit(nameof(Unary), started);
    }

    public void UnaryBackward(UnaryOp op, Tensor x, Tensor y, Tensor dy, Tensor dx, double p = 0)
    {
        long started = Enter(nameof(UnaryBackward), x, y, dy, dx);
        Inner.UnaryBackward(op, x, y, dy, dx, p);
        Exit(nameof(UnaryBackward), started);
    }

    public void Binary(BinaryOp op, Tensor a, Tensor b, Tensor y)
    {
        long started = Enter(nameof(Binary), a, b, y);
        Inner.Binary(op, a, b, y);
        Exit(nameof(Binary), started);
    }

    public void SumToShape(Tensor src, Tensor dst)
    {
        long started = Enter(nameof(SumToShape), src, dst);
        Inner.SumToShape(src, dst);
        Exit(nameof(SumToShape), started);
    }

    public void ReduceAxis(ReduceOp op, Tensor x, int axis, Tensor y, Tensor? argmax)
    {
        long started = Enter(nameof(ReduceAxis), x, y, argmax);
        Inner.ReduceAxis(op, x, axis, y, argmax);
        Exit(nameof(ReduceAxis), started);
    }

    public void MaxAxisBackward(Tensor dy, Tensor argmax, int axis, Tensor dx)
    {
        long started = Enter(nameof(MaxAxisBackward), dy, argmax, dx);
        Inner.MaxAxisBackward(dy, argmax, axis, dx);
        Exit(nameof(MaxAxisBackward), started);
    }

    public void AddSumOfSquares(Tensor x, double divisor, Tensor total)
    {
        long started = Enter(nameof(AddSumOfSquares), x, total);
        Inner.AddSumOfSquares(x, divisor, total);
        Exit(nameof(AddSumOfSquares), started);
    }

    public void MatMul(Tensor a, Tensor b, Tensor c, int batch, int m, int n, int k, bool transA, bool transB, double alpha, bool accumulate)
    {
        long started = Enter(nameof(MatMul), a, b, c);
        Inner.MatMul(a, b, c, batch, m, n, k, transA, transB, alpha, accumulate);
        Exit(nameof(MatMul), started);
    }

    public void GatherHeld(Tensor full, int axis, Tensor indices, Tensor compact, bool accumulate)
    {
        long started = Enter(nameof(GatherHeld), full, indices, compact);
        Inner.GatherHeld(full, axis, indices, compact, accumulate);
        Exit(nameof(GatherHeld), started);
    }

    public void ScatterHeld(Tensor compact, int axis, Tensor indices, Tensor full)
    {
        long started = Enter(nameof(ScatterHeld), compact, indices, full);
        Inner.ScatterHeld(compact, axis, indices, full);
        Exit(nameof(ScatterHeld), started);
    }

    public void MatMulWeightGradHeld(Tensor dy, Tensor x, int axis, Tensor indices, Tensor dwCompact)
    {
        long started = Enter(nameof(MatMulWeightGradHeld), dy, x, indices, dwCompact);
        Inner.MatMulWeightGradHeld(dy, x, axis, indices, dwCompact);
        Exit(nameof(MatMulWeightGradHeld), started);
    }

    public void IndexSelect(Tensor x, int axis, Tensor indices, Tensor y, bool accumulate)
    {
        long started = Enter(nameof(IndexSelect), x, indices, y);
        Inner.IndexSelect(x, axis, indices, y, accumulate);
        Exit(nameof(IndexSelect), started);
    }

    public void IndexAdd(Tensor src, int axis, Tensor indices, Tensor dst)
    {
        long started = Enter(nameof(IndexAdd), src, indices, dst);
        Inner.IndexAdd(src, axis, indices, dst);
        Exit(nameof(IndexAdd), started);
    }

    public void SgdStep(Tensor param, Tensor grad, Tensor? momentumBuffer, double lr, double momentum, double dampening, bool nesterov, double weightDecay, bool firstStep)
    {
        long started = Enter(nameof(SgdStep), param, grad, momentumBuffer);
        Inner.SgdStep(param, grad, momentumBuffer, lr, momentum, dampening, nesterov, weightDecay, firstStep);
        Exit(nameof(SgdStep), started);
    }

    public void AdamWStep(Tensor param, Tensor grad, Tensor m, Tensor v, double lr, double beta1, double beta2, double eps, double weightDecay, long step)
    {
        long started = Enter(nameof(AdamWStep), param, grad, m, v);
        Inner.AdamWStep(param, grad, m, v, lr, beta1, beta2, eps, weightDecay, step);
        Exit(nameof(AdamWStep), started);
    }

    public void Permute(Tensor x, int[] perm, Tensor y, bool accumulate)
    {
        long started = Enter(nameof(Permute), x, y);
        Inner.Permute(x, perm, y, accumulate);
        Exit(nameof(Permute), started);
    }

    public void ReadSlice(Tensor src, int axis, int start, Tensor dst, bool accumulate)
    {
        long started = Enter(nameof(ReadSlice), src, dst);
        Inner.ReadSlice(src, axis, start, dst, accumulate);
        Exit(nameof(ReadSlice), started);
    }

    public void WriteSlice(Tensor src, int axis, int start, Tensor dst, bool accumulate)
    {
        long started = Enter(nameof(WriteSlice), src, dst);
        Inner.WriteSlice(src, axis, start, dst, accumulate);
        Exit(nameof(WriteSlice), started);
    }

    public void Softmax(Tensor x, Tensor y, bool log)
    {
        long started = Enter(nameof(Softmax), x, y);
        Inner.Softmax(x, y, log);
        Exit(nameof(Softmax), started);
    }

    public void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx, bool log)
    {
        long started = Enter(nameof(SoftmaxBackward), y, dy, dx);
        Inner.SoftmaxBackward(y, dy, dx, log);
        Exit(nameof(SoftmaxBackward), started);
    }

    public void CrossEntropy(Tensor logits, Tensor targets, int ignoreIndex, CrossEntropyReduction reduction, Tensor loss, Tensor lse)
    {
        long started = Enter(nameof(CrossEntropy), logits, targets, loss, lse);
        Inner.CrossEntropy(logits, targets, ignoreIndex, reduction, loss, lse);
        Exit(nameof(CrossEntropy), started);
    }

    public void CrossEntropyBackward(Tensor logits, Tensor targets, int ignoreIndex, CrossEntropyReduction reduction, Tensor lse, Tensor dloss, Tensor dlogits)
    {
        long started = Enter(nameof(CrossEntropyBackward), logits, targets, lse, dloss, dlogits);
        Inner.CrossEntropyBackward(logits, targets, ignoreIndex, reduction, lse, dloss, dlogits);
        Exit(nameof(CrossEntropyBackward), started);
    }

    public void Embedding(Tensor weight, Tensor ids, Tensor y)
    {
        long started = Enter(nameof(Embedding), weight, ids, y);
        Inner.Embedding(weight, ids, y);
        Exit(nameof(Embedding), started);
    }

    public void EmbeddingBackward(Tensor dy, Tensor ids, Tensor dweight)
    {
        long started = Enter(nameof(EmbeddingBackward), dy, ids, dweight);
        Inner.EmbeddingBackward(dy, ids, dweight);
        Exit(nameof(EmbeddingBackward), started);
    }

    public void RmsNorm(Tensor x, Tensor weight, Tensor rstd, Tensor y, double eps)
    {
        long started = Enter(nameof(RmsNorm), x, weight, rstd, y);
        Inner.RmsNorm(x, weight, rstd, y, eps);
        Exit(nameof(RmsNorm), started);
    }

    public void RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd, Tensor? dx, Tensor? dweight)
    {
        long started = Enter(nameof(RmsNormBackward), dy, x, weight, rstd, dx, dweight);
        Inner.RmsNormBackward(dy, x, weight, rstd, dx, dweight);
        Exit(nameof(RmsNormBackward), started);
    }

    public void Rope(Tensor x, Tensor cos, Tensor sin, Tensor? positions, int offset, Tensor y)
    {
        long started = Enter(nameof(Rope), x, cos, sin, positions, y);
        Inner.Rope(x, cos, sin, positions, offset, y);
        Exit(nameof(Rope), started);
    }

    public void RopeBackward(Tensor dy, Tensor cos, Tensor sin, Tensor? positions, int offset, Tensor dx)
    {
        long started = Enter(nameof(RopeBackward), dy, cos, sin, positions, dx);
        Inner.RopeBackward(dy, cos, sin, positions, offset, dx);
        Exit(nameof(RopeBackward), started);
    }

    public void AttentionSwapHeads(Tensor src, Tensor dst, int b, int p, int q, int d, bool accumulate)
    {
        long started = Enter(nameof(AttentionSwapHeads), src, dst);
        Inner.AttentionSwapHeads(src, dst, b, p, q, d, accumulate);
        Exit(nameof(AttentionSwapHeads), started);
    }

    public void CausalAttention(Tensor q, Tensor k, Tensor v, Tensor y, Tensor lse)
    {
        long started = Enter(nameof(CausalAttention), q, k, v, y, lse);
        Inner.CausalAttention(q, k, v, y, lse);
        Exit(nameof(CausalAttention), started);
    }

    public void CausalAttentionBackward(Tensor q, Tensor k, Tensor v, Tensor lse, Tensor dy, Tensor? dq, Tensor? dk, Tensor? dv)
    {
        long started = Enter(nameof(CausalAttentionBackward), q, k, v, lse, dy, dq, dk, dv);
        Inner.CausalAttentionBackward(q, k, v, lse, dy, dq, dk, dv);
        Exit(nameof(CausalAttentionBackward), started);
    }

    public void Copy(Tensor src, Tensor dst)
    {
        long started = Enter(nameof(Copy), src, dst);
        Inner.Copy(src, dst);
        Exit(nameof(Copy), started);
    }

    /// <summary>A transfer between devices: <paramref name="src"/> may live on another device, so only the destination is this backend's.</summary>
    public void CopyPeer(Tensor src, Tensor dst)
    {
        long started = Enter(nameof(CopyPeer), dst);
        Inner.CopyPeer(src, dst);
        Exit(nameof(CopyPeer), started);
    }

    public void Fill(Tensor dst, double value)
    {
        long started = Enter(nameof(Fill), dst);
        Inner.Fill(dst, value);
        Exit(nameof(Fill), started);
    }

    public void Cast(Tensor src, Tensor dst)
    {
        long started = Enter(nameof(Cast), src, dst);
        Inner.Cast(src, dst);
        Exit(nameof(Cast), started);
    }

    public void Synchronize() => Inner.Synchronize();
}
