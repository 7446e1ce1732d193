using Sdp.Engine;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// The CUDA backend's MatMul (cuBLAS strided-batched GEMM, row-major by swapping the operands) against the CPU
/// backend: every transpose combination, batched with and without a shared operand, alpha, accumulate, odd sizes,
/// float32 and float64, K = 0. Tolerance 1e-5 (float32) or 1e-12 (float64) of Σ|alpha·a·b| + |c|: cuBLAS (and the
/// emulator's double accumulation) sums in another order than the CPU's blocked GEMM.
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable]
public class MatMulCrossCheckTests(CudaImplementation implementation) : OpCrossCheckFixture(implementation)
{
    [Test]
    public void MatMul_matches_the_cpu([Values(false, true)] bool transA, [Values(false, true)] bool transB,
        [Values(DType.Float32, DType.Float64)] DType dtype, [Values(1, 3, -3, 0)] int sharing)
    {
        // sharing: 1 one product; 3 batch 3; -3 batch 3 with a shared (batch 1) A; 0 batch 3 with a shared B.
        const int m = 13, n = 7, k = 19;
        int batch = Math.Abs(sharing) == 0 ? 3 : Math.Abs(sharing);
        int batchA = sharing == -3 ? 1 : batch, batchB = sharing == 0 ? 1 : batch;
        var rng = new Random(1 + (transA ? 2 : 0) + (transB ? 1 : 0));
        var (ac, ag) = Random(rng, dtype, batchA, transA ? k : m, transA ? m : k);
        var (bc, bg) = Random(rng, dtype, batchB, transB ? n : k, transB ? k : n);
        var (cc, cg) = Poisoned(dtype, batch, m, n);
        Cpu.MatMul(ac, bc, cc, batch, m, n, k, transA, transB, -0.75, accumulate: false);
        Cuda.MatMul(ag, bg, cg, batch, m, n, k, transA, transB, -0.75, accumulate: false);
        AssertClose(cc, cg, 0, Rel(dtype) * k, $"c = alpha·a·b {dtype}");
        var (dc, dg) = Random(rng, dtype, batch, m, n);
        Cpu.MatMul(ac, bc, dc, batch, m, n, k, transA, transB, 1.5, accumulate: true);
        Cuda.MatMul(ag, bg, dg, batch, m, n, k, transA, transB, 1.5, accumulate: true);
        AssertClose(dc, dg, 0, Rel(dtype) * (1.5 * k + 1), $"c += alpha·a·b {dtype}");
    }

    [Test]
    public void MatMul_with_k_0_writes_zeros_or_keeps_c([Values(DType.Float32, DType.Float64)] DType dtype)
    {
        var a = Tensor.Empty(new Shape(2, 4, 0), dtype, Cuda);
        var b = Tensor.Empty(new Shape(2, 0, 3), dtype, Cuda);
        var (cc, cg) = Poisoned(dtype, 2, 4, 3);
        Cuda.MatMul(a, b, cg, 2, 4, 3, 0, false, true, 1, accumulate: false);
        AssertSame(cc, cg, "k = 0 assigns zeros");
        var (dc, dg) = Random(new Random(9), dtype, 2, 4, 3);
        Cuda.MatMul(a, b, dg, 2, 4, 3, 0, true, false, 1, accumulate: true);
        AssertSame(dc, dg, "k = 0 accumulates nothing");
    }
}
