using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// The emulated cuBLAS subset against a float64 loop over the same column-major operands: transposes, odd
/// sizes, padded leading dimensions, alpha and beta, outputs NaN-poisoned when beta = 0 (C must not be read);
/// then bad arguments, which must return cuBLAS's own status codes. Tolerance: 1e-6 of Σ|alpha·a·b| + |beta·c|
/// per element (what a GPU's float accumulation meets at these sizes); TF32 1e-3; Dgemm 1e-14 absolute (inputs
/// below 1, k ≤ 19). The emulator's GEMM is blocked and multi-threaded but sums every element in double in k order
/// (chosen over float accumulation, which measured ~1.6x faster, for exactness and thread-count independence), so on
/// the emulated device float GEMMs must equal a k-ordered float64 loop bit for bit, at sizes that span several
/// tiles, k slices and threads; Dgemm there is within (k + 2)·2⁻⁵² of Σ|alpha·a·b| + |beta·c| (the AVX2 kernel fuses
/// each multiply-add, the loop does not).
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable] // the emulated device's state is process-wide
public unsafe class CublasTests
{
    private readonly CudaImplementation _impl;

    public CublasTests(CudaImplementation implementation) => _impl = implementation;

    private CudaContext _ctx = null!;
    private CublasHandle _blas = null!;

    [OneTimeSetUp]
    public void SetUp()
    {
        CudaApi api = CudaDevices.Load(_impl);
        _ctx = CudaContext.Open(api);
        _blas = CublasHandle.Create(_ctx);
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        _blas?.Dispose();
        _ctx?.Dispose();
    }

    private static float[] Random(int n, int seed) => DeviceTestData.RandomFloats(new Random(seed), n);

    private DeviceBuffer Upload(float[] x) => DeviceTestData.Upload(_ctx, x);

    /// <summary>C (m, n; ldc) = alpha·op(A)·op(B) + beta·C in float64, column-major; also the per-element error scale.</summary>
    private static (double[] C, double[] Scale) Reference(CublasOperation ta, CublasOperation tb, int m, int n, int k, float alpha,
        float[] a, int aOff, int lda, float[] b, int bOff, int ldb, float beta, float[] c, int cOff, int ldc)
    {
        var r = new double[m * n];
        var s = new double[m * n];
        for (int j = 0; j < n; j++)
        {
            for (int i = 0; i < m; i++)
            {
                double acc = 0, mag = 0;
                for (int l = 0; l < k; l++)
                {
                    double av = ta == CublasOperation.N ? a[aOff + i + l * lda] : a[aOff + l + i * lda];
                    double bv = tb == CublasOperation.N ? b[bOff + l + j * ldb] : b[bOff + j + l * ldb];
                    acc += av * bv;
                    mag += Math.Abs(av * bv);
                }
                double cv = beta == 0 ? 0 : beta * (double)c[cOff + i + j * ldc];
                r[i + j * m] = alpha * acc + cv;
                s[i + j * m] = Math.Abs(alpha) * mag + Math.Abs(cv);
            }
        }
        return (r, s);
    }

    private static void AssertClose(float[] got, int off, int ldc, int m, int n, (double[] C, double[] Scale) expected, double rtol, string what)
    {
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++)
            {
                double e = expected.C[i + j * m], g = got[off + i + j * ldc];
                double tol = rtol * (expected.Scale[i + j * m] + 1e-30);
                Assert.That(Math.Abs(g - e), Is.LessThanOrEqualTo(tol), $"{what}: C[{i},{j}] = {g}, expected {e}");
            }
    }

    private static (int Rows, int Cols) Shape(CublasOperation t, int rows, int cols) => t == CublasOperation.N ? (rows, cols) : (cols, rows);

    [Test]
    public void Sgemm_matches_a_float64_loop(
        [Values(CublasOperation.N, CublasOperation.T)] CublasOperation ta,
        [Values(CublasOperation.N, CublasOperation.T)] CublasOperation tb,
        [Values(0f, 0.75f)] float beta)
    {
        const int m = 13, n = 7, k = 19;
        float alpha = -1.25f;
        var (ar, ac) = Shape(ta, m, k);
        var (br, bc) = Shape(tb, k, n);
        int lda = ar + 3, ldb = br + 1, ldc = m + 2;
        float[] a = Random(lda * ac, 1), b = Random(ldb * bc, 2);
        float[] c = beta == 0 ? Enumerable.Repeat(float.NaN, ldc * n).ToArray() : Random(ldc * n, 3);
        using DeviceBuffer da = Upload(a), db = Upload(b), dc = Upload(c);
        _blas.Sgemm(ta, tb, m, n, k, alpha, da, lda, db, ldb, beta, dc, ldc);
        float[] got = dc.ToArray<float>();
        AssertClose(got, 0, ldc, m, n, Reference(ta, tb, m, n, k, alpha, a, 0, lda, b, 0, ldb, beta, c, 0, ldc), 1e-6, $"Sgemm {ta}{tb} beta {beta}");
        for (int j = 0; j < n; j++)  // the padding rows of C are untouched
            for (int i = m; i < ldc; i++)
                Assert.That(BitConverter.SingleToInt32Bits(got[i + j * ldc]), Is.EqualTo(BitConverter.SingleToInt32Bits(c[i + j * ldc])));
    }

    [Test]
    public void SgemmStridedBatched_matches_a_float64_loop_per_matrix([Values(CublasOperation.N, CublasOperation.T)] CublasOperation ta)
    {
        const int m = 5, n = 9, k = 3, batch = 4;
        var (ar, ac) = Shape(ta, m, k);
        int lda = ar, ldb = n + 1, ldc = m;  // B read transposed
        long sA = lda * ac + 5, sB = ldb * k + 2, sC = ldc * n + 7;
        float[] a = Random((int)sA * batch, 4), b = Random((int)sB * batch, 5);
        float[] c = Enumerable.Repeat(float.NaN, (int)sC * batch).ToArray();
        using DeviceBuffer da = Upload(a), db = Upload(b), dc = Upload(c);
        _blas.SgemmStridedBatched(ta, CublasOperation.T, m, n, k, 2f, da, lda, sA, db, ldb, sB, 0f, dc, ldc, sC, batch);
        float[] got = dc.ToArray<float>();
        for (int i = 0; i < batch; i++)
        {
            var expected = Reference(ta, CublasOperation.T, m, n, k, 2f, a, (int)(i * sA), lda, b, (int)(i * sB), ldb, 0f, c, (int)(i * sC), ldc);
            AssertClose(got, (int)(i * sC), ldc, m, n, expected, 1e-6, $"batch {i}");
        }
    }

    [Test]
    public void GemmEx_fp32_equals_Sgemm_and_TF32_is_within_1e_3()
    {
        const int m = 17, n = 11, k = 33;
        float[] a = Random(m * k, 6), b = Random(k * n, 7), c = Random(m * n, 8);
        using DeviceBuffer da = Upload(a), db = Upload(b), c1 = Upload(c), c2 = Upload(c), c3 = Upload(c);
        _blas.Sgemm(CublasOperation.N, CublasOperation.N, m, n, k, 1f, da, m, db, k, 0.5f, c1, m);
        _blas.GemmEx(CublasOperation.N, CublasOperation.N, m, n, k, 1f, da, m, db, k, 0.5f, c2, m);
        _blas.GemmEx(CublasOperation.N, CublasOperation.N, m, n, k, 1f, da, m, db, k, 0.5f, c3, m, CublasComputeType.Compute32FFastTf32);
        Assert.That(c2.ToArray<float>(), Is.EqualTo(c1.ToArray<float>()).AsCollection);
        var expected = Reference(CublasOperation.N, CublasOperation.N, m, n, k, 1f, a, 0, m, b, 0, k, 0.5f, c, 0, m);
        float[] tf32 = c3.ToArray<float>();
        AssertClose(tf32, 0, m, m, n, expected, 1e-3, "TF32");
        Assert.That(tf32, Is.Not.EqualTo(c1.ToArray<float>()).AsCollection, "TF32 rounding changed nothing");
    }

    [Test]
    public void Math_mode_TF32_rounds_Sgemm_and_version_is_reported()
    {
        const int m = 4, n = 4, k = 64;
        float[] a = Random(m * k, 9), b = Random(k * n, 10);
        using DeviceBuffer da = Upload(a), db = Upload(b), c1 = DeviceBuffer.Allocate<float>(_ctx, m * n), c2 = DeviceBuffer.Allocate<float>(_ctx, m * n);
        using CublasHandle tf32 = CublasHandle.Create(_ctx);
        using var stream = CudaStream.Create(_ctx);
        tf32.SetStream(stream);
        tf32.SetMathMode(CublasMath.Tf32TensorOp);
        _blas.Sgemm(CublasOperation.N, CublasOperation.N, m, n, k, 1f, da, m, db, k, 0f, c1, m);
        tf32.Sgemm(CublasOperation.N, CublasOperation.N, m, n, k, 1f, da, m, db, k, 0f, c2, m);
        stream.Synchronize();
        Assert.That(c2.ToArray<float>(), Is.Not.EqualTo(c1.ToArray<float>()).AsCollection);
        Assert.That(_blas.Version, Is.GreaterThanOrEqualTo(110000));
    }

    /// <summary>Rounds to TF32 (10 explicit mantissa bits), to nearest even; infinities and NaN unchanged.</summary>
    private static float Tf32(float x)
    {
        uint u = BitConverter.SingleToUInt32Bits(x);
        if ((u & 0x7f800000u) == 0x7f800000u) return x;
        u += 0x0fffu + ((u >> 13) & 1u);
        return BitConverter.UInt32BitsToSingle(u & 0xffffe000u);
    }

    /// <summary>Sizes past one k slice (256), one tile and the threading threshold, with edge panels: the emulator's float
    /// GEMM equals float(alpha·Σ_l a·b + beta·c), the sum in double with l increasing, bit for bit, TF32 included.</summary>
    [Test]
    public void Emulated_Sgemm_is_bit_identical_to_a_k_ordered_float64_loop_on_blocked_sizes(
        [Values(CublasOperation.N, CublasOperation.T)] CublasOperation ta,
        [Values(CublasOperation.N, CublasOperation.T)] CublasOperation tb,
        [Values(false, true)] bool tf32)
    {
        CudaDevices.RequireEmulated(_impl, "the emulator's summation order (cuBLAS sums in float, in its own order)");
        const int m = 203, n = 197, k = 601;
        float alpha = -0.75f, beta = 0.5f;
        var (ar, ac) = Shape(ta, m, k);
        var (br, bc) = Shape(tb, k, n);
        int lda = ar + 1, ldb = br + 2, ldc = m + 3;
        float[] a = Random(lda * ac, 21), b = Random(ldb * bc, 22), c = Random(ldc * n, 23);
        using DeviceBuffer da = Upload(a), db = Upload(b), dc = Upload(c);
        if (tf32)
            _blas.GemmEx(ta, tb, m, n, k, alpha, da, lda, db, ldb, beta, dc, ldc, CublasComputeType.Compute32FFastTf32);
        else
            _blas.Sgemm(ta, tb, m, n, k, alpha, da, lda, db, ldb, beta, dc, ldc);
        float[] got = dc.ToArray<float>();
        for (int j = 0; j < n; j++)
        {
            for (int i = 0; i < m; i++)
            {
                double acc = 0;
                for (int l = 0; l < k; l++)
                {
                    float av = ta == CublasOperation.N ? a[i + l * lda] : a[l + i * lda];
                    float bv = tb == CublasOperation.N ? b[l + j * ldb] : b[j + l * ldb];
                    if (tf32) { av = Tf32(av); bv = Tf32(bv); }
                    acc += (double)av * bv;
                }
                float expected = (float)((double)alpha * acc + (double)beta * c[i + j * ldc]);
                if (BitConverter.SingleToInt32Bits(got[i + j * ldc]) != BitConverter.SingleToInt32Bits(expected))
                    Assert.Fail($"{ta}{tb} tf32 {tf32}: C[{i},{j}] = {got[i + j * ldc]:R}, expected {expected:R}");
            }
            for (int i = m; i < ldc; i++)
                Assert.That(BitConverter.SingleToInt32Bits(got[i + j * ldc]), Is.EqualTo(BitConverter.SingleToInt32Bits(c[i + j * ldc])));
        }
    }

    /// <summary>alpha = 0 reads neither A nor B (NaN there changes nothing): C = beta·C, here on a GEMM big enough to be
    /// split over threads; beta = 0 then writes zeros over a NaN C.</summary>
    [Test]
    public void Alpha_zero_reads_neither_A_nor_B([Values(0f, 0.5f)] float beta)
    {
        const int m = 150, n = 130, k = 140;
        float[] nan = Enumerable.Repeat(float.NaN, m * k).ToArray();
        float[] c = beta == 0 ? Enumerable.Repeat(float.NaN, m * n).ToArray() : Random(m * n, 24);
        using DeviceBuffer da = Upload(nan), db = Upload(nan), dc = Upload(c);
        _blas.Sgemm(CublasOperation.N, CublasOperation.T, m, n, k, 0f, da, m, db, n, beta, dc, m);
        float[] got = dc.ToArray<float>();
        for (int i = 0; i < m * n; i++)
            Assert.That(got[i], Is.EqualTo(beta == 0 ? 0f : beta * c[i]), $"C[{i}]");
    }

    /// <summary>C (m, n; ldc) = alpha·op(A)·op(B) + beta·C in a plain float64 loop, column-major, for the Dgemm tests.</summary>
    private static double[] ReferenceD(CublasOperation ta, CublasOperation tb, int m, int n, int k, double alpha,
        double[] a, int aOff, int lda, double[] b, int bOff, int ldb, double beta, double[] c, int cOff, int ldc)
    {
        var r = new double[m * n];
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++)
            {
                double acc = 0;
                for (int l = 0; l < k; l++)
                {
                    double av = ta == CublasOperation.N ? a[aOff + i + l * lda] : a[aOff + l + i * lda];
                    double bv = tb == CublasOperation.N ? b[bOff + l + j * ldb] : b[bOff + j + l * ldb];
                    acc += av * bv;
                }
                r[i + j * m] = alpha * acc + (beta == 0 ? 0 : beta * c[cOff + i + j * ldc]);
            }
        return r;
    }

    private static double[] RandomD(int n, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, n).Select(_ => rng.NextDouble() * 2 - 1)];
    }

    /// <summary>Dgemm: float64 operands, float64 accumulation. Inputs are uniform in [-1, 1) and k ≤ 19, so 1e-14 absolute
    /// bounds any summation order's rounding.</summary>
    [Test]
    public void Dgemm_matches_a_float64_loop(
        [Values(CublasOperation.N, CublasOperation.T)] CublasOperation ta,
        [Values(CublasOperation.N, CublasOperation.T)] CublasOperation tb,
        [Values(0.0, 0.75)] double beta)
    {
        const int m = 13, n = 7, k = 19;
        double alpha = -1.25;
        var (ar, ac) = Shape(ta, m, k);
        var (br, bc) = Shape(tb, k, n);
        int lda = ar + 3, ldb = br + 1, ldc = m + 2;
        double[] a = RandomD(lda * ac, 11), b = RandomD(ldb * bc, 12);
        double[] c = beta == 0 ? Enumerable.Repeat(double.NaN, ldc * n).ToArray() : RandomD(ldc * n, 13);
        using DeviceBuffer da = DeviceTestData.Upload(_ctx, a), db = DeviceTestData.Upload(_ctx, b), dc = DeviceTestData.Upload(_ctx, c);
        _blas.Dgemm(ta, tb, m, n, k, alpha, da, lda, db, ldb, beta, dc, ldc);
        double[] got = dc.ToArray<double>();
        double[] expected = ReferenceD(ta, tb, m, n, k, alpha, a, 0, lda, b, 0, ldb, beta, c, 0, ldc);
        for (int j = 0; j < n; j++)
        {
            for (int i = 0; i < m; i++)
                Assert.That(got[i + j * ldc], Is.EqualTo(expected[i + j * m]).Within(1e-14), $"Dgemm {ta}{tb} beta {beta}: C[{i},{j}]");
            for (int i = m; i < ldc; i++) // the padding rows of C are untouched
                Assert.That(BitConverter.DoubleToInt64Bits(got[i + j * ldc]), Is.EqualTo(BitConverter.DoubleToInt64Bits(c[i + j * ldc])));
        }
    }

    [Test]
    public void DgemmStridedBatched_matches_per_matrix_and_shares_a_stride_0_operand([Values(CublasOperation.N, CublasOperation.T)] CublasOperation ta)
    {
        const int m = 5, n = 9, k = 3, batch = 4;
        var (ar, ac) = Shape(ta, m, k);
        int lda = ar, ldb = n + 1, ldc = m;  // B read transposed
        long sA = lda * ac + 5, sB = ldb * k + 2, sC = ldc * n + 7;
        double[] a = RandomD((int)sA * batch, 14), b = RandomD((int)sB, 15); // one B for every batch item (stride 0)
        double[] c = RandomD((int)sC * batch, 16);
        using DeviceBuffer da = DeviceTestData.Upload(_ctx, a), db = DeviceTestData.Upload(_ctx, b), dc = DeviceTestData.Upload(_ctx, c);
        _blas.DgemmStridedBatched(ta, CublasOperation.T, m, n, k, 2.0, da, lda, sA, db, ldb, 0, 1.0, dc, ldc, sC, batch);
        double[] got = dc.ToArray<double>();
        for (int i = 0; i < batch; i++)
        {
            double[] expected = ReferenceD(ta, CublasOperation.T, m, n, k, 2.0, a, (int)(i * sA), lda, b, 0, ldb, 1.0, c, (int)(i * sC), ldc);
            for (int col = 0; col < n; col++)
                for (int row = 0; row < m; row++)
                    Assert.That(got[i * sC + row + col * ldc], Is.EqualTo(expected[row + col * m]).Within(1e-14), $"batch {i}: C[{row},{col}]");
        }
    }

    /// <summary>Dgemm past one k slice, one tile and the threading threshold, batched (item 1 shares B with item 0 through
    /// stride 0): within (k + 2)·2⁻⁵² of Σ|alpha·a·b| + |beta·c| of a k-ordered float64 loop, which any blocking mistake
    /// (a lost or repeated slice, a misplaced tile) exceeds by far.</summary>
    [Test]
    public void Emulated_DgemmStridedBatched_matches_a_float64_loop_on_blocked_sizes(
        [Values(CublasOperation.N, CublasOperation.T)] CublasOperation ta,
        [Values(CublasOperation.N, CublasOperation.T)] CublasOperation tb)
    {
        CudaDevices.RequireEmulated(_impl, "a tolerance tied to the emulator's summation order");
        const int m = 131, n = 205, k = 530, batch = 2;
        double alpha = 1.5, beta = -0.25;
        var (ar, ac) = Shape(ta, m, k);
        var (br, bc) = Shape(tb, k, n);
        int lda = ar + 2, ldb = br + 1, ldc = m;
        long sA = (long)lda * ac, sC = (long)ldc * n;
        double[] a = RandomD((int)sA * batch, 25), b = RandomD(ldb * bc, 26), c = RandomD((int)sC * batch, 27);
        using DeviceBuffer da = DeviceTestData.Upload(_ctx, a), db = DeviceTestData.Upload(_ctx, b), dc = DeviceTestData.Upload(_ctx, c);
        _blas.DgemmStridedBatched(ta, tb, m, n, k, alpha, da, lda, sA, db, ldb, 0, beta, dc, ldc, sC, batch);
        double[] got = dc.ToArray<double>();
        for (int item = 0; item < batch; item++)
        {
            double[] expected = ReferenceD(ta, tb, m, n, k, alpha, a, (int)(item * sA), lda, b, 0, ldb, beta, c, (int)(item * sC), ldc);
            for (int j = 0; j < n; j++)
                for (int i = 0; i < m; i++)
                {
                    double scale = Math.Abs(beta * c[item * sC + i + j * ldc]);
                    for (int l = 0; l < k; l++)
                        scale += Math.Abs(alpha * (ta == CublasOperation.N ? a[item * sA + i + l * lda] : a[item * sA + l + i * lda])
                            * (tb == CublasOperation.N ? b[l + j * ldb] : b[j + l * ldb]));
                    double g = got[item * sC + i + j * ldc], e = expected[i + j * m];
                    if (Math.Abs(g - e) > (k + 2) * Math.Pow(2, -52) * scale)
                        Assert.Fail($"{ta}{tb} batch {item}: C[{i},{j}] = {g:R}, expected {e:R} (scale {scale})");
                }
        }
    }

    [Test]
    public void Dgemm_bad_arguments_return_cuBLAS_status_codes()
    {
        // The last call reads past an operand: on a GPU an illegal address, which ruins the context.
        CudaDevices.RequireEmulated(_impl, "the emulator's messages, and an out-of-bounds operand");
        using DeviceBuffer a = DeviceBuffer.Allocate<double>(_ctx, 64), b = DeviceBuffer.Allocate<double>(_ctx, 64), c = DeviceBuffer.Allocate<double>(_ctx, 64);
        var e = Assert.Throws<CublasException>(() => _blas.Dgemm(CublasOperation.T, CublasOperation.N, 8, 4, 4, 1.0, a, 3, b, 4, 0.0, c, 8))!;
        Assert.That(e.Status, Is.EqualTo(CublasStatus.InvalidValue));
        Assert.That(e.Message, Does.Contain("cublasDgemm").And.Contain("lda = 3"));
        e = Assert.Throws<CublasException>(() => _blas.DgemmStridedBatched(CublasOperation.N, CublasOperation.N, 2, 2, 2, 1.0, a, 2, 4, b, 2, 4, 0.0, c, 1, 4, 2))!;
        Assert.That(e.Status, Is.EqualTo(CublasStatus.InvalidValue));
        Assert.That(e.Message, Does.Contain("ldc = 1"));
        e = Assert.Throws<CublasException>(() => _blas.DgemmStridedBatched(CublasOperation.N, CublasOperation.N, 2, 2, 2, 1.0, a, 2, 4, b, 2, 4, 0.0, c, 2, 4, -1))!;
        Assert.That(e.Status, Is.EqualTo(CublasStatus.InvalidValue));
        CublasApi raw = _ctx.Api.Cublas;
        double one = 1, zero = 0;
        _ctx.Bind();
        Assert.That(raw.cublasDgemm_v2(0, CublasOperation.N, CublasOperation.N, 1, 1, 1, &one, a.Pointer, 1, b.Pointer, 1, &zero, c.Pointer, 1),
            Is.EqualTo(CublasStatus.NotInitialized));
        // 64 doubles hold an 8 x 8 matrix, not 9 x 8: the operand extent is checked in doubles, not floats
        e = Assert.Throws<CublasException>(() => _blas.Dgemm(CublasOperation.N, CublasOperation.N, 9, 8, 8, 1.0, a, 9, b, 8, 0.0, c, 9))!;
        Assert.That(e.Status, Is.EqualTo(CublasStatus.ExecutionFailed));
        Assert.That(e.Message, Does.Contain("A = "));
        // batch 3 with stride 64: the second matrix lies outside the allocation
        e = Assert.Throws<CublasException>(() => _blas.DgemmStridedBatched(CublasOperation.N, CublasOperation.N, 8, 8, 8, 1.0, a, 8, 0, b, 8, 0, 0.0, c, 8, 64, 3))!;
        Assert.That(e.Status, Is.EqualTo(CublasStatus.ExecutionFailed));
        Assert.That(e.Message, Does.Contain("C = "));
    }

    [Test]
    public void Bad_arguments_return_cuBLAS_status_codes()
    {
        // The last call reads past an operand: on a GPU an illegal address, which ruins the context.
        CudaDevices.RequireEmulated(_impl, "the emulator's messages, and an out-of-bounds operand");
        using DeviceBuffer a = DeviceBuffer.Allocate<float>(_ctx, 64), b = DeviceBuffer.Allocate<float>(_ctx, 64), c = DeviceBuffer.Allocate<float>(_ctx, 64);
        var e = Assert.Throws<CublasException>(() => _blas.Sgemm(CublasOperation.N, CublasOperation.N, 8, 4, 4, 1f, a, 7, b, 4, 0f, c, 8))!;
        Assert.That(e.Status, Is.EqualTo(CublasStatus.InvalidValue));
        Assert.That(e.Message, Does.Contain("cublasSgemm").And.Contain("lda = 7"));
        e = Assert.Throws<CublasException>(() => _blas.Sgemm(CublasOperation.N, CublasOperation.N, -1, 4, 4, 1f, a, 8, b, 4, 0f, c, 8))!;
        Assert.That(e.Status, Is.EqualTo(CublasStatus.InvalidValue));
        e = Assert.Throws<CublasException>(() => _blas.Sgemm((CublasOperation)7, CublasOperation.N, 4, 4, 4, 1f, a, 8, b, 4, 0f, c, 8))!;
        Assert.That(e.Status, Is.EqualTo(CublasStatus.InvalidValue));
        e = Assert.Throws<CublasException>(() => _blas.SgemmStridedBatched(CublasOperation.N, CublasOperation.N, 2, 2, 2, 1f, a, 2, 4, b, 2, 4, 0f, c, 2, 4, -1))!;
        Assert.That(e.Status, Is.EqualTo(CublasStatus.InvalidValue));
        e = Assert.Throws<CublasException>(() => _blas.GemmEx(CublasOperation.N, CublasOperation.N, 4, 4, 4, 1f, a, 4, b, 4, 0f, c, 4, CublasComputeType.Compute32FFast16BF))!;
        Assert.That(e.Status, Is.EqualTo(CublasStatus.NotSupported));
        // fp16 operands are not emulated: NOT_SUPPORTED, as cuBLAS answers an unsupported type combination
        CublasApi raw = _ctx.Api.Cublas;
        float one = 1f, zero = 0f;
        _ctx.Bind();
        CublasStatus s = raw.cublasGemmEx(_blas.DangerousGetHandle(), CublasOperation.N, CublasOperation.N, 4, 4, 4, &one, a.Pointer, CudaDataType.R16F, 4,
            b.Pointer, CudaDataType.R16F, 4, &zero, c.Pointer, CudaDataType.R32F, 4, CublasComputeType.Compute32F, CublasGemmAlgo.Default);
        Assert.That(s, Is.EqualTo(CublasStatus.NotSupported));
        Assert.That(raw.cublasSgemm_v2(0, CublasOperation.N, CublasOperation.N, 1, 1, 1, &one, a.Pointer, 1, b.Pointer, 1, &zero, c.Pointer, 1),
            Is.EqualTo(CublasStatus.NotInitialized));
        // an operand too small for its extent: on a GPU an illegal address, here EXECUTION_FAILED naming the operand
        e = Assert.Throws<CublasException>(() => _blas.Sgemm(CublasOperation.N, CublasOperation.N, 16, 16, 16, 1f, a, 16, b, 16, 0f, c, 16))!;
        Assert.That(e.Status, Is.EqualTo(CublasStatus.ExecutionFailed));
        Assert.That(e.Message, Does.Contain("A = "));
    }
}
