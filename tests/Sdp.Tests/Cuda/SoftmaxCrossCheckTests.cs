using Sdp.Engine;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// The CUDA backend's softmax family (kernels.cu §6) against the CPU backend, float32 and float64, on random inputs
/// with rows that are not multiples of the block (V from 1 to 300, so rows both shorter and longer than a block).
/// Tolerances: the row max is exact and the row sums are block reductions in a fixed order that is not the CPU's
/// vectorised order, so fp32 agrees to 1e-5 relative plus 1e-6·(largest |value|) absolute (softmax backward and the
/// cross-entropy gradient subtract nearly equal terms), fp64 to 1e-12. The Sum/Mean losses are summed in float64
/// on both (per-thread then a tree on the device, strictly in row order on the CPU): 1e-6 relative in fp32.
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable]
public class SoftmaxCrossCheckTests(CudaImplementation implementation) : OpCrossCheckFixture(implementation)
{
    private static readonly int[][] Shapes = [[13, 37], [5, 300], [1, 1], [2, 3, 1], [4, 257]];

    [Test]
    public void Softmax_and_log_softmax_match_the_cpu([Values(DType.Float32, DType.Float64)] DType dtype, [ValueSource(nameof(Shapes))] int[] shape, [Values] bool log)
    {
        using var scope = TensorScope.Begin();
        var x = Random(new Rng(61), dtype, shape, std: 3);
        var want = CpuOutput(x.Shape, dtype);
        Cpu.Softmax(x, want, log);
        var got = Poisoned(x.Shape, dtype);
        Cuda.Softmax(x.To(Cuda), got, log);
        AssertClose(want, got, Tol(dtype, 1e-5), Tol(dtype, 1e-6) * MaxAbs(want), log ? "log_softmax" : "softmax");
    }

    [Test]
    public void Softmax_backward_accumulates_like_the_cpu([Values(DType.Float32, DType.Float64)] DType dtype, [ValueSource(nameof(Shapes))] int[] shape, [Values] bool log)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(62);
        var x = Random(rng, dtype, shape, std: 2);
        var y = CpuOutput(x.Shape, dtype);
        Cpu.Softmax(x, y, log);
        var dy = Random(rng, dtype, shape);
        var (want, got) = Seeded(rng, dtype, shape);
        Cpu.SoftmaxBackward(y, dy, want, log);
        Cuda.SoftmaxBackward(y.To(Cuda), dy.To(Cuda), got, log);
        AssertClose(want, got, Tol(dtype, 1e-5), Tol(dtype, 1e-6) * MaxAbs(want), log ? "log_softmax backward" : "softmax backward");
    }

    /// <summary>Targets in [0, V), every third row ignored.</summary>
    private static long[] Targets(Rng rng, int rows, int v, int ignoreIndex)
        => [.. Enumerable.Range(0, rows).Select(r => r % 3 == 1 ? ignoreIndex : rng.NextInt64(v))];

    [Test]
    public void Cross_entropy_matches_the_cpu([Values(DType.Float32, DType.Float64)] DType dtype, [Values] CrossEntropyReduction reduction,
        [Values] bool int64, [Values(1, 37, 300)] int v)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(63);
        const int rows = 13, ignore = -100;
        var logits = Random(rng, dtype, [rows, v], std: 3);
        var targets = Indices(Targets(rng, rows, v, ignore), int64, rows);
        var lossShape = reduction == CrossEntropyReduction.None ? new Shape(rows) : Shape.Scalar;
        var want = CpuOutput(lossShape, dtype);
        var wantLse = CpuOutput(new Shape(rows), dtype);
        Cpu.CrossEntropy(logits, targets, ignore, reduction, want, wantLse);
        var got = Poisoned(lossShape, dtype);
        var gotLse = Poisoned(new Shape(rows), dtype);
        Cuda.CrossEntropy(logits.To(Cuda), targets.To(Cuda), ignore, reduction, got, gotLse);
        AssertClose(wantLse, gotLse, Tol(dtype, 1e-6), 0, "lse");
        AssertClose(want, got, Tol(dtype, 1e-5), Tol(dtype, 1e-6) * MaxAbs(want), $"loss ({reduction})");
    }

    [Test]
    public void Cross_entropy_backward_accumulates_like_the_cpu([Values(DType.Float32, DType.Float64)] DType dtype, [Values] CrossEntropyReduction reduction,
        [Values] bool int64, [Values(1, 37, 300)] int v)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(64);
        const int rows = 13, ignore = 5;
        var logits = Random(rng, dtype, [rows, v], std: 3);
        var targets = Indices(Targets(rng, rows, v, ignore), int64, rows);
        var loss = CpuOutput(reduction == CrossEntropyReduction.None ? new Shape(rows) : Shape.Scalar, dtype);
        var lse = CpuOutput(new Shape(rows), dtype);
        Cpu.CrossEntropy(logits, targets, ignore, reduction, loss, lse);
        var dloss = Random(rng, dtype, reduction == CrossEntropyReduction.None ? [rows] : []);
        var (want, got) = Seeded(rng, dtype, rows, v);
        Cpu.CrossEntropyBackward(logits, targets, ignore, reduction, lse, dloss, want);
        Cuda.CrossEntropyBackward(logits.To(Cuda), targets.To(Cuda), ignore, reduction, lse.To(Cuda), dloss.To(Cuda), got);
        AssertClose(want, got, Tol(dtype, 1e-5), Tol(dtype, 1e-6) * MaxAbs(want), $"dlogits ({reduction})");
    }

    [Test]
    public void Cross_entropy_with_every_row_ignored_gives_zero_loss_and_no_gradient([Values(DType.Float32, DType.Float64)] DType dtype)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(65);
        var logits = Random(rng, dtype, [4, 9]).To(Cuda);
        var targets = Indices([7, 7, 7, 7], false, 4).To(Cuda);
        var loss = Poisoned(Shape.Scalar, dtype);
        var lse = Poisoned(new Shape(4), dtype);
        Cuda.CrossEntropy(logits, targets, 7, CrossEntropyReduction.Mean, loss, lse);
        Assert.That(loss.ToDoubles(), Is.EqualTo(new[] { 0.0 }));
        var (want, got) = Seeded(rng, dtype, 4, 9);
        Cuda.CrossEntropyBackward(logits, targets, 7, CrossEntropyReduction.Mean, lse, Tensor.Full(Shape.Scalar, 1.0, dtype, Cuda), got);
        AssertSame(want, got, "dlogits of fully ignored rows");
    }

    // The report is CudaBackend.DeviceError's code 3 (kernels.cu SDP_ERR_CE_TARGET): ArgumentOutOfRangeException
    // "cross_entropy: target {value} at row {index} is outside [0, {limit}) and is not the ignore index".
    [Test]
    public void A_bad_target_is_raised_at_the_next_host_read_and_nothing_is_written([Values] bool int64, [Values] CrossEntropyReduction reduction)
    {
        using var scope = TensorScope.Begin();
        var logits = Random(new Rng(66), DType.Float32, [3, 4]).To(Cuda);
        var targets = Indices([0, 3, 9], int64, 3).To(Cuda);
        var loss = Tensor.Full(reduction == CrossEntropyReduction.None ? new Shape(3) : Shape.Scalar, 7.0, DType.Float32, Cuda);
        var lse = Tensor.Full(new Shape(3), 7.0, DType.Float32, Cuda);
        Cuda.CrossEntropy(logits, targets, -100, reduction, loss, lse); // queues only: no host read in the op
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.Synchronize());
        Assert.That(e!.Message, Does.Contain("cross_entropy").And.Contain("target 9").And.Contain("row 2").And.Contain("[0, 4)"));
        Assert.That(loss.ToDoubles(), Is.All.EqualTo(7.0), "the loss is not written");
        Assert.That(lse.ToDoubles(), Is.All.EqualTo(7.0), "the logsumexp is not written");

        // The flag was cleared by the report: a valid call afterwards runs normally.
        var good = Indices([0, 3, 2], int64, 3).To(Cuda);
        Cuda.CrossEntropy(logits, good, -100, reduction, loss, lse);
        Assert.That(lse.ToDoubles(), Is.All.Not.EqualTo(7.0));
    }

    [Test]
    public void A_bad_target_reaching_backward_is_raised_and_writes_nothing()
    {
        using var scope = TensorScope.Begin();
        var logits = Random(new Rng(67), DType.Float64, [3, 4]).To(Cuda);
        var targets = Indices([-2, 1, 2], true, 3).To(Cuda);
        var lse = Tensor.Zeros(new Shape(3), DType.Float64, Cuda);
        var dloss = Tensor.Ones(new Shape(3), DType.Float64, Cuda);
        var dlogits = Tensor.Zeros(new Shape(3, 4), DType.Float64, Cuda);
        Cuda.CrossEntropyBackward(logits, targets, -100, CrossEntropyReduction.None, lse, dloss, dlogits);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => dlogits.ToDoubles());
        Assert.That(e!.Message, Does.Contain("target -2").And.Contain("row 0"));
        Assert.That(dlogits.ToDoubles()[..4], Is.All.EqualTo(0.0), "the bad row is skipped");
    }
}
