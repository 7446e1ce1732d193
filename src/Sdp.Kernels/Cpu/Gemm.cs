using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Sdp.Kernels.Cpu;

/// <summary>
/// Packed, cache-blocked, multi-threaded GEMM (BLIS/GotoBLAS design) on .NET hardware intrinsics.
/// Safe to call concurrently from several threads: packing buffers are thread-local.
/// </summary>
public static unsafe class Gemm
{
    internal enum Isa
    {
        V128,
        V256,
        V512,
    }

    private static readonly Isa s_isa = DetectIsa();
    private static int s_maxThreads = Environment.ProcessorCount;

    /// <summary>Test hook: force a kernel family (null = auto-detected).</summary>
    internal static Isa? ForcedIsa { get; set; }

    /// <summary>Tuning hooks (0 = the kernel's default blocking).</summary>
    internal static int TuneMC { get; set; }

    internal static int TuneKC { get; set; }

    internal static int TuneNC { get; set; }

    /// <summary>Multiply-adds up to which a single-threaded call skips cache blocking and most packing.</summary>
    internal static long SmallWork { get; set; } = 1L << 20;

    /// <summary>Multiply-adds below which an extra thread is not worth waking (~30 µs of work).</summary>
    internal static long MinWorkPerThread { get; set; } = 1L << 20;

    /// <summary>Default thread count when a call passes threads &lt;= 0. Must be at least 1.</summary>
    public static int MaxThreads
    {
        get => Volatile.Read(ref s_maxThreads);
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            Volatile.Write(ref s_maxThreads, value);
        }
    }

    /// <summary>Bytes currently held in (thread-local) packing buffers, across all threads.</summary>
    public static long WorkspaceBytes => GemmWorkspace.TotalBytes;

    /// <summary>The single-precision microkernel in use, e.g. "Vector256 FMA 6x16".</summary>
    public static string KernelName => (ForcedIsa ?? s_isa) switch
    {
        Isa.V512 => SgemmKernel512.Name,
        Isa.V256 => SgemmKernel256.Name,
        _ => SgemmKernel128.Name,
    };

    private static Isa DetectIsa()
    {
        if (Vector512.IsHardwareAccelerated && Avx512F.IsSupported)
        {
            return Isa.V512;
        }

        if (Vector256.IsHardwareAccelerated && Fma.IsSupported)
        {
            return Isa.V256;
        }

        return Isa.V128;
    }

    /// <summary>Frees the calling thread's packing buffer (it is re-created on the next call from this thread).</summary>
    internal static void ReleaseThreadWorkspace() => GemmWorkspace.ReleaseCurrentThread();

    /// <summary>
    /// Row-major single-precision GEMM: C[m,n] = alpha * op(A)[m,k] · op(B)[k,n] + beta * C[m,n].
    /// op(A) = transA ? Aᵀ : A, where A is stored (k x m) when transA, else (m x k); likewise B.
    /// lda/ldb/ldc are row strides in elements. beta == 0 means C is not read. threads &lt;= 0 means <see cref="MaxThreads"/>.
    /// </summary>
    public static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc, int threads = 0)
    {
        if (!Prepare(transA, transB, m, n, k, alpha == 0f, a, lda, b, ldb, c, ldc))
        {
            return;
        }

        var g = new GemmArgs<float>
        {
            TransA = transA, TransB = transB, M = m, N = n, K = k, Alpha = alpha, Beta = beta,
            A = a, B = b, C = c, Lda = lda, Ldb = ldb, Ldc = ldc,
        };
        if (k == 0 || alpha == 0f)
        {
            ScaleC(m, n, beta, c, ldc);
            return;
        }

        Run(in g, threads);
    }

    /// <summary>Runs a prepared float32 GEMM (plain or index-aware; m, n, k &gt; 0) on the selected kernel.</summary>
    internal static void Run(in GemmArgs<float> g, int threads)
    {
        int t = threads > 0 ? threads : MaxThreads;
        switch (ForcedIsa ?? s_isa)
        {
            case Isa.V512:
                GemmDriver<float, SgemmKernel512>.Run(in g, t);
                break;
            case Isa.V256:
                GemmDriver<float, SgemmKernel256>.Run(in g, t);
                break;
            default:
                GemmDriver<float, SgemmKernel128>.Run(in g, t);
                break;
        }
    }

    /// <summary>Row-major double-precision GEMM; same contract as <see cref="Sgemm"/>.</summary>
    public static void Dgemm(bool transA, bool transB, int m, int n, int k, double alpha, double* a, int lda, double* b, int ldb, double beta, double* c, int ldc, int threads = 0)
    {
        if (!Prepare(transA, transB, m, n, k, alpha == 0d, a, lda, b, ldb, c, ldc))
        {
            return;
        }

        var g = new GemmArgs<double>
        {
            TransA = transA, TransB = transB, M = m, N = n, K = k, Alpha = alpha, Beta = beta,
            A = a, B = b, C = c, Lda = lda, Ldb = ldb, Ldc = ldc,
        };
        if (k == 0 || alpha == 0d)
        {
            ScaleC(m, n, beta, c, ldc);
            return;
        }

        int t = threads > 0 ? threads : MaxThreads;
        if ((ForcedIsa ?? s_isa) == Isa.V128)
        {
            GemmDriver<double, DgemmKernel128>.Run(in g, t);
        }
        else
        {
            GemmDriver<double, DgemmKernel256>.Run(in g, t);
        }
    }

    /// <summary>
    /// C[m,n] = op(A) · op(B) + beta * C where a <paramref name="packer"/> packs op(A) (when it <see cref="IGemmPacker{T}.PacksA"/>)
    /// and/or op(B) (when it <see cref="IGemmPacker{T}.PacksB"/>) straight into the kernel's panels; the other operand is
    /// the plain row-major a (m x k, lda) or b (k x n, ldb). Column j of C is stored at column scatterCols[j] of row i
    /// (C + i·ldc + scatterCols[j]) when scatterCols is not null. Float32 or float64; threads &lt;= 0 means <see cref="MaxThreads"/>.
    /// The sum over k runs in the same order for every thread count, so results do not depend on it.
    /// </summary>
    public static void GemmPacked<T>(int m, int n, int k, IGemmPacker<T> packer, T* a, int lda, T* b, int ldb, T beta, T* c, int ldc, int* scatterCols, int threads)
        where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(packer);
        if (m <= 0 || n <= 0)
        {
            return;
        }

        int t = threads > 0 ? threads : MaxThreads;
        if (typeof(T) == typeof(float))
        {
            var g = new GemmArgs<float>
            {
                M = m, N = n, K = k, Alpha = 1f, Beta = (float)(object)beta, A = (float*)a, B = (float*)b, C = (float*)c, Lda = lda, Ldb = ldb, Ldc = ldc,
                ScatterCols = scatterCols, Packer = (IGemmPacker<float>)packer,
            };
            if (k == 0)
            {
                throw new ArgumentOutOfRangeException(nameof(k), "a packed GEMM needs k > 0");
            }

            Run(in g, t);
        }
        else if (typeof(T) == typeof(double))
        {
            var g = new GemmArgs<double>
            {
                M = m, N = n, K = k, Alpha = 1d, Beta = (double)(object)beta, A = (double*)a, B = (double*)b, C = (double*)c, Lda = lda, Ldb = ldb, Ldc = ldc,
                ScatterCols = scatterCols, Packer = (IGemmPacker<double>)packer,
            };
            if (k == 0)
            {
                throw new ArgumentOutOfRangeException(nameof(k), "a packed GEMM needs k > 0");
            }

            if ((ForcedIsa ?? s_isa) == Isa.V128)
            {
                GemmDriver<double, DgemmKernel128>.Run(in g, t);
            }
            else
            {
                GemmDriver<double, DgemmKernel256>.Run(in g, t);
            }
        }
        else
        {
            throw new NotSupportedException($"GemmPacked: {typeof(T).Name} (float and double only)");
        }
    }

    /// <summary>Validates arguments (BLAS rules); returns false when there is nothing to do (m == 0 or n == 0).</summary>
    private static bool Prepare(bool transA, bool transB, int m, int n, int k, bool alphaZero, void* a, int lda, void* b, int ldb, void* c, int ldc)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(m);
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        ArgumentOutOfRangeException.ThrowIfNegative(k);
        ArgumentOutOfRangeException.ThrowIfLessThan(lda, Math.Max(1, transA ? m : k));
        ArgumentOutOfRangeException.ThrowIfLessThan(ldb, Math.Max(1, transB ? k : n));
        ArgumentOutOfRangeException.ThrowIfLessThan(ldc, Math.Max(1, n));
        if (m == 0 || n == 0)
        {
            return false;
        }

        if (c == null)
        {
            throw new ArgumentNullException(nameof(c));
        }

        if (k > 0 && !alphaZero)
        {
            if (a == null)
            {
                throw new ArgumentNullException(nameof(a));
            }

            if (b == null)
            {
                throw new ArgumentNullException(nameof(b));
            }
        }

        return true;
    }

    private static void ScaleC<T>(int m, int n, T beta, T* c, int ldc)
        where T : unmanaged, System.Numerics.INumber<T>
    {
        if (beta == T.One)
        {
            return;
        }

        for (int i = 0; i < m; i++)
        {
            Span<T> row = new(c + (nint)i * ldc, n);
            if (beta == T.Zero)
            {
                row.Clear();
            }
            else
            {
                for (int j = 0; j < row.Length; j++)
                {
                    row[j] *= beta;
                }
            }
        }
    }
}
