using Sdp.Kernels.Cuda;
using static Sdp.Tests.Cuda.DeviceTestData;

namespace Sdp.Tests.Cuda;

/// <summary>
/// The real device against the emulated one: the same kernels.cu kernels on the same random inputs, every
/// output poisoned (or seeded, where the kernel accumulates) identically on both. Runs where <c>SDP_CUDA</c>
/// is <c>real</c> or <c>both</c> and the real driver loads; elsewhere it is ignored with the reason.
/// Tolerances: twice what each device is allowed against the CPU backend in <see cref="KernelTests"/>, since
/// both may differ from the CPU by that much in opposite directions: fp32 GEMM sums 2e-5 relative plus
/// 2e-5·tokens absolute; the held-slice copies exact (one add or one IEEE division per element on both);
/// AdamW 2e-6 relative (FMA contraction may differ between NVRTC and the emulator's host compiler).
/// </summary>
[TestFixture]
[NonParallelizable] // the emulated device's state is process-wide
[Category(CudaDevices.CrossCategory)]
public class CrossCheckTests
{
    private CudaContext _emu = null!, _real = null!;
    private CudaModule _emuKernels = null!, _realKernels = null!;

    [OneTimeSetUp]
    public void CompileOnBoth()
    {
        CudaApi real = CudaDevices.TryReal(out string why) ?? throw new IgnoreException($"no real CUDA device: {why}");
        _emu = CudaContext.Open(CudaDevices.Load(CudaImplementation.Emulated));
        _emuKernels = CudaKernels.Compile(_emu);
        _real = CudaContext.Open(real);
        _realKernels = CudaKernels.Compile(_real);
    }

    [OneTimeTearDown]
    public void Release()
    {
        _realKernels?.Dispose();
        _real?.Dispose();
        _emuKernels?.Dispose();
        _emu?.Dispose();
    }

    /// <summary>Runs <paramref name="run"/> on the emulated and then the real device; returns both results.</summary>
    private (T Emulated, T Real) OnBoth<T>(Func<CudaContext, CudaModule, T> run)
    {
        T emulated = run(_emu, _emuKernels);
        T real = run(_real, _realKernels);
        _real.Synchronize();
        return (emulated, real);
    }

    /// <summary>The real device's result against the emulated one's.</summary>
    private static void AssertClose(float[] emulated, float[] real, double rtol, double atol, string what)
        => DeviceTestData.AssertClose(emulated, real, rtol, atol, what, "emulated", "real");

    [Test]
    public void Masked_weight_gradient_real_equals_emulated([Values(0, 1)] int axis, [Values(0.25, 1.0)] double density)
    {
        var rng = new Random(100 + 10 * axis + (int)(density * 8));
        const int tokens = 301, outDim = 259, inDim = 133; // several tiles, odd edges
        var idx = HeldIndices(rng, axis == 0 ? outDim : inDim, density);
        int k = idx.Length;
        float[] dy = RandomFloats(rng, (long)tokens * outDim), x = RandomFloats(rng, (long)tokens * inDim);
        float[] dw0 = RandomFloats(rng, axis == 0 ? (long)k * inDim : (long)outDim * k);

        var (emu, real) = OnBoth((ctx, kernels) =>
        {
            using var ddy = Upload(ctx, dy);
            using var dx = Upload(ctx, x);
            using var didx = Upload(ctx, idx);
            using var ddw = Upload(ctx, dw0);
            var args = new KernelArgs().Add(ddy.Pointer).Add(dx.Pointer).Add(didx.Pointer).Add(ddw.Pointer)
                .Add(tokens).Add(outDim).Add(inDim).Add(k).Add(1).Add(1f);
            if (axis == 0) args.Launch(kernels.Function("sdp_weight_grad_rows"), new Dim3(Tiles(inDim), Tiles(k)), 256);
            else args.Launch(kernels.Function("sdp_weight_grad_cols"), new Dim3(Tiles(k), Tiles(outDim)), 256);
            return ddw.ToArray<float>();
        });
        Assert.That(emu.Any(float.IsNaN), Is.False, "emulated dW has NaN");
        AssertClose(emu, real, 2e-5, 2e-5 * tokens, $"dW axis {axis}, {k} held");
    }

    [Test]
    public void Held_slice_copy_real_equals_emulated([Values(0, 1, 2)] int axis)
    {
        var rng = new Random(140 + axis);
        int[] shape = [7, 53, 19];
        int n = shape[axis];
        var idx = HeldIndices(rng, n, 0.5);
        int k = idx.Length;
        long outer = shape.Take(axis).Aggregate(1L, (a, b) => a * b), inner = shape.Skip(axis + 1).Aggregate(1L, (a, b) => a * b);
        float[] full = RandomFloats(rng, 7 * 53 * 19), compact0 = RandomFloats(rng, outer * k * inner);
        const float holders = 3;

        // Gather, accumulating (compact += full[held]); then scatter ÷ |H| into a copy of full.
        var (emu, real) = OnBoth((ctx, kernels) =>
        {
            var function = kernels.Function("sdp_slice_copy_f32");
            using var dfull = Upload(ctx, full);
            using var didx = Upload(ctx, idx);
            using var dcompact = Upload(ctx, compact0);
            using var dcount = Upload(ctx, new[] { holders });
            new KernelArgs().Add(dfull.Pointer).Add(dcompact.Pointer).Add(didx.Pointer).Add(default(CUdeviceptr))
                .Add(outer).Add((long)n).Add((long)k).Add((long)k).Add(inner).Add(0L).Add(0L).Add(1).Add(1f).Add(default(CUdeviceptr))
                .Launch(function, Blocks1D(outer * k * inner), 256);
            float[] gathered = dcompact.ToArray<float>();
            new KernelArgs().Add(dcompact.Pointer).Add(dfull.Pointer).Add(default(CUdeviceptr)).Add(didx.Pointer)
                .Add(outer).Add((long)k).Add((long)n).Add((long)k).Add(inner).Add(0L).Add(0L).Add(0).Add(1f).Add(dcount.Pointer)
                .Launch(function, Blocks1D(outer * k * inner), 256);
            return (gathered, scattered: dfull.ToArray<float>());
        });
        AssertClose(emu.gathered, real.gathered, 0, 0, $"GatherHeld axis {axis}");
        AssertClose(emu.scattered, real.scattered, 0, 0, $"ScatterHeld ÷ |H| axis {axis}");
    }

    [Test]
    public void AdamW_step_real_equals_emulated([Values(0.0, 0.1)] double weightDecay)
    {
        var rng = new Random(170 + (int)(weightDecay * 10));
        const int n = 100_003;
        const long step = 5;
        const double lr = 3e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
        float[] p = RandomFloats(rng, n), g = RandomFloats(rng, n), m = RandomFloats(rng, n);
        float[] v = [.. RandomFloats(rng, n).Select(Math.Abs)];
        double bias1 = 1 - Math.Pow(beta1, step), bias2Sqrt = Math.Sqrt(1 - Math.Pow(beta2, step));

        var (emu, real) = OnBoth((ctx, kernels) =>
        {
            using var dp = Upload(ctx, p);
            using var dg = Upload(ctx, g);
            using var dm = Upload(ctx, m);
            using var dv = Upload(ctx, v);
            new KernelArgs().Add(dp.Pointer).Add(dg.Pointer).Add(dm.Pointer).Add(dv.Pointer).Add((long)n)
                .Add((float)(1 - lr * weightDecay)).Add(weightDecay != 0 ? 1 : 0).Add((float)(1 - beta1)).Add(1 - beta1 < 0.5 ? 1 : 0)
                .Add((float)beta2).Add((float)(1 - beta2)).Add((float)eps).Add((float)(-lr / bias1)).Add((float)bias2Sqrt)
                .Launch(kernels.Function("adamw_step_f32"), Blocks1D(n), 256);
            return (p: dp.ToArray<float>(), m: dm.ToArray<float>(), v: dv.ToArray<float>());
        });
        AssertClose(emu.m, real.m, 2e-6, 2e-7, "exp_avg");
        AssertClose(emu.v, real.v, 2e-6, 2e-9, "exp_avg_sq");
        AssertClose(emu.p, real.p, 2e-6, 2e-7, "param");
    }
}
