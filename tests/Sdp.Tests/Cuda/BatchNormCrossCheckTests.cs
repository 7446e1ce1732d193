using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cuda;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// CudaBackend.BatchNorm2d / BatchNorm2dBackward against the CPU backend on random inputs (a non-zero mean, so
/// the centring matters), float32 and float64, training and eval. y, mean and rstd are NaN-poisoned; running
/// statistics and every gradient output are seeded with random values (in place / +=). Tolerances: fp32
/// 1e-5 relative + 1e-5·max|cpu| (both sum per channel in float64, but the CPU forms partial sums in float over
/// vector blocks; NVRTC may contract a·b + c into FMA); fp64 1e-12 relative + 1e-12·max|cpu|.
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable]
public class BatchNormCrossCheckTests(CudaImplementation implementation) : OpCrossCheckFixture(implementation)
{
    // (N, C, H, W): planes smaller and larger than the 256-thread channel block, odd sizes, 1x1 planes.
    private static readonly object[] Shapes =
    [
        new object[] { 3, 5, 7, 3 },
        new object[] { 2, 3, 17, 19 },
        new object[] { 5, 4, 1, 1 },
    ];

    private static IEnumerable<TestCaseData> Cases() =>
        from object[] s in Shapes
        from dtype in new[] { DType.Float32, DType.Float64 }
        from training in new[] { true, false }
        select new TestCaseData(s.Append(dtype).Append(training).ToArray());

    /// <summary>x = 3 + 2·N(0, 1): a mean and a variance far from the running statistics' seeds.</summary>
    private (Tensor Cpu, Tensor Device) Input(Rng rng, DType dtype, int n, int c, int h, int w)
    {
        var x = Tensor.Randn(new Shape(n, c, h, w), rng, 2.0, dtype, Cpu);
        Cpu.Unary(UnaryOp.AddScalar, x, x, 3.0);
        return (x, x.To(Cuda));
    }

    /// <summary>Uniform values in [low, high) on the CPU and a copy on the device.</summary>
    private (Tensor Cpu, Tensor Device) Uniform(Rng rng, DType dtype, double low, double high, int c)
    {
        var t = Tensor.Uniform(new Shape(c), rng, low, high, dtype, Cpu);
        return (t, t.To(Cuda));
    }

    [TestCaseSource(nameof(Cases))]
    public void BatchNorm2d_matches_the_cpu(int n, int c, int h, int w, DType dtype, bool training)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(5000 + (ulong)(n * 31 + c * 7 + h + w) + (training ? 1UL : 0));
        var (xc, xd) = Input(rng, dtype, n, c, h, w);
        var (wc, wd) = CnnCheck.Random(Cuda, rng, dtype, c);
        var (bc, bd) = CnnCheck.Random(Cuda, rng, dtype, c);
        var (rmc, rmd) = CnnCheck.Random(Cuda, rng, dtype, c);
        var (rvc, rvd) = Uniform(rng, dtype, 0.5, 2.0, c);
        var yc = Tensor.Empty(new Shape(n, c, h, w), dtype, Cpu);
        var meanc = Tensor.Empty(new Shape(c), dtype, Cpu);
        var rstdc = Tensor.Empty(new Shape(c), dtype, Cpu);
        var yd = CnnCheck.Poisoned(Cuda, dtype, n, c, h, w);
        var meand = CnnCheck.Poisoned(Cuda, dtype, c);
        var rstdd = CnnCheck.Poisoned(Cuda, dtype, c);
        var runningBefore = rmd.ToDoubles();
        Cpu.BatchNorm2d(xc, wc, bc, rmc, rvc, yc, meanc, rstdc, training, 0.1, 1e-5);
        Cuda.BatchNorm2d(xd, wd, bd, rmd, rvd, yd, meand, rstdd, training, 0.1, 1e-5);
        var (rtol, atol) = CnnCheck.Tolerance(dtype);
        CnnCheck.AssertClose(yc, yd, rtol, atol, "y");
        CnnCheck.AssertClose(meanc, meand, rtol, atol, "mean");
        CnnCheck.AssertClose(rstdc, rstdd, rtol, atol, "rstd");
        CnnCheck.AssertClose(rmc, rmd, rtol, atol, "running mean");
        CnnCheck.AssertClose(rvc, rvd, rtol, atol, "running var");
        if (training) Assert.That(rmd.ToDoubles(), Is.Not.EqualTo(runningBefore), "training must update the running mean");
        else Assert.That(rmd.ToDoubles(), Is.EqualTo(runningBefore), "eval must leave the running mean alone");
    }

    [TestCaseSource(nameof(Cases))]
    public void BatchNorm2dBackward_matches_the_cpu_and_accumulates(int n, int c, int h, int w, DType dtype, bool training)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(6000 + (ulong)(n * 31 + c * 7 + h + w) + (training ? 1UL : 0));
        var (xc, xd, wc, wd, meanc, meand, rstdc, rstdd) = Forward(rng, dtype, n, c, h, w, training);
        var (dyc, dyd) = CnnCheck.Random(Cuda, rng, dtype, n, c, h, w);
        var (dxc, dxd) = CnnCheck.Random(Cuda, rng, dtype, n, c, h, w);
        var (dwc, dwd) = CnnCheck.Random(Cuda, rng, dtype, c);
        var (dbc, dbd) = CnnCheck.Random(Cuda, rng, dtype, c);
        Cpu.BatchNorm2dBackward(xc, wc, meanc, rstdc, dyc, dxc, dwc, dbc, training);
        Cuda.BatchNorm2dBackward(xd, wd, meand, rstdd, dyd, dxd, dwd, dbd, training);
        var (rtol, atol) = CnnCheck.Tolerance(dtype);
        CnnCheck.AssertClose(dxc, dxd, rtol, atol, "dx");
        CnnCheck.AssertClose(dwc, dwd, rtol, atol, "dweight");
        CnnCheck.AssertClose(dbc, dbd, rtol, atol, "dbias");
    }

    /// <summary>Each gradient alone: x null when only dbias is wanted, weight null when dx is (a read of either would fail).</summary>
    [Test]
    public void BatchNorm2dBackward_computes_only_the_requested_gradients([Values(DType.Float32, DType.Float64)] DType dtype,
        [Values(0, 1, 2)] int which, [Values] bool training)
    {
        const int n = 3, c = 4, h = 5, w = 3;
        using var scope = TensorScope.Begin();
        var rng = new Rng(7000 + (ulong)which);
        var (xc, xd, wc, wd, meanc, meand, rstdc, rstdd) = Forward(rng, dtype, n, c, h, w, training);
        var (dyc, dyd) = CnnCheck.Random(Cuda, rng, dtype, n, c, h, w);
        var (gc, gd) = which == 0 ? CnnCheck.Random(Cuda, rng, dtype, n, c, h, w) : CnnCheck.Random(Cuda, rng, dtype, c);
        var seed = gd.ToDoubles();
        switch (which)
        {
            case 0:
                Cpu.BatchNorm2dBackward(xc, wc, meanc, rstdc, dyc, gc, null, null, training);
                Cuda.BatchNorm2dBackward(xd, wd, meand, rstdd, dyd, gd, null, null, training);
                break;
            case 1:
                Cpu.BatchNorm2dBackward(xc, null, meanc, rstdc, dyc, null, gc, null, training);
                Cuda.BatchNorm2dBackward(xd, null, meand, rstdd, dyd, null, gd, null, training);
                break;
            default:
                Cpu.BatchNorm2dBackward(null, null, meanc, rstdc, dyc, null, null, gc, training);
                Cuda.BatchNorm2dBackward(null, null, meand, rstdd, dyd, null, null, gd, training);
                break;
        }
        var (rtol, atol) = CnnCheck.Tolerance(dtype);
        CnnCheck.AssertClose(gc, gd, rtol, atol, $"gradient {which} alone");
        Assert.That(gd.ToDoubles(), Is.Not.EqualTo(seed), "the gradient was not accumulated at all");
    }

    /// <summary>A CPU forward pass for the saved mean and rstd; x, weight, mean, rstd on both backends.</summary>
    private (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor) Forward(Rng rng, DType dtype, int n, int c, int h, int w, bool training)
    {
        var (xc, xd) = Input(rng, dtype, n, c, h, w);
        var (wc, wd) = CnnCheck.Random(Cuda, rng, dtype, c);
        var bias = Tensor.Randn(new Shape(c), rng, 1.0, dtype, Cpu);
        var rm = Tensor.Randn(new Shape(c), rng, 1.0, dtype, Cpu);
        var rv = Tensor.Uniform(new Shape(c), rng, 0.5, 2.0, dtype, Cpu);
        var y = Tensor.Empty(xc.Shape, dtype, Cpu);
        var meanc = Tensor.Empty(new Shape(c), dtype, Cpu);
        var rstdc = Tensor.Empty(new Shape(c), dtype, Cpu);
        Cpu.BatchNorm2d(xc, wc, bias, rm, rv, y, meanc, rstdc, training, 0.1, 1e-5);
        return (xc, xd, wc, wd, meanc, meanc.To(Cuda), rstdc, rstdc.To(Cuda));
    }
}
