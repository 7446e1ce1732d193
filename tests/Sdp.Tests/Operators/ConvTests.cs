using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Memory;
using Sdp.Tests.Support;

namespace Sdp.Tests.Operators;

/// <summary>Naive float64 references shared by the CNN tests.</summary>
internal static class ConvReference
{
    /// <summary>The 7-loop definition of conv2d (cross-correlation with zero padding), in float64.</summary>
    public static double[] Conv2d(double[] x, int[] xs, double[] w, int[] ws, double[]? bias, int stride, int pad)
    {
        int n = xs[0], c = xs[1], h = xs[2], wd = xs[3], o = ws[0], kh = ws[2], kw = ws[3];
        int oh = (h + 2 * pad - kh) / stride + 1, ow = (wd + 2 * pad - kw) / stride + 1;
        var y = new double[n * o * oh * ow];
        for (int b = 0; b < n; b++)
        for (int oc = 0; oc < o; oc++)
        for (int i = 0; i < oh; i++)
        for (int j = 0; j < ow; j++)
        {
            double acc = bias?[oc] ?? 0;
            for (int ic = 0; ic < c; ic++)
            for (int r = 0; r < kh; r++)
            for (int q = 0; q < kw; q++)
            {
                int ih = i * stride - pad + r, iw = j * stride - pad + q;
                if (ih < 0 || ih >= h || iw < 0 || iw >= wd) continue;
                acc += x[((b * c + ic) * h + ih) * wd + iw] * w[((oc * c + ic) * kh + r) * kw + q];
            }
            y[((b * o + oc) * oh + i) * ow + j] = acc;
        }
        return y;
    }

    /// <summary>The adjoint of <see cref="Conv2d"/> (no bias), in float64: dx and dw for the output gradient dy, from
    /// differentiating the 7-loop sum term by term.</summary>
    public static (double[] Dx, double[] Dw) Conv2dBackward(double[] x, int[] xs, double[] w, int[] ws, double[] dy, int stride, int pad)
    {
        int n = xs[0], c = xs[1], h = xs[2], wd = xs[3], o = ws[0], kh = ws[2], kw = ws[3];
        int oh = (h + 2 * pad - kh) / stride + 1, ow = (wd + 2 * pad - kw) / stride + 1;
        var dx = new double[x.Length];
        var dw = new double[w.Length];
        for (int b = 0; b < n; b++)
        for (int oc = 0; oc < o; oc++)
        for (int i = 0; i < oh; i++)
        for (int j = 0; j < ow; j++)
        {
            double g = dy[((b * o + oc) * oh + i) * ow + j];
            for (int ic = 0; ic < c; ic++)
            for (int r = 0; r < kh; r++)
            for (int q = 0; q < kw; q++)
            {
                int ih = i * stride - pad + r, iw = j * stride - pad + q;
                if (ih < 0 || ih >= h || iw < 0 || iw >= wd) continue;
                dx[((b * c + ic) * h + ih) * wd + iw] += g * w[((oc * c + ic) * kh + r) * kw + q];
                dw[((oc * c + ic) * kh + r) * kw + q] += g * x[((b * c + ic) * h + ih) * wd + iw];
            }
        }
        return (dx, dw);
    }

    public static double[] Random(Rng rng, int count) => Enumerable.Range(0, count).Select(_ => rng.NextNormal()).ToArray();
}

/// <summary>Forward values of the CNN ops against naive references and hand-computed cases, per backend, in float32.</summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class ConvForwardTests(IBackend backend)
{
    private Tensor T(double[] v, params int[] shape) => Tensor.FromDoubles(v, new Shape(shape), DType.Float32, backend);

    // (N, C, H, W, O, KH, KW, stride, padding, bias)
    private static readonly object[] ConvCases =
    [
        new object[] { 1, 1, 5, 5, 1, 3, 3, 1, 0, true },
        new object[] { 2, 3, 7, 5, 4, 3, 3, 2, 1, true },
        new object[] { 3, 4, 6, 6, 5, 1, 1, 1, 0, false },   // 1x1 stride 1: GEMM on x directly
        new object[] { 2, 3, 5, 5, 2, 1, 1, 2, 0, true },    // 1x1 stride 2: the ResNet shortcut
        new object[] { 1, 2, 6, 5, 3, 3, 2, 1, 2, true },    // non-square kernel, padding 2
        new object[] { 20, 8, 4, 4, 16, 3, 3, 1, 1, true },  // many small planes: images batched per GEMM
        new object[] { 2, 3, 17, 16, 4, 3, 3, 1, 1, false }, // planes wide enough for one image per GEMM
        new object[] { 2, 16, 16, 16, 8, 1, 1, 1, 0, true }, // 1x1 stride 1, one image per GEMM
    ];

    [TestCaseSource(nameof(ConvCases))]
    public void Conv2d_matches_naive_reference(int n, int c, int h, int w, int o, int kh, int kw, int stride, int pad, bool withBias)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(11);
        var xv = ConvReference.Random(rng, n * c * h * w);
        var wv = ConvReference.Random(rng, o * c * kh * kw);
        var bv = withBias ? ConvReference.Random(rng, o) : null;
        var y = Ops.Conv2d(T(xv, n, c, h, w), T(wv, o, c, kh, kw), bv is null ? null : T(bv, o), stride, pad);
        int oh = (h + 2 * pad - kh) / stride + 1, ow = (w + 2 * pad - kw) / stride + 1;
        Assert.That(y.Shape, Is.EqualTo(new Shape(n, o, oh, ow)));
        TensorAssert.Close(y, ConvReference.Conv2d(xv, [n, c, h, w], wv, [o, c, kh, kw], bv, stride, pad), atol: 1e-4, rtol: 1e-4);
    }

    /// <summary>
    /// Conv2dBackward with overwrite = true writes every element of dx, dweight and dbias (given NaN, as autograd's fresh
    /// buffers may hold anything) and gives what accumulating into zeros gives. Shapes for each CPU path: Winograd (16
    /// channels, 16 x 16 planes, 8 images: F(2x2) forward-side, F(4x4) for the gradients), stride 2 3 x 3, 1 x 1 stride 2
    /// and stride 1, a non-square kernel; on the CPU under every algorithm of SDP_CPU_CONV.
    /// </summary>
    [Test]
    public void Conv2dBackward_overwrite_matches_accumulating_into_zeros([Values(DType.Float32, DType.Float64)] DType dtype)
    {
        (int N, int C, int H, int W, int O, int KH, int KW, int S, int P)[] shapes =
            [(8, 16, 16, 16, 16, 3, 3, 1, 1), (2, 3, 7, 5, 4, 3, 3, 2, 1), (2, 3, 5, 5, 2, 1, 1, 2, 0), (3, 4, 6, 6, 5, 1, 1, 1, 0), (1, 2, 6, 5, 3, 3, 2, 1, 2)];
        var algorithms = backend is CpuBackend ? Enum.GetValues<CpuConvAlgorithm>() : [CpuBackend.ConvAlgorithm];
        var saved = CpuBackend.ConvAlgorithm;
        try
        {
            foreach (var algorithm in algorithms)
            {
                CpuBackend.ConvAlgorithm = algorithm;
                foreach (var (n, c, h, w, o, kh, kw, st, pad) in shapes)
                {
                    using var scope = TensorScope.Begin();
                    var rng = new Rng(12);
                    int oh = (h + 2 * pad - kh) / st + 1, ow = (w + 2 * pad - kw) / st + 1;
                    Tensor Random(params int[] shape) => Tensor.FromDoubles(ConvReference.Random(rng, shape.Aggregate(1, (a, b) => a * b)), new Shape(shape), dtype, backend);
                    var x = Random(n, c, h, w);
                    var wt = Random(o, c, kh, kw);
                    var dy = Random(n, o, oh, ow);
                    Tensor[] Grads(double start) => [Tensor.Full(x.Shape, start, dtype, backend), Tensor.Full(wt.Shape, start, dtype, backend), Tensor.Full(new Shape(o), start, dtype, backend)];
                    var accumulated = Grads(0);
                    var overwritten = Grads(double.NaN);
                    backend.Conv2dBackward(x, wt, dy, accumulated[0], accumulated[1], accumulated[2], st, pad);
                    backend.Conv2dBackward(x, wt, dy, overwritten[0], overwritten[1], overwritten[2], st, pad, overwrite: true);
                    string where = $"{algorithm} {dtype} ({n}, {c}, {h}, {w}) -> {o}, kernel {kh}x{kw}, stride {st}, padding {pad}";
                    Assert.That(overwritten[0].ToDoubles(), Is.EqualTo(accumulated[0].ToDoubles()), $"dx, {where}");
                    Assert.That(overwritten[1].ToDoubles(), Is.EqualTo(accumulated[1].ToDoubles()), $"dweight, {where}");
                    Assert.That(overwritten[2].ToDoubles(), Is.EqualTo(accumulated[2].ToDoubles()), $"dbias, {where}");
                }
            }
        }
        finally
        {
            CpuBackend.ConvAlgorithm = saved;
        }
    }

    /// <summary>BatchNorm2dBackward with overwrite = true, in training and in eval, on NaN-filled gradient buffers, gives what
    /// accumulating into zeros gives.</summary>
    [Test]
    public void BatchNorm2dBackward_overwrite_matches_accumulating_into_zeros([Values(DType.Float32, DType.Float64)] DType dtype, [Values] bool training)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(13);
        const int n = 3, c = 5, h = 7, w = 9;
        Tensor Random(params int[] shape) => Tensor.FromDoubles(ConvReference.Random(rng, shape.Aggregate(1, (a, b) => a * b)), new Shape(shape), dtype, backend);
        var x = Random(n, c, h, w);
        var weight = Random(c);
        var mean = Random(c);
        var rstd = Tensor.FromDoubles([.. Enumerable.Range(1, c).Select(i => 0.5 + (0.1 * i))], new Shape(c), dtype, backend);
        var dy = Random(n, c, h, w);
        Tensor[] Grads(double start) => [Tensor.Full(x.Shape, start, dtype, backend), Tensor.Full(new Shape(c), start, dtype, backend), Tensor.Full(new Shape(c), start, dtype, backend)];
        var accumulated = Grads(0);
        var overwritten = Grads(double.NaN);
        backend.BatchNorm2dBackward(x, weight, mean, rstd, dy, accumulated[0], accumulated[1], accumulated[2], training);
        backend.BatchNorm2dBackward(x, weight, mean, rstd, dy, overwritten[0], overwritten[1], overwritten[2], training, overwrite: true);
        for (int i = 0; i < 3; i++) Assert.That(overwritten[i].ToDoubles(), Is.EqualTo(accumulated[i].ToDoubles()), new[] { "dx", "dweight", "dbias" }[i]);
    }

    [Test]
    public void Conv2d_hand_example()
    {
        using var scope = TensorScope.Begin();
        // x = [[1,2,3],[4,5,6],[7,8,9]], w = [[1,0],[0,-1]], bias 10, stride 1, padding 0:
        // y[i,j] = x[i,j] - x[i+1,j+1] + 10 = -4 + 10 for every cell.
        var y = Ops.Conv2d(T([1, 2, 3, 4, 5, 6, 7, 8, 9], 1, 1, 3, 3), T([1, 0, 0, -1], 1, 1, 2, 2), T([10], 1));
        TensorAssert.Close(y, [6, 6, 6, 6]);
        // Padding 1, stride 2 with a 1x1 kernel of 2: OH = (3 + 2 - 1)/2 + 1 = 3, sampling rows and columns
        // {-1, 1, 3}; only x[1,1] = 5 is inside, the rest is padding.
        var z = Ops.Conv2d(T([1, 2, 3, 4, 5, 6, 7, 8, 9], 1, 1, 3, 3), T([2], 1, 1, 1, 1), null, stride: 2, padding: 1);
        TensorAssert.Close(z, [0, 0, 0, 0, 10, 0, 0, 0, 0]);
    }

    [Test]
    public void BatchNorm2d_training_normalises_with_batch_statistics_and_updates_running_stats()
    {
        using var scope = TensorScope.Begin();
        // x (N=2, C=2, H=1, W=2). Channel 0 holds {1, 2, 3, 6}: mean 3, biased var (4+1+0+9)/4 = 3.5,
        // unbiased 14/3. Channel 1 holds {0, 0, 2, 2}: mean 1, biased var 1, unbiased 4/3.
        double[] xv = [1, 2, 0, 0, 3, 6, 2, 2];
        var weight = T([2, 0.5], 2);
        var bias = T([1, -1], 2);
        var rm = T([0, 0], 2);
        var rv = T([1, 1], 2);
        const double eps = 1e-5;
        var y = Ops.BatchNorm2d(T(xv, 2, 2, 1, 2), weight, bias, rm, rv, training: true, momentum: 0.1, eps: eps);
        double r0 = 1 / Math.Sqrt(3.5 + eps), r1 = 1 / Math.Sqrt(1 + eps);
        double Y0(double v) => (v - 3) * r0 * 2 + 1;
        double Y1(double v) => (v - 1) * r1 * 0.5 - 1;
        TensorAssert.Close(y, [Y0(1), Y0(2), Y1(0), Y1(0), Y0(3), Y0(6), Y1(2), Y1(2)]);
        // running = 0.9·running + 0.1·stat: mean [0.3, 0.1]; var [0.9 + 0.1·14/3, 0.9 + 0.1·4/3].
        TensorAssert.Close(rm, [0.3, 0.1]);
        TensorAssert.Close(rv, [0.9 + 1.4 / 3, 0.9 + 0.4 / 3]);

        // Step 2 on 2x: channel means [6, 2], unbiased vars [56/3, 16/3].
        Ops.BatchNorm2d(T(xv.Select(v => 2 * v).ToArray(), 2, 2, 1, 2), weight, bias, rm, rv, training: true, momentum: 0.1, eps: eps);
        double m0 = 0.9 * 0.3 + 0.6, m1 = 0.9 * 0.1 + 0.2;
        double v0 = 0.9 * (0.9 + 1.4 / 3) + 5.6 / 3, v1 = 0.9 * (0.9 + 0.4 / 3) + 1.6 / 3;
        TensorAssert.Close(rm, [m0, m1]); // [0.87, 0.29]
        TensorAssert.Close(rv, [v0, v1]); // [3.0966667, 1.4633333]

        // Eval uses the running statistics and leaves them alone.
        var e = Ops.BatchNorm2d(T([1, -1], 1, 2, 1, 1), weight, bias, rm, rv, training: false, eps: eps);
        TensorAssert.Close(e, [(1 - m0) / Math.Sqrt(v0 + eps) * 2 + 1, (-1 - m1) / Math.Sqrt(v1 + eps) * 0.5 - 1]);
        TensorAssert.Close(rm, [m0, m1]);
        TensorAssert.Close(rv, [v0, v1]);
    }

    [Test]
    public void MaxPool2d_hand_examples()
    {
        using var scope = TensorScope.Begin();
        var x = T(Enumerable.Range(1, 16).Select(v => (double)v).ToArray(), 1, 1, 4, 4);
        TensorAssert.Close(Ops.MaxPool2d(x, 2, 2), [6, 8, 14, 16]);
        // kernel 3, stride 2, padding 1: windows cover rows/cols {0,1} and {1,2,3}.
        TensorAssert.Close(Ops.MaxPool2d(x, 3, 2, 1), [6, 8, 14, 16]);
        // All negative, x[r, c] = -(4r + c + 1): padding is -inf, not 0, so each window's max is its
        // top-left real element: x[0,0] = -1, x[0,1] = -2, x[1,0] = -5, x[1,1] = -6.
        var neg = T(Enumerable.Range(1, 16).Select(v => (double)-v).ToArray(), 1, 1, 4, 4);
        TensorAssert.Close(Ops.MaxPool2d(neg, 3, 2, 1), [-1, -2, -5, -6]);
        // Non-square planes, two channels, stride 1.
        var r = T([1, 5, 2, 0, 3, 4, /* c1 */ 9, 8, 7, 6, 5, 4], 1, 2, 2, 3);
        TensorAssert.Close(Ops.MaxPool2d(r, 2, 1), [5, 5, 9, 8]);
    }

    [Test]
    public void MaxPool2d_ties_send_the_gradient_to_the_first_index_in_scan_order()
    {
        using var scope = TensorScope.Begin();
        var x = T([1, 1, 1, 1, 1, 1], 1, 1, 2, 3);
        x.RequiresGrad = true;
        var y = Ops.MaxPool2d(x, 2, 1); // windows at columns {0,1} and {1,2}: winners (0,0) and (0,1)
        y.Backward(T([1, 10], 1, 1, 1, 2));
        TensorAssert.Close(x.Grad!, [1, 10, 0, 0, 0, 0]);
        x.ZeroGrad();
    }

    [Test]
    public void AdaptiveAvgPool2d_hand_examples()
    {
        using var scope = TensorScope.Begin();
        // x[r, c] = 5r + c on a 3x5 plane; the mean over a rectangle is 5·mean(r) + mean(c).
        // Rows (out 2): [0, 2) and [1, 3) -> mean r 0.5, 1.5. Cols (out 3): [0, 2), [1, 4), [3, 5) -> 0.5, 2, 3.5.
        var x = T(Enumerable.Range(0, 15).Select(v => (double)v).ToArray(), 1, 1, 3, 5);
        TensorAssert.Close(Ops.AdaptiveAvgPool2d(x, 2, 3), [3, 4.5, 6, 8, 9.5, 11]);
        TensorAssert.Close(Ops.AdaptiveAvgPool2d(x, 1, 1), [7]);
        // Output larger than input repeats cells: 3 -> 5 rows uses bins [0,1),[0,2),[1,2),[1,3),[2,3).
        var col = T([0, 3, 6], 1, 1, 3, 1);
        TensorAssert.Close(Ops.AdaptiveAvgPool2d(col, 5, 1), [0, 1.5, 3, 4.5, 6]);
        // Global pool over (N=2, C=2).
        var g = T([1, 2, 3, 4, 10, 10, 10, 10, -1, 1, -3, 3, 0, 0, 0, 8], 2, 2, 2, 2);
        var gp = Ops.AdaptiveAvgPool2d(g, 1, 1);
        Assert.That(gp.Shape, Is.EqualTo(new Shape(2, 2, 1, 1)));
        TensorAssert.Close(gp, [2.5, 10, 0, 2]);
    }
}

/// <summary>Float64 finite-difference checks of the CNN ops, plus CPU plan coverage, memory and bad-input tests.</summary>
public class ConvGradTests
{
    // (N, C, H, W, O, KH, KW, stride, padding, bias)
    private static readonly object[] ConvCases =
    [
        new object[] { 1, 1, 5, 5, 1, 3, 3, 1, 0, true },
        new object[] { 2, 3, 5, 7, 4, 3, 3, 2, 1, true },
        new object[] { 2, 3, 4, 6, 2, 1, 1, 1, 0, false },
        new object[] { 2, 3, 5, 5, 2, 1, 1, 2, 0, true },
        new object[] { 1, 2, 6, 5, 3, 3, 2, 1, 2, true },
        new object[] { 3, 2, 3, 3, 2, 3, 3, 1, 1, true },
        new object[] { 2, 1, 4, 3, 1, 3, 3, 2, 1, false },
    ];

    [TestCaseSource(nameof(ConvCases))]
    public void Conv2d_matches_finite_differences(int n, int c, int h, int w, int o, int kh, int kw, int stride, int pad, bool withBias)
    {
        var rng = new Rng(21);
        var x = GradCheck.Input(rng, n, c, h, w);
        var wt = GradCheck.Input(rng, o, c, kh, kw);
        var b = GradCheck.Input(rng, o);
        if (withBias) GradCheck.Check(t => Ops.Conv2d(t[0], t[1], t[2], stride, pad), [x, wt, b]);
        else GradCheck.Check(t => Ops.Conv2d(t[0], t[1], null, stride, pad), [x, wt]);
        // The im2col path, one image per GEMM (no batching of images), which big planes get there by default.
        using (Plan(slotColumns: 1, threadedColumns: 1, threads: null, implicitGemm: false))
        {
            GradCheck.Check(t => Ops.Conv2d(t[0], t[1], t[2], stride, pad), [x, wt, b]);
        }
    }

    [Test]
    public void Conv2d_gradient_for_only_one_input()
    {
        var rng = new Rng(22);
        var x = GradCheck.Input(rng, 2, 2, 4, 5);
        var w = Tensor.Randn(new Shape(3, 2, 3, 3), rng, dtype: DType.Float64);
        var b = Tensor.Randn(new Shape(3), rng, dtype: DType.Float64);
        GradCheck.Check(t => Ops.Conv2d(t[0], w, b, 1, 1), [x]);
        x.RequiresGrad = false;
        w.RequiresGrad = true;
        GradCheck.Check(t => Ops.Conv2d(x, t[0], null, 2, 1), [w]);
    }

    /// <summary>Every CPU split (the implicit GEMM; im2col with slots of single-threaded GEMMs, threaded GEMMs, images
    /// batched per GEMM or not) gives the reference.</summary>
    [TestCase(1, 256, 1024, true)]
    [TestCase(2, 256, 1024, true)]
    [TestCase(3, 256, 1024, true)]
    [TestCase(1, 256, 1024, false)]
    [TestCase(2, 256, 1024, false)]
    [TestCase(8, 256, 1024, false)]
    [TestCase(3, 1, 1, false)]
    [TestCase(16, 1, 1, false)]
    [TestCase(2, 40, 40, false)]
    public void Conv2d_cpu_plans_agree_with_the_reference(int threads, int slotColumns, int threadedColumns, bool implicitGemm)
    {
        using var plan = Plan(slotColumns, threadedColumns, threads, implicitGemm);
        var rng = new Rng(23);
        foreach (var (n, c, h, w, o, k, s, p) in new[] { (5, 3, 6, 5, 4, 3, 2, 1), (4, 3, 4, 4, 2, 1, 1, 0), (3, 2, 5, 5, 3, 3, 1, 1) })
        {
            using var scope = TensorScope.Begin();
            var xv = ConvReference.Random(rng, n * c * h * w);
            var wv = ConvReference.Random(rng, o * c * k * k);
            var bv = ConvReference.Random(rng, o);
            var x = Tensor.FromArray(xv, new Shape(n, c, h, w));
            var wt = Tensor.FromArray(wv, new Shape(o, c, k, k));
            var b = Tensor.FromArray(bv, new Shape(o));
            x.RequiresGrad = wt.RequiresGrad = b.RequiresGrad = true;
            var y = Ops.Conv2d(x, wt, b, s, p);
            TensorAssert.Close(y, ConvReference.Conv2d(xv, [n, c, h, w], wv, [o, c, k, k], bv, s, p), 1e-12, 1e-12);

            // Gradients against the reference's adjoint: with dy = 1 everywhere,
            // dbias[o] = N·OH·OW and dW/dX follow from differentiating the 7-loop sum.
            y.Backward(Tensor.Full(y.Shape, 1.0, DType.Float64));
            int oh = y.Shape[2], ow = y.Shape[3];
            var (dx, dw) = ConvReference.Conv2dBackward(xv, [n, c, h, w], wv, [o, c, k, k], Enumerable.Repeat(1.0, (int)y.Numel).ToArray(), s, p);
            TensorAssert.Close(x.Grad!, dx, 1e-12, 1e-12);
            TensorAssert.Close(wt.Grad!, dw, 1e-12, 1e-12);
            TensorAssert.Close(b.Grad!, Enumerable.Repeat((double)n * oh * ow, o).ToArray(), 1e-12, 1e-12);
            x.ZeroGrad();
            wt.ZeroGrad();
            b.ZeroGrad();
        }
    }

    [Test]
    public void Conv2d_column_buffers_are_workspace_and_are_freed()
    {
        var rng = new Rng(24);
        var x = Tensor.Randn(new Shape(4, 8, 9, 9), rng);
        var w = Tensor.Randn(new Shape(6, 8, 3, 3), rng);
        var account = new MemoryAccount("conv");
        using (Plan(CpuBackend.ConvSlotColumns, CpuBackend.ConvThreadedColumns, threads: null, implicitGemm: false))
        using (account.Activate())
        {
            using var y = Ops.Conv2d(x, w, null, 1, 1);
            Assert.That(account.CurrentTotal, Is.EqualTo(y.ByteLength), "only the output stays allocated");
            Assert.That(account.PeakBytes(MemoryCategory.Workspace), Is.GreaterThanOrEqualTo(y.ByteLength + 8L * 9 * 81 * 4), "the column buffer was charged");
        }
        Assert.That(account.CurrentTotal, Is.Zero);
    }

    [Test]
    public void Conv2d_implicit_gemm_charges_only_its_column_offsets()
    {
        var rng = new Rng(24);
        var x = Tensor.Randn(new Shape(4, 8, 9, 9), rng);
        var w = Tensor.Randn(new Shape(6, 8, 3, 3), rng);
        var account = new MemoryAccount("conv");
        using (Plan(CpuBackend.ConvSlotColumns, CpuBackend.ConvThreadedColumns, threads: null, implicitGemm: true))
        using (account.Activate())
        {
            using var y = Ops.Conv2d(x, w, null, 1, 1);
            Assert.That(account.CurrentTotal, Is.EqualTo(y.ByteLength), "only the output stays allocated");
            // No column matrix (8·9 rows x 4·81 columns): the workspace is the output's column offsets, one int per column.
            Assert.That(account.PeakBytes(MemoryCategory.Workspace), Is.EqualTo(y.ByteLength + 4L * 81 * sizeof(int)));
        }
        Assert.That(account.CurrentTotal, Is.Zero);
    }

    /// <summary>
    /// The implicit GEMM's packers on awkward geometries (planes that are not a multiple of the panel width, same-plane
    /// and strided unfolding, non-square kernels, padding wider than the kernel's reach) with GEMM blocks small enough
    /// that k slices and column blocks cross image boundaries: forward, input and weight gradients against float64
    /// references, float32 and float64, 1 and 2 threads.
    /// </summary>
    [TestCase(1, DType.Float64)]
    [TestCase(2, DType.Float64)]
    [TestCase(2, DType.Float32)]
    public void Conv2d_implicit_gemm_packers_agree_with_the_reference(int threads, DType dtype)
    {
        using var plan = Plan(CpuBackend.ConvSlotColumns, CpuBackend.ConvThreadedColumns, threads, implicitGemm: true);
        int oldKc = Sdp.Kernels.Cpu.Gemm.TuneKC, oldNc = Sdp.Kernels.Cpu.Gemm.TuneNC;
        Sdp.Kernels.Cpu.Gemm.TuneKC = 13;
        Sdp.Kernels.Cpu.Gemm.TuneNC = 32;
        try
        {
            var rng = new Rng(25);
            double tol = dtype == DType.Float64 ? 1e-11 : 1e-4;
            foreach (var (n, c, h, w, o, kh, kw, s, p) in new[]
            {
                (3, 3, 5, 5, 7, 3, 3, 1, 1), (2, 2, 7, 6, 5, 3, 3, 1, 1), (2, 4, 9, 9, 3, 3, 3, 2, 1), (3, 2, 6, 7, 4, 1, 1, 2, 0),
                (2, 3, 5, 6, 4, 3, 2, 1, 2), (4, 5, 4, 4, 9, 3, 3, 1, 1), (2, 2, 8, 5, 3, 5, 5, 1, 2), (1, 3, 7, 7, 2, 3, 3, 3, 0),
                (3, 2, 4, 4, 3, 3, 3, 1, 0), (2, 3, 5, 5, 17, 1, 1, 1, 0),
                (2, 3, 20, 21, 4, 3, 3, 2, 1), (1, 2, 34, 33, 3, 1, 1, 2, 0), (1, 2, 19, 40, 3, 3, 3, 2, 0), // stride 2, rows wide enough for vectors
            })
            {
                using var scope = TensorScope.Begin();
                var xv = ConvReference.Random(rng, n * c * h * w);
                var wv = ConvReference.Random(rng, o * c * kh * kw);
                var x = Tensor.FromDoubles(xv, new Shape(n, c, h, w), dtype);
                var wt = Tensor.FromDoubles(wv, new Shape(o, c, kh, kw), dtype);
                x.RequiresGrad = wt.RequiresGrad = true;
                var y = Ops.Conv2d(x, wt, null, s, p);
                var yRef = ConvReference.Conv2d(xv, [n, c, h, w], wv, [o, c, kh, kw], null, s, p);
                TensorAssert.Close(y, yRef, tol, tol);
                var dyv = ConvReference.Random(rng, yRef.Length);
                y.Backward(Tensor.FromDoubles(dyv, y.Shape, dtype));
                var (dx, dw) = ConvReference.Conv2dBackward(xv, [n, c, h, w], wv, [o, c, kh, kw], dyv, s, p);
                TensorAssert.Close(x.Grad!, dx, tol, tol);
                TensorAssert.Close(wt.Grad!, dw, tol, tol);
            }
        }
        finally
        {
            Sdp.Kernels.Cpu.Gemm.TuneKC = oldKc;
            Sdp.Kernels.Cpu.Gemm.TuneNC = oldNc;
        }
    }

    /// <summary>
    /// Strided convolutions on the implicit-GEMM path, which unfolds from the input's stride phases and folds the input
    /// gradient by a vectorised stride-2 col2im: odd and even planes, padding 0 and 1, 1x1 stride 2, stride 3, and shapes
    /// where the phase planes cannot carry every input (the plain strided unfold then runs). The forward output starts as
    /// NaN (it must be overwritten), dx and dw start as random values (they are accumulated into). Checked against the
    /// float64 reference, against the strided unfold of before (<see cref="CpuBackend.ConvStridedLegacy"/>: the same sums
    /// in the same order, so forward and dw are bit-identical), and 1 thread against 2, bit for bit.
    /// </summary>
    [TestCase(DType.Float32)]
    [TestCase(DType.Float64)]
    public void Conv2d_strided_phase_paths_agree_with_the_reference_and_across_thread_counts(DType dtype)
    {
        using var plan = Plan(CpuBackend.ConvSlotColumns, CpuBackend.ConvThreadedColumns, threads: null, implicitGemm: true);
        var cpu = CpuBackend.Instance;
        var rng = new Rng(26);
        double tol = dtype == DType.Float64 ? 1e-11 : 2e-4;
        foreach (var (n, c, h, w, o, k, s, p) in new[]
        {
            (3, 5, 9, 7, 6, 3, 2, 1), (2, 4, 32, 32, 9, 3, 2, 1), (5, 3, 8, 8, 7, 3, 2, 1), (2, 3, 21, 35, 5, 3, 2, 1),
            (3, 6, 7, 9, 5, 1, 2, 0), (2, 7, 16, 16, 4, 1, 2, 0), (2, 3, 10, 11, 4, 3, 2, 0), (2, 2, 11, 10, 3, 3, 2, 0),
            (2, 3, 12, 13, 4, 3, 3, 1), (2, 2, 9, 9, 3, 5, 2, 2), (40, 3, 6, 6, 5, 3, 2, 1),
        })
        {
            int oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1;
            var xv = ConvReference.Random(rng, n * c * h * w);
            var wv = ConvReference.Random(rng, o * c * k * k);
            var dyv = ConvReference.Random(rng, n * o * oh * ow);
            var dxSeed = ConvReference.Random(rng, xv.Length);
            var dwSeed = ConvReference.Random(rng, wv.Length);
            using var x = Tensor.FromDoubles(xv, new Shape(n, c, h, w), dtype);
            using var wt = Tensor.FromDoubles(wv, new Shape(o, c, k, k), dtype);
            using var dy = Tensor.FromDoubles(dyv, new Shape(n, o, oh, ow), dtype);

            (double[] Y, double[] Dx, double[] Dw) Run(int threads, bool legacy)
            {
                CpuParallel.MaxThreads = threads;
                CpuBackend.ConvStridedLegacy = legacy;
                try
                {
                    using var y = Tensor.FromDoubles(Enumerable.Repeat(double.NaN, n * o * oh * ow).ToArray(), new Shape(n, o, oh, ow), dtype);
                    using var dx = Tensor.FromDoubles(dxSeed, x.Shape, dtype);
                    using var dw = Tensor.FromDoubles(dwSeed, wt.Shape, dtype);
                    cpu.Conv2d(x, wt, null, y, s, p);
                    cpu.Conv2dBackward(x, wt, dy, dx, dw, null, s, p);
                    return (y.ToDoubles(), dx.ToDoubles(), dw.ToDoubles());
                }
                finally
                {
                    CpuBackend.ConvStridedLegacy = false;
                }
            }

            string what = $"N={n} C={c} {h}x{w} O={o} k={k} s={s} p={p} {dtype}";
            var one = Run(1, legacy: false);
            var two = Run(2, legacy: false);
            var old = Run(2, legacy: true);
            var yRef = ConvReference.Conv2d(xv, [n, c, h, w], wv, [o, c, k, k], null, s, p);
            var (dxRef, dwRef) = ConvReference.Conv2dBackward(xv, [n, c, h, w], wv, [o, c, k, k], dyv, s, p);
            TensorAssert.Close(two.Y, yRef, tol, tol, "y " + what);
            TensorAssert.Close(two.Dx, dxRef.Select((v, i) => v + (double)(dtype == DType.Float32 ? (float)dxSeed[i] : dxSeed[i])).ToArray(), tol, tol, "dx " + what);
            TensorAssert.Close(two.Dw, dwRef.Select((v, i) => v + (double)(dtype == DType.Float32 ? (float)dwSeed[i] : dwSeed[i])).ToArray(), tol, tol, "dw " + what);
            Assert.That(one.Y, Is.EqualTo(two.Y), "y, 1 vs 2 threads: " + what);
            Assert.That(one.Dx, Is.EqualTo(two.Dx), "dx, 1 vs 2 threads: " + what);
            Assert.That(one.Dw, Is.EqualTo(two.Dw), "dw, 1 vs 2 threads: " + what);
            Assert.That(two.Y, Is.EqualTo(old.Y), "y, phase planes vs strided unfold: " + what);
            Assert.That(two.Dw, Is.EqualTo(old.Dw), "dw, phase planes vs strided unfold: " + what);
            TensorAssert.Close(two.Dx, old.Dx, tol, tol, "dx, vectorised fold vs the old col2im: " + what);
        }
    }

    /// <summary>The phase planes cover every input a tap reads exactly when no tap reaches past the last phase row that
    /// the input still has; otherwise the plain strided unfold must run.</summary>
    [TestCase(32, 3, 2, 1, true)]
    [TestCase(7, 3, 2, 1, true)]
    [TestCase(8, 1, 2, 0, true)]
    [TestCase(9, 1, 2, 0, true)]
    [TestCase(9, 3, 2, 0, false)]  // OH = 4: tap 2 reads input row 8 = phase row 4 of phase 0, past the 4 rows kept
    [TestCase(10, 3, 2, 0, false)] // likewise: tap 2 of output row 3 reads input row 8
    [TestCase(11, 3, 2, 1, true)]
    [TestCase(8, 3, 1, 1, false)]  // stride 1 needs no phases
    public void Phase_planes_fit_only_when_they_carry_every_input(int size, int kernel, int stride, int pad, bool fits)
    {
        int outSize = (size + 2 * pad - kernel) / stride + 1;
        var g = new Sdp.Kernels.Cpu.ConvGeometry(1, 1, size, size, 1, kernel, kernel, outSize, outSize, stride, pad);
        Assert.That(Sdp.Kernels.Cpu.ConvGemm.PhaseSplitFits(g), Is.EqualTo(fits));
    }

    [TestCase(2, 1, 1, 1)]
    [TestCase(1, 3, 2, 3)]
    [TestCase(2, 3, 3, 2)]
    [TestCase(3, 2, 5, 4)]
    public void BatchNorm2d_training_matches_finite_differences(int n, int c, int h, int w)
    {
        var rng = new Rng(31);
        var x = GradCheck.Input(rng, n, c, h, w);
        var weight = GradCheck.Input(rng, c);
        var bias = GradCheck.Input(rng, c);
        var rm = Tensor.Zeros(new Shape(c), DType.Float64);
        var rv = Tensor.Ones(new Shape(c), DType.Float64);
        // dx flows through the batch mean and variance as well as the direct path.
        GradCheck.Check(t => Ops.BatchNorm2d(t[0], t[1], t[2], rm, rv, training: true), [x, weight, bias]);
        GradCheck.Check(t => Ops.BatchNorm2d(t[0], weight, bias, rm, rv, training: true, eps: 1e-3), [x]);
    }

    [TestCase(1, 1, 1, 1)]
    [TestCase(2, 3, 3, 2)]
    public void BatchNorm2d_eval_matches_finite_differences(int n, int c, int h, int w)
    {
        var rng = new Rng(32);
        var x = GradCheck.Input(rng, n, c, h, w);
        var weight = GradCheck.Input(rng, c);
        var bias = GradCheck.Input(rng, c);
        var rm = Tensor.Randn(new Shape(c), rng, dtype: DType.Float64);
        var rv = Tensor.Uniform(new Shape(c), rng, 0.5, 2, DType.Float64);
        GradCheck.Check(t => Ops.BatchNorm2d(t[0], t[1], t[2], rm, rv, training: false), [x, weight, bias]);
    }

    [Test]
    public void BatchNorm2d_running_stat_update_is_not_recorded()
    {
        using var scope = TensorScope.Begin();
        Tape.Current.Clear();
        var rng = new Rng(33);
        var x = GradCheck.Input(rng, 2, 3, 2, 2);
        var weight = GradCheck.Input(rng, 3);
        var bias = GradCheck.Input(rng, 3);
        var rm = Tensor.Zeros(new Shape(3), DType.Float64);
        var rv = Tensor.Ones(new Shape(3), DType.Float64);
        var y = Ops.BatchNorm2d(x, weight, bias, rm, rv, training: true);
        Assert.That(Tape.Current.Count, Is.EqualTo(1));
        Assert.That(rm.RequiresGrad || rv.RequiresGrad, Is.False);
        Assert.That(rm.ToDoubles(), Has.Some.Not.EqualTo(0.0));
        Ops.Sum(y).Backward();
        Assert.That(rm.Grad, Is.Null);
        x.ZeroGrad();
        weight.ZeroGrad();
        bias.ZeroGrad();

        // Without grad mode the statistics still update, and nothing is recorded.
        using (GradMode.Disable())
        {
            var before = rm.ToDoubles();
            Ops.BatchNorm2d(x, weight, bias, rm, rv, training: true);
            Assert.That(rm.ToDoubles(), Is.Not.EqualTo(before));
        }
        Assert.That(Tape.Current.Count, Is.Zero);
    }

    [TestCase(1, 1, 5, 5, 3, 2, 1)]
    [TestCase(2, 3, 4, 7, 2, 2, 0)]
    [TestCase(1, 2, 6, 5, 3, 1, 1)]
    [TestCase(2, 1, 3, 3, 1, 1, 0)]
    [TestCase(1, 2, 7, 6, 3, 3, 0)]
    public void MaxPool2d_matches_finite_differences(int n, int c, int h, int w, int k, int s, int p)
    {
        // Distinct values so no tie sits within the finite-difference step.
        var rng = new Rng(41);
        int count = n * c * h * w;
        var perm = Enumerable.Range(0, count).OrderBy(_ => rng.NextDouble()).Select(v => v * 0.1 - count * 0.05).ToArray();
        var x = Tensor.FromArray(perm, new Shape(n, c, h, w));
        x.RequiresGrad = true;
        GradCheck.Check(t => Ops.MaxPool2d(t[0], k, s, p), [x]);
    }

    [Test]
    public void MaxPool2d_backend_accepts_int64_argmax()
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(42);
        var be = Backends.Cpu;
        var x = Tensor.Randn(new Shape(2, 3, 5, 6), rng, backend: be);
        var y32 = Tensor.Empty(new Shape(2, 3, 3, 3), DType.Float32, be);
        var y64 = Tensor.Empty(new Shape(2, 3, 3, 3), DType.Float32, be);
        var a32 = Tensor.Empty(y32.Shape, DType.Int32, be);
        var a64 = Tensor.Empty(y32.Shape, DType.Int64, be);
        be.MaxPool2d(x, y32, a32, 3, 2, 1);
        be.MaxPool2d(x, y64, a64, 3, 2, 1);
        Assert.That(y64.ToDoubles(), Is.EqualTo(y32.ToDoubles()));
        Assert.That(a64.ToDoubles(), Is.EqualTo(a32.ToDoubles()));
        var dy = Tensor.Randn(y32.Shape, rng, backend: be);
        var dx32 = Tensor.Zeros(x.Shape, DType.Float32, be);
        var dx64 = Tensor.Zeros(x.Shape, DType.Float32, be);
        be.MaxPool2dBackward(dy, a32, dx32);
        be.MaxPool2dBackward(dy, a64, dx64);
        Assert.That(dx64.ToDoubles(), Is.EqualTo(dx32.ToDoubles()));
    }

    /// <summary>The vectorised float32 max-pool forward (8 outputs at a time) against the scalar float64 one: values and
    /// argmax, with ties (first index in scan order wins), NaNs and -inf, int32 and int64 argmax.</summary>
    [TestCase(3, 2, 1, 37, 41)]
    [TestCase(2, 2, 0, 34, 35)]
    [TestCase(3, 1, 1, 20, 29)]
    [TestCase(2, 1, 0, 17, 18)]
    [TestCase(5, 2, 2, 40, 45)]
    public void MaxPool2d_vectorised_forward_matches_the_scalar_one(int k, int s, int p, int h, int w)
    {
        using var scope = TensorScope.Begin();
        var be = Backends.Cpu;
        var rng = new Rng(43);
        var values = new double[2 * 3 * h * w];
        for (int i = 0; i < values.Length; i++)
        {
            double u = rng.NextDouble();
            values[i] = u < 0.01 ? double.NaN : u < 0.02 ? double.NegativeInfinity : Math.Floor(u * 5); // few levels: many ties
        }
        int oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1;
        var x32 = Tensor.FromDoubles(values, new Shape(2, 3, h, w), DType.Float32, be);
        var x64 = Tensor.FromDoubles(values, new Shape(2, 3, h, w), DType.Float64, be);
        foreach (var argType in new[] { DType.Int32, DType.Int64 })
        {
            var y32 = Tensor.Empty(new Shape(2, 3, oh, ow), DType.Float32, be);
            var y64 = Tensor.Empty(new Shape(2, 3, oh, ow), DType.Float64, be);
            var a32 = Tensor.Empty(y32.Shape, argType, be);
            var a64 = Tensor.Empty(y32.Shape, argType, be);
            be.MaxPool2d(x32, y32, a32, k, s, p);
            be.MaxPool2d(x64, y64, a64, k, s, p);
            Assert.That(a32.ToDoubles(), Is.EqualTo(a64.ToDoubles()));
            Assert.That(y32.ToDoubles(), Is.EqualTo(y64.ToDoubles()));
        }
    }

    [TestCase(1, 1, 4, 4, 1, 1)]
    [TestCase(2, 3, 5, 7, 2, 3)]
    [TestCase(1, 2, 3, 5, 5, 2)]
    [TestCase(2, 1, 6, 4, 4, 4)]
    public void AdaptiveAvgPool2d_matches_finite_differences(int n, int c, int h, int w, int oh, int ow)
    {
        var rng = new Rng(51);
        var x = GradCheck.Input(rng, n, c, h, w);
        GradCheck.Check(t => Ops.AdaptiveAvgPool2d(t[0], oh, ow), [x]);
    }

    [Test]
    public void Small_cnn_chain_matches_finite_differences()
    {
        // conv -> batchnorm (train) -> relu -> maxpool -> conv (1x1, stride 2) -> global average pool.
        var rng = new Rng(61);
        var x = GradCheck.Input(rng, 2, 2, 6, 5);
        var w1 = GradCheck.Input(rng, 3, 2, 3, 3);
        var gamma = GradCheck.Input(rng, 3);
        var beta = GradCheck.Input(rng, 3);
        var w2 = GradCheck.Input(rng, 4, 3, 1, 1);
        var rm = Tensor.Zeros(new Shape(3), DType.Float64);
        var rv = Tensor.Ones(new Shape(3), DType.Float64);
        GradCheck.Check(t =>
        {
            var h1 = Ops.Conv2d(t[0], t[1], null, 1, 1);
            var h2 = Ops.Relu(Ops.BatchNorm2d(h1, t[2], t[3], rm, rv, training: true));
            var h3 = Ops.MaxPool2d(h2, 2, 1);
            return Ops.AdaptiveAvgPool2d(Ops.Conv2d(h3, t[4], null, 2, 0), 1, 1);
        }, [x, w1, gamma, beta, w2], atol: 1e-6, rtol: 1e-4);
    }

    // ---- bad input ------------------------------------------------------------------------------------

    private static void ThrowsMentioning(Action act, params string[] fragments)
    {
        var ex = Assert.Catch<ArgumentException>(act);
        foreach (var f in fragments) Assert.That(ex!.Message, Does.Contain(f));
    }

    [Test]
    public void Conv2d_rejects_bad_inputs()
    {
        using var scope = TensorScope.Begin();
        var x = Tensor.Zeros(new Shape(2, 3, 5, 5));
        ThrowsMentioning(() => Ops.Conv2d(x, Tensor.Zeros(new Shape(4, 2, 3, 3)), null), "conv2d", "(4, 2, 3, 3)", "(2, 3, 5, 5)");
        ThrowsMentioning(() => Ops.Conv2d(x, Tensor.Zeros(new Shape(4, 3, 3, 3)), Tensor.Zeros(new Shape(3))), "conv2d", "bias", "(4,)", "(3,)");
        ThrowsMentioning(() => Ops.Conv2d(Tensor.Zeros(new Shape(3, 5, 5)), Tensor.Zeros(new Shape(4, 3, 3, 3)), null), "conv2d", "rank-4", "(3, 5, 5)");
        ThrowsMentioning(() => Ops.Conv2d(x, Tensor.Zeros(new Shape(4, 3, 7, 7)), null), "conv2d", "(4, 3, 7, 7)", "smaller than the kernel");
        ThrowsMentioning(() => Ops.Conv2d(x, Tensor.Zeros(new Shape(4, 3, 3, 3), DType.Float64), null), "conv2d", "float64");
        ThrowsMentioning(() => Ops.Conv2d(x, Tensor.Zeros(new Shape(4, 3, 3, 3)), null, stride: 0), "conv2d", "stride", "0");
        ThrowsMentioning(() => Ops.Conv2d(x, Tensor.Zeros(new Shape(4, 3, 3, 3)), null, padding: -1), "conv2d", "padding", "-1");
    }

    [Test]
    public void BatchNorm2d_rejects_bad_inputs()
    {
        using var scope = TensorScope.Begin();
        var x = Tensor.Zeros(new Shape(2, 3, 4, 4));
        var ok = Tensor.Ones(new Shape(3));
        var bad = Tensor.Ones(new Shape(4));
        ThrowsMentioning(() => Ops.BatchNorm2d(x, bad, ok, ok, ok, true), "batch_norm2d", "weight", "(3,)", "(4,)");
        ThrowsMentioning(() => Ops.BatchNorm2d(x, ok, ok, ok, bad, true), "batch_norm2d", "running_var", "(4,)");
        ThrowsMentioning(() => Ops.BatchNorm2d(Tensor.Zeros(new Shape(1, 3, 1, 1)), ok, ok, ok, ok, true), "batch_norm2d", "more than 1 value per channel", "(1, 3, 1, 1)");
        ThrowsMentioning(() => Ops.BatchNorm2d(Tensor.Zeros(new Shape(2, 3, 4)), ok, ok, ok, ok, true), "batch_norm2d", "rank-4", "(2, 3, 4)");
        ThrowsMentioning(() => Ops.BatchNorm2d(x, ok, ok, ok, ok, true, eps: 0), "batch_norm2d", "eps");
    }

    [Test]
    public void Pooling_rejects_bad_inputs()
    {
        using var scope = TensorScope.Begin();
        var x = Tensor.Zeros(new Shape(1, 2, 4, 4));
        ThrowsMentioning(() => Ops.MaxPool2d(x, 3, 1, 2), "max_pool2d", "padding", "2");
        ThrowsMentioning(() => Ops.MaxPool2d(x, 5, 1), "max_pool2d", "(1, 2, 4, 4)", "smaller than the kernel 5");
        ThrowsMentioning(() => Ops.MaxPool2d(Tensor.Zeros(new Shape(2, 4, 4)), 2, 2), "max_pool2d", "rank-4", "(2, 4, 4)");
        ThrowsMentioning(() => Ops.MaxPool2d(x, 2, 0), "max_pool2d", "stride", "0");
        ThrowsMentioning(() => Ops.AdaptiveAvgPool2d(Tensor.Zeros(new Shape(2, 4, 4)), 1, 1), "adaptive_avg_pool2d", "rank-4", "(2, 4, 4)");
        ThrowsMentioning(() => Ops.AdaptiveAvgPool2d(x, 0, 2), "adaptive_avg_pool2d", "(0, 2)");
        ThrowsMentioning(() => Ops.AdaptiveAvgPool2d(Tensor.Zeros(new Shape(1, 2, 4, 4), DType.Int32), 1, 1), "adaptive_avg_pool2d", "int32");
    }

    // ---- helpers ----------------------------------------------------------------------------------------

    /// <summary>Temporarily sets the CPU conv plan hooks (group widths, thread count) and the algorithm: implicit GEMM or
    /// im2col (Winograd has its own fixture, WinogradTests).</summary>
    private static IDisposable Plan(int slotColumns, int threadedColumns, int? threads, bool implicitGemm = false)
    {
        int oldSlot = CpuBackend.ConvSlotColumns, oldThreaded = CpuBackend.ConvThreadedColumns, oldWeight = CpuBackend.ConvWeightGradColumns;
        int oldThreads = CpuParallel.MaxThreads;
        var oldAlgorithm = CpuBackend.ConvAlgorithm;
        CpuBackend.ConvAlgorithm = implicitGemm ? CpuConvAlgorithm.Implicit : CpuConvAlgorithm.Im2col;
        CpuBackend.ConvSlotColumns = slotColumns;
        CpuBackend.ConvThreadedColumns = threadedColumns;
        CpuBackend.ConvWeightGradColumns = threadedColumns;
        if (threads is int t) CpuParallel.MaxThreads = t;
        return new Restore(() =>
        {
            CpuBackend.ConvSlotColumns = oldSlot;
            CpuBackend.ConvThreadedColumns = oldThreaded;
            CpuBackend.ConvWeightGradColumns = oldWeight;
            CpuParallel.MaxThreads = oldThreads;
            CpuBackend.ConvAlgorithm = oldAlgorithm;
        });
    }

    private sealed class Restore(Action undo) : IDisposable
    {
        public void Dispose() => undo();
    }
}
