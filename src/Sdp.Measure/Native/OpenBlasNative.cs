using System.Runtime.InteropServices;

namespace Sdp.Measure;

/// <summary>
/// The raw OpenBLAS imports, names and values verbatim from cblas.h. Call them through <see cref="OpenBlas"/>,
/// which checks arguments and loads the library: <see cref="LibName"/> is a placeholder that its resolver maps
/// to the OpenBLAS found at first use.
/// </summary>
internal static unsafe partial class OpenBlasNative
{
    internal const string LibName = "sdp-openblas";

    // enum CBLAS_ORDER, enum CBLAS_TRANSPOSE
    internal const int CblasRowMajor = 101;
    internal const int CblasNoTrans = 111;
    internal const int CblasTrans = 112;

    [LibraryImport(LibName)]
    internal static partial void cblas_sgemm(int order, int transA, int transB, int m, int n, int k,
        float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc);

    [LibraryImport(LibName)]
    internal static partial void openblas_set_num_threads(int threads);

    // Both return a static NUL-terminated string owned by the library; never freed.
    [LibraryImport(LibName)]
    internal static partial byte* openblas_get_config();

    [LibraryImport(LibName)]
    internal static partial byte* openblas_get_corename();
}
