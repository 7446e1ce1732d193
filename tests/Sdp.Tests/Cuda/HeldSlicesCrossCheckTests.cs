using Sdp.Engine;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// The CUDA backend's SDP held-slice methods against the CPU backend. GatherHeld and ScatterHeld move data:
/// exact, every dtype. MatMulWeightGradHeld sums over tokens in increasing order in fp32 (float32) or fp64
/// (float64), the CPU's masked GEMM in its own blocking: 1e-5 (float32) or 1e-12 (float64) of Σ|dy·x| + |dw|.
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable]
public class HeldSlicesCrossCheckTests(CudaImplementation implementation) : OpCrossCheckFixture(implementation)
{
    private static readonly DType[] All = [DType.Float32, DType.Float64, DType.Int32, DType.Int64];

    private (Tensor Cpu, Tensor Gpu) Held(params int[] indices) => Pair([.. indices.Select(i => (double)i)], DType.Int32, indices.Length);

    [TestCase(new[] { 4, 7, 3 }, 1, new[] { 0, 2, 3, 6 })]
    [TestCase(new[] { 5, 6 }, 0, new[] { 1, 4 })]
    [TestCase(new[] { 5, 6 }, 1, new[] { 0, 5 })]
    [TestCase(new[] { 2, 3, 9 }, 2, new[] { 8 })]
    public void GatherHeld_and_ScatterHeld_match_the_cpu(int[] dims, int axis, int[] held)
    {
        int[] compactDims = (int[])dims.Clone();
        compactDims[axis] = held.Length;
        foreach (var dtype in All)
        {
            var rng = new Random(1);
            var (ic, ig) = Held(held);
            var (fc, fg) = Random(rng, dtype, dims);
            var (cc, cg) = Poisoned(dtype, compactDims);
            Cpu.GatherHeld(fc, axis, ic, cc, accumulate: false);
            Cuda.GatherHeld(fg, axis, ig, cg, accumulate: false);
            AssertSame(cc, cg, $"gather {dtype}");
            var (ac, ag) = Random(rng, dtype, compactDims);
            Cpu.GatherHeld(fc, axis, ic, ac, accumulate: true);
            Cuda.GatherHeld(fg, axis, ig, ag, accumulate: true);
            AssertSame(ac, ag, $"gather += {dtype}");
            Cpu.ScatterHeld(ac, axis, ic, fc);
            Cuda.ScatterHeld(ag, axis, ig, fg);
            AssertSame(fc, fg, $"scatter {dtype} (unheld slices untouched)");
        }
    }

    [Test]
    public void MatMulWeightGradHeld_matches_the_cpu([Values(0, 1)] int axis, [Values(DType.Float32, DType.Float64)] DType dtype)
    {
        const int outDim = 19, inDim = 23;
        int[] held = axis == 0 ? [0, 3, 4, 10, 18] : [1, 2, 7, 13, 17, 22];
        var rng = new Random(2 + axis);
        var (dyc, dyg) = Random(rng, dtype, 3, 13, outDim); // 39 tokens over two leading dims
        var (xc, xg) = Random(rng, dtype, 3, 13, inDim);
        var (ic, ig) = Held(held);
        int[] dwDims = axis == 0 ? [held.Length, inDim] : [outDim, held.Length];
        var (dwc, dwg) = Random(rng, dtype, dwDims);
        Cpu.MatMulWeightGradHeld(dyc, xc, axis, ic, dwc);
        Cuda.MatMulWeightGradHeld(dyg, xg, axis, ig, dwg);
        // Every product term is below 1 in magnitude: Σ|terms| + |dw| < tokens + 1.
        AssertClose(dwc, dwg, 0, Rel(dtype) * 40, $"weight grad held axis {axis} {dtype}");
    }
}
