using Sdp.Kernels.Cpu;

namespace Sdp.Engine.Backends.Cpu;

/// <summary>Batched row-major GEMM on the CPU through <see cref="Gemm"/> (Sdp.Kernels).</summary>
public sealed unsafe partial class CpuBackend
{
    public void MatMul(Tensor a, Tensor b, Tensor c, int batch, int m, int n, int k, bool transA, bool transB, double alpha, bool accumulate)
    {
        long strideA = a.Numel == (long)m * k ? 0 : (long)m * k;
        long strideB = b.Numel == (long)k * n ? 0 : (long)k * n;
        long strideC = (long)m * n;
        int lda = transA ? m : k, ldb = transB ? k : n;
        // Many small products (attention heads): one thread each; few large ones: the GEMM threads itself.
        bool perBatchThreads = batch > 1 && (long)m * n * k < 128L * 128 * 128;
        if (c.DType == DType.Float32)
        {
            nint ap = (nint)Ptr<float>(a), bp = (nint)Ptr<float>(b), cp = (nint)Ptr<float>(c);
            void One(long i, int threads) => Gemm.Sgemm(transA, transB, m, n, k, (float)alpha, (float*)ap + i * strideA, lda, (float*)bp + i * strideB, ldb, accumulate ? 1f : 0f, (float*)cp + i * strideC, n, threads);
            if (perBatchThreads) CpuParallel.For(batch, 1, (s, e) => { for (long i = s; i < e; i++) One(i, 1); });
            else for (long i = 0; i < batch; i++) One(i, 0);
        }
        else
        {
            nint ap = (nint)Ptr<double>(a), bp = (nint)Ptr<double>(b), cp = (nint)Ptr<double>(c);
            void One(long i, int threads) => Gemm.Dgemm(transA, transB, m, n, k, alpha, (double*)ap + i * strideA, lda, (double*)bp + i * strideB, ldb, accumulate ? 1.0 : 0.0, (double*)cp + i * strideC, n, threads);
            if (perBatchThreads) CpuParallel.For(batch, 1, (s, e) => { for (long i = s; i < e; i++) One(i, 1); });
            else for (long i = 0; i < batch; i++) One(i, 0);
        }
    }
}
