using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cpu;
using Sdp.Kernels.Cuda;
using static Sdp.Tests.Cuda.DeviceTestData;

namespace Sdp.Tests.Cuda;

/// <summary>
/// kernels.cu on the emulated CUDA device, against the CPU backend (the specification): fresh random inputs,
/// every output poisoned with NaN before the launch (or seeded with random values where the kernel
/// accumulates), several densities and odd sizes for the SDP kernels. Tolerances: fp32 GEMMs sum in another
/// order than the CPU's blocked GEMM (relative 1e-5 of the row's magnitude); the held-slice copies and the
/// optimizer updates follow the CPU's operation order (1e-6 relative: the emulator's compiler may contract
/// a·b+c into FMA, as NVRTC does by default); the float64 sum of squares differs from the CPU's sequential sum
/// only in summation order (1e-12 relative).
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable] // one emulated device
public class KernelTests
{
    private readonly CudaImplementation _impl;

    public KernelTests(CudaImplementation implementation) => _impl = implementation;

    private static readonly IBackend Cpu = CpuBackend.Instance;
    private CudaContext _ctx = null!;
    private CudaModule _kernels = null!;

    [OneTimeSetUp]
    public void CompileKernels()
    {
        var api = CudaDevices.Load(_impl);
        _ctx = CudaContext.Open(api);
        _kernels = CudaKernels.Compile(_ctx);
    }

    [OneTimeTearDown]
    public void Release()
    {
        _kernels?.Dispose();
        _ctx?.Dispose();
    }

    // ---- helpers ------------------------------------------------------------------------------------------

    private static Tensor Host<T>(T[] values, params int[] shape) where T : unmanaged => Tensor.FromArray(values, new Shape(shape), Cpu);

    // ---- §1 masked GEMMs ----------------------------------------------------------------------------------

    [Test]
    public void Masked_weight_gradient_writes_the_compact_dW_of_the_held_rows_or_columns([Values(0, 1)] int axis, [Values(0.25, 0.5, 1.0)] double density)
    {
        var rng = new Random(10 * axis + (int)(density * 8));
        const int tokens = 37, outDim = 45, inDim = 29; // odd sizes, not multiples of any tile
        var idx = HeldIndices(rng, axis == 0 ? outDim : inDim, density);
        int k = idx.Length;
        float[] dy = RandomFloats(rng, (long)tokens * outDim), x = RandomFloats(rng, (long)tokens * inDim);
        int[] dwShape = axis == 0 ? [k, inDim] : [outDim, k];
        float[] dw0 = RandomFloats(rng, (long)dwShape[0] * dwShape[1]); // += contract: start from non-zero values

        using var hdy = Host(dy, tokens, outDim);
        using var hx = Host(x, tokens, inDim);
        using var hidx = Host(idx, k);
        using var hdw = Host((float[])dw0.Clone(), dwShape);
        Cpu.MatMulWeightGradHeld(hdy, hx, axis, hidx, hdw);

        using var ddy = Upload(_ctx, dy);
        using var dx = Upload(_ctx, x);
        using var didx = Upload(_ctx, idx);
        using var ddw = Upload(_ctx, dw0);
        var args = new KernelArgs().Add(ddy.Pointer).Add(dx.Pointer).Add(didx.Pointer).Add(ddw.Pointer)
            .Add(tokens).Add(outDim).Add(inDim).Add(k).Add(1 /* dy or x is full */).Add(1f /* beta: += */);
        if (axis == 0) args.Launch(_kernels.Function("sdp_weight_grad_rows"), new Dim3(Tiles(inDim), Tiles(k)), 256);
        else args.Launch(_kernels.Function("sdp_weight_grad_cols"), new Dim3(Tiles(k), Tiles(outDim)), 256);

        AssertClose(hdw.ToArray<float>(), ddw.ToArray<float>(), 1e-5, 1e-5 * tokens, $"dW axis {axis}, {k} held");
    }

    [Test]
    public void Row_masked_linear_forward_reads_the_held_rows_through_the_index([Values(0.25, 0.5, 1.0)] double density, [Values(5, 130)] int tokens)
    {
        var rng = new Random(tokens + (int)(density * 100));
        const int inDim = 33, outDim = 70;
        var idx = HeldIndices(rng, outDim, density);
        int k = idx.Length;
        float[] x = RandomFloats(rng, (long)tokens * inDim), w = RandomFloats(rng, (long)outDim * inDim);

        // CPU: gather the held rows of W, then y = x · W_heldᵀ.
        using var hx = Host(x, tokens, inDim);
        using var hw = Host(w, outDim, inDim);
        using var hidx = Host(idx, k);
        using var wHeld = Tensor.Empty(new Shape(k, inDim), DType.Float32, Cpu);
        Cpu.IndexSelect(hw, 0, hidx, wHeld, accumulate: false);
        using var hy = Tensor.Empty(new Shape(tokens, k), DType.Float32, Cpu);
        Cpu.MatMul(hx, wHeld, hy, 1, tokens, k, inDim, transA: false, transB: true, alpha: 1, accumulate: false);

        using var dx = Upload(_ctx, x);
        using var dw = Upload(_ctx, w);
        using var didx = Upload(_ctx, idx);
        using var dy = Poisoned(_ctx, (long)tokens * k);
        new KernelArgs().Add(dx.Pointer).Add(dw.Pointer).Add(didx.Pointer).Add(dy.Pointer).Add(tokens).Add(inDim).Add(k).Add(0f)
            .Launch(_kernels.Function("sdp_linear_rows_forward"), new Dim3(Tiles(k), Tiles(tokens)), 256);

        AssertClose(hy.ToArray<float>(), dy.ToArray<float>(), 1e-5, 1e-5 * inDim, $"y, {k} held rows, {tokens} tokens");
    }

    // ---- §2 held slices and buckets ---------------------------------------------------------------------

    [Test]
    public void Held_slices_gather_accumulates_and_scatter_divides_by_the_holder_count([Values(0, 1, 2)] int axis)
    {
        var rng = new Random(40 + axis);
        int[] shape = [3, 11, 5];
        int n = shape[axis];
        var idx = HeldIndices(rng, n, 0.5);
        int k = idx.Length;
        long outer = shape.Take(axis).Aggregate(1L, (a, b) => a * b), inner = shape.Skip(axis + 1).Aggregate(1L, (a, b) => a * b);
        int[] compactShape = [.. shape];
        compactShape[axis] = k;
        float[] full = RandomFloats(rng, 3 * 11 * 5), compact0 = RandomFloats(rng, outer * k * inner);
        var function = _kernels.Function("sdp_slice_copy_f32");

        // GatherHeld, accumulating: compact += full[held].
        using (var hfull = Host(full, shape))
        using (var hidx = Host(idx, k))
        using (var hcompact = Host((float[])compact0.Clone(), compactShape))
        using (var dfull = Upload(_ctx, full))
        using (var didx = Upload(_ctx, idx))
        using (var dcompact = Upload(_ctx, compact0))
        {
            Cpu.GatherHeld(hfull, axis, hidx, hcompact, accumulate: true);
            new KernelArgs().Add(dfull.Pointer).Add(dcompact.Pointer).Add(didx.Pointer).Add(default(CUdeviceptr))
                .Add(outer).Add((long)n).Add((long)k).Add((long)k).Add(inner).Add(0L).Add(0L).Add(1).Add(1f).Add(default(CUdeviceptr))
                .Launch(function, Blocks1D(outer * k * inner), 256);
            AssertClose(hcompact.ToArray<float>(), dcompact.ToArray<float>(), 0, 0, $"GatherHeld axis {axis}");
        }

        // Unpacking a bucket: full[held] = compact / |H| with |H| a device scalar; unheld slices untouched.
        const float holders = 3;
        using (var hfull = Host((float[])full.Clone(), shape))
        using (var hidx = Host(idx, k))
        using (var hcompact = Host(compact0, compactShape))
        using (var hcount = Host([holders], 1))
        using (var dfull = Upload(_ctx, full))
        using (var didx = Upload(_ctx, idx))
        using (var dcompact = Upload(_ctx, compact0))
        using (var dcount = Upload(_ctx, new[] { holders }))
        {
            Cpu.Binary(BinaryOp.Div, hcompact, hcount, hcompact);
            Cpu.ScatterHeld(hcompact, axis, hidx, hfull);
            new KernelArgs().Add(dcompact.Pointer).Add(dfull.Pointer).Add(default(CUdeviceptr)).Add(didx.Pointer)
                .Add(outer).Add((long)k).Add((long)n).Add((long)k).Add(inner).Add(0L).Add(0L).Add(0).Add(1f).Add(dcount.Pointer)
                .Launch(function, Blocks1D(outer * k * inner), 256);
            AssertClose(hfull.ToArray<float>(), dfull.ToArray<float>(), 0, 0, $"ScatterHeld ÷ |H| axis {axis}");
        }
    }

    // ---- §3 sum of squares --------------------------------------------------------------------------------

    [Test]
    public void Sum_of_squares_accumulates_into_a_device_scalar_without_a_host_read([Values(1, 1000, 70001)] int n)
    {
        var rng = new Random(n);
        float[] x = RandomFloats(rng, n);
        const double divisor = 3, start = 0.5;
        using var hx = Host(x, n);
        using var htotal = Host(new[] { start }, 1);
        Cpu.AddSumOfSquares(hx, divisor, htotal);

        int blocks = (int)Math.Min(Math.Max((n + 255) / 256, 1), 1024);
        using var dx = Upload(_ctx, x);
        using var partials = DeviceBuffer.Allocate<double>(_ctx, 1024);
        partials.PoisonNaN();
        using var total = Upload(_ctx, new[] { start });
        new KernelArgs().Add(dx.Pointer).Add((long)n).Add(partials.Pointer).Launch(_kernels.Function("sdp_sumsq_partial_f32"), (uint)blocks, 256);
        new KernelArgs().Add(partials.Pointer).Add(blocks).Add(divisor).Add(total.Pointer).Launch(_kernels.Function("sdp_sumsq_finish"), 1, 256);

        double expected = htotal.ToArray<double>()[0], actual = total.ToArray<double>()[0];
        Assert.That(actual, Is.EqualTo(expected).Within(1e-12 * Math.Abs(expected)), "total += Σx²/divisor");
    }

    // ---- §5 optimizers ------------------------------------------------------------------------------------

    [Test]
    public void AdamW_step_matches_the_cpu_update([Values(0.0, 0.1)] double weightDecay, [Values(1L, 7L)] long step)
    {
        var rng = new Random((int)step + (int)(weightDecay * 10));
        const int n = 1003;
        const double lr = 3e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
        float[] p = RandomFloats(rng, n), g = RandomFloats(rng, n), m = RandomFloats(rng, n);
        float[] v = [.. RandomFloats(rng, n).Select(Math.Abs)];
        using var hp = Host((float[])p.Clone(), n);
        using var hg = Host(g, n);
        using var hm = Host((float[])m.Clone(), n);
        using var hv = Host((float[])v.Clone(), n);
        Cpu.AdamWStep(hp, hg, hm, hv, lr, beta1, beta2, eps, weightDecay, step);

        using var dp = Upload(_ctx, p);
        using var dg = Upload(_ctx, g);
        using var dm = Upload(_ctx, m);
        using var dv = Upload(_ctx, v);
        // The host computes the scalars in float64, as CpuBackend.AdamWStep does (docs/kernels.md §5).
        double bias1 = 1 - Math.Pow(beta1, step), bias2Sqrt = Math.Sqrt(1 - Math.Pow(beta2, step));
        new KernelArgs().Add(dp.Pointer).Add(dg.Pointer).Add(dm.Pointer).Add(dv.Pointer).Add((long)n)
            .Add((float)(1 - lr * weightDecay)).Add(weightDecay != 0 ? 1 : 0).Add((float)(1 - beta1)).Add(1 - beta1 < 0.5 ? 1 : 0)
            .Add((float)beta2).Add((float)(1 - beta2)).Add((float)eps).Add((float)(-lr / bias1)).Add((float)bias2Sqrt)
            .Launch(_kernels.Function("adamw_step_f32"), Blocks1D(n), 256);

        AssertClose(hm.ToArray<float>(), dm.ToArray<float>(), 1e-6, 1e-7, "exp_avg");
        AssertClose(hv.ToArray<float>(), dv.ToArray<float>(), 1e-6, 1e-9, "exp_avg_sq");
        AssertClose(hp.ToArray<float>(), dp.ToArray<float>(), 1e-6, 1e-7, "param");
    }
}
