using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;

namespace Sdp.Tests.Optim;

/// <summary>End to end: optimizers drive small models to a known optimum, one TensorScope per step, without leaks.</summary>
public class TrainingTests
{
    [SetUp]
    public void ClearTape() => Tape.Current.Clear();

    private static Tensor Parameter(Tensor t, string name)
    {
        t.RequiresGrad = true;
        t.Name = name;
        return t;
    }

    [Test]
    public void Mlp_learns_xor_with_adamw([Values(DType.Float32, DType.Float64)] DType dtype)
    {
        // The data set is charged to the default account; the training account sees only the model.
        using var x = Tensor.FromDoubles([0, 0, 0, 1, 1, 0, 1, 1], new Shape(4, 2), dtype);
        using var y = Tensor.FromDoubles([0, 1, 1, 0], new Shape(4, 1), dtype);
        var account = new MemoryAccount("xor");
        using (account.Activate())
        {
            var rng = new Rng(42);
            Tensor[] ps;
            using (MemoryAccount.Use(MemoryCategory.Parameters))
            {
                // 2-8-1 MLP with tanh, uniform(±1/sqrt(fan_in)) init as torch.nn.Linear.
                double k1 = 1 / Math.Sqrt(2), k2 = 1 / Math.Sqrt(8);
                ps =
                [
                    Parameter(Tensor.Uniform(new Shape(8, 2), rng, -k1, k1, dtype), "w1"),
                    Parameter(Tensor.Uniform(new Shape(8), rng, -k1, k1, dtype), "b1"),
                    Parameter(Tensor.Uniform(new Shape(1, 8), rng, -k2, k2, dtype), "w2"),
                    Parameter(Tensor.Uniform(new Shape(1), rng, -k2, k2, dtype), "b2"),
                ];
            }
            var schedule = new WarmupCosineSchedule(0.05, 20, 400, 0.005);
            var opt = new AdamW(ps, weightDecay: 0);
            double loss = double.NaN;
            for (int step = 0; step < 400; step++)
            {
                using (TensorScope.Begin())
                {
                    var h = Ops.Tanh(Ops.Linear(x, ps[0], ps[1]));
                    var diff = Ops.Sub(Ops.Linear(h, ps[2], ps[3]), y);
                    var l = Ops.Mean(Ops.Mul(diff, diff));
                    loss = l.Item();
                    l.Backward();
                }
                opt.LearningRate = schedule.LearningRate(opt.StepCount);
                opt.Step();
                opt.ZeroGrad();
            }
            TestContext.Out.WriteLine($"final XOR loss {loss:G4}");
            Assert.That(loss, Is.LessThan(0.01), "XOR mean squared error after 400 AdamW steps");
            AssertNoTransientBytes(account);
            Assert.That(account.CurrentBytes(MemoryCategory.OptimizerState), Is.EqualTo(2 * ps.Sum(p => p.ByteLength)));
            opt.Dispose();
            foreach (var p in ps) p.Dispose();
        }
        Assert.That(account.CurrentTotal, Is.Zero);
    }

    [Test]
    public void Linear_regression_converges_with_sgd_momentum()
    {
        var rng = new Rng(3);
        const int n = 64;
        double[] wStar = [2.0, -3.0, 0.5];
        const double bStar = 0.7;
        var xs = new double[n * 3];
        var ys = new double[n];
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < 3; j++) xs[i * 3 + j] = rng.NextNormal();
            ys[i] = xs[i * 3] * wStar[0] + xs[i * 3 + 1] * wStar[1] + xs[i * 3 + 2] * wStar[2] + bStar;
        }
        // y = X·w* + b*, charged to the default account; the training account sees only the model.
        using var x = Tensor.FromDoubles(xs, new Shape(n, 3), DType.Float64);
        using var y = Tensor.FromDoubles(ys, new Shape(n, 1), DType.Float64);
        var account = new MemoryAccount("linreg");
        using (account.Activate())
        {
            Tensor w, b;
            using (MemoryAccount.Use(MemoryCategory.Parameters))
            {
                w = Parameter(Tensor.Zeros(new Shape(1, 3), DType.Float64), "w");
                b = Parameter(Tensor.Zeros(new Shape(1), DType.Float64), "b");
            }
            var opt = new Sgd([w, b], 0.1, momentum: 0.9);
            double mse = double.NaN;
            for (int step = 0; step < 300; step++)
            {
                using (TensorScope.Begin())
                {
                    var diff = Ops.Sub(Ops.Linear(x, w, b), y);
                    var l = Ops.Mean(Ops.Mul(diff, diff));
                    mse = l.Item();
                    l.Backward();
                }
                opt.Step();
                opt.ZeroGrad();
            }
            TestContext.Out.WriteLine($"final MSE {mse:G4}");
            Assert.That(mse, Is.LessThan(1e-8));
            Assert.That(w.ToDoubles(), Is.EqualTo(wStar).Within(1e-4));
            Assert.That(b.Item(), Is.EqualTo(bStar).Within(1e-4));
            AssertNoTransientBytes(account);
            Assert.That(account.CurrentBytes(MemoryCategory.OptimizerState), Is.EqualTo(w.ByteLength + b.ByteLength));
            opt.Dispose();
            w.Dispose();
            b.Dispose();
        }
        Assert.That(account.CurrentTotal, Is.Zero);
    }

    private static void AssertNoTransientBytes(MemoryAccount account)
    {
        Assert.That(account.CurrentBytes(MemoryCategory.Workspace), Is.Zero, "workspace bytes left after training");
        Assert.That(account.CurrentBytes(MemoryCategory.Activations), Is.Zero, "activation bytes left after training");
        Assert.That(account.CurrentBytes(MemoryCategory.Gradients), Is.Zero, "ZeroGrad dropped every gradient");
        Assert.That(Tape.Current.Count, Is.Zero);
    }
}
