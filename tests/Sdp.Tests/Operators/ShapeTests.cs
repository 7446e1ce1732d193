using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Tests.Support;

namespace Sdp.Tests.Operators;

/// <summary>Naive double-precision references for the shape ops, written without the kernels.</summary>
internal static class ShapeReference
{
    public static int[] Strides(int[] dims)
    {
        var s = new int[dims.Length];
        int acc = 1;
        for (int i = dims.Length - 1; i >= 0; i--)
        {
            s[i] = acc;
            acc *= dims[i];
        }
        return s;
    }

    /// <summary>y[i] = x[j] with j[perm[a]] = i[a], walking y's multi-index.</summary>
    public static double[] Permute(double[] x, int[] dims, int[] perm)
    {
        var ydims = perm.Select(p => dims[p]).ToArray();
        var xs = Strides(dims);
        var y = new double[x.Length];
        var idx = new int[ydims.Length];
        for (int flat = 0; flat < y.Length; flat++)
        {
            int rem = flat;
            for (int a = ydims.Length - 1; a >= 0; a--)
            {
                idx[a] = rem % ydims[a];
                rem /= ydims[a];
            }
            int src = 0;
            for (int a = 0; a < ydims.Length; a++) src += idx[a] * xs[perm[a]];
            y[flat] = x[src];
        }
        return y;
    }

    /// <summary>Elements whose coordinate along axis lies in [start, start + length).</summary>
    public static double[] Slice(double[] x, int[] dims, int axis, int start, int length)
    {
        var xs = Strides(dims);
        var result = new List<double>();
        for (int flat = 0; flat < x.Length; flat++)
        {
            int c = flat / xs[axis] % dims[axis];
            if (c >= start && c < start + length) result.Add(x[flat]);
        }
        return [.. result];
    }

    /// <summary>Concatenation: for each outer index, each input's block in turn.</summary>
    public static double[] Concat(double[][] xs, int[][] dims, int axis)
    {
        int outer = 1;
        for (int a = 0; a < axis; a++) outer *= dims[0][a];
        var result = new List<double>();
        for (int o = 0; o < outer; o++)
        {
            for (int i = 0; i < xs.Length; i++)
            {
                int block = xs[i].Length / outer;
                result.AddRange(xs[i].Skip(o * block).Take(block));
            }
        }
        return [.. result];
    }

    /// <summary>Normals rounded to float32, so float32 tensors hold them exactly.</summary>
    public static double[] Random(Rng rng, int n) => Enumerable.Range(0, n).Select(_ => (double)(float)rng.NextNormal()).ToArray();
}

/// <summary>Permute, transpose, slice and concat forward values, per backend, in float32.</summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class ShapeForwardTests(IBackend backend)
{
    private Tensor T(double[] v, params int[] shape) => Tensor.FromDoubles(v, new Shape(shape), DType.Float32, backend);

    [Test]
    public void Transpose_of_a_matrix_by_hand()
    {
        using var scope = TensorScope.Begin();
        // [[1,2,3],[4,5,6]]ᵀ = [[1,4],[2,5],[3,6]]
        var y = Ops.Transpose(T([1, 2, 3, 4, 5, 6], 2, 3), 0, 1);
        Assert.That(y.Shape, Is.EqualTo(new Shape(3, 2)));
        TensorAssert.Close(y, [1, 4, 2, 5, 3, 6]);
    }

    private static readonly object[] PermuteCases =
    [
        new object[] { new[] { 2, 3, 4, 5 }, new[] { 0, 2, 1, 3 } },
        new object[] { new[] { 2, 3, 4, 5 }, new[] { 3, 2, 1, 0 } },
        new object[] { new[] { 2, 3, 4, 5 }, new[] { 1, 3, 0, 2 } },
        new object[] { new[] { 1, 5, 1, 3 }, new[] { 2, 3, 0, 1 } },
        new object[] { new[] { 37, 45 }, new[] { 1, 0 } },
        new object[] { new[] { 3, 33, 70 }, new[] { 0, 2, 1 } },
        new object[] { new[] { 64, 70, 33 }, new[] { 2, 0, 1 } }, // large enough to run in parallel
        new object[] { new[] { 7, 5 }, new[] { 0, 1 } },
        new object[] { new[] { 9 }, new[] { 0 } },
    ];

    [TestCaseSource(nameof(PermuteCases))]
    public void Permute_matches_naive_reference(int[] dims, int[] perm)
    {
        using var scope = TensorScope.Begin();
        var values = ShapeReference.Random(new Rng(7), dims.Aggregate(1, (a, b) => a * b));
        var y = Ops.Permute(T(values, dims), perm);
        Assert.That(y.Shape, Is.EqualTo(new Shape(perm.Select(p => dims[p]).ToArray())));
        TensorAssert.Close(y, ShapeReference.Permute(values, dims, perm), atol: 0, rtol: 0);
    }

    [Test]
    public void Permute_accepts_negative_axes_and_integer_tensors()
    {
        using var scope = TensorScope.Begin();
        var ids = Tensor.FromArray(new long[] { 1, 2, 3, 4, 5, 6 }, new Shape(2, 3), backend);
        var y = Ops.Permute(ids, -1, 0);
        Assert.That(y.ToArray<long>(), Is.EqualTo(new long[] { 1, 4, 2, 5, 3, 6 }));
        var z = Ops.Transpose(T([1, 2, 3, 4, 5, 6], 1, 2, 3), -1, -2);
        Assert.That(z.Shape, Is.EqualTo(new Shape(1, 3, 2)));
        TensorAssert.Close(z, [1, 4, 2, 5, 3, 6]);
    }

    [Test]
    public void Slice_by_hand()
    {
        using var scope = TensorScope.Begin();
        // x = [[0,1,2,3],[4,5,6,7],[8,9,10,11]]
        var x = T([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 3, 4);
        TensorAssert.Close(Ops.Slice(x, 1, 1, 2), [1, 2, 5, 6, 9, 10]);
        TensorAssert.Close(Ops.Slice(x, 0, 2, 1), [8, 9, 10, 11]);
        TensorAssert.Close(Ops.Slice(x, -1, 3, 1), [3, 7, 11]);
        Assert.That(Ops.Slice(x, 1, 4, 0).Shape, Is.EqualTo(new Shape(3, 0)));
    }

    [TestCase(new[] { 2, 3, 4, 5 }, 2, 1, 2)]
    [TestCase(new[] { 2, 3, 4, 5 }, 3, 4, 1)]
    [TestCase(new[] { 2, 3, 4, 5 }, 0, 0, 2)]
    [TestCase(new[] { 1, 7, 1 }, 1, 2, 5)]
    [TestCase(new[] { 300, 501 }, 1, 17, 400)] // large: the flat range is split across threads
    public void Slice_matches_naive_reference(int[] dims, int axis, int start, int length)
    {
        using var scope = TensorScope.Begin();
        var values = ShapeReference.Random(new Rng(8), dims.Aggregate(1, (a, b) => a * b));
        var y = Ops.Slice(T(values, dims), axis, start, length);
        TensorAssert.Close(y, ShapeReference.Slice(values, dims, axis, start, length), atol: 0, rtol: 0);
    }

    [Test]
    public void Concat_by_hand()
    {
        using var scope = TensorScope.Begin();
        var a = T([1, 2, 3, 4], 2, 2);
        var b = T([5, 6], 2, 1);
        // along axis 1: [[1,2,5],[3,4,6]]
        TensorAssert.Close(Ops.Concat([a, b], 1), [1, 2, 5, 3, 4, 6]);
        // along axis 0: rows of a then rows of c
        var c = T([7, 8], 1, 2);
        var y = Ops.Concat([a, c], 0);
        Assert.That(y.Shape, Is.EqualTo(new Shape(3, 2)));
        TensorAssert.Close(y, [1, 2, 3, 4, 7, 8]);
        var ids = Ops.Concat([Tensor.FromArray(new[] { 1, 2 }, new Shape(2), backend), Tensor.FromArray(new[] { 3 }, new Shape(1), backend)], 0);
        Assert.That(ids.ToArray<int>(), Is.EqualTo(new[] { 1, 2, 3 }));
    }

    [TestCase(0)]
    [TestCase(1)]
    [TestCase(2)]
    [TestCase(-1)]
    public void Concat_matches_naive_reference(int axis)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(9);
        int a = axis < 0 ? axis + 3 : axis;
        int[][] dims = [[2, 3, 5], [2, 3, 5], [2, 3, 5]];
        dims[0][a] = 1;
        dims[1][a] = 4;
        dims[2][a] = 2;
        var values = dims.Select(d => ShapeReference.Random(rng, d.Aggregate(1, (p, q) => p * q))).ToArray();
        var y = Ops.Concat(values.Select((v, i) => T(v, dims[i])).ToArray(), axis);
        Assert.That(y.Shape[a], Is.EqualTo(7));
        TensorAssert.Close(y, ShapeReference.Concat(values, dims, a), atol: 0, rtol: 0);
    }
}

/// <summary>Float64 gradient checks and input validation for permute, transpose, slice and concat.</summary>
public class ShapeGradTests
{
    private static readonly object[] PermuteCases =
    [
        new object[] { new[] { 5 }, new[] { 0 } },
        new object[] { new[] { 3, 1 }, new[] { 1, 0 } },
        new object[] { new[] { 4, 3 }, new[] { 1, 0 } },
        new object[] { new[] { 2, 3, 4 }, new[] { 2, 0, 1 } },
        new object[] { new[] { 2, 1, 3, 5 }, new[] { 0, 2, 1, 3 } },
        new object[] { new[] { 3, 2, 1, 5 }, new[] { 3, 1, 2, 0 } },
    ];

    [TestCaseSource(nameof(PermuteCases))]
    public void Permute_matches_finite_differences(int[] dims, int[] perm)
    {
        var x = GradCheck.Input(new Rng(11), dims);
        GradCheck.Check(t => Ops.Permute(t[0], perm), [x]);
    }

    [Test]
    public void Transpose_matches_finite_differences()
    {
        var rng = new Rng(12);
        var x = GradCheck.Input(rng, 2, 3, 5);
        GradCheck.Check(t => Ops.Transpose(t[0], 0, 2), [x]);
        GradCheck.Check(t => Ops.Transpose(t[0], -1, -2), [x]);
        var m = GradCheck.Input(rng, 1, 7);
        GradCheck.Check(t => Ops.Transpose(t[0], 0, 1), [m]);
        var r4 = GradCheck.Input(rng, 2, 1, 3, 2);
        GradCheck.Check(t => Ops.Transpose(t[0], 1, 2), [r4]);
    }

    [TestCase(new[] { 7 }, 0, 2, 3)]
    [TestCase(new[] { 3, 5 }, 1, 0, 5)]
    [TestCase(new[] { 3, 5 }, 0, 1, 1)]
    [TestCase(new[] { 2, 1, 5 }, 1, 0, 1)]
    [TestCase(new[] { 2, 3, 1, 5 }, 3, 1, 3)]
    [TestCase(new[] { 2, 3, 1, 5 }, -3, 2, 1)]
    public void Slice_matches_finite_differences(int[] dims, int axis, int start, int length)
    {
        var x = GradCheck.Input(new Rng(13), dims);
        GradCheck.Check(t => Ops.Slice(t[0], axis, start, length), [x]);
    }

    [Test]
    public void Concat_matches_finite_differences()
    {
        var rng = new Rng(14);
        var a = GradCheck.Input(rng, 2, 1, 3);
        var b = GradCheck.Input(rng, 2, 2, 3);
        var c = GradCheck.Input(rng, 2, 3, 3);
        GradCheck.Check(t => Ops.Concat(t, 1), [a, b, c]);
        GradCheck.Check(t => Ops.Concat([t[0], t[0], t[1]], -2), [a, b]); // a used twice: gradients add
        var v1 = GradCheck.Input(rng, 3);
        var v2 = GradCheck.Input(rng, 1);
        GradCheck.Check(t => Ops.Concat(t, 0), [v1, v2]);
        var p = GradCheck.Input(rng, 1, 2, 1, 3);
        var q = GradCheck.Input(rng, 1, 2, 2, 3);
        GradCheck.Check(t => Ops.Concat(t, 2), [p, q]);
        // a constant operand gets no gradient but still shifts the others' offsets
        var constant = Tensor.Zeros(new Shape(2, 2, 3), DType.Float64);
        GradCheck.Check(t => Ops.Concat([constant, t[0]], 1), [c]);
    }

    [Test]
    public void Permute_rejects_bad_permutations()
    {
        using var scope = TensorScope.Begin();
        var x = Tensor.Zeros(new Shape(2, 3, 4));
        Assert.That(() => Ops.Permute(x, 0, 1), Throws.ArgumentException.With.Message.Contains("permute").And.Message.Contains("(2, 3, 4)").And.Message.Contains("rank 3"));
        Assert.That(() => Ops.Permute(x, 0, 1, 1), Throws.ArgumentException.With.Message.Contains("permute").And.Message.Contains("repeats"));
        Assert.That(() => Ops.Permute(x, 0, 1, 3), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("permute").And.Message.Contains("axis 3"));
        Assert.That(() => Ops.Transpose(x, 0, 5), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("transpose").And.Message.Contains("axis 5"));
    }

    [Test]
    public void Slice_rejects_windows_outside_the_axis()
    {
        using var scope = TensorScope.Begin();
        var x = Tensor.Zeros(new Shape(2, 3));
        Assert.That(() => Ops.Slice(x, 1, 2, 2), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("slice").And.Message.Contains("[2, 4)").And.Message.Contains("(2, 3)"));
        Assert.That(() => Ops.Slice(x, 0, -1, 1), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("slice"));
        Assert.That(() => Ops.Slice(x, 2, 0, 1), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("slice").And.Message.Contains("axis 2"));
    }

    [Test]
    public void Concat_rejects_mismatched_inputs()
    {
        using var scope = TensorScope.Begin();
        var a = Tensor.Zeros(new Shape(2, 3));
        var b = Tensor.Zeros(new Shape(3, 3));
        Assert.That(() => Ops.Concat([a, b], 1), Throws.ArgumentException.With.Message.Contains("concat").And.Message.Contains("(3, 3)").And.Message.Contains("(2, 3)"));
        Assert.That(() => Ops.Concat([a, Tensor.Zeros(new Shape(2, 3), DType.Float64)], 0), Throws.ArgumentException.With.Message.Contains("concat").And.Message.Contains("float64"));
        Assert.That(() => Ops.Concat([a, Tensor.Zeros(new Shape(6))], 0), Throws.ArgumentException.With.Message.Contains("concat"));
        Assert.That(() => Ops.Concat([], 0), Throws.ArgumentException.With.Message.Contains("concat"));
    }
}
