using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Tests.Support;

namespace Sdp.Tests.Operators;

/// <summary>Naive double-precision gather/scatter over (outer, n, inner) views.</summary>
internal static class IndexingReference
{
    public static (int Outer, int Inner) Split(int[] dims, int axis)
    {
        int outer = 1, inner = 1;
        for (int a = 0; a < axis; a++) outer *= dims[a];
        for (int a = axis + 1; a < dims.Length; a++) inner *= dims[a];
        return (outer, inner);
    }

    public static double[] IndexSelect(double[] x, int[] dims, int axis, long[] idx)
    {
        var (outer, inner) = Split(dims, axis);
        int n = dims[axis];
        var y = new double[outer * idx.Length * inner];
        for (int o = 0; o < outer; o++)
            for (int k = 0; k < idx.Length; k++)
                for (int i = 0; i < inner; i++)
                    y[(o * idx.Length + k) * inner + i] = x[(o * n + idx[k]) * inner + i];
        return y;
    }

    public static double[] IndexAdd(double[] dst, int[] dims, int axis, long[] idx, double[] src)
    {
        var (outer, inner) = Split(dims, axis);
        int n = dims[axis];
        var y = (double[])dst.Clone();
        for (int o = 0; o < outer; o++)
            for (int k = 0; k < idx.Length; k++)
                for (int i = 0; i < inner; i++)
                    y[(o * n + idx[k]) * inner + i] += src[(o * idx.Length + k) * inner + i];
        return y;
    }
}

/// <summary>IndexSelect and ScatterAdd forward values, per backend, in float32.</summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class IndexingForwardTests(IBackend backend)
{
    private Tensor T(double[] v, params int[] shape) => Tensor.FromDoubles(v, new Shape(shape), DType.Float32, backend);

    private Tensor Ids(long[] v, bool int64) => int64
        ? Tensor.FromArray(v, new Shape(v.Length), backend)
        : Tensor.FromArray(Array.ConvertAll(v, i => (int)i), new Shape(v.Length), backend);

    [TestCase(false)]
    [TestCase(true)]
    public void IndexSelect_by_hand(bool int64)
    {
        using var scope = TensorScope.Begin();
        // x = [[1,2,3],[4,5,6]]; columns (2, 0, 2) -> [[3,1,3],[6,4,6]]; row (1) -> [[4,5,6]]
        var x = T([1, 2, 3, 4, 5, 6], 2, 3);
        var cols = Ops.IndexSelect(x, 1, Ids([2, 0, 2], int64));
        Assert.That(cols.Shape, Is.EqualTo(new Shape(2, 3)));
        TensorAssert.Close(cols, [3, 1, 3, 6, 4, 6]);
        TensorAssert.Close(Ops.IndexSelect(x, 0, Ids([1], int64)), [4, 5, 6]);
        Assert.That(Ops.IndexSelect(x, -1, Ids([], int64)).Shape, Is.EqualTo(new Shape(2, 0)));
    }

    [TestCase(new[] { 4, 5, 3 }, 1, false)]
    [TestCase(new[] { 4, 5, 3 }, 0, true)]
    [TestCase(new[] { 4, 5, 3 }, 2, false)]
    [TestCase(new[] { 2, 1, 3, 6 }, 3, true)]
    public void IndexSelect_matches_naive_reference(int[] dims, int axis, bool int64)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(21);
        var values = ShapeReference.Random(rng, dims.Aggregate(1, (a, b) => a * b));
        var idx = Enumerable.Range(0, 9).Select(_ => (long)rng.NextInt(dims[axis])).ToArray();
        var y = Ops.IndexSelect(T(values, dims), axis, Ids(idx, int64));
        TensorAssert.Close(y, IndexingReference.IndexSelect(values, dims, axis, idx), atol: 0, rtol: 0);
    }

    [Test]
    public void ScatterAdd_by_hand_accumulates_duplicates()
    {
        using var scope = TensorScope.Begin();
        // dst = [10, 20, 30, 40]; indices (0, 2, 0), src (1, 2, 3) -> [10+1+3, 20, 30+2, 40]
        var y = Ops.ScatterAdd(T([10, 20, 30, 40], 4), 0, Ids([0, 2, 0], false), T([1, 2, 3], 3));
        TensorAssert.Close(y, [14, 20, 32, 40]);
        // along axis 1 of (2, 3): dst zeros; indices (2, 2); src [[1, 2], [3, 4]] -> [[0, 0, 3], [0, 0, 7]]
        var z = Ops.ScatterAdd(T([0, 0, 0, 0, 0, 0], 2, 3), 1, Ids([2, 2], true), T([1, 2, 3, 4], 2, 2));
        TensorAssert.Close(z, [0, 0, 3, 0, 0, 7]);
    }

    [TestCase(new[] { 3, 6, 5 }, 1, 40)]
    [TestCase(new[] { 6, 4 }, 0, 25)]
    [TestCase(new[] { 50, 7, 300 }, 1, 64)] // large: several column blocks per outer index
    [TestCase(new[] { 9, 2000 }, 0, 400)]   // embedding-like: one outer index, many repeats
    public void ScatterAdd_matches_naive_reference_and_is_deterministic(int[] dims, int axis, int k)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(22);
        var dst = ShapeReference.Random(rng, dims.Aggregate(1, (a, b) => a * b));
        var srcDims = (int[])dims.Clone();
        srcDims[axis] = k;
        var src = ShapeReference.Random(rng, srcDims.Aggregate(1, (a, b) => a * b));
        var idx = Enumerable.Range(0, k).Select(_ => (long)rng.NextInt(dims[axis])).ToArray();
        var first = Ops.ScatterAdd(T(dst, dims), axis, Ids(idx, false), T(src, srcDims)).ToArray<float>();
        var second = Ops.ScatterAdd(T(dst, dims), axis, Ids(idx, false), T(src, srcDims)).ToArray<float>();
        Assert.That(second, Is.EqualTo(first), "repeated runs must agree bit for bit");
        TensorAssert.Close(Array.ConvertAll(first, v => (double)v), IndexingReference.IndexAdd(dst, dims, axis, idx, src), atol: 1e-4, rtol: 1e-5, what: "scatter_add");
    }
}

/// <summary>Float64 gradient checks and input validation for IndexSelect and ScatterAdd.</summary>
public class IndexingGradTests
{
    private static Tensor Ids(params long[] v) => Tensor.FromArray(v, new Shape(v.Length));

    private static readonly object[] SelectCases =
    [
        new object[] { new[] { 5 }, 0, new long[] { 4, 0, 4, 2 } },
        new object[] { new[] { 3, 4 }, 1, new long[] { 3, 3, 0 } },
        new object[] { new[] { 3, 4 }, 0, new long[] { 1 } },
        new object[] { new[] { 2, 1, 3 }, 1, new long[] { 0, 0 } },
        new object[] { new[] { 2, 3, 1, 5 }, -1, new long[] { 1, 3, 3, 4, 0 } },
        new object[] { new[] { 2, 3, 1, 5 }, 2, new long[] { 0, 0, 0 } },
    ];

    [TestCaseSource(nameof(SelectCases))]
    public void IndexSelect_matches_finite_differences(int[] dims, int axis, long[] idx)
    {
        var x = GradCheck.Input(new Rng(23), dims);
        var ids = Ids(idx);
        GradCheck.Check(t => Ops.IndexSelect(t[0], axis, ids), [x]);
        var ids32 = Tensor.FromArray(Array.ConvertAll(idx, i => (int)i), new Shape(idx.Length));
        GradCheck.Check(t => Ops.IndexSelect(t[0], axis, ids32), [x]);
    }

    [TestCase(new[] { 5 }, 0, new long[] { 4, 0, 4 })]
    [TestCase(new[] { 3, 4 }, 1, new long[] { 3, 3, 0, 1, 3 })]
    [TestCase(new[] { 2, 1, 3 }, 1, new long[] { 0, 0 })]
    [TestCase(new[] { 2, 3, 1, 5 }, 0, new long[] { 1 })]
    [TestCase(new[] { 2, 3, 1, 5 }, 3, new long[] { 2, 2, 4 })]
    public void ScatterAdd_matches_finite_differences(int[] dims, int axis, long[] idx)
    {
        var rng = new Rng(24);
        var dst = GradCheck.Input(rng, dims);
        var srcDims = (int[])dims.Clone();
        srcDims[axis < 0 ? axis + dims.Length : axis] = idx.Length;
        var src = GradCheck.Input(rng, srcDims);
        var ids = Ids(idx);
        GradCheck.Check(t => Ops.ScatterAdd(t[0], axis, ids, t[1]), [dst, src]);
        // each operand alone
        var constDst = Tensor.Zeros(dst.Shape, DType.Float64);
        GradCheck.Check(t => Ops.ScatterAdd(constDst, axis, ids, t[0]), [src]);
        // gather after scatter: exercises the accumulate path of IndexSelect into a shared gradient
        GradCheck.Check(t => Ops.IndexSelect(Ops.ScatterAdd(t[0], axis, ids, t[1]), axis, ids), [dst, src]);
    }

    [Test]
    public void IndexSelect_names_the_bad_index_and_the_axis_size()
    {
        using var scope = TensorScope.Begin();
        var x = Tensor.Zeros(new Shape(5, 3));
        Assert.That(() => Ops.IndexSelect(x, 0, Ids(1, 7, 2)),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("index_select").And.Message.Contains("index 7").And.Message.Contains("position 1").And.Message.Contains("size 5"));
        Assert.That(() => Ops.IndexSelect(x, 1, Tensor.FromArray(new[] { -1 }, new Shape(1))),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("index_select").And.Message.Contains("index -1").And.Message.Contains("size 3"));
        Assert.That(() => Ops.IndexSelect(x, 0, Tensor.Zeros(new Shape(2))), Throws.ArgumentException.With.Message.Contains("index_select").And.Message.Contains("float32"));
        Assert.That(() => Ops.IndexSelect(x, 0, Tensor.Zeros(new Shape(2, 1), DType.Int64)), Throws.ArgumentException.With.Message.Contains("index_select").And.Message.Contains("(2, 1)"));
        Assert.That(() => Ops.IndexSelect(x, 2, Ids(0)), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("index_select").And.Message.Contains("axis 2"));
    }

    [Test]
    public void ScatterAdd_rejects_bad_shapes_and_indices()
    {
        using var scope = TensorScope.Begin();
        var dst = Tensor.Zeros(new Shape(4, 3));
        Assert.That(() => Ops.ScatterAdd(dst, 0, Ids(0, 1), Tensor.Zeros(new Shape(3, 3))),
            Throws.ArgumentException.With.Message.Contains("scatter_add").And.Message.Contains("(3, 3)").And.Message.Contains("(2, 3)"));
        Assert.That(() => Ops.ScatterAdd(dst, 0, Ids(0, 4), Tensor.Zeros(new Shape(2, 3))),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("scatter_add").And.Message.Contains("index 4").And.Message.Contains("size 4"));
        Assert.That(() => Ops.ScatterAdd(dst, 0, Ids(0), Tensor.Zeros(new Shape(1, 3), DType.Float64)),
            Throws.ArgumentException.With.Message.Contains("scatter_add").And.Message.Contains("float64"));
    }
}
