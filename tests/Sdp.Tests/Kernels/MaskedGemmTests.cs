using Sdp.Kernels.Cpu;

namespace Sdp.Tests.Kernels;

[TestFixture]
[NonParallelizable] // mutates Gemm's internal tuning hooks
public unsafe class MaskedGemmTests
{
    private static readonly double[] Densities = [0.0, 0.1, 0.25, 0.5, 1.0];

    // (m, k/tokens, units N, other dim): odd sizes, sizes below/above the microtile and KC blocking.
    private static readonly (int M, int K, int N, int O)[] Shapes = [(1, 1, 1, 1), (7, 13, 37, 9), (37, 53, 70, 33), (131, 300, 257, 45)];

    private long _savedMinWork;

    [OneTimeSetUp]
    public void SetUp()
    {
        _savedMinWork = Gemm.MinWorkPerThread;
        Gemm.MinWorkPerThread = 1; // exercise the multi-threaded driver on small shapes too
    }

    [OneTimeTearDown]
    public void TearDown() => Gemm.MinWorkPerThread = _savedMinWork;

    private static IEnumerable<TestCaseData> Cases()
    {
        foreach (var s in Shapes)
        {
            foreach (double d in Densities)
            {
                foreach (int threads in new[] { 1, 2 })
                {
                    yield return new TestCaseData(s.M, s.K, s.N, s.O, d, threads);
                }
            }
        }
    }

    private static float[] Rand(Random r, int len)
    {
        var a = new float[len];
        for (int i = 0; i < len; i++)
        {
            a[i] = (float)((r.NextDouble() * 2) - 1);
        }

        return a;
    }

    /// <summary>Random sorted index set of round(d·n) units (d = 1 gives all units; d = 0 the empty set).</summary>
    private static int[] RandIdx(Random r, int n, double d)
    {
        int cnt = (int)Math.Round(d * n);
        var all = Enumerable.Range(0, n).ToArray();
        r.Shuffle(all);
        return [.. all.Take(cnt).Order()];
    }

    private static float[] Poisoned(int len) => Enumerable.Repeat(float.NaN, len).ToArray();

    private static void AssertClose(double expected, double scale, float actual, string what)
    {
        double tol = (1e-5 * scale) + 1e-6;
        Assert.That((double)actual, Is.EqualTo(expected).Within(tol), what);
    }

    [TestCaseSource(nameof(Cases))]
    public void GatherB_MatchesReference(int m, int k, int units, int unused, double d, int threads)
    {
        var r = new Random(1000 + m + k + units + (int)(d * 100));
        int[] idx = RandIdx(r, units, d);
        int lda = k + 3, ldw = k + 1, ldc = idx.Length + 2;
        float[] a = Rand(r, m * lda), w = Rand(r, units * ldw), c = Poisoned(m * ldc);
        fixed (float* pa = a, pw = w, pc = c)
        {
            MaskedGemm.SgemmGatherB(m, k, pa, lda, pw, ldw, units, idx, pc, ldc, threads: threads);
        }

        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < idx.Length; j++)
            {
                double s = 0, sa = 0;
                for (int p = 0; p < k; p++)
                {
                    double t = (double)a[(i * lda) + p] * w[(idx[j] * ldw) + p];
                    s += t;
                    sa += Math.Abs(t);
                }

                AssertClose(s, sa, c[(i * ldc) + j], $"C[{i},{j}]");
            }

            for (int j = idx.Length; j < ldc; j++)
            {
                Assert.That(float.IsNaN(c[(i * ldc) + j]), Is.True, "padding beyond |idx| must stay untouched");
            }
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void GatherK_MatchesReference(int m, int n, int units, int unusedO, double d, int threads)
    {
        var r = new Random(2000 + m + n + units + (int)(d * 100));
        int[] idx = RandIdx(r, units, d);
        int kk = idx.Length;
        int lda = kk + 2, ldw = units + 3, ldc = n + 1;
        float[] a = Rand(r, m * lda), w = Rand(r, n * ldw), c = Poisoned(m * ldc);
        fixed (float* pa = a, pw = w, pc = c)
        {
            MaskedGemm.SgemmGatherK(m, n, pa, lda, pw, ldw, units, idx, pc, ldc, threads: threads);
        }

        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double s = 0, sa = 0;
                for (int p = 0; p < kk; p++)
                {
                    double t = (double)a[(i * lda) + p] * w[(j * ldw) + idx[p]];
                    s += t;
                    sa += Math.Abs(t);
                }

                AssertClose(s, sa, c[(i * ldc) + j], $"C[{i},{j}]");
            }
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void WeightGradRows_AllLayouts(int tokens, int inDim, int outDim, int unused, double d, int threads)
    {
        foreach (bool staged in new[] { false, true })
        {
            // staged: the scattered output goes through the compact staging buffer in several small chunks;
            // otherwise every microtile is scattered per KC slice.
            MaskedGemm.StagingOverride = staged ? null : false;
            MaskedGemm.StagedMinK = staged ? 0 : 256;
            MaskedGemm.StagingElements = staged ? 64 : 1 << 21;
            try
            {
                foreach (bool dyFull in new[] { false, true })
                {
                    foreach (bool dwFull in new[] { false, true })
                    {
                        var r = new Random(3000 + tokens + inDim + outDim + (int)(d * 100));
                        int[] idx = RandIdx(r, outDim, d);
                        int lddy = (dyFull ? outDim : idx.Length) + 1, ldx = inDim + 2, lddw = inDim + 1;
                        int dwRows = dwFull ? outDim : idx.Length;
                        float[] dy = Rand(r, tokens * lddy), x = Rand(r, tokens * ldx), dw = Rand(r, dwRows * lddw);
                        float[] before = (float[])dw.Clone();
                        fixed (float* pdy = dy, px = x, pdw = dw)
                        {
                            MaskedGemm.SgemmWeightGradRows(tokens, inDim, pdy, lddy, dyFull, px, ldx, idx, outDim, pdw, lddw, dwFull, threads: threads);
                        }

                        string tag = $"staged={staged} dyFull={dyFull} dwFull={dwFull}";
                        var held = new HashSet<int>(idx);
                        for (int q = 0; q < idx.Length; q++)
                        {
                            int row = dwFull ? idx[q] : q;
                            int dyCol = dyFull ? idx[q] : q;
                            for (int j = 0; j < inDim; j++)
                            {
                                double s = before[(row * lddw) + j], sa = Math.Abs(s);
                                for (int t = 0; t < tokens; t++)
                                {
                                    double v = (double)dy[(t * lddy) + dyCol] * x[(t * ldx) + j];
                                    s += v;
                                    sa += Math.Abs(v);
                                }

                                AssertClose(s, sa, dw[(row * lddw) + j], $"{tag} dW[{row},{j}]");
                            }
                        }

                        for (int row = 0; row < dwRows; row++)
                        {
                            bool written = dwFull ? held.Contains(row) : true;
                            for (int j = 0; j < lddw; j++)
                            {
                                if (!written || j >= inDim)
                                {
                                    Assert.That(BitConverter.SingleToInt32Bits(dw[(row * lddw) + j]), Is.EqualTo(BitConverter.SingleToInt32Bits(before[(row * lddw) + j])), $"{tag} untouched dW[{row},{j}]");
                                }
                            }
                        }
                    }
                }
            }
            finally
            {
                MaskedGemm.StagingOverride = null;
                MaskedGemm.StagedMinK = 256;
                MaskedGemm.StagingElements = 1 << 21;
            }
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void WeightGradCols_AllLayouts(int tokens, int outDim, int inDim, int unused, double d, int threads)
    {
        foreach (bool staged in new[] { false, true })
        {
            // staged: the scattered output goes through the compact staging buffer in several small chunks;
            // otherwise every microtile is scattered per KC slice.
            MaskedGemm.StagingOverride = staged ? null : false;
            MaskedGemm.StagedMinK = staged ? 0 : 256;
            MaskedGemm.StagingElements = staged ? 64 : 1 << 21;
            try
            {
                foreach (bool xFull in new[] { false, true })
                {
                    foreach (bool dwFull in new[] { false, true })
                    {
                        var r = new Random(4000 + tokens + inDim + outDim + (int)(d * 100));
                        int[] idx = RandIdx(r, inDim, d);
                        int lddy = outDim + 1, ldx = (xFull ? inDim : idx.Length) + 2, lddw = (dwFull ? inDim : idx.Length) + 1;
                        float[] dy = Rand(r, tokens * lddy), x = Rand(r, tokens * ldx), dw = Rand(r, outDim * lddw);
                        float[] before = (float[])dw.Clone();
                        fixed (float* pdy = dy, px = x, pdw = dw)
                        {
                            MaskedGemm.SgemmWeightGradCols(tokens, outDim, pdy, lddy, px, ldx, xFull, idx, inDim, pdw, lddw, dwFull, threads: threads);
                        }

                        string tag = $"staged={staged} xFull={xFull} dwFull={dwFull}";
                        var writtenCols = new HashSet<int>();
                        for (int q = 0; q < idx.Length; q++)
                        {
                            int col = dwFull ? idx[q] : q;
                            int xCol = xFull ? idx[q] : q;
                            writtenCols.Add(col);
                            for (int i = 0; i < outDim; i++)
                            {
                                double s = before[(i * lddw) + col], sa = Math.Abs(s);
                                for (int t = 0; t < tokens; t++)
                                {
                                    double v = (double)dy[(t * lddy) + i] * x[(t * ldx) + xCol];
                                    s += v;
                                    sa += Math.Abs(v);
                                }

                                AssertClose(s, sa, dw[(i * lddw) + col], $"{tag} dW[{i},{col}]");
                            }
                        }

                        for (int i = 0; i < outDim; i++)
                        {
                            for (int j = 0; j < lddw; j++)
                            {
                                if (!writtenCols.Contains(j))
                                {
                                    Assert.That(BitConverter.SingleToInt32Bits(dw[(i * lddw) + j]), Is.EqualTo(BitConverter.SingleToInt32Bits(before[(i * lddw) + j])), $"{tag} untouched dW[{i},{j}]");
                                }
                            }
                        }
                    }
                }
            }
            finally
            {
                MaskedGemm.StagingOverride = null;
                MaskedGemm.StagedMinK = 256;
                MaskedGemm.StagingElements = 1 << 21;
            }
        }
    }

    /// <summary>
    /// A scattered weight gradient over a deep K (several KC slices, staged) must equal, bit for bit, the compact
    /// gradient (beta = 0) scattered afterwards with C[map] = compact + beta · C[map]: the staged path scatters each
    /// microtile as it finishes but keeps that summation order. Also 1 vs 2 threads and several stage chunks.
    /// </summary>
    [TestCase(false, 1f)]
    [TestCase(false, 0.5f)]
    [TestCase(false, 0f)]
    [TestCase(true, 1f)]
    [TestCase(true, 0.5f)]
    [TestCase(true, 0f)]
    public void WeightGrad_StagedScatterIsBitIdenticalToCompactThenScatter(bool columns, float beta)
    {
        var r = new Random(columns ? 21 : 22);
        int tokens = 777, outDim = 97, inDim = 83; // K = tokens spans several KC slices; odd edges everywhere
        int units = columns ? inDim : outDim;
        int[] idx = RandIdx(r, units, 0.37);
        int u = idx.Length;
        int lddy = outDim + 3, ldx = inDim + 1, lddw = inDim + 2;
        float[] dy = Rand(r, tokens * lddy), x = Rand(r, tokens * ldx);
        float[] seed = Rand(r, outDim * lddw);
        int compactLd = columns ? u : inDim;
        float[] compact = Poisoned((columns ? outDim : u) * compactLd);
        fixed (float* pdy = dy, px = x, pc = compact)
        {
            if (columns)
            {
                MaskedGemm.SgemmWeightGradCols(tokens, outDim, pdy, lddy, px, ldx, true, idx, inDim, pc, compactLd, false, beta: 0f, threads: 1);
            }
            else
            {
                MaskedGemm.SgemmWeightGradRows(tokens, inDim, pdy, lddy, true, px, ldx, idx, outDim, pc, compactLd, false, beta: 0f, threads: 1);
            }
        }

        float[] expected = (float[])seed.Clone();
        for (int i = 0; i < (columns ? outDim : u); i++)
        {
            for (int j = 0; j < (columns ? u : inDim); j++)
            {
                int at = columns ? (i * lddw) + idx[j] : (idx[i] * lddw) + j;
                float staged = compact[(i * compactLd) + j];
                expected[at] = beta == 0f ? staged : beta == 1f ? expected[at] + staged : staged + (beta * expected[at]);
            }
        }

        foreach (int chunkElements in new[] { 1 << 21, 64 })
        {
            MaskedGemm.StagingElements = chunkElements;
            try
            {
                foreach (int threads in new[] { 1, 2 })
                {
                    float[] dw = (float[])seed.Clone();
                    if (beta == 0f)
                    {
                        // beta = 0 must not read the held entries: poison them
                        foreach (int q in idx)
                        {
                            for (int i = 0; i < (columns ? outDim : inDim); i++)
                            {
                                dw[columns ? (i * lddw) + q : (q * lddw) + i] = float.NaN;
                            }
                        }
                    }

                    fixed (float* pdy = dy, px = x, pdw = dw)
                    {
                        if (columns)
                        {
                            MaskedGemm.SgemmWeightGradCols(tokens, outDim, pdy, lddy, px, ldx, true, idx, inDim, pdw, lddw, true, beta: beta, threads: threads);
                        }
                        else
                        {
                            MaskedGemm.SgemmWeightGradRows(tokens, inDim, pdy, lddy, true, px, ldx, idx, outDim, pdw, lddw, true, beta: beta, threads: threads);
                        }
                    }

                    for (int e = 0; e < dw.Length; e++)
                    {
                        Assert.That(BitConverter.SingleToInt32Bits(dw[e]), Is.EqualTo(BitConverter.SingleToInt32Bits(expected[e])), $"chunk={chunkElements} threads={threads} dW element {e} (row {e / lddw}, col {e % lddw})");
                    }
                }
            }
            finally
            {
                MaskedGemm.StagingElements = 1 << 21;
            }
        }
    }

    /// <summary>
    /// Every masked kernel gives the same bits on 1, 2 and 3 threads, on shapes where the multi-threaded driver splits
    /// the columns of short row blocks (few held rows, wide output) as well as rows, and through the staged scatter.
    /// </summary>
    [TestCase(30, 600, 700)]
    [TestCase(200, 517, 389)]
    public void AllKernels_ThreadCountDoesNotChangeBits(int units, int tokens, int other)
    {
        var r = new Random(units + tokens + other);
        int full = units * 3 + 1; // held units out of a wider layer
        int[] idx = RandIdx(r, full, (double)units / full);
        float[] dyFull = Rand(r, tokens * full), x = Rand(r, tokens * other), w = Rand(r, full * other);
        float[] seedRows = Rand(r, full * other), seedCols = Rand(r, other * full);
        float[] compactAct = Rand(r, tokens * idx.Length);
        float[]? reference = null;
        foreach (int threads in new[] { 1, 2, 3 })
        {
            float[] fwdRows = Poisoned(tokens * idx.Length), fwdCols = Poisoned(tokens * other);
            float[] dwRows = (float[])seedRows.Clone(), dwCols = (float[])seedCols.Clone();
            float[] dwRowsC = Rand(new Random(5), idx.Length * other), dwColsC = Rand(new Random(6), other * idx.Length);
            fixed (float* pdy = dyFull, px = x, pw = w, pca = compactAct, pfr = fwdRows, pfc = fwdCols, pdr = dwRows, pdc = dwCols, pdrc = dwRowsC, pdcc = dwColsC)
            {
                // fwd-rows: Y[:, held] = X · W[held, :]ᵀ; fwd-cols: Y = A_compact · W'[:, held]ᵀ with W' = w viewed (other x full)
                MaskedGemm.SgemmGatherB(tokens, other, px, other, pw, other, full, idx, pfr, idx.Length, threads: threads);
                MaskedGemm.SgemmGatherK(tokens, other, pca, idx.Length, pw, full, full, idx, pfc, other, threads: threads);
                // dW-rows / dW-rows-c: held rows of a (full x other) gradient from the full dY
                MaskedGemm.SgemmWeightGradRows(tokens, other, pdy, full, true, px, other, idx, full, pdr, other, true, threads: threads);
                MaskedGemm.SgemmWeightGradRows(tokens, other, pdy, full, true, px, other, idx, full, pdrc, other, false, threads: threads);
                // dW-cols / dW-cols-c: held columns of an (other x full) gradient from the full input dY viewed (tokens x full)
                MaskedGemm.SgemmWeightGradCols(tokens, other, px, other, pdy, full, true, idx, full, pdc, full, true, threads: threads);
                MaskedGemm.SgemmWeightGradCols(tokens, other, px, other, pdy, full, true, idx, full, pdcc, idx.Length, false, threads: threads);
            }

            float[] all = [.. fwdRows, .. fwdCols, .. dwRows, .. dwCols, .. dwRowsC, .. dwColsC];
            Assert.That(all.Any(float.IsNaN), Is.False, $"threads={threads}: every overwritten output element is written");
            if (reference is null)
            {
                reference = all;
                continue;
            }

            for (int e = 0; e < all.Length; e++)
            {
                Assert.That(BitConverter.SingleToInt32Bits(all[e]), Is.EqualTo(BitConverter.SingleToInt32Bits(reference[e])), $"threads={threads} element {e}");
            }
        }
    }

    [Test]
    public void WeightGradRows_BetaZeroOverwritesNaN()
    {
        var r = new Random(5);
        int tokens = 19, inDim = 23, outDim = 41;
        int[] idx = RandIdx(r, outDim, 0.5);
        float[] dy = Rand(r, tokens * outDim), x = Rand(r, tokens * inDim), dw = Poisoned(outDim * inDim);
        fixed (float* pdy = dy, px = x, pdw = dw)
        {
            MaskedGemm.SgemmWeightGradRows(tokens, inDim, pdy, outDim, true, px, inDim, idx, outDim, pdw, inDim, true, beta: 0f);
        }

        var held = new HashSet<int>(idx);
        for (int o = 0; o < outDim; o++)
        {
            for (int j = 0; j < inDim; j++)
            {
                Assert.That(float.IsNaN(dw[(o * inDim) + j]), Is.EqualTo(!held.Contains(o)), $"dW[{o},{j}]");
            }
        }
    }

    [Test]
    public void WeightGrad_ContiguousRunNotAtZero()
    {
        // A contiguous held run [5, 20) maps to a plain offset output; rows/columns outside it stay untouched.
        var r = new Random(11);
        int tokens = 300, dim = 31;
        int[] idx = [.. Enumerable.Range(5, 15)];
        float[] dy = Rand(r, tokens * dim), x = Rand(r, tokens * dim), dwR = Rand(r, dim * dim);
        float[] dwC = (float[])dwR.Clone(), before = (float[])dwR.Clone();
        fixed (float* pdy = dy, px = x, pr = dwR, pc = dwC)
        {
            MaskedGemm.SgemmWeightGradRows(tokens, dim, pdy, dim, true, px, dim, idx, dim, pr, dim, true);
            MaskedGemm.SgemmWeightGradCols(tokens, dim, pdy, dim, px, dim, true, idx, dim, pc, dim, true);
        }

        for (int i = 0; i < dim; i++)
        {
            for (int j = 0; j < dim; j++)
            {
                double sr = before[(i * dim) + j], sa = Math.Abs(sr);
                for (int t = 0; t < tokens; t++)
                {
                    double vr = (double)dy[(t * dim) + i] * x[(t * dim) + j];
                    sr += vr;
                    sa += Math.Abs(vr);
                }

                double expectedRow = i is >= 5 and < 20 ? sr : before[(i * dim) + j];
                double expectedCol = j is >= 5 and < 20 ? sr : before[(i * dim) + j];
                AssertClose(expectedRow, sa, dwR[(i * dim) + j], $"rows dW[{i},{j}]");
                AssertClose(expectedCol, sa, dwC[(i * dim) + j], $"cols dW[{i},{j}]");
            }
        }
    }

    [Test]
    public void Forward_ContiguousRunNotAtZero()
    {
        // A contiguous gathered run [5, 20) of W's rows (GatherB) or columns (GatherK) is read as a plain offset operand.
        var r = new Random(12);
        int m = 13, k = 40, units = 31;
        int[] idx = [.. Enumerable.Range(5, 15)];
        float[] a = Rand(r, m * k), w = Rand(r, units * k), aK = Rand(r, m * idx.Length), wK = Rand(r, k * units);
        float[] cB = Poisoned(m * idx.Length), cK = Poisoned(m * k);
        fixed (float* pa = a, pw = w, pak = aK, pwk = wK, pcb = cB, pck = cK)
        {
            MaskedGemm.SgemmGatherB(m, k, pa, k, pw, k, units, idx, pcb, idx.Length);
            MaskedGemm.SgemmGatherK(m, k, pak, idx.Length, pwk, units, units, idx, pck, k);
        }

        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < idx.Length; j++)
            {
                double s = 0, sa = 0;
                for (int p = 0; p < k; p++)
                {
                    double v = (double)a[(i * k) + p] * w[(idx[j] * k) + p];
                    s += v;
                    sa += Math.Abs(v);
                }

                AssertClose(s, sa, cB[(i * idx.Length) + j], $"GatherB C[{i},{j}]");
            }

            for (int j = 0; j < k; j++)
            {
                double s = 0, sa = 0;
                for (int p = 0; p < idx.Length; p++)
                {
                    double v = (double)aK[(i * idx.Length) + p] * wK[(j * units) + idx[p]];
                    s += v;
                    sa += Math.Abs(v);
                }

                AssertClose(s, sa, cK[(i * k) + j], $"GatherK C[{i},{j}]");
            }
        }
    }

    [Test]
    public void GatherK_EmptyIdxWritesZeros()
    {
        float[] a = [1f], w = Rand(new Random(1), 5 * 4), c = Poisoned(3 * 5);
        fixed (float* pa = a, pw = w, pc = c)
        {
            MaskedGemm.SgemmGatherK(3, 5, pa, 1, pw, 4, 4, ReadOnlySpan<int>.Empty, pc, 5);
        }

        Assert.That(c, Is.All.EqualTo(0f));
    }

    [Test]
    public void BadIndexSetIsRejected()
    {
        float[] a = new float[16], w = new float[16], c = new float[16];
        var ex = Assert.Throws<ArgumentException>(() =>
        {
            fixed (float* pa = a, pw = w, pc = c)
            {
                MaskedGemm.SgemmGatherB(2, 2, pa, 2, pw, 2, 4, [0, 2, 2], pc, 4);
            }
        });
        Assert.That(ex!.Message, Does.Contain("SgemmGatherB").And.Contain("idx[2] = 2"));
        ex = Assert.Throws<ArgumentException>(() =>
        {
            fixed (float* pa = a, pw = w, pc = c)
            {
                MaskedGemm.SgemmGatherK(2, 2, pa, 2, pw, 4, 4, [1, 4], pc, 4);
            }
        });
        Assert.That(ex!.Message, Does.Contain("SgemmGatherK").And.Contain("[0, 4)"));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void MaskedAverage_MatchesReference(bool columns)
    {
        var r = new Random(columns ? 7 : 8);
        int rows = 13, cols = 29, workers = 3, units = columns ? cols : rows;
        var idx = new int[workers][];
        var grads = new float[workers][];
        for (int i = 0; i < workers; i++)
        {
            idx[i] = RandIdx(r, units, i == 2 ? 0.1 : 0.5);
            grads[i] = Rand(r, rows * cols);
            var held = new HashSet<int>(idx[i]);
            for (int e = 0; e < rows * cols; e++)
            {
                int u = columns ? e % cols : e / cols;
                if (!held.Contains(u))
                {
                    grads[i][e] = float.NaN; // unheld entries must not be read into the sum
                }
            }
        }

        float[] dst = Poisoned(rows * cols);
        fixed (float* g0 = grads[0], g1 = grads[1], g2 = grads[2], pd = dst)
        {
            MaskedGemm.MaskedAverage([(nint)g0, (nint)g1, (nint)g2], idx, rows, cols, columns, pd);
        }

        for (int e = 0; e < rows * cols; e++)
        {
            int u = columns ? e % cols : e / cols;
            double s = 0;
            int n = 0;
            for (int i = 0; i < workers; i++)
            {
                if (Array.BinarySearch(idx[i], u) >= 0)
                {
                    s += grads[i][e];
                    n++;
                }
            }

            double expected = n == 0 ? 0 : s / n;
            Assert.That((double)dst[e], Is.EqualTo(expected).Within(1e-6), $"element {e} (unit {u}, holders {n})");
        }
    }
}
