using Sdp.Engine;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// The CUDA backend's dropout (kernels.cu §9) against the CPU backend, float32 and float64, over several blocks
/// with an odd tail. The mask is the documented counter hash, so mask and output are compared bit for bit (one
/// multiply per element on both). Backward is dx += dy·mask: bit for bit on the emulated device (its host compiler
/// does not contract), 1e-6 relative in fp32 / 1e-15 in fp64 elsewhere (NVRTC may fuse the multiply-add).
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable]
public class DropoutCrossCheckTests(CudaImplementation implementation) : OpCrossCheckFixture(implementation)
{
    [Test]
    public void Dropout_mask_and_output_are_the_cpus_bit_for_bit([Values(DType.Float32, DType.Float64)] DType dtype, [Values(0.0, 0.3, 0.999, 1.0)] double p)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(91);
        var x = Random(rng, dtype, [3, 1001]);
        const ulong seed = 0xF00DFACE12345678UL;
        var (wantMask, wantY) = (CpuOutput(x.Shape, dtype), CpuOutput(x.Shape, dtype));
        Cpu.Dropout(x, p, seed, wantMask, wantY);
        var (gotMask, gotY) = (Poisoned(x.Shape, dtype), Poisoned(x.Shape, dtype));
        Cuda.Dropout(x.To(Cuda), p, seed, gotMask, gotY);
        AssertSame(wantMask, gotMask, "mask");
        AssertSame(wantY, gotY, "y");
        if (p == 0.3)
            Assert.That(wantMask.ToDoubles().Count(m => m == 0), Is.GreaterThan(0).And.LessThan(3003), "some but not all dropped");
    }

    [Test]
    public void Dropout_backward_accumulates_the_mask_like_the_cpu([Values(DType.Float32, DType.Float64)] DType dtype)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(92);
        var x = Random(rng, dtype, [2, 777]);
        var mask = CpuOutput(x.Shape, dtype);
        Cpu.Dropout(x, 0.4, 17, mask, CpuOutput(x.Shape, dtype));
        var dy = Random(rng, dtype, [2, 777]);
        var (want, got) = Seeded(rng, dtype, 2, 777);
        Cpu.DropoutBackward(dy, mask, want);
        Cuda.DropoutBackward(dy.To(Cuda), mask.To(Cuda), got);
        if (Implementation == CudaImplementation.Emulated) AssertSame(want, got, "dx");
        else AssertClose(want, got, Tol(dtype, 1e-6, 1e-15), 0, "dx");
    }
}
