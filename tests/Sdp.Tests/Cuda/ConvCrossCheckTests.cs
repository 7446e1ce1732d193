using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Backends.Cuda;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>Inputs, poisoned outputs and comparisons shared by the CNN cross-checks (conv, BatchNorm, pooling).</summary>
internal static class CnnCheck
{
    public static IBackend Cpu => CpuBackend.Instance;

    /// <summary>A random N(0, std²) tensor on the CPU and an identical copy on <paramref name="device"/>.</summary>
    public static (Tensor Cpu, Tensor Device) Random(CudaBackend device, Rng rng, DType dtype, params int[] shape)
    {
        var cpu = Tensor.Randn(new Shape(shape), rng, 1.0, dtype, Cpu);
        return (cpu, cpu.To(device));
    }

    /// <summary>An output tensor filled with NaN, so an element the kernel skips cannot pass.</summary>
    public static Tensor Poisoned(IBackend backend, DType dtype, params int[] shape)
    {
        var t = Tensor.Empty(new Shape(shape), dtype, backend);
        backend.Fill(t, double.NaN);
        return t;
    }

    /// <summary>
    /// |got − expected| ≤ rtol·|expected| + atolScale·max|expected| element by element, NaN only where expected
    /// is NaN. The max-scaled absolute term covers elements that are sums with cancellation (their rounding error
    /// scales with the terms, not with the result).
    /// </summary>
    public static void AssertClose(Tensor expectedCpu, Tensor got, double rtol, double atolScale, string what)
    {
        double[] e = expectedCpu.ToDoubles(), a = got.ToDoubles();
        Assert.That(a, Has.Length.EqualTo(e.Length), $"{what}: element count");
        double scale = e.Where(v => !double.IsNaN(v)).Select(Math.Abs).DefaultIfEmpty(0).Max();
        double atol = atolScale * scale;
        int bad = 0;
        string first = "";
        for (int i = 0; i < e.Length; i++)
        {
            bool ok = double.IsNaN(e[i]) ? double.IsNaN(a[i]) : Math.Abs(a[i] - e[i]) <= rtol * Math.Abs(e[i]) + atol;
            if (ok) continue;
            if (bad++ == 0) first = $"first at [{i}]: cpu {e[i]:R}, cuda {a[i]:R}";
        }
        Assert.That(bad, Is.Zero, $"{what}: {bad} of {e.Length} elements differ beyond rtol {rtol:G2} + {atolScale:G2}·max|cpu| ({first})");
    }

    /// <summary>Bitwise equality (NaN matches NaN), for results computed in the same order on both backends.</summary>
    public static void AssertEqual(Tensor expectedCpu, Tensor got, string what) => AssertClose(expectedCpu, got, 0, 0, what);

    /// <summary>Relative and max-scaled absolute tolerance of a dtype: fp32 where the summation order differs, fp64 likewise.</summary>
    public static (double Rtol, double Atol) Tolerance(DType dtype) => dtype == DType.Float32 ? (1e-5, 1e-5) : (1e-12, 1e-12);
}

/// <summary>
/// CudaBackend.Conv2d / Conv2dBackward against the CPU backend on random inputs, float32 (im2col + cuBLAS Sgemm)
/// and float64 (direct kernels). Outputs are NaN-poisoned; gradient outputs are seeded with random values to test +=.
/// Tolerances: fp32 1e-5 relative + 1e-5·max|cpu| absolute (both sum K or N·OH·OW terms, in different orders:
/// the CPU's blocked float GEMM, the emulator's double-accumulating reference, cuBLAS's own tiling on a GPU);
/// fp64 1e-12 relative + 1e-12·max|cpu|.
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable]
public class ConvCrossCheckTests(CudaImplementation implementation) : OpCrossCheckFixture(implementation)
{
    // (N, C, H, W, O, KH, KW, stride, padding): odd sizes; 1x1 stride 1 (GEMM on x directly), 1x1 stride 2,
    // non-square kernels, padding wider than the kernel's reach.
    private static readonly object[] Geometries =
    [
        new object[] { 3, 5, 9, 7, 6, 3, 3, 1, 1 },
        new object[] { 2, 3, 11, 8, 5, 3, 3, 2, 1 },
        new object[] { 3, 7, 5, 6, 4, 1, 1, 1, 0 },
        new object[] { 2, 5, 7, 7, 3, 1, 1, 2, 0 },
        new object[] { 2, 3, 6, 5, 5, 3, 2, 1, 2 },
        new object[] { 1, 2, 4, 9, 3, 2, 5, 3, 2 },
    ];

    private static IEnumerable<TestCaseData> ForwardCases() =>
        from object[] g in Geometries
        from dtype in new[] { DType.Float32, DType.Float64 }
        from bias in new[] { true, false }
        select new TestCaseData(g.Append(dtype).Append(bias).ToArray());

    private static IEnumerable<TestCaseData> BackwardCases() =>
        from object[] g in Geometries
        from dtype in new[] { DType.Float32, DType.Float64 }
        select new TestCaseData(g.Append(dtype).ToArray());

    private static int OutSize(int size, int k, int s, int p) => (size + 2 * p - k) / s + 1;

    [TestCaseSource(nameof(ForwardCases))]
    public void Conv2d_matches_the_cpu(int n, int c, int h, int w, int o, int kh, int kw, int s, int p, DType dtype, bool withBias)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(1000 + (ulong)(n * c * h + w * o + kh * 7 + kw * 3 + s + p));
        int oh = OutSize(h, kh, s, p), ow = OutSize(w, kw, s, p);
        var (xc, xd) = CnnCheck.Random(Cuda, rng, dtype, n, c, h, w);
        var (wc, wd) = CnnCheck.Random(Cuda, rng, dtype, o, c, kh, kw);
        var (bc, bd) = CnnCheck.Random(Cuda, rng, dtype, o);
        var yc = Tensor.Empty(new Shape(n, o, oh, ow), dtype, Cpu);
        var yd = CnnCheck.Poisoned(Cuda, dtype, n, o, oh, ow);
        Cpu.Conv2d(xc, wc, withBias ? bc : null, yc, s, p);
        Cuda.Conv2d(xd, wd, withBias ? bd : null, yd, s, p);
        var (rtol, atol) = CnnCheck.Tolerance(dtype);
        CnnCheck.AssertClose(yc, yd, rtol, atol, $"conv2d y {dtype}");
    }

    [TestCaseSource(nameof(BackwardCases))]
    public void Conv2dBackward_matches_the_cpu_and_accumulates(int n, int c, int h, int w, int o, int kh, int kw, int s, int p, DType dtype)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(2000 + (ulong)(n * c * h + w * o + kh * 7 + kw * 3 + s + p));
        int oh = OutSize(h, kh, s, p), ow = OutSize(w, kw, s, p);
        var (xc, xd) = CnnCheck.Random(Cuda, rng, dtype, n, c, h, w);
        var (wc, wd) = CnnCheck.Random(Cuda, rng, dtype, o, c, kh, kw);
        var (dyc, dyd) = CnnCheck.Random(Cuda, rng, dtype, n, o, oh, ow);
        var (dxc, dxd) = CnnCheck.Random(Cuda, rng, dtype, n, c, h, w);
        var (dwc, dwd) = CnnCheck.Random(Cuda, rng, dtype, o, c, kh, kw);
        var (dbc, dbd) = CnnCheck.Random(Cuda, rng, dtype, o);
        Cpu.Conv2dBackward(xc, wc, dyc, dxc, dwc, dbc, s, p);
        Cuda.Conv2dBackward(xd, wd, dyd, dxd, dwd, dbd, s, p);
        var (rtol, atol) = CnnCheck.Tolerance(dtype);
        CnnCheck.AssertClose(dxc, dxd, rtol, atol, $"conv2d dx {dtype}");
        CnnCheck.AssertClose(dwc, dwd, rtol, atol, $"conv2d dweight {dtype}");
        CnnCheck.AssertClose(dbc, dbd, rtol, atol, $"conv2d dbias {dtype}");
    }

    /// <summary>Each gradient alone, with the inputs the contract allows to be null left null (a read of them would fail).</summary>
    [Test]
    public void Conv2dBackward_computes_only_the_requested_gradients([Values(DType.Float32, DType.Float64)] DType dtype, [Values(0, 1, 2)] int which)
    {
        const int n = 2, c = 3, h = 7, w = 6, o = 4, k = 3, s = 2, p = 1;
        using var scope = TensorScope.Begin();
        var rng = new Rng(3000 + (ulong)which);
        int oh = OutSize(h, k, s, p), ow = OutSize(w, k, s, p);
        var (xc, xd) = CnnCheck.Random(Cuda, rng, dtype, n, c, h, w);
        var (wc, wd) = CnnCheck.Random(Cuda, rng, dtype, o, c, k, k);
        var (dyc, dyd) = CnnCheck.Random(Cuda, rng, dtype, n, o, oh, ow);
        var (gc, gd) = which switch
        {
            0 => CnnCheck.Random(Cuda, rng, dtype, n, c, h, w),
            1 => CnnCheck.Random(Cuda, rng, dtype, o, c, k, k),
            _ => CnnCheck.Random(Cuda, rng, dtype, o),
        };
        var seed = gd.ToDoubles();
        switch (which)
        {
            case 0:
                Cpu.Conv2dBackward(null, wc, dyc, gc, null, null, s, p);
                Cuda.Conv2dBackward(null, wd, dyd, gd, null, null, s, p);
                break;
            case 1:
                Cpu.Conv2dBackward(xc, null, dyc, null, gc, null, s, p);
                Cuda.Conv2dBackward(xd, null, dyd, null, gd, null, s, p);
                break;
            default:
                Cpu.Conv2dBackward(null, null, dyc, null, null, gc, s, p);
                Cuda.Conv2dBackward(null, null, dyd, null, null, gd, s, p);
                break;
        }
        var (rtol, atol) = CnnCheck.Tolerance(dtype);
        CnnCheck.AssertClose(gc, gd, rtol, atol, $"conv2d gradient {which} alone, {dtype}");
        Assert.That(gd.ToDoubles(), Is.Not.EqualTo(seed), "the gradient was not accumulated at all");
    }

    /// <summary>A small workspace bound splits the batch into groups of 1 and of several images (with a remainder):
    /// every group path of the float32 im2col + GEMM code gives the CPU's result.</summary>
    [Test]
    public void Conv2d_float32_groups_agree_with_the_cpu([Values(1, 2, 3)] int imagesPerGroup, [Values] bool pointwise)
    {
        int n = 5, c = 3, h = 6, w = 5, o = 4, k = pointwise ? 1 : 3, s = 1, p = pointwise ? 0 : 1;
        int oh = OutSize(h, k, s, p), ow = OutSize(w, k, s, p);
        long old = CudaBackend.ConvWorkspaceElements;
        CudaBackend.ConvWorkspaceElements = (long)imagesPerGroup * Math.Max(c * k * k, o) * oh * ow;
        try
        {
            using var scope = TensorScope.Begin();
            var rng = new Rng(4000 + (ulong)imagesPerGroup);
            const DType dt = DType.Float32;
            var (xc, xd) = CnnCheck.Random(Cuda, rng, dt, n, c, h, w);
            var (wc, wd) = CnnCheck.Random(Cuda, rng, dt, o, c, k, k);
            var (bc, bd) = CnnCheck.Random(Cuda, rng, dt, o);
            var (dyc, dyd) = CnnCheck.Random(Cuda, rng, dt, n, o, oh, ow);
            var (dxc, dxd) = CnnCheck.Random(Cuda, rng, dt, n, c, h, w);
            var (dwc, dwd) = CnnCheck.Random(Cuda, rng, dt, o, c, k, k);
            var yc = Tensor.Empty(new Shape(n, o, oh, ow), dt, Cpu);
            var yd = CnnCheck.Poisoned(Cuda, dt, n, o, oh, ow);
            Cpu.Conv2d(xc, wc, bc, yc, s, p);
            Cuda.Conv2d(xd, wd, bd, yd, s, p);
            Cpu.Conv2dBackward(xc, wc, dyc, dxc, dwc, null, s, p);
            Cuda.Conv2dBackward(xd, wd, dyd, dxd, dwd, null, s, p);
            CnnCheck.AssertClose(yc, yd, 1e-5, 1e-5, "y");
            CnnCheck.AssertClose(dxc, dxd, 1e-5, 1e-5, "dx");
            CnnCheck.AssertClose(dwc, dwd, 1e-5, 1e-5, "dweight");
        }
        finally
        {
            CudaBackend.ConvWorkspaceElements = old;
        }
    }
}
