using Sdp.Kernels.Cpu;

namespace Sdp.Tests.Kernels;

[TestFixture]
[NonParallelizable] // mutates Gemm's internal tuning/kernel hooks
public unsafe class GemmTests
{
    private static readonly int[] Sizes = [1, 7, 17, 33, 65, 129, 300];

    private long _savedMinWork;
    private long _savedSmallWork;

    [OneTimeSetUp]
    public void SetUp()
    {
        // Let small problems use several threads too, so the partitioning is exercised on odd sizes.
        _savedMinWork = Gemm.MinWorkPerThread;
        _savedSmallWork = Gemm.SmallWork;
        Gemm.MinWorkPerThread = 1;
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        Gemm.MinWorkPerThread = _savedMinWork;
        Gemm.SmallWork = _savedSmallWork;
        Gemm.ForcedIsa = null;
    }

    /// <summary>(m, n, k) triples drawn from <see cref="Sizes"/>: every size appears in every position.</summary>
    private static IEnumerable<(int M, int N, int K)> Shapes()
    {
        for (int i = 0; i < Sizes.Length; i++)
        {
            yield return (Sizes[i], Sizes[(i + 3) % Sizes.Length], Sizes[(i + 5) % Sizes.Length]);
        }

        yield return (65, 65, 65);
        yield return (129, 300, 7);
    }

    private static IEnumerable<TestCaseData> Cases()
    {
        foreach ((int m, int n, int k) in Shapes())
        {
            foreach (bool ta in new[] { false, true })
            {
                foreach (bool tb in new[] { false, true })
                {
                    // threads 0 = single-threaded small-problem path (no blocking), 1 = blocked, 2 = two threads.
                    foreach (int threads in new[] { 0, 1, 2 })
                    {
                        yield return new TestCaseData(ta, tb, m, n, k, threads).SetArgDisplayNames(
                            $"{(ta ? "T" : "N")}{(tb ? "T" : "N")} {m}x{n}x{k} t{threads}");
                    }
                }
            }
        }
    }

    private static IEnumerable<TestCaseData> ScalarCases()
    {
        // (alpha, beta, padded strides, threads)
        yield return new TestCaseData(1.0, 0.0, false, 1);
        yield return new TestCaseData(1.0, 1.0, true, 2);
        yield return new TestCaseData(-0.5, 0.0, true, 2);
        yield return new TestCaseData(2.0, -1.5, true, 1);
        yield return new TestCaseData(0.75, 0.25, false, 2);
        yield return new TestCaseData(-1.0, 0.5, true, 0);
        yield return new TestCaseData(1.0, 0.0, true, 0);
    }

    [TestCaseSource(nameof(Cases))]
    public void Sgemm_MatchesReference(bool transA, bool transB, int m, int n, int k, int threads)
    {
        var p = new Problem(transA, transB, m, n, k, 1.0, 0.0, padded: (m + k) % 3 == 0, seed: m * 31 + n * 7 + k);
        p.CheckSgemm(threads);
    }

    [TestCaseSource(nameof(Cases))]
    public void Dgemm_MatchesReference(bool transA, bool transB, int m, int n, int k, int threads)
    {
        var p = new Problem(transA, transB, m, n, k, 1.0, 0.0, padded: (m + n) % 3 == 0, seed: m * 17 + n * 5 + k);
        p.CheckDgemm(threads);
    }

    [TestCaseSource(nameof(ScalarCases))]
    public void AlphaBetaAndStrides_AllTransposes(double alpha, double beta, bool padded, int threads)
    {
        foreach (bool ta in new[] { false, true })
        {
            foreach (bool tb in new[] { false, true })
            {
                new Problem(ta, tb, 33, 65, 129, alpha, beta, padded, seed: 5).CheckSgemm(threads);
                new Problem(ta, tb, 129, 17, 65, alpha, beta, padded, seed: 6).CheckDgemm(threads);
            }
        }
    }

    [TestCase(0)]
    [TestCase(1)]
    [TestCase(2)]
    public void KZero_ScalesC(int threads)
    {
        foreach (double beta in new[] { 0.0, 1.0, -2.0 })
        {
            new Problem(false, false, 17, 33, 0, 1.0, beta, padded: true, seed: 1).CheckSgemm(threads);
            new Problem(true, true, 17, 33, 0, 1.0, beta, padded: false, seed: 2).CheckDgemm(threads);
        }
    }

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(3)]
    public void TinyBlocking_ManyPhasesAndRegions(int threads)
    {
        // Blocks far smaller than the defaults: many (jc, pc) phases, ragged last blocks, B double buffering.
        Gemm.TuneMC = 12;
        Gemm.TuneKC = 16;
        Gemm.TuneNC = 48;
        try
        {
            new Problem(false, false, 65, 129, 75, 1.0, 0.5, padded: true, seed: 21).CheckSgemm(threads);
            new Problem(true, true, 33, 100, 49, -1.0, 0.0, padded: false, seed: 22).CheckSgemm(threads);
            new Problem(false, true, 41, 67, 33, 0.5, 2.0, padded: true, seed: 23).CheckDgemm(threads);
            new Problem(true, false, 29, 53, 71, 1.0, 0.0, padded: false, seed: 24).CheckDgemm(threads);
        }
        finally
        {
            Gemm.TuneMC = Gemm.TuneKC = Gemm.TuneNC = 0;
        }
    }

    [Test]
    public void AlphaZero_DoesNotReadAOrB()
    {
        var p = new Problem(false, false, 7, 17, 33, 0.0, 0.5, padded: false, seed: 3);
        Array.Fill(p.A, double.NaN);
        Array.Fill(p.B, double.NaN);
        p.CheckSgemm(1);
        p.CheckDgemm(2);
    }

    [Test]
    public void EmptyOutput_IsNoOp()
    {
        float one = 1;
        Gemm.Sgemm(false, false, 0, 5, 3, 1f, null, 3, null, 5, 0f, null, 5);
        Gemm.Sgemm(false, false, 5, 0, 3, 1f, null, 3, null, 1, 0f, null, 1);
        Gemm.Dgemm(true, true, 0, 0, 0, 1d, null, 1, null, 1, 0d, null, 1);
        Gemm.Sgemm(false, false, 1, 1, 1, 1f, &one, 1, &one, 1, 0f, &one, 1);
        Assert.That(one, Is.EqualTo(1f));
    }

    [Test]
    public void InvalidArguments_Throw()
    {
        var buf = new float[16];
        void S(int m, int n, int k, bool tb, int lda, int ldb, int ldc, bool nullA = false)
        {
            fixed (float* x = buf)
            {
                Gemm.Sgemm(false, tb, m, n, k, 1f, nullA ? null : x, lda, x, ldb, 0f, x, ldc);
            }
        }

        Assert.Multiple(() =>
        {
            Assert.Throws<ArgumentOutOfRangeException>(() => S(-1, 1, 1, false, 1, 1, 1));
            Assert.Throws<ArgumentOutOfRangeException>(() => S(2, 2, 3, false, 2, 2, 2)); // lda < k
            Assert.Throws<ArgumentOutOfRangeException>(() => S(2, 2, 3, true, 3, 2, 2)); // ldb < k
            Assert.Throws<ArgumentOutOfRangeException>(() => S(2, 3, 1, false, 1, 3, 2)); // ldc < n
            Assert.Throws<ArgumentNullException>(() => S(1, 1, 1, false, 1, 1, 1, nullA: true));
            Assert.Throws<ArgumentOutOfRangeException>(() => Gemm.MaxThreads = 0);
        });
    }

    [TestCase(128)]
    [TestCase(256)]
    [TestCase(512)]
    public void EveryKernelFamily_MatchesReference(int bits)
    {
        Gemm.Isa isa = bits switch { 512 => Gemm.Isa.V512, 256 => Gemm.Isa.V256, _ => Gemm.Isa.V128 };
        // Kernels the CPU lacks still run (software-emulated vectors), so all of them are checked everywhere.
        Gemm.ForcedIsa = isa;
        try
        {
            Assert.That(Gemm.KernelName, Does.StartWith($"Vector{bits} "));
            new Problem(false, true, 13, 37, 29, 1.5, 0.5, padded: true, seed: 9).CheckSgemm(2);
            new Problem(true, false, 7, 65, 17, 1.0, 0.0, padded: false, seed: 10).CheckSgemm(1);
            new Problem(false, false, 13, 37, 29, 1.0, 1.0, padded: true, seed: 12).CheckSgemm(0);
            new Problem(true, false, 13, 11, 29, 2.0, 0.0, padded: true, seed: 13).CheckDgemm(0);
            new Problem(true, true, 13, 11, 29, -1.0, 2.0, padded: true, seed: 11).CheckDgemm(2);
        }
        finally
        {
            Gemm.ForcedIsa = null;
        }
    }

    [Test]
    public void ConcurrentCallers_GetCorrectResults()
    {
        var problems = Enumerable.Range(0, 6)
            .Select(i => new Problem(i % 2 == 0, i % 3 == 0, 65 + i, 33 + (2 * i), 129, 1.0, 0.5, padded: i % 2 == 1, seed: 100 + i))
            .ToArray();
        Parallel.For(0, problems.Length, new ParallelOptions { MaxDegreeOfParallelism = 3 }, i =>
        {
            for (int rep = 0; rep < 3; rep++)
            {
                problems[i].CheckSgemm(2);
            }
        });
        Assert.That(Gemm.WorkspaceBytes, Is.GreaterThan(0));
    }

    [Test]
    public void Workspace_IsCountedAndReleasable()
    {
        new Problem(false, false, 65, 65, 65, 1.0, 0.0, padded: false, seed: 4).CheckSgemm(1);
        long held = Gemm.WorkspaceBytes;
        Assert.That(held, Is.GreaterThan(0));
        Gemm.ReleaseThreadWorkspace();
        Assert.That(Gemm.WorkspaceBytes, Is.LessThan(held));
    }

    [Test]
    public void KernelName_DescribesTile()
    {
        Assert.That(Gemm.KernelName, Does.Match(@"^Vector(128|256|512).* \d+x\d+$"));
    }

    /// <summary>A random GEMM problem with optional padded strides, held in float64, with a float64 reference.</summary>
    private sealed class Problem
    {
        private const double Sentinel = 12345.0;
        private readonly bool _transA, _transB, _padded;
        private readonly int _m, _n, _k, _lda, _ldb, _ldc;
        private readonly double _alpha, _beta;

        public Problem(bool transA, bool transB, int m, int n, int k, double alpha, double beta, bool padded, int seed)
        {
            (_transA, _transB, _m, _n, _k, _alpha, _beta, _padded) = (transA, transB, m, n, k, alpha, beta, padded);
            int pad = padded ? 3 : 0;
            int aRows = transA ? k : m, aCols = transA ? m : k;
            int bRows = transB ? n : k, bCols = transB ? k : n;
            _lda = Math.Max(1, aCols) + pad;
            _ldb = Math.Max(1, bCols) + pad;
            _ldc = n + pad;
            var rng = new Random(seed);
            A = Fill(rng, aRows, aCols, _lda);
            B = Fill(rng, bRows, bCols, _ldb);
            C0 = Fill(rng, m, n, _ldc);
            if (beta == 0)
            {
                // beta == 0: C must be overwritten without being read.
                for (int i = 0; i < m; i++)
                {
                    Array.Fill(C0, double.NaN, i * _ldc, n);
                }
            }
        }

        public double[] A { get; }

        public double[] B { get; }

        public double[] C0 { get; }

        /// <summary>threads 0: one thread on the small-problem path; 1: one thread, blocked path; else that many threads.</summary>
        private static int SelectPath(int threads)
        {
            Gemm.SmallWork = threads == 0 ? long.MaxValue : 0;
            return Math.Max(1, threads);
        }

        public void CheckSgemm(int threads)
        {
            long savedSmall = Gemm.SmallWork;
            threads = SelectPath(threads);
            float[] a = [.. A.Select(x => (float)x)], b = [.. B.Select(x => (float)x)], c = [.. C0.Select(x => (float)x)];
            fixed (float* pa = a, pb = b, pc = c)
            {
                Gemm.Sgemm(_transA, _transB, _m, _n, _k, (float)_alpha, pa, _lda, pb, _ldb, (float)_beta, pc, _ldc, threads);
            }

            Gemm.SmallWork = savedSmall;

            Verify([.. c.Select(x => (double)x)], 1e-5, "Sgemm", threads);
        }

        public void CheckDgemm(int threads)
        {
            long savedSmall = Gemm.SmallWork;
            threads = SelectPath(threads);
            double[] c = [.. C0];
            fixed (double* pa = A, pb = B, pc = c)
            {
                Gemm.Dgemm(_transA, _transB, _m, _n, _k, _alpha, pa, _lda, pb, _ldb, _beta, pc, _ldc, threads);
            }

            Gemm.SmallWork = savedSmall;

            Verify(c, 1e-12, "Dgemm", threads);
        }

        private static double[] Fill(Random rng, int rows, int cols, int ld)
        {
            var x = new double[Math.Max(1, rows * ld)];
            Array.Fill(x, Sentinel); // padding: must never be read into results nor written
            for (int i = 0; i < rows; i++)
            {
                for (int j = 0; j < cols; j++)
                {
                    x[i * ld + j] = (float)((rng.NextDouble() * 2) - 1); // exactly representable in float32
                }
            }

            return x;
        }

        private double OpA(int i, int p) => _transA ? A[p * _lda + i] : A[i * _lda + p];

        private double OpB(int p, int j) => _transB ? B[j * _ldb + p] : B[p * _ldb + j];

        private void Verify(double[] got, double relTol, string what, int threads)
        {
            double worst = 0;
            string where = "";
            for (int i = 0; i < _m; i++)
            {
                for (int j = 0; j < _ldc; j++)
                {
                    int idx = i * _ldc + j;
                    double expected, scale;
                    if (j >= _n)
                    {
                        expected = C0[idx];
                        scale = 0;
                    }
                    else
                    {
                        double sum = 0, abs = 0;
                        if (_alpha != 0)
                        {
                            for (int p = 0; p < _k; p++)
                            {
                                double t = OpA(i, p) * OpB(p, j);
                                sum += t;
                                abs += Math.Abs(t);
                            }
                        }

                        double cTerm = _beta == 0 ? 0 : _beta * C0[idx];
                        expected = (_alpha * sum) + cTerm;
                        scale = (Math.Abs(_alpha) * abs) + Math.Abs(cTerm);
                    }

                    double err = Math.Abs(got[idx] - expected);
                    double ratio = double.IsNaN(err) ? double.PositiveInfinity : err / ((relTol * scale) + 1e-30);
                    if (ratio > worst)
                    {
                        worst = ratio;
                        where = $"C[{i},{j}] = {got[idx]}, expected {expected}";
                    }
                }
            }

            Assert.That(worst, Is.LessThanOrEqualTo(1.0),
                $"{what} {(_transA ? "T" : "N")}{(_transB ? "T" : "N")} m={_m} n={_n} k={_k} alpha={_alpha} beta={_beta} " +
                $"padded={_padded} threads={threads}: {where}");
        }
    }
}
