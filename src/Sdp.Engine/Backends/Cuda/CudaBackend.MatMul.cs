using Sdp.Kernels.Cuda;

namespace Sdp.Engine.Backends.Cuda;

/// <summary>
/// Batched row-major GEMM through cuBLAS (cublasSgemmStridedBatched without TF32: the handle keeps the default
/// math mode; cublasDgemmStridedBatched for float64). cuBLAS is column-major and a row-major matrix is its
/// transpose, so row-major C (M, N) = op(A)·op(B) is computed as column-major Cᵀ (N, M) = op(B)ᵀ·op(A)ᵀ: the
/// operands swap places and M and N swap, with each operand's own transpose flag and its row length as the
/// leading dimension. A shared operand (batch 1 of batch) gets stride 0.
/// </summary>
public sealed unsafe partial class CudaBackend
{
    public void MatMul(Tensor a, Tensor b, Tensor c, int batch, int m, int n, int k, bool transA, bool transB, double alpha, bool accumulate)
    {
        if (batch == 0 || m == 0 || n == 0) return;
        long strideA = a.Numel == (long)m * k ? 0 : (long)m * k;
        long strideB = b.Numel == (long)k * n ? 0 : (long)k * n;
        long strideC = (long)m * n;
        // Row lengths of the stored matrices (at least 1: cuBLAS rejects ld 0 even when k is 0).
        int lda = Math.Max(1, transA ? m : k), ldb = Math.Max(1, transB ? k : n), ldc = n;
        var opA = transA ? CublasOperation.T : CublasOperation.N;
        var opB = transB ? CublasOperation.T : CublasOperation.N;
        double beta = accumulate ? 1 : 0;
        if (c.DType == DType.Float32)
            Blas.SgemmStridedBatched(opB, opA, n, m, k, (float)alpha, Ptr(b), ldb, strideB, Ptr(a), lda, strideA, (float)beta, Ptr(c), ldc, strideC, batch);
        else
            Blas.DgemmStridedBatched(opB, opA, n, m, k, alpha, Ptr(b), ldb, strideB, Ptr(a), lda, strideA, beta, Ptr(c), ldc, strideC, batch);
    }
}
