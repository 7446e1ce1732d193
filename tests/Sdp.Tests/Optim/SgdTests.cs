using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Optim;
using Sdp.Tests.Support;
using static Sdp.Tests.Optim.OptimTest;

namespace Sdp.Tests.Optim;

/// <summary>torch.optim.SGD semantics: closed forms for constant gradients, and an independent scalar loop.</summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class SgdTests(IBackend backend)
{
    private static readonly double[] P0 = [1.0, -2.0, 3.0];
    private static readonly double[] G = [0.5, 1.0, -0.25];

    [SetUp]
    public void ClearTape() => Tape.Current.Clear();

    private static double Tol(DType dtype) => dtype == DType.Float32 ? 1e-5 : 1e-12;

    /// <summary>Runs <paramref name="steps"/> steps with the constant gradient G and returns the parameter.</summary>
    private double[] RunConstant(DType dtype, int steps, double lr, double momentum = 0, double dampening = 0, bool nesterov = false, double weightDecay = 0, double[]? grad = null)
    {
        using var scope = TensorScope.Begin();
        var p = Param(P0, dtype, backend);
        using var opt = new Sgd([p], lr, momentum, dampening, nesterov, weightDecay);
        for (int s = 0; s < steps; s++)
        {
            SetGrads([p], [grad ?? G]);
            opt.Step();
        }
        Assert.That(opt.StepCount, Is.EqualTo(steps));
        opt.ZeroGrad();
        return p.ToDoubles();
    }

    private static double[] Expected(double factor) => [P0[0] - factor * G[0], P0[1] - factor * G[1], P0[2] - factor * G[2]];

    [Test]
    public void Plain_step_is_p_minus_lr_g([Values(DType.Float32, DType.Float64)] DType dtype)
    {
        // One step: p = p0 - 0.1·g = [0.95, -2.1, 3.025]; three steps: p0 - 0.3·g.
        TensorAssert.Close(RunConstant(dtype, 1, 0.1), [0.95, -2.1, 3.025], Tol(dtype), Tol(dtype));
        TensorAssert.Close(RunConstant(dtype, 3, 0.1), Expected(0.3), Tol(dtype), Tol(dtype));
    }

    [Test]
    public void Momentum_accumulates_the_buffer([Values(DType.Float32, DType.Float64)] DType dtype)
    {
        // mu = 0.9, constant g: buf1 = g (initialised to g, no dampening), buf2 = 0.9g + g = 1.9g,
        // buf3 = 0.9·1.9g + g = 2.71g; p3 = p0 - lr·(1 + 1.9 + 2.71)·g = p0 - 0.1·5.61·g.
        TensorAssert.Close(RunConstant(dtype, 3, 0.1, momentum: 0.9), Expected(0.561), Tol(dtype), Tol(dtype));
    }

    [Test]
    public void Dampening_scales_new_gradients_but_not_the_first([Values(DType.Float32, DType.Float64)] DType dtype)
    {
        // mu = 0.9, dampening 0.5: buf1 = g, buf2 = 0.9g + 0.5g = 1.4g, buf3 = 0.9·1.4g + 0.5g = 1.76g;
        // p3 = p0 - 0.1·(1 + 1.4 + 1.76)·g = p0 - 0.416·g.
        TensorAssert.Close(RunConstant(dtype, 3, 0.1, momentum: 0.9, dampening: 0.5), Expected(0.416), Tol(dtype), Tol(dtype));
    }

    [Test]
    public void Nesterov_looks_ahead_along_the_buffer([Values(DType.Float32, DType.Float64)] DType dtype)
    {
        // mu = 0.9 nesterov: buf_t as for momentum (g, 1.9g, 2.71g), update d_t = g + 0.9·buf_t:
        // 1.9g, 2.71g, 3.439g; p3 = p0 - 0.1·(1.9 + 2.71 + 3.439)·g = p0 - 0.8049·g.
        TensorAssert.Close(RunConstant(dtype, 3, 0.1, momentum: 0.9, nesterov: true), Expected(0.8049), Tol(dtype), Tol(dtype));
    }

    [Test]
    public void Weight_decay_is_coupled_into_the_gradient([Values(DType.Float32, DType.Float64)] DType dtype)
    {
        // g = 0, wd = 0.1, lr = 0.1: d = 0.1·p, so p_t = p0·(1 - 0.01)^t.
        double[] zero = [0, 0, 0];
        double k = Math.Pow(0.99, 3);
        TensorAssert.Close(RunConstant(dtype, 3, 0.1, weightDecay: 0.1, grad: zero), [P0[0] * k, P0[1] * k, P0[2] * k], Tol(dtype), Tol(dtype));
        // With momentum the decayed gradient enters the buffer: step 1 d = g + 0.1·p0, buf = d.
        var withMomentum = RunConstant(dtype, 1, 0.1, momentum: 0.9, weightDecay: 0.1);
        TensorAssert.Close(withMomentum, [.. P0.Select((p, i) => p - 0.1 * (G[i] + 0.1 * p))], Tol(dtype), Tol(dtype));
    }

    /// <summary>PyTorch's algorithm written as a plain double loop, independent of the kernel.</summary>
    private static (double[] P, double[]? Buf) Reference(double[] p0, double[][] grads, double lr, double mu, double damp, bool nesterov, double wd)
    {
        var p = (double[])p0.Clone();
        double[]? buf = null;
        foreach (var g in grads)
        {
            var d = new double[p.Length];
            for (int j = 0; j < p.Length; j++) d[j] = g[j] + wd * p[j];
            if (mu != 0)
            {
                if (buf is null) buf = (double[])d.Clone();
                else for (int j = 0; j < p.Length; j++) buf[j] = mu * buf[j] + (1 - damp) * d[j];
                for (int j = 0; j < p.Length; j++) d[j] = nesterov ? d[j] + mu * buf[j] : buf[j];
            }
            for (int j = 0; j < p.Length; j++) p[j] -= lr * d[j];
        }
        return (p, buf);
    }

    [TestCase(0.0, 0.0, false, 0.0)]
    [TestCase(0.9, 0.0, false, 0.0)]
    [TestCase(0.9, 0.1, false, 0.01)]
    [TestCase(0.8, 0.0, true, 0.05)]
    public void Matches_a_scalar_reference_over_varying_gradients(double mu, double damp, bool nesterov, double wd)
    {
        var rng = new Rng(7);
        // 37 elements: more than one SIMD vector plus a scalar tail on every machine.
        foreach (var dtype in new[] { DType.Float32, DType.Float64 })
        {
            int n = 37;
            var p0 = Round([.. Enumerable.Range(0, n).Select(_ => rng.NextNormal())], dtype);
            var grads = Enumerable.Range(0, 4).Select(_ => Round([.. Enumerable.Range(0, n).Select(_ => rng.NextNormal())], dtype)).ToArray();
            var (expected, expectedBuf) = Reference(p0, grads, 0.05, mu, damp, nesterov, wd);
            using var scope = TensorScope.Begin();
            var p = Param(p0, dtype, backend);
            using var opt = new Sgd([p], 0.05, mu, damp, nesterov, wd);
            foreach (var g in grads)
            {
                SetGrads([p], [g]);
                opt.Step();
            }
            TensorAssert.Close(p, expected, Tol(dtype), Tol(dtype), $"{dtype} param");
            var state = opt.State(0);
            if (expectedBuf is null) Assert.That(state, Is.Empty);
            else TensorAssert.Close(state["momentum_buffer"], expectedBuf, Tol(dtype), Tol(dtype), $"{dtype} momentum_buffer");
            opt.ZeroGrad();
        }
    }

    [Test]
    public void Large_parameters_split_into_parallel_chunks_match_the_reference()
    {
        // 300 007 elements: several CPU chunks, each with a SIMD body and an odd scalar tail.
        var rng = new Rng(5);
        int n = 300_007;
        var p0 = Round([.. Enumerable.Range(0, n).Select(_ => rng.NextNormal())], DType.Float32);
        var grads = Enumerable.Range(0, 2).Select(_ => Round([.. Enumerable.Range(0, n).Select(_ => rng.NextNormal())], DType.Float32)).ToArray();
        var (expected, _) = Reference(p0, grads, 0.05, 0.9, 0.0, true, 0.01);
        using var scope = TensorScope.Begin();
        var p = Param(p0, DType.Float32, backend);
        using var opt = new Sgd([p], 0.05, 0.9, 0.0, true, 0.01);
        foreach (var g in grads)
        {
            SetGrads([p], [g]);
            opt.Step();
        }
        TensorAssert.Close(p, expected, 1e-5, 1e-5);
        opt.ZeroGrad();
    }

    [Test]
    public void Parameters_without_a_gradient_are_skipped_and_keep_no_state()
    {
        using var scope = TensorScope.Begin();
        var a = Param(P0, DType.Float32, backend);
        var b = Param(P0, DType.Float32, backend);
        using var opt = new Sgd([a, b], 0.1, momentum: 0.9);
        SetGrads([a, b], [G, null]);
        Assert.That(b.Grad, Is.Null);
        opt.Step();
        TensorAssert.Close(a, Expected(0.1));
        TensorAssert.Close(b, P0);
        Assert.That(opt.State(0).Keys, Is.EquivalentTo(new[] { "momentum_buffer" }));
        Assert.That(opt.State(1), Is.Empty);
        opt.ZeroGrad();
        Assert.That(a.Grad, Is.Null);
        opt.Step(); // no gradients at all: nothing changes, the step still counts
        TensorAssert.Close(a, Expected(0.1));
        Assert.That(opt.StepCount, Is.EqualTo(2));
    }

    [Test]
    public void Step_records_nothing_on_the_tape()
    {
        using var scope = TensorScope.Begin();
        var p = Param(P0, DType.Float64, backend);
        using var opt = new Sgd([p], 0.1, momentum: 0.5);
        SetGrads([p], [G]);
        opt.Step();
        Assert.That(Tape.Current.Count, Is.Zero);
        Assert.That(p.IsLeaf, Is.True);
        opt.ZeroGrad();
    }

    [Test]
    public void Bad_hyperparameters_are_rejected()
    {
        using var scope = TensorScope.Begin();
        var p = Param(P0, DType.Float32, backend);
        Assert.That(() => new Sgd([p], 0.1, nesterov: true), Throws.ArgumentException.With.Message.Contains("Nesterov"));
        Assert.That(() => new Sgd([p], 0.1, momentum: 0.9, dampening: 0.1, nesterov: true), Throws.ArgumentException.With.Message.Contains("dampening"));
        Assert.That(() => new Sgd([p], -0.1), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("learning rate"));
        Assert.That(() => new Sgd([p], 0.1, momentum: -1), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("momentum"));
        Assert.That(() => new Sgd([p, p], 0.1), Throws.ArgumentException.With.Message.Contains("more than once"));
        Assert.That(() => new Sgd([], 0.1), Throws.ArgumentException.With.Message.Contains("empty"));
        var nonLeaf = Ops.Scale(p, 2);
        Assert.That(() => new Sgd([nonLeaf], 0.1), Throws.ArgumentException.With.Message.Contains("not a leaf"));
        Tape.Current.Clear();
        var opt = new Sgd([p], 0.1);
        Assert.That(() => opt.LearningRate = double.NaN, Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => opt.State(1), Throws.InstanceOf<ArgumentOutOfRangeException>());
        opt.Dispose();
        Assert.That(() => opt.Step(), Throws.InstanceOf<ObjectDisposedException>());
    }
}
