using System.Reflection;
using System.Runtime.InteropServices;

namespace Sdp.Measure;

/// <summary>
/// Minimal OpenBLAS binding used as the GEMM performance baseline (bench only; nothing else depends on OpenBLAS).
/// The library is located at first use from a list of well-known paths (or SDP_OPENBLAS=/path/to/libopenblas.so).
/// </summary>
public static unsafe class OpenBlas
{
    private static readonly Lazy<(nint Handle, string Path)> s_library = new(Load);
    private static int s_resolverInstalled;

    /// <summary>Paths tried in order (after SDP_OPENBLAS, if set).</summary>
    public static IReadOnlyList<string> CandidatePaths { get; } =
    [
        "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
        "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
        "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
        "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
        "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
        "/usr/lib64/libopenblasp.so.0",
        "/usr/lib64/libopenblas.so.0",
        "/usr/local/lib/libopenblas.so.0",
        "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
        "/usr/local/opt/openblas/lib/libopenblas.dylib",
        "libopenblas.so.0",
        "libopenblas.so",
        "libopenblas.dylib",
        "libopenblas.dll",
    ];

    /// <summary>True when an OpenBLAS library exporting cblas_sgemm and openblas_set_num_threads was found.</summary>
    public static bool IsAvailable
    {
        get
        {
            try
            {
                _ = s_library.Value;
                return true;
            }
            catch (DllNotFoundException)
            {
                return false;
            }
        }
    }

    /// <summary>The path of the loaded library (throws <see cref="DllNotFoundException"/> when it is missing).</summary>
    public static string LibraryPath => s_library.Value.Path;

    /// <summary>The build as <c>openblas_get_config()</c> describes it (version, flags, the core it runs).</summary>
    public static OpenBlasBuildConfig Config
    {
        get
        {
            EnsureLoaded();
            return OpenBlasBuildConfig.Parse(NativeString(() => (nint)OpenBlasNative.openblas_get_config()));
        }
    }

    /// <summary>The core whose kernels run (<c>openblas_get_corename()</c>), fixed when the library loaded.</summary>
    public static string CoreName
    {
        get
        {
            EnsureLoaded();
            return NativeString(() => (nint)OpenBlasNative.openblas_get_corename());
        }
    }

    /// <summary>One line for a benchmark header: version, running core, path and the raw configuration string.</summary>
    public static string Describe()
    {
        var config = Config;
        return $"OpenBLAS {config.Version ?? "(version not reported)"}, core {CoreName}, {LibraryPath} (openblas_get_config: \"{config.Raw}\")";
    }

    /// <summary>Sets OpenBLAS's thread count (1 or more).</summary>
    public static void SetNumThreads(int threads)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        EnsureLoaded();
        OpenBlasNative.openblas_set_num_threads(threads);
    }

    /// <summary>Row-major cblas_sgemm with the same argument contract as <see cref="Sdp.Kernels.Cpu.Gemm.Sgemm"/>.</summary>
    public static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(m);
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        ArgumentOutOfRangeException.ThrowIfNegative(k);
        ArgumentOutOfRangeException.ThrowIfLessThan(lda, Math.Max(1, transA ? m : k));
        ArgumentOutOfRangeException.ThrowIfLessThan(ldb, Math.Max(1, transB ? k : n));
        ArgumentOutOfRangeException.ThrowIfLessThan(ldc, Math.Max(1, n));
        if (m == 0 || n == 0)
        {
            return;
        }

        if (c == null)
        {
            throw new ArgumentNullException(nameof(c));
        }

        if (k > 0 && (a == null || b == null))
        {
            throw new ArgumentNullException(a == null ? nameof(a) : nameof(b));
        }

        EnsureLoaded();
        int opA = transA ? OpenBlasNative.CblasTrans : OpenBlasNative.CblasNoTrans;
        int opB = transB ? OpenBlasNative.CblasTrans : OpenBlasNative.CblasNoTrans;
        OpenBlasNative.cblas_sgemm(OpenBlasNative.CblasRowMajor, opA, opB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    }

    // Builds too old to export the getter report "unknown" rather than failing the benchmark they only label.
    private static string NativeString(Func<nint> getter)
    {
        try
        {
            return Marshal.PtrToStringUTF8(getter()) ?? "unknown";
        }
        catch (EntryPointNotFoundException)
        {
            return "unknown";
        }
    }

    /// <summary>Loads the library (once) or throws one <see cref="DllNotFoundException"/> explaining how to install it.</summary>
    public static void EnsureLoaded() => _ = s_library.Value;

    private static (nint, string) Load()
    {
        var tried = new List<string>();
        string? env = Environment.GetEnvironmentVariable("SDP_OPENBLAS");
        IEnumerable<string> candidates = string.IsNullOrWhiteSpace(env) ? CandidatePaths : [env, .. CandidatePaths];
        foreach (string path in candidates)
        {
            tried.Add(path);
            if (!NativeLibrary.TryLoad(path, out nint handle))
            {
                continue;
            }

            if (NativeLibrary.TryGetExport(handle, "cblas_sgemm", out _) &&
                NativeLibrary.TryGetExport(handle, "openblas_set_num_threads", out _))
            {
                if (Interlocked.Exchange(ref s_resolverInstalled, 1) == 0)
                {
                    NativeLibrary.SetDllImportResolver(typeof(OpenBlas).Assembly, Resolve);
                }

                return (handle, path);
            }

            NativeLibrary.Free(handle);
        }

        throw new DllNotFoundException(
            "OpenBLAS was not found (needed only for the GEMM baseline). Install it with " +
            "`apt-get update && apt-get install -y libopenblas0-pthread`, or set SDP_OPENBLAS to the library path. Tried: " +
            string.Join(", ", tried));
    }

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath) =>
        name == OpenBlasNative.LibName ? s_library.Value.Handle : 0;
}
