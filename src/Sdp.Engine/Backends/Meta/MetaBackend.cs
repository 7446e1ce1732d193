using Sdp.Engine.Memory;

namespace Sdp.Engine.Backends.Meta;

/// <summary>
/// The meta device (PyTorch's <c>device="meta"</c>): tensors have shapes and dtypes but no storage, and no kernel
/// computes anything. Every allocation is still charged to the current <see cref="MemoryAccount"/> by category, so
/// building a model here, or running a step of it, sizes it exactly as the real device would account it, at no
/// cost: LLaMA-1B's 5 GiB of parameters take no memory. Initialisers draw nothing for a meta tensor.
/// Reading a meta tensor is an error, unless the backend was made with <c>readsAsZeros</c> (for running code that
/// reads scalars as it goes, such as a trainer's loss and gradient norm, only to size it: the values read are zeros,
/// never results).
/// </summary>
public sealed class MetaBackend(bool readsAsZeros = false) : IBackend
{
    /// <summary>The meta device whose reads are errors.</summary>
    public static MetaBackend Instance { get; } = new();

    public Device Device => Device.Meta;

    public override string ToString() => readsAsZeros ? "meta (reads as zeros)" : "meta";

    public BackendDiagnostics Diagnostics => new("meta: shapes, dtypes and memory accounting only; no storage, no compute", [("storage", "none"), ("kernels", "none (no-ops)")], "nothing", 0);

    public Storage Allocate(long bytes, MemoryCategory category, MemoryAccount account) => new MetaStorage(this, bytes, category, account);

    /// <summary>Accepted and discarded: a meta tensor holds no values.</summary>
    public void Upload<T>(ReadOnlySpan<T> src, Tensor dst) where T : unmanaged
    {
    }

    public void Download<T>(Tensor src, Span<T> dst) where T : unmanaged
    {
        if (!readsAsZeros) throw new InvalidOperationException($"{src.Describe()} is on the meta device: it has a shape and a dtype but no values to read");
        dst.Clear();
    }

    public void Synchronize()
    {
    }

    /// <summary>Bytes charged to an account, and no memory behind them.</summary>
    private sealed class MetaStorage(IBackend backend, long bytes, MemoryCategory category, MemoryAccount account) : Storage(backend, bytes, category, account)
    {
        protected override bool FreeableOnAnyThread => true;

        protected override void Free()
        {
        }
    }

    // ---- kernels: none computes anything on the meta device ---------------------------------------

    public void Conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor y, int stride, int padding)
    {
    }

    public void Conv2dBackward(Tensor? x, Tensor? weight, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, int stride, int padding, bool overwrite = false)
    {
    }

    public void BatchNorm2d(Tensor x, Tensor weight, Tensor bias, Tensor runningMean, Tensor runningVar, Tensor y, Tensor mean, Tensor rstd, bool training, double momentum, double eps)
    {
    }

    public void BatchNorm2dBackward(Tensor? x, Tensor? weight, Tensor mean, Tensor rstd, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, bool training, bool overwrite = false)
    {
    }

    public void MaxPool2d(Tensor x, Tensor y, Tensor argmax, int kernel, int stride, int padding)
    {
    }

    public void MaxPool2dBackward(Tensor dy, Tensor argmax, Tensor dx)
    {
    }

    public void AdaptiveAvgPool2d(Tensor x, Tensor y)
    {
    }

    public void AdaptiveAvgPool2dBackward(Tensor dy, Tensor dx)
    {
    }

    public void Dropout(Tensor x, double p, ulong seed, Tensor mask, Tensor y)
    {
    }

    public void DropoutBackward(Tensor dy, Tensor mask, Tensor dx)
    {
    }

    public void Unary(UnaryOp op, Tensor x, Tensor y, double p = 0)
    {
    }

    public void UnaryBackward(UnaryOp op, Tensor x, Tensor y, Tensor dy, Tensor dx, double p = 0)
    {
    }

    public void Binary(BinaryOp op, Tensor a, Tensor b, Tensor y)
    {
    }

    public void SumToShape(Tensor src, Tensor dst)
    {
    }

    public void ReduceAxis(ReduceOp op, Tensor x, int axis, Tensor y, Tensor? argmax)
    {
    }

    public void MaxAxisBackward(Tensor dy, Tensor argmax, int axis, Tensor dx)
    {
    }

    public void AddSumOfSquares(Tensor x, double divisor, Tensor total)
    {
    }

    public void MatMul(Tensor a, Tensor b, Tensor c, int batch, int m, int n, int k, bool transA, bool transB, double alpha, bool accumulate)
    {
    }

    public void GatherHeld(Tensor full, int axis, Tensor indices, Tensor compact, bool accumulate)
    {
    }

    public void ScatterHeld(Tensor compact, int axis, Tensor indices, Tensor full)
    {
    }

    public void MatMulWeightGradHeld(Tensor dy, Tensor x, int axis, Tensor indices, Tensor dwCompact)
    {
    }

    public void IndexSelect(Tensor x, int axis, Tensor indices, Tensor y, bool accumulate)
    {
    }

    public void IndexAdd(Tensor src, int axis, Tensor indices, Tensor dst)
    {
    }

    public void SgdStep(Tensor param, Tensor grad, Tensor? momentumBuffer, double lr, double momentum, double dampening, bool nesterov, double weightDecay, bool firstStep)
    {
    }

    public void AdamWStep(Tensor param, Tensor grad, Tensor m, Tensor v, double lr, double beta1, double beta2, double eps, double weightDecay, long step)
    {
    }

    public void Permute(Tensor x, int[] perm, Tensor y, bool accumulate)
    {
    }

    public void ReadSlice(Tensor src, int axis, int start, Tensor dst, bool accumulate)
    {
    }

    public void WriteSlice(Tensor src, int axis, int start, Tensor dst, bool accumulate)
    {
    }

    public void Softmax(Tensor x, Tensor y, bool log)
    {
    }

    public void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx, bool log)
    {
    }

    public void CrossEntropy(Tensor logits, Tensor targets, int ignoreIndex, CrossEntropyReduction reduction, Tensor loss, Tensor lse)
    {
    }

    public void CrossEntropyBackward(Tensor logits, Tensor targets, int ignoreIndex, CrossEntropyReduction reduction, Tensor lse, Tensor dloss, Tensor dlogits)
    {
    }

    public void Embedding(Tensor weight, Tensor ids, Tensor y)
    {
    }

    public void EmbeddingBackward(Tensor dy, Tensor ids, Tensor dweight)
    {
    }

    public void RmsNorm(Tensor x, Tensor weight, Tensor rstd, Tensor y, double eps)
    {
    }

    public void RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd, Tensor? dx, Tensor? dweight)
    {
    }

    public void Rope(Tensor x, Tensor cos, Tensor sin, Tensor? positions, int offset, Tensor y)
    {
    }

    public void RopeBackward(Tensor dy, Tensor cos, Tensor sin, Tensor? positions, int offset, Tensor dx)
    {
    }

    public void AttentionSwapHeads(Tensor src, Tensor dst, int b, int p, int q, int d, bool accumulate)
    {
    }

    public void CausalAttention(Tensor q, Tensor k, Tensor v, Tensor y, Tensor lse)
    {
    }

    public void CausalAttentionBackward(Tensor q, Tensor k, Tensor v, Tensor lse, Tensor dy, Tensor? dq, Tensor? dk, Tensor? dv)
    {
    }

    public void Copy(Tensor src, Tensor dst)
    {
    }

    public void CopyPeer(Tensor src, Tensor dst)
    {
    }

    public void Fill(Tensor dst, double value)
    {
    }

    public void Cast(Tensor src, Tensor dst)
    {
    }
}
