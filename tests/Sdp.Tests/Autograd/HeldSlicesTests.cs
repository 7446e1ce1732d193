using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Tests.Optim;
using Sdp.Tests.Support;

namespace Sdp.Tests.Autograd;

/// <summary>
/// SDP backward masking: a leaf with <see cref="Tensor.Held"/> gets a compact gradient holding exactly the
/// held slices of the dense gradient, computed without a full-size dW on the Linear and conv2d fast paths,
/// and optimizers keep compact state and update only the held slices.
/// </summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class HeldSlicesTests(IBackend backend)
{
    [SetUp]
    public void ClearTape()
    {
        Tape.Current.Clear();
        AutogradCounters.Reset();
    }

    // ---- helpers ----------------------------------------------------------------------------------

    private Tensor Leaf(Rng rng, DType dtype, params int[] shape)
    {
        var t = Tensor.Randn(new Shape(shape), rng, dtype: dtype, backend: backend);
        t.RequiresGrad = true;
        return t;
    }

    private Tensor Copy(Tensor t)
    {
        var c = Tensor.FromDoubles(t.ToDoubles(), t.Shape, t.DType, backend);
        c.RequiresGrad = t.RequiresGrad;
        return c;
    }

    /// <summary>The held slices of a row-major array of <paramref name="shape"/>, in the compact layout.</summary>
    private static double[] HeldPart(double[] full, Shape shape, HeldSlices held)
    {
        long outer = shape.Product(0, held.Axis), n = shape[held.Axis], inner = shape.Product(held.Axis + 1, shape.Rank);
        var result = new List<double>();
        for (long o = 0; o < outer; o++)
        {
            foreach (int k in held.Indices)
            {
                for (long i = 0; i < inner; i++) result.Add(full[(o * n + k) * inner + i]);
            }
        }
        return [.. result];
    }

    /// <summary>Whether flat element <paramref name="flat"/> of <paramref name="shape"/> lies in a held slice.</summary>
    private static bool IsHeld(long flat, Shape shape, HeldSlices held)
    {
        long inner = shape.Product(held.Axis + 1, shape.Rank);
        int k = (int)(flat / inner % shape[held.Axis]);
        return held.Indices.Contains(k);
    }

    /// <summary>Σ f(inputs) ⊙ probe, a scalar that exercises every output element's gradient.</summary>
    private static Tensor Project(Tensor y, Tensor probe) => Ops.Sum(Ops.Mul(y, probe));

    private static double Tol(DType dtype) => dtype == DType.Float32 ? 1e-6 : 1e-12;

    /// <summary>
    /// Runs <paramref name="f"/> once densely and once with <paramref name="helds"/> set on copies of the
    /// inputs, and checks each compact gradient against the held slices of the dense one.
    /// </summary>
    private void CheckAgainstDense(Func<Tensor[], Tensor> f, Tensor[] inputs, HeldSlices?[] helds, DType dtype)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(99);
        Tensor probe;
        using (GradMode.Disable()) probe = Tensor.Randn(f(inputs).Shape, rng, dtype: dtype, backend: backend);
        Project(f(inputs), probe).Backward();
        var dense = inputs.Select(x => x.Grad?.ToDoubles()).ToArray();

        var masked = inputs.Select(Copy).ToArray();
        for (int i = 0; i < masked.Length; i++) masked[i].Held = helds[i];
        Project(f(masked), probe).Backward();
        for (int i = 0; i < masked.Length; i++)
        {
            if (dense[i] is not { } d) continue;
            var g = masked[i].Grad!;
            Assert.That(g.Shape, Is.EqualTo(masked[i].GradShape), $"input {i} gradient shape");
            var expected = helds[i] is { } h ? HeldPart(d, inputs[i].Shape, h) : d;
            double scale = expected.Max(Math.Abs);
            TensorAssert.Close(g.ToDoubles(), expected, Tol(dtype) * scale, Tol(dtype), $"input {i} compact gradient");
        }
    }

    /// <summary>
    /// Float64 central differences for the held elements of leaf <paramref name="which"/> (which has Held set),
    /// compared with its compact gradient.
    /// </summary>
    private static void FiniteDifferences(Func<Tensor[], Tensor> f, Tensor[] inputs, int which)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(7);
        Tensor probe;
        using (GradMode.Disable()) probe = Tensor.Randn(f(inputs).Shape, rng, dtype: DType.Float64, backend: inputs[0].Backend);
        foreach (var x in inputs) x.ZeroGrad();
        Project(f(inputs), probe).Backward();
        var x0 = inputs[which];
        var held = x0.Held!;
        var analytic = x0.Grad!.ToArray<double>();
        var values = x0.ToArray<double>();
        var numeric = new List<double>();
        const double eps = 1e-6;
        double Objective()
        {
            using (GradMode.Disable())
            using (TensorScope.Begin()) return Project(f(inputs), probe).Item();
        }
        for (int i = 0; i < values.Length; i++)
        {
            if (!IsHeld(i, x0.Shape, held)) continue;
            double orig = values[i];
            values[i] = orig + eps;
            x0.Backend.Upload<double>(values, x0);
            double plus = Objective();
            values[i] = orig - eps;
            x0.Backend.Upload<double>(values, x0);
            double minus = Objective();
            values[i] = orig;
            x0.Backend.Upload<double>(values, x0);
            numeric.Add((plus - minus) / (2 * eps));
        }
        TensorAssert.Close(analytic, [.. numeric], 1e-7, 1e-5, "compact gradient vs finite differences");
    }

    // ---- gradients ----------------------------------------------------------------------------------

    [Test]
    public void Linear_weight_gradient_is_the_held_slices_of_the_dense_one([Values(0, 1)] int axis, [Values(DType.Float32, DType.Float64)] DType dtype)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(1);
        var x = Leaf(rng, dtype, 2, 3, 6);
        var w = Leaf(rng, dtype, 5, 6);
        var b = Leaf(rng, dtype, 5);
        var held = axis == 0 ? new HeldSlices(0, [0, 2, 3]) : new HeldSlices(1, [1, 4, 5]);
        CheckAgainstDense(t => Ops.Linear(t[0], t[1], t[2]), [x, w, b], [null, held, new HeldSlices(0, [1, 4])], dtype);
    }

    [Test]
    public void Linear_weight_compact_gradient_matches_finite_differences([Values(0, 1)] int axis)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(2);
        var x = Leaf(rng, DType.Float64, 4, 5);
        var w = Leaf(rng, DType.Float64, 3, 5);
        w.Held = axis == 0 ? new HeldSlices(0, [0, 2]) : new HeldSlices(1, [1, 2, 4]);
        FiniteDifferences(t => Ops.Linear(t[0], t[1]), [x, w], 1);
        // The dense leaf next to it keeps its ordinary, full gradient, also checked by GradCheck.
        w.ZeroGrad();
        w.Held = null;
        GradCheck.Check(t => Ops.Linear(t[0], t[1]), [x, w]);
    }

    [Test]
    public void Conv2d_weight_gradient_is_the_held_slices_of_the_dense_one([Values(0, 1)] int axis, [Values(DType.Float32, DType.Float64)] DType dtype)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(3);
        var x = Leaf(rng, dtype, 2, 4, 6, 5);
        var w = Leaf(rng, dtype, 5, 4, 3, 3);
        var b = Leaf(rng, dtype, 5);
        var held = axis == 0 ? new HeldSlices(0, [1, 2, 4]) : new HeldSlices(1, [0, 3]);
        CheckAgainstDense(t => Ops.Conv2d(t[0], t[1], t[2], stride: 2, padding: 1), [x, w, b], [null, held, null], dtype);
    }

    [Test]
    public void Conv2d_weight_compact_gradient_matches_finite_differences([Values(0, 1, 2)] int axis)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(4);
        var x = Leaf(rng, DType.Float64, 1, 3, 5, 4);
        var w = Leaf(rng, DType.Float64, 4, 3, 2, 2);
        w.Held = new HeldSlices(axis, axis switch { 0 => [1, 3], 1 => [0, 2], _ => [1] }); // axis 2 (kernel rows) takes the generic path
        FiniteDifferences(t => Ops.Conv2d(t[0], t[1], null, stride: 1, padding: 1), [x, w], 1);
    }

    [Test]
    public void Bias_and_other_generic_path_gradients_are_compact([Values(DType.Float32, DType.Float64)] DType dtype)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(5);
        var x = Leaf(rng, dtype, 3, 4);
        var w = Leaf(rng, dtype, 4, 5); // stored (in, out): x·W is not the Linear pattern, so the generic path runs
        var b = Leaf(rng, dtype, 5);
        // w also feeds a second op, so its compact gradient sums two nodes' contributions.
        CheckAgainstDense(
            t => Ops.Add(Ops.Add(Ops.MatMul(t[0], t[1]), t[2]), Ops.Sum(Ops.Mul(t[1], t[1]))),
            [x, w, b], [new HeldSlices(1, [3]), new HeldSlices(1, [0, 4]), new HeldSlices(0, [0, 1, 3])], dtype);
    }

    [Test]
    public void A_held_leaf_that_is_itself_the_root_gets_a_compact_gradient()
    {
        var v = Tensor.FromArray([1.0, 2.0, 3.0], new Shape(3), backend);
        v.RequiresGrad = true;
        v.Held = new HeldSlices(0, [0, 2]);
        v.Backward(Tensor.FromArray([10.0, 20.0, 30.0], new Shape(3), backend));
        Assert.That(v.Grad!.ToArray<double>(), Is.EqualTo(new[] { 10.0, 30.0 }));
    }

    [Test]
    public void Generic_path_matches_finite_differences_for_a_held_bias()
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(6);
        var x = Leaf(rng, DType.Float64, 3, 4);
        var b = Leaf(rng, DType.Float64, 4);
        b.Held = new HeldSlices(0, [1, 2]);
        FiniteDifferences(t => Ops.Tanh(Ops.Add(t[0], t[1])), [x, b], 1);
    }

    // ---- memory and work ------------------------------------------------------------------------------

    [Test]
    public void Gradient_memory_is_exactly_the_compact_size_and_nothing_transient_is_left()
    {
        var account = new MemoryAccount("held");
        using (account.Activate())
        {
            var rng = new Rng(8);
            Tensor w, b, cw;
            using (MemoryAccount.Use(MemoryCategory.Parameters))
            {
                w = Leaf(rng, DType.Float32, 16, 12);
                b = Leaf(rng, DType.Float32, 16);
                cw = Leaf(rng, DType.Float32, 6, 3, 3, 3);
            }
            w.Held = new HeldSlices(0, [0, 5, 9]);
            b.Held = new HeldSlices(0, [0, 5, 9]);
            cw.Held = new HeldSlices(1, [2]);
            using (TensorScope.Begin())
            {
                var img = Tensor.Randn(new Shape(2, 3, 5, 5), rng, backend: backend);
                var y = Ops.Conv2d(img, cw, null, padding: 1);                     // (2, 6, 5, 5)
                var rows = Ops.Reshape(y, 25, 12);                                   // any (tokens, 12) view
                Ops.Sum(Ops.Linear(rows, w, b)).Backward();
            }
            long compact = 4L * (3 * 12 + 3 + 6 * 1 * 3 * 3);
            Assert.That(account.CurrentBytes(MemoryCategory.Gradients), Is.EqualTo(compact), "gradients are compact");
            Assert.That(account.PeakBytes(MemoryCategory.Gradients), Is.EqualTo(compact), "no full-size gradient was ever charged to Gradients");
            Assert.That(account.CurrentBytes(MemoryCategory.Workspace) + account.CurrentBytes(MemoryCategory.Activations), Is.Zero, "no transient buffer outlives backward");
            foreach (var t in new[] { w, b, cw })
            {
                t.ZeroGrad();
                t.Dispose();
            }
        }
        Assert.That(account.CurrentTotal, Is.Zero);
    }

    [Test]
    public void Linear_fast_path_computes_only_held_weight_gradient_elements([Values(0, 1)] int axis, [Values(DType.Float32, DType.Float64)] DType dtype)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(9);
        var x = Tensor.Randn(new Shape(2, 10), rng, dtype: dtype, backend: backend); // no gradient for x
        var w = Leaf(rng, dtype, 8, 10);
        w.Held = axis == 0 ? new HeldSlices(0, [2, 3]) : new HeldSlices(1, [0, 9]);
        var account = new MemoryAccount("fast");
        AutogradCounters.Reset();
        using (account.Activate())
        {
            Tensor loss;
            using (MemoryAccount.Use(MemoryCategory.Activations)) loss = Ops.Sum(Ops.Linear(x, w));
            loss.Backward(); // transient gradients of the (2, 8) output are far smaller than a (8, 10) dW
        }
        Assert.That(AutogradCounters.WeightGradElements, Is.EqualTo(w.GradShape.Numel), "only the compact dW was computed");
        Assert.That(account.PeakBytes(MemoryCategory.Workspace), Is.LessThan(w.Numel * dtype.ElementSize()), "no full-size dW buffer existed");

        // The same weight without Held does the full dW.
        w.ZeroGrad();
        w.Held = null;
        AutogradCounters.Reset();
        Ops.Sum(Ops.Linear(x, w)).Backward();
        Assert.That(AutogradCounters.WeightGradElements, Is.EqualTo(w.Numel));
    }

    [Test]
    public void Generic_path_counts_full_weight_gradient_elements()
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(10);
        var x = Tensor.Randn(new Shape(3, 4), rng, backend: backend);
        var w = Leaf(rng, DType.Float32, 4, 6);
        w.Held = new HeldSlices(1, [1]);
        AutogradCounters.Reset();
        Ops.Sum(Ops.MatMul(x, w)).Backward();
        Assert.That(AutogradCounters.WeightGradElements, Is.EqualTo(w.Numel));
        Assert.That(w.Grad!.Shape, Is.EqualTo(new Shape(4, 1)));
    }

    // ---- optimizers -----------------------------------------------------------------------------------

    private static IEnumerable<TestCaseData> OptimizerCases()
    {
        foreach (var dtype in new[] { DType.Float32, DType.Float64 })
        {
            foreach (int axis in new[] { 0, 1 })
            {
                yield return new TestCaseData("adamw", axis, dtype);
                yield return new TestCaseData("sgd", axis, dtype);
            }
        }
    }

    private static Optimizer Create(string kind, Tensor p) => kind == "adamw"
        ? new AdamW([p], lr: 0.05, weightDecay: 0.1)
        : new Sgd([p], lr: 0.05, momentum: 0.9, dampening: 0.1, weightDecay: 0.2);

    [TestCaseSource(nameof(OptimizerCases))]
    public void Optimizer_updates_only_held_slices_like_the_dense_update(string kind, int axis, DType dtype)
    {
        var rng = new Rng(11);
        var account = new MemoryAccount("opt");
        using (account.Activate())
        {
            var shape = new Shape(4, 6);
            Tensor p0, dense, held;
            using (MemoryAccount.Use(MemoryCategory.Parameters))
            {
                p0 = Tensor.Randn(shape, rng, dtype: dtype, backend: backend);
                dense = Copy(p0);
                held = Copy(p0);
            }
            var initial = p0.ToDoubles();
            dense.RequiresGrad = held.RequiresGrad = true;
            var slices = axis == 0 ? new HeldSlices(0, [1, 3]) : new HeldSlices(1, [0, 2, 5]);
            held.Held = slices;
            using var denseOpt = Create(kind, dense);
            using var heldOpt = Create(kind, held);
            for (int step = 0; step < 3; step++)
            {
                var g = Enumerable.Range(0, 24).Select(_ => rng.NextNormal()).ToArray();
                OptimTest.SetGrads([dense], [g]);
                OptimTest.SetGrads([held], [g]);
                Assert.That(held.Grad!.ToDoubles(), Is.EqualTo(HeldPart(OptimTest.Round(g, dtype), shape, slices)), "the compact gradient");
                denseOpt.Step();
                heldOpt.Step();
            }
            var got = held.ToDoubles();
            var want = dense.ToDoubles();
            TensorAssert.Close(HeldPart(got, shape, slices), HeldPart(want, shape, slices), Tol(dtype), Tol(dtype), "held slices");
            for (int i = 0; i < got.Length; i++)
            {
                if (IsHeld(i, shape, slices)) continue;
                Assert.That(BitConverter.DoubleToInt64Bits(got[i]), Is.EqualTo(BitConverter.DoubleToInt64Bits(initial[i])), $"unheld element {i} must be untouched");
            }
            var state = heldOpt.State(0);
            Assert.That(state, Is.Not.Empty);
            Assert.That(state.Values.Select(t => t.Shape), Is.All.EqualTo(held.GradShape));
            long stateBytes = (kind == "adamw" ? 2 : 1) * (dense.Numel + held.GradShape.Numel) * dtype.ElementSize();
            Assert.That(account.CurrentBytes(MemoryCategory.OptimizerState), Is.EqualTo(stateBytes), "compact state next to the dense one");
            Assert.That(account.CurrentBytes(MemoryCategory.Workspace), Is.Zero, "the gathered copy is freed");
            foreach (var (name, t) in state)
            {
                var denseState = denseOpt.State(0)[name].ToDoubles();
                TensorAssert.Close(t.ToDoubles(), HeldPart(denseState, shape, slices), Tol(dtype), Tol(dtype), name);
            }
            foreach (var t in new[] { p0, dense, held })
            {
                t.ZeroGrad();
                t.Dispose();
            }
        }
    }

    [Test]
    public void Dense_parameters_update_bit_for_bit_as_before_next_to_held_ones()
    {
        var rng = new Rng(12);
        var a = Leaf(rng, DType.Float32, 3, 4);
        var aRef = Copy(a);
        var h = Leaf(rng, DType.Float32, 3, 4);
        h.Held = new HeldSlices(0, [1]);
        using var mixed = new AdamW([a, h], lr: 0.1);
        using var alone = new AdamW([aRef], lr: 0.1);
        var g = Enumerable.Range(0, 12).Select(i => 0.1 * i - 0.5).ToArray();
        OptimTest.SetGrads([a, h, aRef], [g, g, g]);
        mixed.Step();
        alone.Step();
        Assert.That(a.ToArray<float>(), Is.EqualTo(aRef.ToArray<float>()));
        Assert.That(mixed.State(0)["exp_avg"].Shape, Is.EqualTo(new Shape(3, 4)));
        Assert.That(mixed.State(1)["exp_avg"].Shape, Is.EqualTo(new Shape(1, 4)));
    }

    [Test]
    public void LoadState_takes_compact_state_for_a_held_parameter()
    {
        var rng = new Rng(13);
        var p = Leaf(rng, DType.Float64, 4, 3);
        p.Held = new HeldSlices(1, [0, 2]);
        using var opt = new Sgd([p], lr: 0.1, momentum: 0.5);
        using var compact = Tensor.Full(new Shape(4, 2), 1.0, DType.Float64, backend);
        using var full = Tensor.Full(new Shape(4, 3), 1.0, DType.Float64, backend);
        var ex = Assert.Throws<ArgumentException>(() => opt.LoadState(0, new Dictionary<string, Tensor> { ["momentum_buffer"] = full }, 1));
        Assert.That(ex!.Message, Does.Contain("(4, 2)").And.Contain("momentum_buffer"));
        opt.LoadState(0, new Dictionary<string, Tensor> { ["momentum_buffer"] = compact }, 1);
        Assert.That(opt.State(0)["momentum_buffer"].Shape, Is.EqualTo(new Shape(4, 2)));

        // buf = 0.5·1 + g on the held columns; the column it does not hold keeps its value.
        var before = p.ToArray<double>();
        OptimTest.SetGrads([p], [Enumerable.Repeat(2.0, 12).ToArray()]);
        opt.Step();
        var after = p.ToArray<double>();
        for (int i = 0; i < 12; i++)
        {
            double expected = i % 3 == 1 ? before[i] : before[i] - 0.1 * (0.5 + 2.0);
            Assert.That(after[i], Is.EqualTo(expected).Within(1e-12), $"element {i}");
        }
    }

    [Test]
    public void Changing_held_slices_after_state_exists_fails_clearly()
    {
        var rng = new Rng(14);
        var p = Leaf(rng, DType.Float32, 4, 3);
        p.Held = new HeldSlices(0, [0, 1]);
        using var opt = new AdamW([p]);
        OptimTest.SetGrads([p], [new double[12]]);
        opt.Step();
        opt.ZeroGrad();
        p.Held = new HeldSlices(0, [0, 1, 2]);
        OptimTest.SetGrads([p], [new double[12]]);
        var ex = Assert.Throws<InvalidOperationException>(opt.Step);
        Assert.That(ex!.Message, Does.Contain("exp_avg").And.Contain("(3, 3)"));
    }

    // ---- validation -----------------------------------------------------------------------------------

    [Test]
    public void Held_validates_axis_and_indices_against_the_tensor()
    {
        var w = Tensor.Zeros(new Shape(4, 3), backend: backend);
        w.Name = "fc.weight";
        Assert.That(() => w.Held = new HeldSlices(0, [1]), Throws.InvalidOperationException.With.Message.Contains("fc.weight").And.Message.Contains("require grad"));
        w.RequiresGrad = true;
        Assert.That(() => w.Held = new HeldSlices(2, [0]), Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("axis 2").And.Message.Contains("fc.weight"));
        Assert.That(() => w.Held = new HeldSlices(1, [1, 3]), Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("index 3").And.Message.Contains("size 3"));
        Assert.That(() => new HeldSlices(-1, [0]), Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains(">= 0"));
        Assert.That(() => new HeldSlices(0, [2, 1]), Throws.ArgumentException.With.Message.Contains("strictly increasing"));
        Assert.That(() => new HeldSlices(0, [1, 1]), Throws.ArgumentException.With.Message.Contains("strictly increasing"));
        Assert.That(() => new HeldSlices(0, [-1, 1]), Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("negative"));
        Assert.That(() => new HeldSlices(0, []), Throws.ArgumentException.With.Message.Contains("empty"));
        Assert.That(w.Held, Is.Null, "failed assignments change nothing");

        w.Held = new HeldSlices(1, [0, 2]);
        Assert.That(w.GradShape, Is.EqualTo(new Shape(4, 2)));
        using (TensorScope.Begin()) Ops.Sum(w).Backward();
        Assert.That(() => w.Held = new HeldSlices(1, [0]), Throws.InvalidOperationException.With.Message.Contains("ZeroGrad"));
        Assert.That(() => w.Held = null, Throws.InvalidOperationException);
        w.ZeroGrad();
        w.Held = null;
        Assert.That(w.GradShape, Is.EqualTo(w.Shape));

        using var scope = TensorScope.Begin();
        var y = Ops.Scale(w, 2);
        Assert.That(() => y.Held = new HeldSlices(0, [0]), Throws.InvalidOperationException.With.Message.Contains("leaf"));
    }

    [Test]
    public void HeldSlices_copies_and_compares_its_indices()
    {
        var list = new List<int> { 1, 4 };
        var h = new HeldSlices(0, list);
        list[0] = 9;
        Assert.That(h.Indices, Is.EqualTo(new[] { 1, 4 }));
        Assert.That(h, Is.EqualTo(new HeldSlices(0, [1, 4])));
        Assert.That(h, Is.Not.EqualTo(new HeldSlices(1, [1, 4])));
        Assert.That(h.GetHashCode(), Is.EqualTo(new HeldSlices(0, new[] { 1, 4 }).GetHashCode()));
        Assert.That(() => h with { Indices = [3, 2] }, Throws.ArgumentException);
    }
}
