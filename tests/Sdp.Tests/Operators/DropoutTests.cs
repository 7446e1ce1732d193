using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Tests.Support;

namespace Sdp.Tests.Operators;

/// <summary>Dropout forward behaviour, per backend, in float32: rate, scaling, and the documented counter-based mask.</summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class DropoutForwardTests(IBackend backend)
{
    [SetUp]
    public void ClearTape() => Tape.Current.Clear();

    /// <summary>
    /// The mask spelled out independently from the interface documentation: SplitMix64's (i+1)-th output
    /// from state seed; dropped iff its top 53 bits are below ceil(p·2⁵³).
    /// </summary>
    private static bool Kept(ulong seed, long i, double p)
    {
        ulong z = unchecked(seed + 0x9E3779B97F4A7C15UL * (ulong)(i + 1));
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        z ^= z >> 31;
        return (z >> 11) >= (ulong)Math.Ceiling(p * 9007199254740992.0);
    }

    [TestCase(0.1)]
    [TestCase(0.3)]
    [TestCase(0.5)]
    [TestCase(0.9)]
    public void Keeps_about_one_minus_p_and_scales_survivors(double p)
    {
        using var scope = TensorScope.Begin();
        const int n = 100_000;
        var x = Tensor.Full(new Shape(100, 1000), 2.0, backend: backend);
        var y = Ops.Dropout(x, p, seed: 42).ToArray<float>();
        int kept = 0;
        for (int i = 0; i < n; i++)
        {
            if (y[i] == 0) continue;
            kept++;
            Assert.That(y[i], Is.EqualTo(2 / (1 - p)).Within(1e-5), $"element {i}");
        }
        // 100k Bernoulli(1-p) draws: the standard deviation of the fraction is at most 0.0016.
        Assert.That(kept / (double)n, Is.EqualTo(1 - p).Within(0.01));
    }

    [Test]
    public void Mask_is_the_documented_counter_hash_and_depends_only_on_the_seed()
    {
        using var scope = TensorScope.Begin();
        const double p = 0.25;
        var x = Tensor.Ones(new Shape(3, 1, 7, 5), backend: backend);
        var a = Ops.Dropout(x, p, seed: 7).ToArray<float>();
        var b = Ops.Dropout(x, p, seed: 7).ToArray<float>();
        var c = Ops.Dropout(x, p, seed: 8).ToArray<float>();
        Assert.That(b, Is.EqualTo(a), "same seed, same mask");
        Assert.That(c, Is.Not.EqualTo(a), "another seed, another mask");
        for (int i = 0; i < a.Length; i++) Assert.That(a[i] != 0, Is.EqualTo(Kept(7, i, p)), $"element {i}");
        // The mask of a flat index does not depend on the shape (counter-based, not stream-based).
        var flat = Ops.Dropout(Tensor.Ones(new Shape(105), backend: backend), p, seed: 7).ToArray<float>();
        Assert.That(flat, Is.EqualTo(a));
    }

    [Test]
    public void Evaluation_and_p_zero_return_the_input_unchanged()
    {
        using var scope = TensorScope.Begin();
        var x = Tensor.FromArray(new[] { 1f, -2f, 3f }, new Shape(3), backend);
        Assert.That(Ops.Dropout(x, 0.5, seed: 1, training: false).ToArray<float>(), Is.EqualTo(new[] { 1f, -2f, 3f }));
        Assert.That(Ops.Dropout(x, 0, seed: 1).ToArray<float>(), Is.EqualTo(new[] { 1f, -2f, 3f }));
        Assert.That(Ops.Dropout(x, 1, seed: 1).ToArray<float>(), Is.EqualTo(new[] { 0f, 0f, 0f }));
    }

    [Test]
    public void Gradient_is_the_mask()
    {
        using var scope = TensorScope.Begin();
        var x = Tensor.Full(new Shape(4, 50), 3.0, backend: backend);
        x.RequiresGrad = true;
        var y = Ops.Dropout(x, 0.4, seed: 99);
        var values = y.ToArray<float>();
        Ops.Sum(y).Backward();
        var grad = x.Grad!.ToArray<float>();
        for (int i = 0; i < grad.Length; i++) Assert.That(grad[i], Is.EqualTo(values[i] / 3).Within(1e-6), $"element {i}");
        x.ZeroGrad();

        // In evaluation the gradient passes straight through.
        Ops.Sum(Ops.Dropout(x, 0.4, seed: 99, training: false)).Backward();
        Assert.That(x.Grad!.ToArray<float>(), Is.All.EqualTo(1f));
        x.ZeroGrad();
    }
}

/// <summary>Float64 gradient checks and input validation for dropout.</summary>
public class DropoutGradTests
{
    private static readonly int[][] Shapes = [[1], [9], [3, 1], [2, 3, 5], [2, 1, 3, 4]];

    [TestCaseSource(nameof(Shapes))]
    public void Dropout_matches_finite_differences(int[] dims)
    {
        var x = GradCheck.Input(new Rng(41), dims);
        GradCheck.Check(t => Ops.Dropout(t[0], 0.3, seed: 1234), [x]);
        GradCheck.Check(t => Ops.Dropout(t[0], 0.3, seed: 1234, training: false), [x]);
        GradCheck.Check(t => Ops.Dropout(t[0], 0, seed: 1234), [x]);
    }

    [Test]
    public void Dropout_rejects_bad_inputs()
    {
        using var scope = TensorScope.Begin();
        var x = Tensor.Zeros(new Shape(2, 3));
        Assert.That(() => Ops.Dropout(x, -0.1, 1), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("dropout").And.Message.Contains("-0.1"));
        Assert.That(() => Ops.Dropout(x, 1.5, 1), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("dropout").And.Message.Contains("1.5"));
        Assert.That(() => Ops.Dropout(x, double.NaN, 1), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("dropout").And.Message.Contains("NaN"));
        Assert.That(() => Ops.Dropout(Tensor.Zeros(new Shape(2), DType.Int64), 0.5, 1), Throws.ArgumentException.With.Message.Contains("dropout").And.Message.Contains("int64"));
    }
}
