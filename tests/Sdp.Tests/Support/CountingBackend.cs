using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Memory;

namespace Sdp.Tests.Support;

/// <summary>
/// A second backend for the test suite: it runs every kernel through the CPU backend, but owns its tensors
/// (they report it as their backend) and checks on every call that each tensor passed belongs to it, so a
/// code path that silently creates a tensor on another device fails loudly. It also counts device-to-host
/// reads (<see cref="Download{T}"/>, the only way data leaves a backend: no other member returns a value),
/// which is how the tests prove a training step reads the device at most twice.
/// </summary>
public sealed class CountingBackend : IBackend
{
    private long _downloads, _uploads, _calls;

    private static readonly CpuBackend Inner = CpuBackend.Instance;

    public Device Device => Inner.Device;

    public BackendDiagnostics Diagnostics => Inner.Diagnostics;

    /// <summary>Device-to-host reads since creation or the last <see cref="ResetCounts"/>.</summary>
    public long Downloads => Interlocked.Read(ref _downloads);

    /// <summary>Host-to-device writes since creation or the last <see cref="ResetCounts"/>.</summary>
    public long Uploads => Interlocked.Read(ref _uploads);

    /// <summary>Kernel calls (every member but allocation and transfers).</summary>
    public long Calls => Interlocked.Read(ref _calls);

    public void ResetCounts()
    {
        Interlocked.Exchange(ref _downloads, 0);
        Interlocked.Exchange(ref _uploads, 0);
        Interlocked.Exchange(ref _calls, 0);
    }

    public override string ToString() => "counting-cpu";

    public Storage Allocate(long bytes, MemoryCategory category, MemoryAccount account) => new CpuStorage(this, bytes, category, account);

    public void Upload<T>(ReadOnlySpan<T> src, Tensor dst) where T : unmanaged
    {
        Own(dst);
        Interlocked.Increment(ref _uploads);
        Inner.Upload(src, dst);
    }

    public void Download<T>(Tensor src, Span<T> dst) where T : unmanaged
    {
        Own(src);
        Interlocked.Increment(ref _downloads);
        Inner.Download(src, dst);
    }

    private void Enter(params ReadOnlySpan<Tensor?> tensors)
    {
        Interlocked.Increment(ref _calls);
        foreach (var t in tensors) Own(t);
    }

    private void Own(Tensor? t)
    {
        if (t is not null && !ReferenceEquals(t.Storage.Backend, this))
            throw new InvalidOperationException($"{this}: tensor {t.Name ?? "tensor"}{t.Shape} lives on backend {t.Storage.Backend}, not on this one: some code created it on another device");
    }

    public void Conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor y, int stride, int padding)
    {
        Enter(x, weight, bias, y);
        Inner.Conv2d(x, weight, bias, y, stride, padding);
    }

    public void Conv2dBackward(Tensor? x, Tensor? weight, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, int stride, int padding)
    {
        Enter(x, weight, dy, dx, dweight, dbias);
        Inner.Conv2dBackward(x, weight, dy, dx, dweight, dbias, stride, padding);
    }

    public void BatchNorm2d(Tensor x, Tensor weight, Tensor bias, Tensor runningMean, Tensor runningVar, Tensor y, Tensor mean, Tensor rstd, bool training, double momentum, double eps)
    {
        Enter(x, weight, bias, runningMean, runningVar, y, mean, rstd);
        Inner.BatchNorm2d(x, weight, bias, runningMean, runningVar, y, mean, rstd, training, momentum, eps);
    }

    public void BatchNorm2dBackward(Tensor? x, Tensor? weight, Tensor mean, Tensor rstd, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, bool training)
    {
        Enter(x, weight, mean, rstd, dy, dx, dweight, dbias);
        Inner.BatchNorm2dBackward(x, weight, mean, rstd, dy, dx, dweight, dbias, training);
    }

    public void MaxPool2d(Tensor x, Tensor y, Tensor argmax, int kernel, int stride, int padding)
    {
        Enter(x, y, argmax);
        Inner.MaxPool2d(x, y, argmax, kernel, stride, padding);
    }

    public void MaxPool2dBackward(Tensor dy, Tensor argmax, Tensor dx)
    {
        Enter(dy, argmax, dx);
        Inner.MaxPool2dBackward(dy, argmax, dx);
    }

    public void AdaptiveAvgPool2d(Tensor x, Tensor y)
    {
        Enter(x, y);
        Inner.AdaptiveAvgPool2d(x, y);
    }

    public void AdaptiveAvgPool2dBackward(Tensor dy, Tensor dx)
    {
        Enter(dy, dx);
        Inner.AdaptiveAvgPool2dBackward(dy, dx);
    }

    public void Dropout(Tensor x, double p, ulong seed, Tensor mask, Tensor y)
    {
        Enter(x, mask, y);
        Inner.Dropout(x, p, seed, mask, y);
    }

    public void DropoutBackward(Tensor dy, Tensor mask, Tensor dx)
    {
        Enter(dy, mask, dx);
        Inner.DropoutBackward(dy, mask, dx);
    }

    public void Unary(UnaryOp op, Tensor x, Tensor y, double p = 0)
    {
        Enter(x, y);
        Inner.Unary(op, x, y, p);
    }

    public void UnaryBackward(UnaryOp op, Tensor x, Tensor y, Tensor dy, Tensor dx, double p = 0)
    {
        Enter(x, y, dy, dx);
        Inner.UnaryBackward(op, x, y, dy, dx, p);
    }

    public void Binary(BinaryOp op, Tensor a, Tensor b, Tensor y)
    {
        Enter(a, b, y);
        Inner.Binary(op, a, b, y);
    }

    public void SumToShape(Tensor src, Tensor dst)
    {
        Enter(src, dst);
        Inner.SumToShape(src, dst);
    }

    public void ReduceAxis(ReduceOp op, Tensor x, int axis, Tensor y, Tensor? argmax)
    {
        Enter(x, y, argmax);
        Inner.ReduceAxis(op, x, axis, y, argmax);
    }

    public void MaxAxisBackward(Tensor dy, Tensor argmax, int axis, Tensor dx)
    {
        Enter(dy, argmax, dx);
        Inner.MaxAxisBackward(dy, argmax, axis, dx);
    }

    public void AddSumOfSquares(Tensor x, double divisor, Tensor total)
    {
        Enter(x, total);
        Inner.AddSumOfSquares(x, divisor, total);
    }

    public void MatMul(Tensor a, Tensor b, Tensor c, int batch, int m, int n, int k, bool transA, bool transB, double alpha, bool accumulate)
    {
        Enter(a, b, c);
        Inner.MatMul(a, b, c, batch, m, n, k, transA, transB, alpha, accumulate);
    }

    public void GatherHeld(Tensor full, int axis, Tensor indices, Tensor compact, bool accumulate)
    {
        Enter(full, indices, compact);
        Inner.GatherHeld(full, axis, indices, compact, accumulate);
    }

    public void ScatterHeld(Tensor compact, int axis, Tensor indices, Tensor full)
    {
        Enter(compact, indices, full);
        Inner.ScatterHeld(compact, axis, indices, full);
    }

    public void MatMulWeightGradHeld(Tensor dy, Tensor x, int axis, Tensor indices, Tensor dwCompact)
    {
        Enter(dy, x, indices, dwCompact);
        Inner.MatMulWeightGradHeld(dy, x, axis, indices, dwCompact);
    }

    public void IndexSelect(Tensor x, int axis, Tensor indices, Tensor y, bool accumulate)
    {
        Enter(x, indices, y);
        Inner.IndexSelect(x, axis, indices, y, accumulate);
    }

    public void IndexAdd(Tensor src, int axis, Tensor indices, Tensor dst)
    {
        Enter(src, indices, dst);
        Inner.IndexAdd(src, axis, indices, dst);
    }

    public void SgdStep(Tensor param, Tensor grad, Tensor? momentumBuffer, double lr, double momentum, double dampening, bool nesterov, double weightDecay, bool firstStep)
    {
        Enter(param, grad, momentumBuffer);
        Inner.SgdStep(param, grad, momentumBuffer, lr, momentum, dampening, nesterov, weightDecay, firstStep);
    }

    public void AdamWStep(Tensor param, Tensor grad, Tensor m, Tensor v, double lr, double beta1, double beta2, double eps, double weightDecay, long step)
    {
        Enter(param, grad, m, v);
        Inner.AdamWStep(param, grad, m, v, lr, beta1, beta2, eps, weightDecay, step);
    }

    public void Permute(Tensor x, int[] perm, Tensor y, bool accumulate)
    {
        Enter(x, y);
        Inner.Permute(x, perm, y, accumulate);
    }

    public void ReadSlice(Tensor src, int axis, int start, Tensor dst, bool accumulate)
    {
        Enter(src, dst);
        Inner.ReadSlice(src, axis, start, dst, accumulate);
    }

    public void WriteSlice(Tensor src, int axis, int start, Tensor dst, bool accumulate)
    {
        Enter(src, dst);
        Inner.WriteSlice(src, axis, start, dst, accumulate);
    }

    public void Softmax(Tensor x, Tensor y, bool log)
    {
        Enter(x, y);
        Inner.Softmax(x, y, log);
    }

    public void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx, bool log)
    {
        Enter(y, dy, dx);
        Inner.SoftmaxBackward(y, dy, dx, log);
    }

    public void CrossEntropy(Tensor logits, Tensor targets, int ignoreIndex, CrossEntropyReduction reduction, Tensor loss, Tensor lse)
    {
        Enter(logits, targets, loss, lse);
        Inner.CrossEntropy(logits, targets, ignoreIndex, reduction, loss, lse);
    }

    public void CrossEntropyBackward(Tensor logits, Tensor targets, int ignoreIndex, CrossEntropyReduction reduction, Tensor lse, Tensor dloss, Tensor dlogits)
    {
        Enter(logits, targets, lse, dloss, dlogits);
        Inner.CrossEntropyBackward(logits, targets, ignoreIndex, reduction, lse, dloss, dlogits);
    }

    public void Embedding(Tensor weight, Tensor ids, Tensor y)
    {
        Enter(weight, ids, y);
        Inner.Embedding(weight, ids, y);
    }

    public void EmbeddingBackward(Tensor dy, Tensor ids, Tensor dweight)
    {
        Enter(dy, ids, dweight);
        Inner.EmbeddingBackward(dy, ids, dweight);
    }

    public void RmsNorm(Tensor x, Tensor weight, Tensor rstd, Tensor y, double eps)
    {
        Enter(x, weight, rstd, y);
        Inner.RmsNorm(x, weight, rstd, y, eps);
    }

    public void RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd, Tensor? dx, Tensor? dweight)
    {
        Enter(dy, x, weight, rstd, dx, dweight);
        Inner.RmsNormBackward(dy, x, weight, rstd, dx, dweight);
    }

    public void Rope(Tensor x, Tensor cos, Tensor sin, Tensor? positions, int offset, Tensor y)
    {
        Enter(x, cos, sin, positions, y);
        Inner.Rope(x, cos, sin, positions, offset, y);
    }

    public void RopeBackward(Tensor dy, Tensor cos, Tensor sin, Tensor? positions, int offset, Tensor dx)
    {
        Enter(dy, cos, sin, positions, dx);
        Inner.RopeBackward(dy, cos, sin, positions, offset, dx);
    }

    public void AttentionSwapHeads(Tensor src, Tensor dst, int b, int p, int q, int d, bool accumulate)
    {
        Enter(src, dst);
        Inner.AttentionSwapHeads(src, dst, b, p, q, d, accumulate);
    }

    public void CausalAttention(Tensor q, Tensor k, Tensor v, Tensor y, Tensor lse)
    {
        Enter(q, k, v, y, lse);
        Inner.CausalAttention(q, k, v, y, lse);
    }

    public void CausalAttentionBackward(Tensor q, Tensor k, Tensor v, Tensor lse, Tensor dy, Tensor? dq, Tensor? dk, Tensor? dv)
    {
        Enter(q, k, v, lse, dy, dq, dk, dv);
        Inner.CausalAttentionBackward(q, k, v, lse, dy, dq, dk, dv);
    }

    public void Copy(Tensor src, Tensor dst)
    {
        Enter(src, dst);
        Inner.Copy(src, dst);
    }

    /// <summary>A transfer between devices, not a host read: only the destination must be this device's.</summary>
    public void CopyPeer(Tensor src, Tensor dst)
    {
        Enter(dst);
        Inner.CopyPeer(src, dst);
    }

    public void Fill(Tensor dst, double value)
    {
        Enter(dst);
        Inner.Fill(dst, value);
    }

    public void Cast(Tensor src, Tensor dst)
    {
        Enter(src, dst);
        Inner.Cast(src, dst);
    }

    public void Synchronize() => Inner.Synchronize();
}
