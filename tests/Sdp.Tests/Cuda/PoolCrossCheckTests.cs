using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cuda;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// CudaBackend.MaxPool2d / MaxPool2dBackward / AdaptiveAvgPool2d / AdaptiveAvgPool2dBackward against the CPU
/// backend on random inputs, float32 and float64, int32 and int64 argmax. Forward outputs are NaN-poisoned;
/// dx is seeded with random values (+=). Tolerances: max pooling forward and both backward passes are exact
/// (a max is exact; the gradients add the same terms in the same order as the CPU); the adaptive average
/// forward pass is fp32 1e-5 relative + 1e-5·max|cpu| (the CPU sums a bin's rows vectorised, the kernel in
/// index order), fp64 1e-12.
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable]
public class PoolCrossCheckTests(CudaImplementation implementation) : OpCrossCheckFixture(implementation)
{
    // (N, C, H, W, kernel, stride, padding): padded windows, non-overlapping, overlapping (stride 1), odd planes.
    private static readonly object[] MaxGeometries =
    [
        new object[] { 2, 3, 7, 9, 3, 2, 1 },
        new object[] { 1, 4, 6, 5, 2, 2, 0 },
        new object[] { 2, 2, 5, 7, 3, 1, 1 },
        new object[] { 3, 1, 8, 8, 2, 1, 0 },
    ];

    private static IEnumerable<TestCaseData> MaxCases() =>
        from object[] g in MaxGeometries
        from dtype in new[] { DType.Float32, DType.Float64 }
        from arg in new[] { DType.Int32, DType.Int64 }
        select new TestCaseData(g.Append(dtype).Append(arg).ToArray());

    /// <summary>Small integers (many ties, so "first maximum in scan order" is tested), all negative in one plane
    /// (padding must lose), and a few NaNs (which must win and propagate).</summary>
    private static Tensor PoolInput(Rng rng, DType dtype, int n, int c, int h, int w)
    {
        int count = n * c * h * w, plane = h * w;
        var v = new double[count];
        for (int i = 0; i < count; i++) v[i] = Math.Round(rng.NextNormal() * 2);
        for (int i = 0; i < plane; i++) v[i] = -1 - Math.Abs(v[i]);
        for (int i = 0; i < Math.Max(1, count / 40); i++) v[(int)(rng.NextDouble() * count)] = double.NaN;
        return Tensor.FromDoubles(v, new Shape(n, c, h, w), dtype, Cpu);
    }

    [TestCaseSource(nameof(MaxCases))]
    public void MaxPool2d_forward_and_backward_match_the_cpu(int n, int c, int h, int w, int k, int s, int p, DType dtype, DType argType)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(8000 + (ulong)(n * 31 + c * 7 + h + w + k + s + p));
        int oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1;
        var xc = PoolInput(rng, dtype, n, c, h, w);
        var xd = xc.To(Cuda);
        var yc = Tensor.Empty(new Shape(n, c, oh, ow), dtype, Cpu);
        var ac = Tensor.Empty(yc.Shape, argType, Cpu);
        var yd = CnnCheck.Poisoned(Cuda, dtype, n, c, oh, ow);
        var ad = CnnCheck.Poisoned(Cuda, argType, n, c, oh, ow); // fill casts NaN to an integer sentinel
        Cpu.MaxPool2d(xc, yc, ac, k, s, p);
        Cuda.MaxPool2d(xd, yd, ad, k, s, p);
        Assert.That(yc.ToDoubles().Count(double.IsNaN), Is.GreaterThan(0), "the input's NaNs reach some window");
        CnnCheck.AssertEqual(yc, yd, "y");
        CnnCheck.AssertEqual(ac, ad, "argmax");

        var (dyc, dyd) = CnnCheck.Random(Cuda, rng, dtype, n, c, oh, ow);
        var (dxc, dxd) = CnnCheck.Random(Cuda, rng, dtype, n, c, h, w);
        Cpu.MaxPool2dBackward(dyc, ac, dxc);
        Cuda.MaxPool2dBackward(dyd, ad, dxd);
        CnnCheck.AssertEqual(dxc, dxd, "dx");
    }

    // (N, C, H, W, OH, OW): bins of unequal size, an output larger than the input (repeated cells), global pooling.
    private static readonly object[] AdaptiveGeometries =
    [
        new object[] { 2, 3, 7, 5, 3, 2 },
        new object[] { 1, 2, 3, 5, 5, 7 },
        new object[] { 2, 2, 6, 4, 1, 1 },
        new object[] { 1, 3, 9, 11, 4, 4 },
    ];

    private static IEnumerable<TestCaseData> AdaptiveCases() =>
        from object[] g in AdaptiveGeometries
        from dtype in new[] { DType.Float32, DType.Float64 }
        select new TestCaseData(g.Append(dtype).ToArray());

    [TestCaseSource(nameof(AdaptiveCases))]
    public void AdaptiveAvgPool2d_forward_and_backward_match_the_cpu(int n, int c, int h, int w, int oh, int ow, DType dtype)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(9000 + (ulong)(n * 31 + c * 7 + h + w + oh + ow));
        var (xc, xd) = CnnCheck.Random(Cuda, rng, dtype, n, c, h, w);
        var yc = Tensor.Empty(new Shape(n, c, oh, ow), dtype, Cpu);
        var yd = CnnCheck.Poisoned(Cuda, dtype, n, c, oh, ow);
        Cpu.AdaptiveAvgPool2d(xc, yc);
        Cuda.AdaptiveAvgPool2d(xd, yd);
        var (rtol, atol) = CnnCheck.Tolerance(dtype);
        CnnCheck.AssertClose(yc, yd, rtol, atol, "y");

        var (dyc, dyd) = CnnCheck.Random(Cuda, rng, dtype, n, c, oh, ow);
        var (dxc, dxd) = CnnCheck.Random(Cuda, rng, dtype, n, c, h, w);
        Cpu.AdaptiveAvgPool2dBackward(dyc, dxc);
        Cuda.AdaptiveAvgPool2dBackward(dyd, dxd);
        CnnCheck.AssertEqual(dxc, dxd, "dx");
    }
}
