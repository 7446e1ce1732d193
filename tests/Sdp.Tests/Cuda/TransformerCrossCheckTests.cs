using Sdp.Engine;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// The CUDA backend's transformer ops (kernels.cu §7) against the CPU backend, float32 and float64, int32 and int64
/// indices, at sizes that are not multiples of the tiles (16-row attention tiles, 256-thread blocks).
/// Tolerances:
/// - Embedding, embedding backward, AttentionSwapHeads: bit for bit (a copy, or the CPU's own sequence of adds in
///   increasing id position).
/// - RoPE: 1e-6 relative plus 1e-6·max|value| in fp32 (the same two products and one add or subtract per element,
///   but NVRTC may contract them into an FMA); 1e-14 in fp64.
/// - RMSNorm: the row sums of squares are block reductions (not the CPU's vectorised order): 1e-5 relative
///   (plus 1e-6·max|value| for dx, whose two terms cancel); the dweight partition is the CPU's own.
/// - Attention: online softmax and other summation orders than the CPU's GEMMs: fp32 1e-4 relative plus
///   1e-5·max|value| (gradients sum over every query of a kv-head group), fp64 1e-11.
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable]
public class TransformerCrossCheckTests(CudaImplementation implementation) : OpCrossCheckFixture(implementation)
{
    // ---- embedding --------------------------------------------------------------------------------

    [Test]
    public void Embedding_gathers_like_the_cpu([Values(DType.Float32, DType.Float64)] DType dtype, [Values] bool int64)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(71);
        var weight = Random(rng, dtype, [11, 37]);
        var ids = Indices([.. Enumerable.Range(0, 21).Select(_ => rng.NextInt64(11))], int64, 3, 7);
        var want = CpuOutput(new Shape(21, 37), dtype);
        Cpu.Embedding(weight, ids, want);
        var got = Poisoned(new Shape(21, 37), dtype);
        Cuda.Embedding(weight.To(Cuda), ids.To(Cuda), got);
        AssertSame(want, got, "embedding");
    }

    [TestCase(45, 7)] // heavy repeats, one block
    [TestCase(300, 13)] // several merge passes and blocks
    [TestCase(1, 3)]
    [TestCase(257, 1000)] // mostly distinct ids
    public void Embedding_backward_sums_in_id_order_like_the_cpu(int n, int vocab)
    {
        foreach (var dtype in new[] { DType.Float32, DType.Float64 })
        foreach (bool int64 in new[] { false, true })
        {
            using var scope = TensorScope.Begin();
            var rng = new Rng(72);
            var ids = Indices([.. Enumerable.Range(0, n).Select(_ => rng.NextInt64(vocab))], int64, n);
            var dy = Random(rng, dtype, [n, 37]);
            var (want, got) = Seeded(rng, dtype, vocab, 37);
            Cpu.EmbeddingBackward(dy, ids, want);
            var dyDevice = dy.To(Cuda);
            var idsDevice = ids.To(Cuda);
            var again = got.Clone();
            Cuda.EmbeddingBackward(dyDevice, idsDevice, got);
            AssertSame(want, got, $"embedding backward {dtype} int64={int64}");
            Cuda.EmbeddingBackward(dyDevice, idsDevice, again);
            AssertSame(got, again, "a second run");
        }
    }

    [Test]
    public void An_out_of_range_id_is_raised_at_the_next_host_read([Values] bool int64)
    {
        using var scope = TensorScope.Begin();
        var weight = Random(new Rng(73), DType.Float32, [5, 3]).To(Cuda);
        var ids = Indices([0, 1, 7, 2], int64, 2, 2).To(Cuda);
        var y = Poisoned(new Shape(4, 3), DType.Float32);
        Cuda.Embedding(weight, ids, y); // queues only: no host read in the op
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => y.ToArray<float>());
        Assert.That(e!.Message, Does.Contain("id 7").And.Contain("flat position 2").And.Contain("[0, 5)"));
        Assert.That(e.ParamName, Is.EqualTo("ids"));

        var negative = Indices([4, -1], int64, 2).To(Cuda);
        Cuda.Embedding(weight, negative, Poisoned(new Shape(2, 3), DType.Float32));
        e = Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.Synchronize());
        Assert.That(e!.Message, Does.Contain("id -1").And.Contain("flat position 1"));

        // Reported once: the flag is clear again, and good ids run normally.
        Cuda.Embedding(weight, Indices([4, 0], int64, 2).To(Cuda), y.Narrow(0, 2));
        Assert.DoesNotThrow(() => Cuda.Synchronize());
    }

    // ---- RMSNorm --------------------------------------------------------------------------------------

    [Test]
    public void RmsNorm_matches_the_cpu([Values(DType.Float32, DType.Float64)] DType dtype, [Values(1, 37, 300)] int c)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(74);
        var x = Random(rng, dtype, [13, c]);
        var w = Random(rng, dtype, [c]);
        var want = CpuOutput(x.Shape, dtype);
        var wantRstd = CpuOutput(new Shape(13), dtype);
        Cpu.RmsNorm(x, w, wantRstd, want, 1e-5);
        var got = Poisoned(x.Shape, dtype);
        var gotRstd = Poisoned(new Shape(13), dtype);
        Cuda.RmsNorm(x.To(Cuda), w.To(Cuda), gotRstd, got, 1e-5);
        AssertClose(wantRstd, gotRstd, Tol(dtype, 1e-5), 0, "rstd");
        AssertClose(want, got, Tol(dtype, 1e-5), 0, "y");
    }

    [Test]
    public void RmsNorm_backward_accumulates_like_the_cpu([Values(DType.Float32, DType.Float64)] DType dtype, [Values(1, 37, 300)] int c,
        [Values(3, 200)] int rows, [Values("both", "dx", "dweight")] string wanted)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(75);
        var x = Random(rng, dtype, [rows, c]);
        var w = Random(rng, dtype, [c]);
        var rstd = CpuOutput(new Shape(rows), dtype);
        Cpu.RmsNorm(x, w, rstd, CpuOutput(x.Shape, dtype), 1e-5);
        var dy = Random(rng, dtype, [rows, c]);
        var (wantDx, gotDx) = Seeded(rng, dtype, rows, c);
        var (wantDw, gotDw) = Seeded(rng, dtype, c);
        bool dx = wanted != "dweight", dw = wanted != "dx";
        Cpu.RmsNormBackward(dy, x, w, rstd, dx ? wantDx : null, dw ? wantDw : null);
        Cuda.RmsNormBackward(dy.To(Cuda), x.To(Cuda), w.To(Cuda), rstd.To(Cuda), dx ? gotDx : null, dw ? gotDw : null);
        AssertClose(wantDx, gotDx, Tol(dtype, 1e-5), Tol(dtype, 1e-6) * MaxAbs(wantDx), "dx");
        AssertClose(wantDw, gotDw, Tol(dtype, 1e-5), Tol(dtype, 1e-6) * MaxAbs(wantDw), "dweight");
    }

    // ---- RoPE ---------------------------------------------------------------------------------------------

    /// <summary>Position ids of a case: null (offset), (T) int32, (B, T) int64, (1, T) int64.</summary>
    private static Tensor? Positions(string kind, Rng rng, int b, int t, int rows) => kind switch
    {
        "offset" => null,
        "shared" => Indices([.. Enumerable.Range(0, t).Select(_ => rng.NextInt64(rows))], false, t),
        "batch" => Indices([.. Enumerable.Range(0, b * t).Select(_ => rng.NextInt64(rows))], true, b, t),
        _ => Indices([.. Enumerable.Range(0, t).Select(_ => rng.NextInt64(rows))], true, 1, t),
    };

    [Test]
    public void Rope_and_its_backward_match_the_cpu([Values(DType.Float32, DType.Float64)] DType dtype, [Values("offset", "shared", "batch", "one")] string positionKind,
        [Values] bool hfTables)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(76);
        const int b = 2, t = 5, h = 3, d = 10, rows = 9, offset = 3;
        var (cos, sin) = hfTables ? Ops.RopeTables(rows, d, 10000, dtype, Cpu) : (Random(rng, dtype, [rows, d]), Random(rng, dtype, [rows, d]));
        var positions = Positions(positionKind, rng, b, t, rows);
        var x = Random(rng, dtype, [b, t, h, d]);
        var want = CpuOutput(x.Shape, dtype);
        Cpu.Rope(x, cos, sin, positions, offset, want);
        var got = Poisoned(x.Shape, dtype);
        var (cosD, sinD, posD) = (cos.To(Cuda), sin.To(Cuda), positions?.To(Cuda));
        Cuda.Rope(x.To(Cuda), cosD, sinD, posD, offset, got);
        AssertClose(want, got, Tol(dtype, 1e-6, 1e-14), Tol(dtype, 1e-6, 1e-14) * MaxAbs(want), "rope");

        var dy = Random(rng, dtype, [b, t, h, d]);
        var (wantDx, gotDx) = Seeded(rng, dtype, b, t, h, d);
        Cpu.RopeBackward(dy, cos, sin, positions, offset, wantDx);
        Cuda.RopeBackward(dy.To(Cuda), cosD, sinD, posD, offset, gotDx);
        AssertClose(wantDx, gotDx, Tol(dtype, 1e-6, 1e-14), Tol(dtype, 1e-6, 1e-14) * MaxAbs(wantDx), "rope backward");
    }

    [Test]
    public void An_out_of_range_position_is_raised_at_the_next_host_read([Values] bool int64)
    {
        using var scope = TensorScope.Begin();
        var (cos, sin) = Ops.RopeTables(6, 4, 10000, DType.Float32, Cuda);
        var x = Random(new Rng(77), DType.Float32, [1, 3, 2, 4]).To(Cuda);
        var positions = Indices([0, 9, 1], int64, 1, 3).To(Cuda);
        var y = Poisoned(x.Shape, DType.Float32);
        Cuda.Rope(x, cos, sin, positions, 0, y); // queues only
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.Synchronize());
        Assert.That(e!.Message, Does.Contain("position id 9").And.Contain("flat position 1").And.Contain("[0, 6)"));
        Assert.That(e.ParamName, Is.EqualTo("positions"));

        var dx = Tensor.Zeros(x.Shape, DType.Float32, Cuda);
        Cuda.RopeBackward(x, cos, sin, Indices([-3, 0, 1], int64, 3).To(Cuda), 0, dx);
        e = Assert.Throws<ArgumentOutOfRangeException>(() => dx.ToArray<float>());
        Assert.That(e!.Message, Does.Contain("position id -3").And.Contain("flat position 0"));
        Assert.That(dx.ToArray<float>()[..8], Is.All.EqualTo(0f), "the bad position's row is not written");
    }

    // ---- head layout ----------------------------------------------------------------------------------

    [Test]
    public void Swap_heads_copies_and_accumulates_like_the_cpu([Values(DType.Float32, DType.Float64)] DType dtype, [Values] bool accumulate)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(78);
        var src = Random(rng, dtype, [2, 5, 3, 7]);
        var (want, got) = accumulate ? Seeded(rng, dtype, 2, 3, 5, 7) : (CpuOutput(new Shape(2, 3, 5, 7), dtype), Poisoned(new Shape(2, 3, 5, 7), dtype));
        Cpu.AttentionSwapHeads(src, want, 2, 5, 3, 7, accumulate);
        Cuda.AttentionSwapHeads(src.To(Cuda), got, 2, 5, 3, 7, accumulate);
        AssertSame(want, got, "swap heads");
    }

    // ---- causal attention ----------------------------------------------------------------------------

    // (B, H, KVH, T, D): GQA over 2 tiles with odd T and D; groups of 3 over 3 tiles; MHA at T = 1; D = 1;
    // D > 256 (two column chunks, and over 48 KiB of shared memory in backward).
    private static readonly int[][] AttentionCases = [[2, 4, 2, 19, 5], [1, 3, 1, 33, 8], [2, 2, 2, 1, 3], [1, 2, 1, 7, 1], [1, 2, 1, 17, 260]];

    [Test]
    public void Causal_attention_matches_the_cpu([Values(DType.Float32, DType.Float64)] DType dtype, [ValueSource(nameof(AttentionCases))] int[] c)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(79);
        int b = c[0], h = c[1], kvh = c[2], t = c[3], d = c[4];
        var q = Random(rng, dtype, [b, h, t, d]);
        var k = Random(rng, dtype, [b, kvh, t, d]);
        var v = Random(rng, dtype, [b, kvh, t, d]);
        var want = CpuOutput(q.Shape, dtype);
        var wantLse = CpuOutput(new Shape(b, h, t), dtype);
        Cpu.CausalAttention(q, k, v, want, wantLse);
        var got = Poisoned(q.Shape, dtype);
        var gotLse = Poisoned(new Shape(b, h, t), dtype);
        Cuda.CausalAttention(q.To(Cuda), k.To(Cuda), v.To(Cuda), got, gotLse);
        AssertClose(wantLse, gotLse, Tol(dtype, 1e-5, 1e-11), Tol(dtype, 1e-5, 1e-11), "lse");
        AssertClose(want, got, Tol(dtype, 1e-4, 1e-11), Tol(dtype, 1e-5, 1e-11) * MaxAbs(want), "y");
    }

    [Test]
    public void Causal_attention_backward_accumulates_like_the_cpu([Values(DType.Float32, DType.Float64)] DType dtype, [ValueSource(nameof(AttentionCases))] int[] c,
        [Values("qkv", "q", "k", "v", "kv")] string wanted)
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(80);
        int b = c[0], h = c[1], kvh = c[2], t = c[3], d = c[4];
        var q = Random(rng, dtype, [b, h, t, d]);
        var k = Random(rng, dtype, [b, kvh, t, d]);
        var v = Random(rng, dtype, [b, kvh, t, d]);
        var y = CpuOutput(q.Shape, dtype);
        var lse = CpuOutput(new Shape(b, h, t), dtype);
        Cpu.CausalAttention(q, k, v, y, lse);
        var dy = Random(rng, dtype, [b, h, t, d]);
        var (wantDq, gotDq) = Seeded(rng, dtype, b, h, t, d);
        var (wantDk, gotDk) = Seeded(rng, dtype, b, kvh, t, d);
        var (wantDv, gotDv) = Seeded(rng, dtype, b, kvh, t, d);
        bool dq = wanted.Contains('q'), dk = wanted.Contains('k'), dv = wanted.Contains('v');
        Cpu.CausalAttentionBackward(q, k, v, lse, dy, dq ? wantDq : null, dk ? wantDk : null, dv ? wantDv : null);
        Cuda.CausalAttentionBackward(q.To(Cuda), k.To(Cuda), v.To(Cuda), lse.To(Cuda), dy.To(Cuda), dq ? gotDq : null, dk ? gotDk : null, dv ? gotDv : null);
        double rtol = Tol(dtype, 1e-4, 1e-11), atol = Tol(dtype, 1e-5, 1e-11);
        AssertClose(wantDq, gotDq, rtol, atol * MaxAbs(wantDq), "dq");
        AssertClose(wantDk, gotDk, rtol, atol * MaxAbs(wantDk), "dk");
        AssertClose(wantDv, gotDv, rtol, atol * MaxAbs(wantDv), "dv");
    }

    [Test]
    public void Causal_attention_backward_is_deterministic()
    {
        using var scope = TensorScope.Begin();
        var rng = new Rng(81);
        var q = Random(rng, DType.Float32, [1, 4, 37, 6]).To(Cuda);
        var k = Random(rng, DType.Float32, [1, 1, 37, 6]).To(Cuda);
        var v = Random(rng, DType.Float32, [1, 1, 37, 6]).To(Cuda);
        var dy = Random(rng, DType.Float32, [1, 4, 37, 6]).To(Cuda);
        var y = Poisoned(q.Shape, DType.Float32);
        var lse = Poisoned(new Shape(1, 4, 37), DType.Float32);
        Cuda.CausalAttention(q, k, v, y, lse);
        float[][] Run()
        {
            var dq = Tensor.Zeros(q.Shape, DType.Float32, Cuda);
            var dk = Tensor.Zeros(k.Shape, DType.Float32, Cuda);
            var dv = Tensor.Zeros(v.Shape, DType.Float32, Cuda);
            Cuda.CausalAttentionBackward(q, k, v, lse, dy, dq, dk, dv);
            return [dq.ToArray<float>(), dk.ToArray<float>(), dv.ToArray<float>()];
        }
        var first = Run();
        var second = Run();
        for (int i = 0; i < 3; i++) Assert.That(second[i], Is.EqualTo(first[i]), $"gradient {"qkv"[i]} bit for bit");
    }
}
