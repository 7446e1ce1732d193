using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Tests.Support;

namespace Sdp.Tests.Operators;

/// <summary>Naive double-precision softmax and cross-entropy, row by row.</summary>
internal static class SoftmaxReference
{
    public static double[] LogSoftmax(double[] x, int v)
    {
        var y = new double[x.Length];
        for (int r = 0; r < x.Length / v; r++)
        {
            double max = double.NegativeInfinity;
            for (int j = 0; j < v; j++) max = Math.Max(max, x[r * v + j]);
            double sum = 0;
            for (int j = 0; j < v; j++) sum += Math.Exp(x[r * v + j] - max);
            for (int j = 0; j < v; j++) y[r * v + j] = x[r * v + j] - max - Math.Log(sum);
        }
        return y;
    }

    public static double[] Softmax(double[] x, int v) => Array.ConvertAll(LogSoftmax(x, v), Math.Exp);

    /// <summary>Per-row losses (0 for ignored rows) and the count of the others.</summary>
    public static (double[] Losses, int Count) CrossEntropy(double[] logits, int v, long[] targets, int ignoreIndex)
    {
        var logp = LogSoftmax(logits, v);
        var losses = new double[targets.Length];
        int count = 0;
        for (int r = 0; r < targets.Length; r++)
        {
            if (targets[r] == ignoreIndex) continue;
            losses[r] = -logp[r * v + targets[r]];
            count++;
        }
        return (losses, count);
    }
}

/// <summary>Softmax, log-softmax and cross-entropy forward values (and the hand-checked CE gradient), per backend, in float32.</summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class SoftmaxForwardTests(IBackend backend)
{
    private Tensor T(double[] v, params int[] shape) => Tensor.FromDoubles(v, new Shape(shape), DType.Float32, backend);

    private Tensor Targets(long[] v, bool int64, params int[] shape) => int64
        ? Tensor.FromArray(v, new Shape(shape), backend)
        : Tensor.FromArray(Array.ConvertAll(v, i => (int)i), new Shape(shape), backend);

    [SetUp]
    public void ClearTape() => Tape.Current.Clear();

    [Test]
    public void Softmax_by_hand()
    {
        using var scope = TensorScope.Begin();
        // exp(0), exp(0), exp(ln 2) = 1, 1, 2 over 4 -> (¼, ¼, ½); a constant row is uniform;
        // (1000, 1000, 1001) is (0, 0, 1) shifted, so (1, 1, e) / (2 + e), with no overflow because the
        // max is subtracted before exp.
        var x = T([0, 0, Math.Log(2), 5, 5, 5, 1000, 1000, 1001], 3, 3);
        double z = 2 + Math.E;
        TensorAssert.Close(Ops.Softmax(x), [0.25, 0.25, 0.5, 1 / 3.0, 1 / 3.0, 1 / 3.0, 1 / z, 1 / z, Math.E / z], atol: 1e-6);
        TensorAssert.Close(Ops.LogSoftmax(x), [Math.Log(0.25), Math.Log(0.25), Math.Log(0.5), -Math.Log(3), -Math.Log(3), -Math.Log(3), -Math.Log(z), -Math.Log(z), 1 - Math.Log(z)], atol: 1e-5);
        TensorAssert.Close(Ops.Softmax(T([3], 1)), [1]);
    }

    [TestCase(new[] { 7 })]
    [TestCase(new[] { 4, 1 })]
    [TestCase(new[] { 3, 11 })]
    [TestCase(new[] { 2, 3, 5 })]
    [TestCase(new[] { 2, 1, 3, 300 })]
    [TestCase(new[] { 40, 1000 })]
    public void Softmax_matches_naive_reference(int[] dims)
    {
        using var scope = TensorScope.Begin();
        var values = ShapeReference.Random(new Rng(31), dims.Aggregate(1, (a, b) => a * b)).Select(v => v * 4).ToArray();
        var x = T(values, dims);
        int v = dims[^1];
        TensorAssert.Close(Ops.Softmax(x), SoftmaxReference.Softmax(values, v), atol: 1e-6, rtol: 1e-5);
        TensorAssert.Close(Ops.LogSoftmax(x), SoftmaxReference.LogSoftmax(values, v), atol: 1e-5, rtol: 1e-5);
    }

    [Test]
    public void CrossEntropy_by_hand()
    {
        using var scope = TensorScope.Begin();
        // The example worked in Ops.CrossEntropy's doc: logits [[0, 0, ln 2], [1, 1, 1]], targets (2, 0).
        // Row 0: Σexp = 4, ℓ_0 = ln 4 - ln 2 = ln 2. Row 1: lse = 1 + ln 3, ℓ_1 = ln 3.
        // Mean = ln 6 / 2; Sum = ln 6; dlogits (Mean) = (softmax - onehot) / 2 = [[⅛, ⅛, -¼], [-⅓, ⅙, ⅙]].
        var logits = T([0, 0, Math.Log(2), 1, 1, 1], 2, 3);
        var targets = Targets([2, 0], false, 2);
        Assert.That(Ops.CrossEntropy(logits, targets).Item(), Is.EqualTo(Math.Log(6) / 2).Within(1e-6));
        Assert.That(Ops.CrossEntropy(logits, targets, reduction: CrossEntropyReduction.Sum).Item(), Is.EqualTo(Math.Log(6)).Within(1e-6));
        var none = Ops.CrossEntropy(logits, targets, reduction: CrossEntropyReduction.None);
        Assert.That(none.Shape, Is.EqualTo(new Shape(2)));
        TensorAssert.Close(none, [Math.Log(2), Math.Log(3)], atol: 1e-6);

        logits.RequiresGrad = true;
        Ops.CrossEntropy(logits, targets).Backward();
        TensorAssert.Close(logits.Grad!, [0.125, 0.125, -0.25, -1 / 3.0, 1 / 6.0, 1 / 6.0], atol: 1e-6);
        logits.ZeroGrad();

        // Ignoring row 0 (target -100): Mean = ℓ_1 / 1 = ln 3, and row 0's gradient is zero.
        var ignored = Targets([-100, 0], true, 2);
        var loss = Ops.CrossEntropy(logits, ignored);
        Assert.That(loss.Item(), Is.EqualTo(Math.Log(3)).Within(1e-6));
        loss.Backward();
        TensorAssert.Close(logits.Grad!, [0, 0, 0, -2 / 3.0, 1 / 3.0, 1 / 3.0], atol: 1e-6);
        logits.ZeroGrad();
    }

    [Test]
    public void CrossEntropy_with_every_row_ignored_is_zero_with_zero_gradients()
    {
        using var scope = TensorScope.Begin();
        var logits = T([1, 2, 3, 4, 5, 6], 2, 3);
        logits.RequiresGrad = true;
        var loss = Ops.CrossEntropy(logits, Targets([7, 7], false, 2), ignoreIndex: 7);
        Assert.That(loss.Item(), Is.Zero);
        loss.Backward();
        TensorAssert.Close(logits.Grad!, [0, 0, 0, 0, 0, 0], atol: 0);
        logits.ZeroGrad();
    }

    [TestCase(new[] { 7, 11 }, false)]
    [TestCase(new[] { 2, 3, 5 }, true)]
    [TestCase(new[] { 5, 1 }, false)]
    [TestCase(new[] { 33, 600 }, true)] // V spans several exp blocks
    public void CrossEntropy_matches_naive_reference(int[] dims, bool int64)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(32);
        int v = dims[^1];
        var values = ShapeReference.Random(rng, dims.Aggregate(1, (a, b) => a * b)).Select(x => x * 3).ToArray();
        var lead = dims[..^1];
        int n = lead.Aggregate(1, (a, b) => a * b);
        var targets = Enumerable.Range(0, n).Select(i => i % 4 == 1 ? -1L : rng.NextInt(v)).ToArray();
        var (losses, count) = SoftmaxReference.CrossEntropy(values, v, targets, ignoreIndex: -1);
        var logits = T(values, dims);
        var t = Targets(targets, int64, lead);
        var none = Ops.CrossEntropy(logits, t, ignoreIndex: -1, reduction: CrossEntropyReduction.None);
        Assert.That(none.Shape, Is.EqualTo(new Shape(lead)));
        TensorAssert.Close(none, losses, atol: 1e-5, rtol: 1e-5);
        Assert.That(Ops.CrossEntropy(logits, t, ignoreIndex: -1, reduction: CrossEntropyReduction.Sum).Item(), Is.EqualTo(losses.Sum()).Within(1e-4));
        Assert.That(Ops.CrossEntropy(logits, t, ignoreIndex: -1).Item(), Is.EqualTo(losses.Sum() / count).Within(1e-5));
        // flattened targets (N) are accepted for (..., V) logits
        var flat = Targets(targets, int64, n);
        Assert.That(Ops.CrossEntropy(logits, flat, ignoreIndex: -1).Item(), Is.EqualTo(losses.Sum() / count).Within(1e-5));
    }
}

/// <summary>Float64 gradient checks and input validation for the softmax family and cross-entropy.</summary>
public class SoftmaxGradTests
{
    private static readonly int[][] Shapes = [[1], [7], [3, 1], [2, 3, 5], [2, 1, 3, 4]];

    [TestCaseSource(nameof(Shapes))]
    public void Softmax_and_log_softmax_match_finite_differences(int[] dims)
    {
        var x = GradCheck.Input(new Rng(33), dims);
        GradCheck.Check(t => Ops.Softmax(t[0]), [x]);
        GradCheck.Check(t => Ops.LogSoftmax(t[0]), [x]);
    }

    [TestCase(CrossEntropyReduction.Mean)]
    [TestCase(CrossEntropyReduction.Sum)]
    [TestCase(CrossEntropyReduction.None)]
    public void CrossEntropy_matches_finite_differences(CrossEntropyReduction reduction)
    {
        var rng = new Rng(34);
        var logits = GradCheck.Input(rng, 5, 7);
        var targets = Tensor.FromArray(new long[] { 3, -100, 0, 6, 3 }, new Shape(5));
        GradCheck.Check(t => Ops.CrossEntropy(t[0], targets, reduction: reduction), [logits]);

        var single = GradCheck.Input(rng, 1, 1); // V = 1: the loss is identically 0, and so is its gradient
        GradCheck.Check(t => Ops.CrossEntropy(t[0], Tensor.FromArray(new[] { 0 }, new Shape(1)), reduction: reduction), [single]);

        var rank3 = GradCheck.Input(rng, 2, 3, 4);
        var t3 = Tensor.FromArray(new[] { 1, 2, 3, 0, 9, 2 }, new Shape(2, 3));
        GradCheck.Check(t => Ops.CrossEntropy(t[0], t3, ignoreIndex: 9, reduction: reduction), [rank3]);

        var rank4 = GradCheck.Input(rng, 2, 1, 3, 3);
        var t4 = Tensor.FromArray(new[] { 2, 0, 1, 1, 2, 0 }, new Shape(2, 1, 3));
        GradCheck.Check(t => Ops.CrossEntropy(t[0], t4, reduction: reduction), [rank4]);

        var wide = GradCheck.Input(rng, 2, 300); // crosses an exp-block boundary
        var tw = Tensor.FromArray(new[] { 299, 5 }, new Shape(2));
        GradCheck.Check(t => Ops.CrossEntropy(t[0], tw, reduction: reduction), [wide]);

        var vector = GradCheck.Input(rng, 6); // rank-1 logits (V) with a one-element target
        GradCheck.Check(t => Ops.CrossEntropy(t[0], Tensor.FromArray(new[] { 4 }, new Shape(1)), reduction: reduction), [vector]);
    }

    [Test]
    public void CrossEntropy_saves_logsumexp_not_the_softmax()
    {
        using var scope = TensorScope.Begin();
        var logits = Tensor.Zeros(new Shape(64, 1000));
        logits.RequiresGrad = true;
        var targets = Tensor.Zeros(new Shape(64), DType.Int32);
        var account = new Sdp.Engine.Memory.MemoryAccount("ce");
        using (account.Activate())
        {
            var loss = Ops.CrossEntropy(logits, targets);
            // Activations: the logsumexp (64 floats) only; logits and targets were allocated elsewhere.
            Assert.That(account.CurrentBytes(Sdp.Engine.Memory.MemoryCategory.Activations), Is.EqualTo(64 * 4));
            loss.Backward();
        }
        logits.ZeroGrad();
    }

    [Test]
    public void Softmax_rejects_bad_inputs()
    {
        using var scope = TensorScope.Begin();
        Assert.That(() => Ops.Softmax(Tensor.Zeros(new Shape(2, 3), DType.Int32)), Throws.ArgumentException.With.Message.Contains("softmax").And.Message.Contains("int32"));
        Assert.That(() => Ops.LogSoftmax(Tensor.Scalar(1)), Throws.ArgumentException.With.Message.Contains("log_softmax").And.Message.Contains("scalar"));
    }

    [Test]
    public void CrossEntropy_names_the_bad_target_row_and_value()
    {
        using var scope = TensorScope.Begin();
        var logits = Tensor.Zeros(new Shape(3, 4));
        Assert.That(() => Ops.CrossEntropy(logits, Tensor.FromArray(new[] { 0, 3, 4 }, new Shape(3))),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("cross_entropy").And.Message.Contains("target 4").And.Message.Contains("row 2").And.Message.Contains("[0, 4)"));
        Assert.That(() => Ops.CrossEntropy(logits, Tensor.FromArray(new long[] { 0, -1, 1 }, new Shape(3))),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("cross_entropy").And.Message.Contains("target -1").And.Message.Contains("row 1"));
        Assert.That(() => Ops.CrossEntropy(logits, Tensor.Zeros(new Shape(2), DType.Int32)),
            Throws.ArgumentException.With.Message.Contains("cross_entropy").And.Message.Contains("(2,)").And.Message.Contains("(3, 4)"));
        Assert.That(() => Ops.CrossEntropy(logits, Tensor.Zeros(new Shape(3))),
            Throws.ArgumentException.With.Message.Contains("cross_entropy").And.Message.Contains("float32"));
        Assert.That(() => Ops.CrossEntropy(Tensor.Zeros(new Shape(3, 0)), Tensor.Zeros(new Shape(3), DType.Int32)),
            Throws.ArgumentException.With.Message.Contains("cross_entropy").And.Message.Contains("V >= 1"));
    }
}
