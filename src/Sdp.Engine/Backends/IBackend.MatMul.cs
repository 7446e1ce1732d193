namespace Sdp.Engine.Backends;

/// <summary>Matrix products. The held-slice weight gradient (<see cref="MatMulWeightGradHeld"/>) stays with the other SDP masking methods in IBackend.HeldSlices.cs.</summary>
public partial interface IBackend
{
    /// <summary>
    /// Batched GEMM, row-major: c[i] = alpha · op(a[i]) · op(b[i]) (+ c[i] when accumulate).
    /// a is (batchA, M, K), or (batchA, K, M) when transA; b is (batchB, K, N), or (batchB, N, K) when
    /// transB; c is (batch, M, N). batchA and batchB each equal batch or 1 (a shared operand).
    /// </summary>
    void MatMul(Tensor a, Tensor b, Tensor c, int batch, int m, int n, int k, bool transA, bool transB, double alpha, bool accumulate);
}
