using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Optim;
using Sdp.Tests.Support;
using static Sdp.Tests.Optim.OptimTest;

namespace Sdp.Tests.Optim;

/// <summary>torch.optim.AdamW semantics: closed forms and an independent scalar loop.</summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class AdamWTests(IBackend backend)
{
    private static readonly double[] P0 = [1.0, -2.0, 3.0];

    [SetUp]
    public void ClearTape() => Tape.Current.Clear();

    private static double Tol(DType dtype) => dtype == DType.Float32 ? 2e-6 : 1e-13;

    [Test]
    public void First_step_moves_every_element_by_exactly_lr_in_the_gradient_sign([Values(DType.Float32, DType.Float64)] DType dtype)
    {
        // t = 1: m = (1-β1)g, v = (1-β2)g², so m̂ = g and v̂ = g²; with eps = 0 the update is
        // lr·g/|g| = lr·sign(g) whatever |g| is. With weight decay the parameter is first scaled by (1 - lr·wd).
        double[] g = [1e-3, 5.0, -100.0];
        using var scope = TensorScope.Begin();
        var p = Param(P0, dtype, backend);
        var q = Param(P0, dtype, backend);
        using var plain = new AdamW([p], lr: 0.01, eps: 0, weightDecay: 0);
        using var decayed = new AdamW([q], lr: 0.01, eps: 0, weightDecay: 0.5);
        SetGrads([p, q], [g, g]);
        plain.Step();
        decayed.Step();
        TensorAssert.Close(p, [1.0 - 0.01, -2.0 - 0.01, 3.0 + 0.01], Tol(dtype), Tol(dtype));
        double a = 1 - 0.01 * 0.5;
        TensorAssert.Close(q, [1.0 * a - 0.01, -2.0 * a - 0.01, 3.0 * a + 0.01], Tol(dtype), Tol(dtype));
        Assert.That(plain.ParameterStepCount(0), Is.EqualTo(1));
        plain.ZeroGrad();
        decayed.ZeroGrad();
    }

    [Test]
    public void Constant_gradient_gives_a_constant_normalised_step([Values(DType.Float32, DType.Float64)] DType dtype)
    {
        // With a constant g, m_t = (1-β1^t)·g and v_t = (1-β2^t)·g², so m̂_t = g and v̂_t = g² at every t:
        // each step is p ← a·p - lr·g/(|g| + eps), a = 1 - lr·wd. After T steps
        // p_T = a^T·p0 - lr·s·(1 + a + … + a^(T-1)), s = g/(|g| + eps).
        double[] g = [0.5, -0.25, 2.0];
        double lr = 0.1, wd = 0.2, eps = 0.1, a = 1 - lr * wd;
        const int T = 5;
        double geometric = (1 - Math.Pow(a, T)) / (1 - a);
        var expected = P0.Select((p0, i) => Math.Pow(a, T) * p0 - lr * g[i] / (Math.Abs(g[i]) + eps) * geometric).ToArray();
        using var scope = TensorScope.Begin();
        var p = Param(P0, dtype, backend);
        using var opt = new AdamW([p], lr, 0.9, 0.999, eps, wd);
        for (int s = 0; s < T; s++)
        {
            SetGrads([p], [g]);
            opt.Step();
        }
        TensorAssert.Close(p, expected, 10 * Tol(dtype), 10 * Tol(dtype));
        // The moments themselves: m_T = (1-β1^T)·g, v_T = (1-β2^T)·g².
        TensorAssert.Close(opt.State(0)["exp_avg"], [.. g.Select(x => (1 - Math.Pow(0.9, T)) * x)], Tol(dtype), Tol(dtype));
        TensorAssert.Close(opt.State(0)["exp_avg_sq"], [.. g.Select(x => (1 - Math.Pow(0.999, T)) * x * x)], Tol(dtype), Tol(dtype));
        opt.ZeroGrad();
    }

    /// <summary>PyTorch's AdamW written as a plain double loop, independent of the kernel.</summary>
    private static (double[] P, double[] M, double[] V) Reference(double[] p0, double[][] grads, double lr, double b1, double b2, double eps, double wd)
    {
        int n = p0.Length;
        var p = (double[])p0.Clone();
        var m = new double[n];
        var v = new double[n];
        for (int t = 1; t <= grads.Length; t++)
        {
            var g = grads[t - 1];
            for (int j = 0; j < n; j++)
            {
                p[j] *= 1 - lr * wd;
                m[j] = b1 * m[j] + (1 - b1) * g[j];
                v[j] = b2 * v[j] + (1 - b2) * g[j] * g[j];
                double mHat = m[j] / (1 - Math.Pow(b1, t));
                double vHat = v[j] / (1 - Math.Pow(b2, t));
                p[j] -= lr * mHat / (Math.Sqrt(vHat) + eps);
            }
        }
        return (p, m, v);
    }

    [TestCase(0.9, 0.999, 1e-8, 0.01)]
    [TestCase(0.8, 0.95, 1e-3, 0.1)]
    [TestCase(0.3, 0.5, 1e-6, 0.0)] // β1 < 0.5: the lerp takes its other branch
    public void Matches_a_scalar_reference_over_varying_gradients(double b1, double b2, double eps, double wd)
    {
        var rng = new Rng(11);
        foreach (var dtype in new[] { DType.Float32, DType.Float64 })
        {
            int n = 37; // a SIMD body and a scalar tail
            var p0 = Round([.. Enumerable.Range(0, n).Select(_ => rng.NextNormal())], dtype);
            var grads = Enumerable.Range(0, 6).Select(_ => Round([.. Enumerable.Range(0, n).Select(_ => rng.NextNormal())], dtype)).ToArray();
            var (ep, em, ev) = Reference(p0, grads, 0.01, b1, b2, eps, wd);
            using var scope = TensorScope.Begin();
            var p = Param(p0, dtype, backend);
            using var opt = new AdamW([p], 0.01, b1, b2, eps, wd);
            foreach (var g in grads)
            {
                SetGrads([p], [g]);
                opt.Step();
            }
            double tol = dtype == DType.Float32 ? 1e-5 : 1e-12;
            TensorAssert.Close(p, ep, tol, tol, $"{dtype} param");
            TensorAssert.Close(opt.State(0)["exp_avg"], em, tol, tol, $"{dtype} exp_avg");
            TensorAssert.Close(opt.State(0)["exp_avg_sq"], ev, tol, tol, $"{dtype} exp_avg_sq");
            Assert.That(opt.ParameterStepCount(0), Is.EqualTo(grads.Length));
            opt.ZeroGrad();
        }
    }

    [Test]
    public void Large_parameters_split_into_parallel_chunks_match_the_reference()
    {
        // 300 007 elements: several CPU chunks, each with a SIMD body and an odd scalar tail.
        var rng = new Rng(13);
        int n = 300_007;
        var p0 = Round([.. Enumerable.Range(0, n).Select(_ => rng.NextNormal())], DType.Float32);
        var grads = Enumerable.Range(0, 2).Select(_ => Round([.. Enumerable.Range(0, n).Select(_ => rng.NextNormal())], DType.Float32)).ToArray();
        var (ep, em, ev) = Reference(p0, grads, 0.01, 0.9, 0.999, 1e-8, 0.01);
        using var scope = TensorScope.Begin();
        var p = Param(p0, DType.Float32, backend);
        using var opt = new AdamW([p], 0.01);
        foreach (var g in grads)
        {
            SetGrads([p], [g]);
            opt.Step();
        }
        TensorAssert.Close(p, ep, 1e-5, 1e-5);
        TensorAssert.Close(opt.State(0)["exp_avg"], em, 1e-5, 1e-5);
        TensorAssert.Close(opt.State(0)["exp_avg_sq"], ev, 1e-5, 1e-5);
        opt.ZeroGrad();
    }

    [Test]
    public void Bias_correction_counts_steps_per_parameter()
    {
        // b has no gradient at the first step, so its first update (optimizer step 2) is its own t = 1:
        // again exactly lr·sign(g) with eps = 0, as in PyTorch, where state["step"] is per parameter.
        using var scope = TensorScope.Begin();
        var a = Param(P0, DType.Float64, backend);
        var b = Param(P0, DType.Float64, backend);
        using var opt = new AdamW([a, b], lr: 0.01, eps: 0, weightDecay: 0);
        SetGrads([a, b], [[1.0, 1.0, 1.0], null]);
        opt.Step();
        Assert.That(opt.State(1), Is.Empty);
        SetGrads([a, b], [[1.0, 1.0, 1.0], [-3.0, 2.0, 0.5]]);
        opt.Step();
        Assert.That(opt.StepCount, Is.EqualTo(2));
        Assert.That(opt.ParameterStepCount(0), Is.EqualTo(2));
        Assert.That(opt.ParameterStepCount(1), Is.EqualTo(1));
        TensorAssert.Close(b, [1.01, -2.01, 2.99], 1e-14, 1e-14);
        TensorAssert.Close(a, [0.98, -2.02, 2.98], 1e-14, 1e-14);
        opt.ZeroGrad();
    }

    [Test]
    public void Defaults_and_bad_hyperparameters()
    {
        using var scope = TensorScope.Begin();
        var p = Param(P0, DType.Float32, backend);
        using (var opt = new AdamW([p]))
        {
            Assert.That((opt.LearningRate, opt.Beta1, opt.Beta2, opt.Eps, opt.WeightDecay), Is.EqualTo((1e-3, 0.9, 0.999, 1e-8, 0.01)));
        }
        Assert.That(() => new AdamW([p], beta1: 1.0), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("beta1"));
        Assert.That(() => new AdamW([p], beta2: -0.1), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("beta2"));
        Assert.That(() => new AdamW([p], eps: -1), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("eps"));
        Assert.That(() => new AdamW([p], weightDecay: double.NaN), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("weight decay"));
        var ints = Tensor.FromArray([1, 2], new Shape(2), backend);
        Assert.That(() => new AdamW([ints]), Throws.ArgumentException.With.Message.Contains("float32 or float64"));
    }
}
