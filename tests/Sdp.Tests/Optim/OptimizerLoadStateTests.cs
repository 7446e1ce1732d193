using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Tests.Support;
using static Sdp.Tests.Optim.OptimTest;

namespace Sdp.Tests.Optim;

/// <summary>Optimizer.LoadState / RestoreStepCount: restoring state continues exactly where the original optimizer was.</summary>
public class OptimizerLoadStateTests
{
    [SetUp]
    public void ClearTape() => Tape.Current.Clear();

    private static readonly double[] P0 = [0.5, -1.5, 2.0, 0.25];
    private static readonly double[][] Grads = [[0.1, -0.2, 0.3, 0.0], [1.0, 0.5, -0.25, 2.0], [-0.3, 0.3, 0.1, -1.0], [0.05, 0.0, 0.7, 0.2]];

    private static uint[] Bits(Tensor t) => Array.ConvertAll(t.ToArray<float>(), BitConverter.SingleToUInt32Bits);

    /// <summary>Copies every parameter's state and step count from <paramref name="from"/> into <paramref name="to"/>.</summary>
    private static void Transfer(Optimizer from, Optimizer to)
    {
        for (int i = 0; i < from.Parameters.Count; i++) to.LoadState(i, from.State(i), from.ParameterStepCount(i));
        to.RestoreStepCount(from.StepCount);
    }

    [Test]
    public void Restored_adamw_continues_bit_exactly()
    {
        using var scope = TensorScope.Begin();
        var p = Param(P0, DType.Float32, Backends.Cpu);
        var skipped = Param([1.0, 2.0], DType.Float32, Backends.Cpu); // never gets a gradient: no state, step 0
        using var original = new AdamW([p, skipped], lr: 0.05, weightDecay: 0.1);
        for (int s = 0; s < 2; s++)
        {
            SetGrads([p, skipped], [Grads[s], null]);
            original.Step();
        }

        var q = Param(p.ToDoubles(), DType.Float32, Backends.Cpu);
        var skipped2 = Param([1.0, 2.0], DType.Float32, Backends.Cpu);
        using var restored = new AdamW([q, skipped2], lr: 0.05, weightDecay: 0.1);
        Transfer(original, restored);
        Assert.That(restored.StepCount, Is.EqualTo(2));
        Assert.That(restored.ParameterStepCount(0), Is.EqualTo(2));
        Assert.That(restored.State(1), Is.Empty);
        for (int s = 2; s < 4; s++)
        {
            SetGrads([p, skipped], [Grads[s], null]);
            SetGrads([q, skipped2], [Grads[s], null]);
            original.Step();
            restored.Step();
        }
        Assert.That(Bits(q), Is.EqualTo(Bits(p)));
        Assert.That(Bits(restored.State(0)["exp_avg"]), Is.EqualTo(Bits(original.State(0)["exp_avg"])));
        Assert.That(Bits(restored.State(0)["exp_avg_sq"]), Is.EqualTo(Bits(original.State(0)["exp_avg_sq"])));
        Assert.That(restored.ParameterStepCount(0), Is.EqualTo(4));
        foreach (var t in new[] { p, q, skipped, skipped2 }) t.ZeroGrad();
    }

    [Test]
    public void Restored_sgd_momentum_continues_bit_exactly([Values(false, true)] bool nesterov)
    {
        using var scope = TensorScope.Begin();
        var p = Param(P0, DType.Float32, Backends.Cpu);
        using var original = new Sgd([p], lr: 0.1, momentum: 0.9, nesterov: nesterov, weightDecay: 0.01);
        SetGrads([p], [Grads[0]]);
        original.Step();
        Assert.That(original.StateNames, Is.EqualTo(new[] { "momentum_buffer" }));
        Assert.That(original.ParameterStepCount(0), Is.EqualTo(1));

        var q = Param(p.ToDoubles(), DType.Float32, Backends.Cpu);
        using var restored = new Sgd([q], lr: 0.1, momentum: 0.9, nesterov: nesterov, weightDecay: 0.01);
        Transfer(original, restored);
        for (int s = 1; s < 3; s++)
        {
            SetGrads([p], [Grads[s]]);
            SetGrads([q], [Grads[s]]);
            original.Step();
            restored.Step();
        }
        Assert.That(Bits(q), Is.EqualTo(Bits(p)));
        Assert.That(Bits(restored.State(0)["momentum_buffer"]), Is.EqualTo(Bits(original.State(0)["momentum_buffer"])));
        p.ZeroGrad();
        q.ZeroGrad();
    }

    [Test]
    public void Loaded_state_is_a_copy_charged_to_optimizer_state_outside_any_scope()
    {
        var account = new MemoryAccount("load-state");
        using (account.Activate())
        {
            Tensor p;
            using (MemoryAccount.Use(MemoryCategory.Parameters)) p = Tensor.FromDoubles(P0, new Shape(4));
            p.RequiresGrad = true;
            using var opt = new AdamW([p]);
            using (var scope = TensorScope.Begin())
            {
                var m = Tensor.FromDoubles([1, 2, 3, 4], new Shape(4), DType.Float64); // converted to the parameter's float32
                var v = Tensor.FromDoubles([5, 6, 7, 8], new Shape(4));
                opt.LoadState(0, new Dictionary<string, Tensor> { ["exp_avg"] = m, ["exp_avg_sq"] = v }, 3);
                v.Backend.Fill(v, -1); // the optimizer holds its own copy
            }
            Assert.That(opt.State(0)["exp_avg"].ToDoubles(), Is.EqualTo(new[] { 1.0, 2, 3, 4 }));
            Assert.That(opt.State(0)["exp_avg_sq"].ToDoubles(), Is.EqualTo(new[] { 5.0, 6, 7, 8 }));
            Assert.That(opt.State(0)["exp_avg"].DType, Is.EqualTo(DType.Float32));
            Assert.That(opt.ParameterStepCount(0), Is.EqualTo(3));
            Assert.That(account.CurrentBytes(MemoryCategory.OptimizerState), Is.EqualTo(2 * 16));
            Assert.That(account.CurrentBytes(MemoryCategory.Workspace), Is.Zero);

            // Loading again replaces (and frees) the previous state; loading nothing resets the parameter.
            using (TensorScope.Begin()) Transfer(opt, opt);
            Assert.That(account.CurrentBytes(MemoryCategory.OptimizerState), Is.EqualTo(2 * 16));
            opt.LoadState(0, new Dictionary<string, Tensor>(), 0);
            Assert.That(opt.State(0), Is.Empty);
            Assert.That(account.CurrentBytes(MemoryCategory.OptimizerState), Is.Zero);
            opt.Dispose();
            p.Dispose();
        }
        Assert.That(account.CurrentTotal, Is.Zero);
    }

    [Test]
    public void Bad_state_is_rejected_with_a_clear_message_and_changes_nothing()
    {
        using var scope = TensorScope.Begin();
        var p = Param(P0, DType.Float32, Backends.Cpu);
        p.Name = "w";
        using var adam = new AdamW([p]);
        var good = Tensor.Zeros(new Shape(4));
        var wrongShape = Tensor.Zeros(new Shape(2, 2));
        var ints = Tensor.Zeros(new Shape(4), DType.Int64);
        var disposed = Tensor.Zeros(new Shape(4));
        disposed.Dispose();
        void Expect(Action load, params string[] fragments)
        {
            var ex = Assert.Throws(Is.InstanceOf<ArgumentException>(), () => load());
            foreach (var f in fragments) Assert.That(ex!.Message, Does.Contain(f));
        }
        Expect(() => adam.LoadState(0, new Dictionary<string, Tensor> { ["momentum_buffer"] = good }, 1), "AdamW.LoadState: parameter 0 (w(4,) float32)", "unknown state 'momentum_buffer'", "expected exp_avg, exp_avg_sq");
        Expect(() => adam.LoadState(0, new Dictionary<string, Tensor> { ["exp_avg"] = good }, 1), "incomplete, missing exp_avg_sq");
        Expect(() => adam.LoadState(0, new Dictionary<string, Tensor> { ["exp_avg"] = good, ["exp_avg_sq"] = wrongShape }, 1), "state 'exp_avg_sq'", "(2, 2)", "shape (4,)");
        Expect(() => adam.LoadState(0, new Dictionary<string, Tensor> { ["exp_avg"] = ints, ["exp_avg_sq"] = good }, 1), "state 'exp_avg'", "int64", "floating-point");
        Expect(() => adam.LoadState(0, new Dictionary<string, Tensor> { ["exp_avg"] = disposed, ["exp_avg_sq"] = good }, 1), "null or disposed");
        Expect(() => adam.LoadState(0, new Dictionary<string, Tensor> { ["exp_avg"] = good, ["exp_avg_sq"] = good }, 0), "moments but a step count of 0");
        Expect(() => adam.LoadState(0, new Dictionary<string, Tensor>(), 2), "step count of 2 but no moments");
        Expect(() => adam.LoadState(0, new Dictionary<string, Tensor>(), -1), "step count must be >= 0");
        Expect(() => adam.LoadState(1, new Dictionary<string, Tensor>(), 0), "there are 1 parameters");
        Expect(() => adam.RestoreStepCount(-5), "step count must be >= 0");
        Assert.That(adam.State(0), Is.Empty);
        Assert.That(adam.ParameterStepCount(0), Is.Zero);

        using var plain = new Sgd([p], lr: 0.1);
        Assert.That(plain.StateNames, Is.Empty);
        plain.LoadState(0, new Dictionary<string, Tensor>(), 7); // plain SGD keeps only a count
        Assert.That(plain.ParameterStepCount(0), Is.EqualTo(7));
        Expect(() => plain.LoadState(0, new Dictionary<string, Tensor> { ["momentum_buffer"] = good }, 1), "Sgd.LoadState", "unknown state 'momentum_buffer'", "it keeps no state");
        using var momentum = new Sgd([p], lr: 0.1, momentum: 0.9);
        Expect(() => momentum.LoadState(0, new Dictionary<string, Tensor>(), 3), "step count of 3 but no momentum buffer");
    }
}
