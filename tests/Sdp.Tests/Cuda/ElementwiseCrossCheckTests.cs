using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// The CUDA backend's elementwise family against the CPU backend on fresh random inputs, float32 and float64,
/// odd sizes, outputs NaN-poisoned and accumulating outputs seeded. Tolerances:
/// <list type="bullet">
/// <item>Unary / UnaryBackward: relative 1e-5 (float32) or 1e-12 (float64) plus an absolute 1e-6 / 1e-14 near 0:
///   the same formulas, but libm's expf/tanhf/powf against .NET's TensorPrimitives (a few ulp apart).</item>
/// <item>Binary, SumToShape and ReduceAxis on their one-thread-per-output paths, all of Max with its argmax,
///   MaxAxisBackward: exact (the CPU's operations in the CPU's order).</item>
/// <item>SumToShape's chunked path and ReduceAxis's block path (few outputs, long sums): the sum is regrouped, so
///   1e-5 / 1e-12 relative to Σ|terms|.</item>
/// <item>AddSumOfSquares: 1e-12 relative: float64 sums in another order; the CPU's single running sum over 300 K
///   terms is itself only good to about 1e-13 (measured 1.2e-13 apart).</item>
/// </list>
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable]
public class ElementwiseCrossCheckTests(CudaImplementation implementation) : OpCrossCheckFixture(implementation)
{
    private static readonly DType[] Floats = [DType.Float32, DType.Float64];

    /// <summary>Inputs in the op's domain (positive for log, sqrt, rsqrt and pow) and the op's scalar.</summary>
    private static (double Low, double High, double P) Domain(UnaryOp op) => op switch
    {
        UnaryOp.Log or UnaryOp.Sqrt or UnaryOp.Rsqrt => (0.05, 3, 0),
        UnaryOp.Pow => (0.05, 3, 1.7),
        UnaryOp.Scale => (-3, 3, -1.3),
        UnaryOp.AddScalar => (-3, 3, 0.6),
        _ => (-4, 4, 0),
    };

    private static double Abs(DType dtype) => dtype == DType.Float32 ? 1e-6 : 1e-14;

    [Test]
    public void Unary_matches_the_cpu([Values] UnaryOp op, [ValueSource(nameof(Floats))] DType dtype)
    {
        var rng = new Random(1 + (int)op);
        var (low, high, p) = Domain(op);
        var (xc, xg) = Pair(Values(rng, 1001, dtype, low, high), dtype, 7, 11, 13);
        var (yc, yg) = Poisoned(dtype, 7, 11, 13);
        Cpu.Unary(op, xc, yc, p);
        Cuda.Unary(op, xg, yg, p);
        AssertClose(yc, yg, Rel(dtype), Abs(dtype), $"{op} {dtype}");
        // In place (y aliases x), as gradient clipping scales gradients.
        Cuda.Unary(op, xg, xg, p);
        AssertClose(yc, xg, Rel(dtype), Abs(dtype), $"{op} {dtype} in place");
    }

    [Test]
    public void UnaryBackward_accumulates_like_the_cpu([Values] UnaryOp op, [ValueSource(nameof(Floats))] DType dtype)
    {
        var rng = new Random(20 + (int)op);
        var (low, high, p) = Domain(op);
        var (xc, xg) = Pair(Values(rng, 999, dtype, low, high), dtype, 999);
        var yc = Tensor.Empty(xc.Shape, dtype, Cpu);
        Cpu.Unary(op, xc, yc, p);
        var yg = Tensor.FromDoubles(yc.ToDoubles(), yc.Shape, dtype, Cuda); // the same forward output on both
        var (dyc, dyg) = Random(rng, dtype, 999);
        var (dxc, dxg) = Random(rng, dtype, 999);
        Cpu.UnaryBackward(op, xc, yc, dyc, dxc, p);
        Cuda.UnaryBackward(op, xg, yg, dyg, dxg, p);
        AssertClose(dxc, dxg, Rel(dtype), Abs(dtype), $"d{op} {dtype}");
    }

    private static readonly object[] BinaryShapes =
    [
        new object[] { new[] { 3, 5, 7 }, new[] { 3, 5, 7 } },  // same shape
        new object[] { new[] { 3, 5, 7 }, new[] { 1 } },        // scalar b
        new object[] { new int[0], new[] { 4, 9 } },            // scalar a (rank 0)
        new object[] { new[] { 3, 5, 7 }, new[] { 7 } },        // bias row
        new object[] { new[] { 3, 5, 7 }, new[] { 5, 1 } },     // column, missing leading axis
        new object[] { new[] { 3, 1, 7 }, new[] { 1, 5, 1 } },  // both broadcast
        new object[] { new[] { 2, 1, 3, 1, 5 }, new[] { 3, 4, 5 } },
    ];

    [TestCaseSource(nameof(BinaryShapes))]
    public void Binary_broadcasts_exactly_like_the_cpu(int[] aShape, int[] bShape)
    {
        var yShape = Shape.TryBroadcast(new Shape(aShape), new Shape(bShape))!.ToArray();
        foreach (var dtype in Floats)
        {
            foreach (var op in Enum.GetValues<BinaryOp>())
            {
                var rng = new Random(40 + (int)op);
                var (ac, ag) = Random(rng, dtype, aShape);
                var (bc, bg) = Pair(Values(rng, new Shape(bShape).Numel, dtype, 0.5, 2), dtype, bShape); // away from 0 for Div
                var (yc, yg) = Poisoned(dtype, yShape);
                Cpu.Binary(op, ac, bc, yc);
                Cuda.Binary(op, ag, bg, yg);
                AssertSame(yc, yg, $"{op} {dtype} ({string.Join(",", aShape)}) ({string.Join(",", bShape)})");
            }
        }
    }

    [Test]
    public void Binary_may_write_over_an_operand_of_the_output_shape([ValueSource(nameof(Floats))] DType dtype)
    {
        var rng = new Random(50);
        var (ac, ag) = Random(rng, dtype, 6, 5);
        var (bc, bg) = Random(rng, dtype, 5);
        Cpu.Binary(BinaryOp.Add, ac, bc, ac);
        Cuda.Binary(BinaryOp.Add, ag, bg, ag);
        AssertSame(ac, ag, "a += b broadcast, in place");
        Cpu.Binary(BinaryOp.Mul, bc, ac, ac);
        Cuda.Binary(BinaryOp.Mul, bg, ag, ag);
        AssertSame(ac, ag, "a = b * a broadcast, in place");
    }

    private static readonly object[] SumToShapeCases =
    [
        new object[] { new[] { 3, 5, 7 }, new[] { 5, 1 } },
        new object[] { new[] { 3, 5, 7 }, new[] { 7 } },
        new object[] { new[] { 3, 5, 7 }, new[] { 1 } },
        new object[] { new[] { 3, 5, 7 }, new[] { 3, 1, 7 } },
        new object[] { new[] { 3, 5, 7 }, new[] { 1, 1, 1 } },
        new object[] { new[] { 2, 3, 1, 4 }, new[] { 3, 1, 1 } },
    ];

    [TestCaseSource(nameof(SumToShapeCases))]
    public void SumToShape_accumulates_in_the_cpu_order(int[] srcShape, int[] dstShape)
    {
        foreach (var dtype in Floats)
        {
            var rng = new Random(60);
            var (sc, sg) = Random(rng, dtype, srcShape);
            var (dc, dg) = Random(rng, dtype, dstShape);
            Cpu.SumToShape(sc, dc);
            Cuda.SumToShape(sg, dg);
            AssertSame(dc, dg, $"sum_to_shape {dtype} ({string.Join(",", srcShape)}) -> ({string.Join(",", dstShape)})");
        }
    }

    /// <summary>Few outputs with sums of 300 to 1200 terms: the chunked two-pass path.</summary>
    [TestCase(new[] { 300, 7 }, new[] { 7 })]
    [TestCase(new[] { 2, 401, 3 }, new[] { 1, 1, 3 })]
    [TestCase(new[] { 1200 }, new[] { 1 })]
    [TestCase(new[] { 5, 260, 3 }, new[] { 5, 1, 3 })]
    public void SumToShape_of_long_sums_is_close_to_the_cpu(int[] srcShape, int[] dstShape)
    {
        foreach (var dtype in Floats)
        {
            var rng = new Random(61);
            var (sc, sg) = Random(rng, dtype, srcShape);
            var (dc, dg) = Random(rng, dtype, dstShape);
            Cpu.SumToShape(sc, dc);
            Cuda.SumToShape(sg, dg);
            // |terms| are below 1, so Σ|terms| is below the source count per output.
            double terms = sc.Numel / dc.Numel + 1;
            AssertClose(dc, dg, 0, Rel(dtype) * terms, $"sum_to_shape (chunked) {dtype}");
        }
    }

    /// <summary>Values with repeats, so the max is often tied (the first index must win), and NaN in some columns.</summary>
    private static double[] TieValues(Random rng, long n, bool withNaN)
    {
        var v = new double[n];
        for (long i = 0; i < n; i++) v[i] = rng.Next(-4, 5) * 0.25;
        if (withNaN)
        {
            v[n / 3] = double.NaN;
            v[n / 3 + 2] = double.NaN;
            v[n - 1] = double.NaN;
        }
        return v;
    }

    [Test]
    public void ReduceAxis_sum_and_max_match_the_cpu_exactly([Values(0, 1, 2)] int axis, [ValueSource(nameof(Floats))] DType dtype)
    {
        int[] shape = [4, 37, 5];
        var rng = new Random(70 + axis);
        var (xc, xg) = Random(rng, dtype, shape);
        var yShape = (int[])shape.Clone();
        yShape[axis] = 1;
        var (yc, yg) = Poisoned(dtype, yShape);
        Cpu.ReduceAxis(ReduceOp.Sum, xc, axis, yc, null);
        Cuda.ReduceAxis(ReduceOp.Sum, xg, axis, yg, null);
        AssertSame(yc, yg, $"sum axis {axis} {dtype}");

        var (tc, tg) = Pair(TieValues(rng, xc.Numel, withNaN: true), dtype, shape);
        var (mc, mg) = Poisoned(dtype, yShape);
        var (ic, ig) = Poisoned(DType.Int64, yShape);
        Cpu.ReduceAxis(ReduceOp.Max, tc, axis, mc, ic);
        Cuda.ReduceAxis(ReduceOp.Max, tg, axis, mg, ig);
        AssertSame(mc, mg, $"max axis {axis} {dtype}");
        AssertSame(ic, ig, $"argmax axis {axis} {dtype}");
        var (nc, ng) = Poisoned(dtype, yShape);
        Cpu.ReduceAxis(ReduceOp.Max, tc, axis, nc, null);
        Cuda.ReduceAxis(ReduceOp.Max, tg, axis, ng, null);
        AssertSame(nc, ng, $"max without argmax axis {axis} {dtype}");
    }

    /// <summary>Few outputs along a long axis: one block per output.</summary>
    [Test]
    public void ReduceAxis_over_a_long_axis_matches_the_cpu([Values(false, true)] bool withNaN, [ValueSource(nameof(Floats))] DType dtype)
    {
        int[] shape = [3, 1001, 2];
        var rng = new Random(80);
        var (xc, xg) = Random(rng, dtype, shape);
        var (yc, yg) = Poisoned(dtype, 3, 1, 2);
        Cpu.ReduceAxis(ReduceOp.Sum, xc, 1, yc, null);
        Cuda.ReduceAxis(ReduceOp.Sum, xg, 1, yg, null);
        AssertClose(yc, yg, 0, Rel(dtype) * 1001, $"sum (block) {dtype}");

        var (tc, tg) = Pair(TieValues(rng, xc.Numel, withNaN), dtype, shape);
        var (mc, mg) = Poisoned(dtype, 3, 1, 2);
        var (ic, ig) = Poisoned(DType.Int64, 3, 1, 2);
        Cpu.ReduceAxis(ReduceOp.Max, tc, 1, mc, ic);
        Cuda.ReduceAxis(ReduceOp.Max, tg, 1, mg, ig);
        AssertSame(mc, mg, $"max (block) {dtype}");
        AssertSame(ic, ig, $"argmax (block) {dtype}");

        // All -inf: the CPU keeps index 0.
        var (fc, fg) = Pair(Enumerable.Repeat(double.NegativeInfinity, 2 * 600).ToArray(), dtype, 2, 600);
        var (gc, gg) = Poisoned(dtype, 2, 1);
        var (jc, jg) = Poisoned(DType.Int64, 2, 1);
        Cpu.ReduceAxis(ReduceOp.Max, fc, 1, gc, jc);
        Cuda.ReduceAxis(ReduceOp.Max, fg, 1, gg, jg);
        AssertSame(gc, gg, "max of -inf");
        AssertSame(jc, jg, "argmax of -inf");
    }

    [Test]
    public void MaxAxisBackward_adds_at_the_argmax([Values(0, 1, 2)] int axis, [ValueSource(nameof(Floats))] DType dtype)
    {
        int[] shape = [3, 9, 5];
        var rng = new Random(90 + axis);
        var (xc, _) = Random(rng, dtype, shape);
        var yShape = (int[])shape.Clone();
        yShape[axis] = 1;
        var yc = Tensor.Empty(new Shape(yShape), dtype, Cpu);
        var ic = Tensor.Empty(new Shape(yShape), DType.Int64, Cpu);
        Cpu.ReduceAxis(ReduceOp.Max, xc, axis, yc, ic);
        var ig = Tensor.FromArray(ic.ToArray<long>(), ic.Shape, Cuda);
        var (dyc, dyg) = Random(rng, dtype, yShape);
        var (dxc, dxg) = Random(rng, dtype, shape);
        Cpu.MaxAxisBackward(dyc, ic, axis, dxc);
        Cuda.MaxAxisBackward(dyg, ig, axis, dxg);
        AssertSame(dxc, dxg, $"max backward axis {axis} {dtype}");
    }

    [Test]
    public void AddSumOfSquares_accumulates_in_float64([Values(1, 5, 70001, 300_001)] int n, [ValueSource(nameof(Floats))] DType dtype)
    {
        var rng = new Random(100 + n);
        var (xc, xg) = Random(rng, dtype, n);
        var (tc, tg) = Pair([0.75], DType.Float64);
        Cpu.AddSumOfSquares(xc, 3, tc);
        Cuda.AddSumOfSquares(xg, 3, tg);
        Cuda.AddSumOfSquares(xg, 3, tg); // twice: the total accumulates
        Cpu.AddSumOfSquares(xc, 3, tc);
        AssertClose(tc, tg, 1e-12, 0, $"sum of squares n = {n} {dtype}");
        Assert.That(tg.Item(), Is.GreaterThan(0.75), "something was added");
    }
}
