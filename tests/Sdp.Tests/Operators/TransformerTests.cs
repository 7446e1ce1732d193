using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Memory;
using Sdp.Tests.Support;

namespace Sdp.Tests.Operators;

/// <summary>Float64 finite-difference checks for embedding, RMSNorm, RoPE, head permutes and causal GQA attention.</summary>
public class TransformerGradTests
{
    private static Tensor Ids(long[] values, params int[] shape) => Tensor.FromArray(values, new Shape(shape));

    private static Tensor Ids32(int[] values, params int[] shape) => Tensor.FromArray(values, new Shape(shape));

    [Test]
    public void Embedding_matches_finite_differences_with_repeated_ids()
    {
        var rng = new Rng(11);
        using var scope = TensorScope.Begin();
        var w = GradCheck.Input(rng, 5, 3);
        var ids = Ids([0, 2, 2, 4, 1, 2, 0, 0], 2, 4);
        GradCheck.Check(t => Ops.Embedding(t[0], ids), [w]);
        GradCheck.Check(t => Ops.Embedding(t[0], Ids32([3, 3, 1, 0, 4, 4, 4], 7)), [w]);
        GradCheck.Check(t => Ops.Embedding(t[0], Ids([2], [])), [w]); // scalar id -> (C,)
        var single = GradCheck.Input(rng, 1, 1);
        GradCheck.Check(t => Ops.Embedding(t[0], Ids32([0, 0, 0], 1, 3)), [single]);
    }

    private static readonly int[][] NormShapes = [[1, 1], [7], [3, 5], [2, 3, 4], [2, 1, 9]];

    [TestCaseSource(nameof(NormShapes))]
    public void RmsNorm_matches_finite_differences(int[] shape)
    {
        var rng = new Rng(12);
        using var scope = TensorScope.Begin();
        var x = GradCheck.Input(rng, shape);
        var w = GradCheck.Input(rng, shape[^1]);
        GradCheck.Check(t => Ops.RmsNorm(t[0], t[1], 1e-5), [x, w]);
        // Only one side requiring grad exercises the kernel's null-gradient paths.
        var xConst = Tensor.Randn(new Shape(shape), rng, dtype: DType.Float64);
        GradCheck.Check(t => Ops.RmsNorm(xConst, t[0], 1e-5), [w]);
        var wConst = Tensor.Randn(new Shape(shape[^1]), rng, dtype: DType.Float64);
        GradCheck.Check(t => Ops.RmsNorm(t[0], wConst, 0.1), [x]);
    }

    [Test]
    public void RmsNorm_weight_gradient_over_many_row_blocks()
    {
        // 200 rows span several of the fixed row blocks whose partial dweight rows are summed.
        var rng = new Rng(13);
        using var scope = TensorScope.Begin();
        var x = GradCheck.Input(rng, 200, 3);
        var w = GradCheck.Input(rng, 3);
        GradCheck.Check(t => Ops.RmsNorm(t[0], t[1], 1e-6), [x, w]);
    }

    [TestCase(2, 3, 2, 4, 0)]
    [TestCase(2, 3, 2, 4, 2)]
    [TestCase(1, 1, 1, 2, 5)]
    [TestCase(1, 4, 3, 6, 1)]
    public void Rope_matches_finite_differences(int b, int t, int h, int d, int offset)
    {
        var rng = new Rng(14);
        using var scope = TensorScope.Begin();
        var (cos, sin) = Ops.RopeTables(8, d, 10000, DType.Float64);
        var x = GradCheck.Input(rng, b, t, h, d);
        GradCheck.Check(u => Ops.Rope(u[0], cos, sin, offset), [x]);
    }

    [Test]
    public void Rope_with_position_ids_matches_finite_differences()
    {
        var rng = new Rng(15);
        using var scope = TensorScope.Begin();
        var (cos, sin) = Ops.RopeTables(6, 4, 100, DType.Float64);
        var x = GradCheck.Input(rng, 2, 3, 2, 4);
        GradCheck.Check(u => Ops.Rope(u[0], cos, sin, Ids([5, 0, 3, 1, 1, 4], 2, 3)), [x]);
        GradCheck.Check(u => Ops.Rope(u[0], cos, sin, Ids32([2, 5, 0], 3)), [x]);
        GradCheck.Check(u => Ops.Rope(u[0], cos, sin, Ids32([4, 4, 1], 1, 3)), [x]);
        // Arbitrary (non-rotation) tables: backward is still the exact transpose of the forward map.
        var c = Tensor.Randn(new Shape(6, 4), rng, dtype: DType.Float64);
        var s = Tensor.Randn(new Shape(6, 4), rng, dtype: DType.Float64);
        GradCheck.Check(u => Ops.Rope(u[0], c, s, 1), [x]);
    }

    [Test]
    public void Head_permutes_match_finite_differences()
    {
        var rng = new Rng(16);
        using var scope = TensorScope.Begin();
        var x = GradCheck.Input(rng, 2, 3, 4, 5);
        GradCheck.Check(t => Ops.SplitHeads(t[0]), [x]);
        GradCheck.Check(t => Ops.MergeHeads(t[0]), [x]);
        var one = GradCheck.Input(rng, 1, 1, 1, 1);
        GradCheck.Check(t => Ops.SplitHeads(t[0]), [one]);
        GradCheck.Check(t => Ops.MergeHeads(Ops.SplitHeads(t[0])), [x]);
    }

    // (B, H, KVH, T, D): GQA with 2 and 1 kv heads, plain MHA, T = 1, odd D, D = 1.
    [TestCase(2, 4, 2, 5, 3)]
    [TestCase(2, 4, 1, 3, 5)]
    [TestCase(1, 4, 4, 4, 2)]
    [TestCase(2, 4, 2, 1, 3)]
    [TestCase(2, 2, 1, 1, 1)]
    [TestCase(1, 3, 1, 6, 1)]
    public void Causal_attention_matches_finite_differences(int b, int h, int kvh, int t, int d)
    {
        var rng = new Rng(17);
        using var scope = TensorScope.Begin();
        var q = GradCheck.Input(rng, b, h, t, d);
        var k = GradCheck.Input(rng, b, kvh, t, d);
        var v = GradCheck.Input(rng, b, kvh, t, d);
        GradCheck.Check(u => Ops.CausalAttention(u[0], u[1], u[2]), [q, k, v]);
    }

    [Test]
    public void Causal_attention_gradients_when_only_some_inputs_require_grad()
    {
        var rng = new Rng(18);
        using var scope = TensorScope.Begin();
        var q = GradCheck.Input(rng, 2, 4, 3, 3);
        var k = GradCheck.Input(rng, 2, 2, 3, 3);
        var v = GradCheck.Input(rng, 2, 2, 3, 3);
        var qc = Tensor.Randn(q.Shape, rng, dtype: DType.Float64);
        var kc = Tensor.Randn(k.Shape, rng, dtype: DType.Float64);
        var vc = Tensor.Randn(v.Shape, rng, dtype: DType.Float64);
        GradCheck.Check(u => Ops.CausalAttention(qc, kc, u[0]), [v]);
        GradCheck.Check(u => Ops.CausalAttention(u[0], kc, vc), [q]);
        GradCheck.Check(u => Ops.CausalAttention(qc, u[0], vc), [k]);
    }

    [TestCase(1L)]
    [TestCase(3L * 2 * 4 * 4)]
    public void Causal_attention_in_scratch_limited_chunks_matches_finite_differences(long scratchElements)
    {
        // B·KVH = 4 slices of (G·T, T) = (8, 4) scores: a limit of 1 runs them one by one, 3 slices
        // per chunk leaves a partial last chunk.
        var rng = new Rng(24);
        using var scope = TensorScope.Begin();
        var q = GradCheck.Input(rng, 2, 4, 4, 3);
        var k = GradCheck.Input(rng, 2, 2, 4, 3);
        var v = GradCheck.Input(rng, 2, 2, 4, 3);
        var whole = Ops.CausalAttention(q, k, v).ToDoubles();
        Tape.Current.Clear();
        long saved = CpuBackend.AttentionScratchElements;
        try
        {
            CpuBackend.AttentionScratchElements = scratchElements;
            TensorAssert.Close(Ops.CausalAttention(q, k, v).ToDoubles(), whole, 1e-14, 1e-14, "chunked forward");
            Tape.Current.Clear();
            GradCheck.Check(u => Ops.CausalAttention(u[0], u[1], u[2]), [q, k, v]);
        }
        finally
        {
            CpuBackend.AttentionScratchElements = saved;
        }
    }

    [Test]
    public void Llama_attention_pipeline_matches_finite_differences()
    {
        // x -> embedding -> rms_norm -> q/k/v projections -> rope -> split heads -> GQA attention -> merge heads.
        var rng = new Rng(19);
        using var scope = TensorScope.Begin();
        int bsz = 2, t = 3, c = 8, h = 4, kvh = 2, d = 2;
        var emb = GradCheck.Input(rng, 6, c);
        var norm = GradCheck.Input(rng, c);
        var wq = GradCheck.Input(rng, h * d, c);
        var wk = GradCheck.Input(rng, kvh * d, c);
        var wv = GradCheck.Input(rng, kvh * d, c);
        var ids = Ids([1, 4, 1, 0, 5, 2], bsz, t);
        var (cos, sin) = Ops.RopeTables(t, d, 10000, DType.Float64);
        GradCheck.Check(u =>
        {
            var x = Ops.RmsNorm(Ops.Embedding(u[0], ids), u[1], 1e-6);
            var q = Ops.Rope(Ops.Linear(x, u[2]).Reshape(bsz, t, h, d), cos, sin);
            var k = Ops.Rope(Ops.Linear(x, u[3]).Reshape(bsz, t, kvh, d), cos, sin);
            var v = Ops.Linear(x, u[4]).Reshape(bsz, t, kvh, d);
            return Ops.MergeHeads(Ops.CausalAttention(Ops.SplitHeads(q), Ops.SplitHeads(k), Ops.SplitHeads(v)));
        }, [emb, norm, wq, wk, wv]);
    }

    [Test]
    public void Weight_gradients_do_not_depend_on_the_thread_count()
    {
        var rng = new Rng(20);
        using var scope = TensorScope.Begin();
        var w = Tensor.Randn(new Shape(50, 256), rng);
        w.RequiresGrad = true;
        var idValues = new long[3000];
        for (int i = 0; i < idValues.Length; i++) idValues[i] = rng.NextInt64(5); // heavy repeats
        var ids = Ids(idValues, 3000);
        var x = Tensor.Randn(new Shape(3000, 256), rng);
        var dy = Tensor.Randn(new Shape(3000, 256), rng);

        float[] Grads()
        {
            w.ZeroGrad();
            Ops.Embedding(w, ids).Backward(dy);
            var embedding = w.Grad!.ToArray<float>();
            w.ZeroGrad();
            var norm = Ops.Narrow(w, 0, 1).Reshape(256);
            Ops.RmsNorm(x, norm, 1e-6).Backward(dy);
            return [.. embedding, .. w.Grad!.ToArray<float>()];
        }

        int saved = CpuParallel.MaxThreads;
        try
        {
            CpuParallel.MaxThreads = 1;
            var serial = Grads();
            CpuParallel.MaxThreads = 7;
            var parallel = Grads();
            Assert.That(parallel, Is.EqualTo(serial), "gradients must be bitwise identical for any thread count");
        }
        finally
        {
            CpuParallel.MaxThreads = saved;
            w.ZeroGrad();
        }
    }
}

/// <summary>Forward values against hand-computed cases and naive float64 loops, per backend, in float32.</summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class TransformerForwardTests(IBackend backend)
{
    private Tensor T(float[] v, params int[] shape) => Tensor.FromArray(v, new Shape(shape), backend);

    private Tensor Randn(Rng rng, params int[] shape) => Tensor.Randn(new Shape(shape), rng, backend: backend);

    [Test]
    public void Embedding_gathers_rows_for_int32_and_int64_ids()
    {
        using var scope = TensorScope.Begin();
        // weight[r, c] = 10r + c
        var w = T([0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32], 4, 3);
        var ids32 = Tensor.FromArray(new[] { 3, 0, 1, 3 }, new Shape(2, 2), backend);
        var y = Ops.Embedding(w, ids32);
        Assert.That(y.Shape, Is.EqualTo(new Shape(2, 2, 3)));
        TensorAssert.Close(y, [30, 31, 32, 0, 1, 2, 10, 11, 12, 30, 31, 32]);
        var ids64 = Tensor.FromArray(new[] { 2L }, new Shape(1), backend);
        TensorAssert.Close(Ops.Embedding(w, ids64), [20, 21, 22]);
        var scalar = Tensor.FromArray(new[] { 1L }, Shape.Scalar, backend);
        Assert.That(Ops.Embedding(w, scalar).Shape, Is.EqualTo(new Shape(3)));
    }

    [Test]
    public void Embedding_backward_scatter_adds_rows()
    {
        using var scope = TensorScope.Begin();
        var w = Tensor.Zeros(new Shape(3, 2), backend: backend);
        w.RequiresGrad = true;
        var ids = Tensor.FromArray(new[] { 2, 0, 2 }, new Shape(3), backend);
        // dweight[2] = dy[0] + dy[2], dweight[0] = dy[1], dweight[1] = 0
        Ops.Embedding(w, ids).Backward(T([1, 2, 3, 4, 5, 6], 3, 2));
        TensorAssert.Close(w.Grad!, [3, 4, 0, 0, 6, 8]);
        w.ZeroGrad();
    }

    [Test]
    public void RmsNorm_values()
    {
        using var scope = TensorScope.Begin();
        // x = [3, 4], eps = 0: mean(x²) = 12.5, rstd = 1/√12.5 = 0.28284271; y = [3·rstd·1, 4·rstd·2]
        TensorAssert.Close(Ops.RmsNorm(T([3, 4], 1, 2), T([1, 2], 2), 0), [0.84852814, 2.26274170]);

        var rng = new Rng(21);
        int rows = 6, c = 7;
        double eps = 1e-5;
        var x = Randn(rng, 2, 3, c);
        var w = Randn(rng, c);
        var xs = x.ToDoubles();
        var ws = w.ToDoubles();
        var expected = new double[xs.Length];
        for (int r = 0; r < rows; r++)
        {
            double ms = 0;
            for (int j = 0; j < c; j++) ms += xs[r * c + j] * xs[r * c + j];
            double rstd = 1 / Math.Sqrt(ms / c + eps);
            for (int j = 0; j < c; j++) expected[r * c + j] = xs[r * c + j] * rstd * ws[j];
        }
        TensorAssert.Close(Ops.RmsNorm(x, w, eps), expected);
    }

    [Test]
    public void RopeTables_match_hand_computed_values()
    {
        using var scope = TensorScope.Begin();
        // D = 4, theta = 10000: inv_freq = [10000^0, 10000^(-2/4)] = [1, 0.01]; emb(t) = [t, 0.01t, t, 0.01t].
        var (cos, sin) = Ops.RopeTables(3, 4, 10000, DType.Float32, backend);
        Assert.That(cos.Shape, Is.EqualTo(new Shape(3, 4)));
        double c1 = Math.Cos(1), c01 = Math.Cos(0.01), c2 = Math.Cos(2), c02 = Math.Cos(0.02);
        double s1 = Math.Sin(1), s01 = Math.Sin(0.01), s2 = Math.Sin(2), s02 = Math.Sin(0.02);
        TensorAssert.Close(cos, [1, 1, 1, 1, c1, c01, c1, c01, c2, c02, c2, c02], atol: 1e-6);
        TensorAssert.Close(sin, [0, 0, 0, 0, s1, s01, s1, s01, s2, s02, s2, s02], atol: 1e-6);
    }

    [Test]
    public void Rope_matches_hand_computed_values_at_t_1()
    {
        using var scope = TensorScope.Begin();
        // x = [1, 2, 3, 4] at t = 1, D = 4, theta = 10000: rotate_half(x) = [-3, -4, 1, 2], so
        // y = [1·cos1 − 3·sin1, 2·cos.01 − 4·sin.01, 3·cos1 + 1·sin1, 4·cos.01 + 2·sin.01]
        //   = [-1.98411, 1.95990, 2.46238, 4.01980]
        double c1 = Math.Cos(1), s1 = Math.Sin(1), c01 = Math.Cos(0.01), s01 = Math.Sin(0.01);
        double[] expected = [1 * c1 - 3 * s1, 2 * c01 - 4 * s01, 3 * c1 + 1 * s1, 4 * c01 + 2 * s01];
        Assert.That(expected[0], Is.EqualTo(-1.98411).Within(1e-5));
        var (cos, sin) = Ops.RopeTables(4, 4, 10000, DType.Float32, backend);
        var x = T([1, 2, 3, 4], 1, 1, 1, 4);
        TensorAssert.Close(Ops.Rope(x, cos, sin, positionOffset: 1), expected, atol: 1e-6);
        TensorAssert.Close(Ops.Rope(x, cos, sin, Tensor.FromArray(new[] { 1L }, new Shape(1, 1), backend)), expected, atol: 1e-6);
        // Two positions and two heads: t = 0 is the identity, t = 1 rotates as above.
        var x2 = T([1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 1, 2, 3, 4], 1, 2, 2, 4);
        TensorAssert.Close(Ops.Rope(x2, cos, sin), [1, 2, 3, 4, 5, 6, 7, 8, .. expected, .. expected], atol: 1e-6);
    }

    [TestCase(2, 4, 2, 5, 3)]
    [TestCase(2, 4, 1, 6, 8)]
    [TestCase(1, 2, 2, 4, 5)]
    [TestCase(3, 2, 1, 1, 4)]
    public void Causal_attention_matches_a_naive_loop(int b, int h, int kvh, int t, int d)
    {
        var rng = new Rng(22);
        using var scope = TensorScope.Begin();
        var q = Randn(rng, b, h, t, d);
        var k = Randn(rng, b, kvh, t, d);
        var v = Randn(rng, b, kvh, t, d);
        var y = Ops.CausalAttention(q, k, v);
        Assert.That(y.Shape, Is.EqualTo(q.Shape));
        TensorAssert.Close(y, NaiveAttention(q.ToDoubles(), k.ToDoubles(), v.ToDoubles(), b, h, kvh, t, d), atol: 2e-6, rtol: 1e-5);
    }

    /// <summary>HF eager attention: k, v repeated per query head (repeat_kv: head h reads kv head h / (H/KVH)),
    /// scores q·kᵀ/√D, softmax over j ≤ i, times v.</summary>
    private static double[] NaiveAttention(double[] q, double[] k, double[] v, int b, int h, int kvh, int t, int d)
    {
        var y = new double[q.Length];
        int rep = h / kvh;
        double scale = 1 / Math.Sqrt(d);
        for (int bi = 0; bi < b; bi++)
        {
            for (int hi = 0; hi < h; hi++)
            {
                int kh = hi / rep;
                for (int i = 0; i < t; i++)
                {
                    long qo = ((long)(bi * h + hi) * t + i) * d;
                    var s = new double[i + 1];
                    double max = double.NegativeInfinity;
                    for (int j = 0; j <= i; j++)
                    {
                        long ko = ((long)(bi * kvh + kh) * t + j) * d;
                        double dot = 0;
                        for (int e = 0; e < d; e++) dot += q[qo + e] * k[ko + e];
                        s[j] = dot * scale;
                        max = Math.Max(max, s[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j <= i; j++) sum += s[j] = Math.Exp(s[j] - max);
                    for (int j = 0; j <= i; j++)
                    {
                        long vo = ((long)(bi * kvh + kh) * t + j) * d;
                        for (int e = 0; e < d; e++) y[qo + e] += s[j] / sum * v[vo + e];
                    }
                }
            }
        }
        return y;
    }

    [Test]
    public void Head_permutes_move_elements()
    {
        using var scope = TensorScope.Begin();
        // x (B=1, T=2, H=3, D=1) = [[a0 a1 a2], [b0 b1 b2]] -> (1, 3, 2, 1) = [a0 b0 a1 b1 a2 b2]
        var x = T([0, 1, 2, 10, 11, 12], 1, 2, 3, 1);
        var split = Ops.SplitHeads(x);
        Assert.That(split.Shape, Is.EqualTo(new Shape(1, 3, 2, 1)));
        TensorAssert.Close(split, [0, 10, 1, 11, 2, 12]);
        var merged = Ops.MergeHeads(split);
        Assert.That(merged.Shape, Is.EqualTo(new Shape(1, 2, 3)));
        TensorAssert.Close(merged, [0, 1, 2, 10, 11, 12]);
    }

    [Test]
    public void Saved_activations_are_only_what_backward_needs()
    {
        var account = new MemoryAccount("transformer");
        var rng = new Rng(23);
        using (account.Activate())
        using (var scope = TensorScope.Begin())
        {
            Tensor w;
            using (MemoryAccount.Use(MemoryCategory.Parameters)) w = Tensor.Ones(new Shape(16), backend: backend);
            var x = Randn(rng, 4, 5, 16);
            x.RequiresGrad = true;
            var y = Ops.RmsNorm(x, w, 1e-6);
            // x (4·5·16 floats) and rstd (4·5 floats); the output is not kept.
            Assert.That(account.CurrentBytes(MemoryCategory.Activations), Is.EqualTo((320 + 20) * 4));
            y.Backward(Tensor.Ones(y.Shape, backend: backend));
            Assert.That(account.CurrentBytes(MemoryCategory.Activations), Is.Zero);

            var q = Randn(rng, 2, 4, 8, 3);
            var k = Randn(rng, 2, 2, 8, 3);
            var v = Randn(rng, 2, 2, 8, 3);
            q.RequiresGrad = k.RequiresGrad = v.RequiresGrad = true;
            var a = Ops.CausalAttention(q, k, v);
            // q, k, v and one log-sum-exp per row (B·H·T): no (B, H, T, T) probabilities.
            Assert.That(account.CurrentBytes(MemoryCategory.Activations), Is.EqualTo((192 + 96 + 96 + 64) * 4));
            a.Backward(Tensor.Ones(a.Shape, backend: backend));
            Assert.That(account.CurrentBytes(MemoryCategory.Activations), Is.Zero);
            Assert.That(q.Grad, Is.Not.Null);
            Assert.That(v.Grad, Is.Not.Null);
            foreach (var p in new[] { w, q, k, v, x }) p.ZeroGrad();
            w.Dispose();
        }
        Assert.That(account.CurrentTotal, Is.Zero);
    }
}

/// <summary>Bad inputs: errors name the op and the offending shape or value.</summary>
public class TransformerInputTests
{
    private static Tensor F(params int[] shape) => Tensor.Zeros(new Shape(shape));

    private static void Throws<TException>(Action action, params string[] fragments) where TException : Exception
    {
        var ex = Assert.Throws<TException>(action);
        foreach (var f in fragments) Assert.That(ex!.Message, Does.Contain(f));
    }

    [Test]
    public void Embedding_rejects_out_of_range_ids_naming_id_position_and_vocab()
    {
        using var scope = TensorScope.Begin();
        var w = F(5, 3);
        var ids = Tensor.FromArray(new long[] { 0, 1, 7, 2 }, new Shape(2, 2));
        Throws<ArgumentOutOfRangeException>(() => Ops.Embedding(w, ids), "embedding", "id 7", "position (1, 0)", "V = 5", "[0, 5)");
        var negative = Tensor.FromArray(new[] { 4, -1 }, new Shape(2));
        Throws<ArgumentOutOfRangeException>(() => Ops.Embedding(w, negative), "embedding", "id -1", "position (1,)");
        Throws<ArgumentException>(() => Ops.Embedding(w, F(2)), "embedding", "int32 or int64", "(2,)");
        Throws<ArgumentException>(() => Ops.Embedding(F(5), ids), "embedding", "rank-2", "(5,)");
    }

    [Test]
    public void RmsNorm_rejects_mismatched_weight_and_bad_eps()
    {
        using var scope = TensorScope.Begin();
        Throws<ArgumentException>(() => Ops.RmsNorm(F(2, 3), F(4)), "rms_norm", "(3,)", "(4,)");
        Throws<ArgumentOutOfRangeException>(() => Ops.RmsNorm(F(2, 3), F(3), -1), "rms_norm", "eps", "-1");
        Throws<ArgumentException>(() => Ops.RmsNorm(F(2, 3), Tensor.Zeros(new Shape(3), DType.Float64)), "rms_norm", "float64");
    }

    [Test]
    public void Rope_rejects_bad_shapes_and_positions()
    {
        using var scope = TensorScope.Begin();
        var (cos, sin) = Ops.RopeTables(6, 4);
        Throws<ArgumentException>(() => Ops.Rope(F(1, 2, 1, 3), cos, sin), "rope", "head_dim", "(1, 2, 1, 3)");
        Throws<ArgumentException>(() => Ops.Rope(F(2, 1, 4), cos, sin), "rope", "rank-4", "(2, 1, 4)");
        Throws<ArgumentException>(() => Ops.Rope(F(1, 2, 1, 8), cos, sin), "rope", "(6, 4)", "(1, 2, 1, 8)");
        Throws<ArgumentOutOfRangeException>(() => Ops.Rope(F(1, 3, 1, 4), cos, sin, 4), "rope", "[4, 7)", "6 rows");
        var bad = Tensor.FromArray(new long[] { 0, 9, 1 }, new Shape(1, 3));
        Throws<ArgumentOutOfRangeException>(() => Ops.Rope(F(1, 3, 1, 4), cos, sin, bad), "rope", "position id 9", "(0, 1)", "[0, 6)");
        var wrongShape = Tensor.FromArray(new[] { 0, 1 }, new Shape(2));
        Throws<ArgumentException>(() => Ops.Rope(F(1, 3, 1, 4), cos, sin, wrongShape), "rope", "(2,)", "(1, 3)");
        Throws<ArgumentOutOfRangeException>(() => Ops.RopeTables(8, 5), "rope_tables", "headDim", "5");
    }

    [Test]
    public void Causal_attention_rejects_incompatible_heads_and_shapes()
    {
        using var scope = TensorScope.Begin();
        Throws<ArgumentException>(() => Ops.CausalAttention(F(1, 3, 4, 2), F(1, 2, 4, 2), F(1, 2, 4, 2)), "causal_attention", "3 query heads", "2 kv heads");
        Throws<ArgumentException>(() => Ops.CausalAttention(F(1, 4, 4, 2), F(1, 2, 5, 2), F(1, 2, 5, 2)), "causal_attention", "(1, 2, 5, 2)", "(1, 4, 4, 2)");
        Throws<ArgumentException>(() => Ops.CausalAttention(F(1, 4, 4, 2), F(1, 2, 4, 2), F(1, 2, 4, 3)), "causal_attention", "v", "(1, 2, 4, 3)");
        Throws<ArgumentException>(() => Ops.CausalAttention(F(4, 4, 2), F(1, 2, 4, 2), F(1, 2, 4, 2)), "causal_attention", "rank-4", "(4, 4, 2)");
        Throws<ArgumentException>(() => Ops.SplitHeads(F(2, 3, 4)), "split_heads", "(2, 3, 4)");
    }
}
