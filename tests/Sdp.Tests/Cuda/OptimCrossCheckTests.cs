using Sdp.Engine;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// The CUDA backend's fused SGD and AdamW updates against the CPU backend over several steps, every option
/// branch, float32 and float64. The kernels repeat the CPU's operations in its order with the same float64-computed
/// scalars; NVRTC may contract a·b + c into an FMA, so the tolerance is 2e-6 (float32) or 1e-13 (float64) relative,
/// on param and on the state.
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable]
public class OptimCrossCheckTests(CudaImplementation implementation) : OpCrossCheckFixture(implementation)
{
    private static double Tol(DType dtype) => dtype == DType.Float32 ? 2e-6 : 1e-13;

    [Test]
    public void SgdStep_matches_the_cpu([Values(0.0, 0.9)] double momentum, [Values(false, true)] bool nesterov, [Values(0.0, 0.01)] double weightDecay,
        [Values(DType.Float32, DType.Float64)] DType dtype)
    {
        if (nesterov && momentum == 0) Assert.Ignore("nesterov needs momentum");
        var rng = new Random(1);
        var (pc, pg) = Random(rng, dtype, 1001);
        (Tensor? bc, Tensor? bg) = momentum == 0 ? (null, null) : Poisoned(dtype, 1001); // the first step writes the buffer
        for (int step = 0; step < 3; step++)
        {
            var (gc, gg) = Random(rng, dtype, 1001);
            Cpu.SgdStep(pc, gc, bc, 0.05, momentum, 0.1, nesterov, weightDecay, firstStep: step == 0);
            Cuda.SgdStep(pg, gg, bg, 0.05, momentum, 0.1, nesterov, weightDecay, firstStep: step == 0);
            AssertClose(gc, gg, 0, 0, "the gradient is read only");
        }
        AssertClose(pc, pg, Tol(dtype), Tol(dtype), $"sgd param {dtype}");
        if (bc is not null) AssertClose(bc, bg!, Tol(dtype), Tol(dtype), $"sgd momentum buffer {dtype}");
    }

    [Test]
    public void AdamWStep_matches_the_cpu([Values(0.9, 0.3)] double beta1, [Values(0.0, 0.1)] double weightDecay, [Values(DType.Float32, DType.Float64)] DType dtype)
    {
        var rng = new Random(2);
        var (pc, pg) = Random(rng, dtype, 777);
        var (mc, mg) = Pair(new double[777], dtype, 777);
        var (vc, vg) = Pair(new double[777], dtype, 777);
        for (long step = 1; step <= 4; step++)
        {
            var (gc, gg) = Random(rng, dtype, 777);
            Cpu.AdamWStep(pc, gc, mc, vc, 0.01, beta1, 0.999, 1e-8, weightDecay, step);
            Cuda.AdamWStep(pg, gg, mg, vg, 0.01, beta1, 0.999, 1e-8, weightDecay, step);
        }
        AssertClose(pc, pg, Tol(dtype), Tol(dtype), $"adamw param {dtype}");
        AssertClose(mc, mg, Tol(dtype), Tol(dtype), $"adamw exp_avg {dtype}");
        AssertClose(vc, vg, Tol(dtype), Tol(dtype), $"adamw exp_avg_sq {dtype}");
    }
}
