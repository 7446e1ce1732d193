using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Sdp.Kernels.Cuda;

/// <summary>
/// The raw cuBLAS entry points Sdp uses (cublas_api.h, v2 API): one <c>delegate* unmanaged</c> per C
/// function, with the C signature, under the exported names (<c>cublasCreate_v2</c> etc.; the plain
/// names are header macros). Loaded from libcublas.so.* beside the real driver, or from libcudaemu.so
/// (<see cref="Cuda.LoadCublas"/>). Column-major; alpha and beta are host pointers (pointer mode host).
/// </summary>
public sealed unsafe class CublasApi
{
    public readonly delegate* unmanaged<nint*, CublasStatus> cublasCreate_v2;
    public readonly delegate* unmanaged<nint, CublasStatus> cublasDestroy_v2;
    public readonly delegate* unmanaged<nint, nint, CublasStatus> cublasSetStream_v2;
    public readonly delegate* unmanaged<nint, int*, CublasStatus> cublasGetVersion_v2;
    public readonly delegate* unmanaged<nint, CublasMath, CublasStatus> cublasSetMathMode;

    // (handle, transa, transb, m, n, k, alpha*, A, lda, B, ldb, beta*, C, ldc)
    public readonly delegate* unmanaged<nint, CublasOperation, CublasOperation, int, int, int, float*, CUdeviceptr, int, CUdeviceptr, int, float*,
        CUdeviceptr, int, CublasStatus> cublasSgemm_v2;

    // (handle, transa, transb, m, n, k, alpha*, A, lda, strideA, B, ldb, strideB, beta*, C, ldc, strideC, batchCount)
    public readonly delegate* unmanaged<nint, CublasOperation, CublasOperation, int, int, int, float*, CUdeviceptr, int, long, CUdeviceptr, int, long,
        float*, CUdeviceptr, int, long, int, CublasStatus> cublasSgemmStridedBatched;

    // (handle, transa, transb, m, n, k, alpha*, A, lda, B, ldb, beta*, C, ldc): cublasSgemm_v2 in float64
    public readonly delegate* unmanaged<nint, CublasOperation, CublasOperation, int, int, int, double*, CUdeviceptr, int, CUdeviceptr, int, double*,
        CUdeviceptr, int, CublasStatus> cublasDgemm_v2;

    // (handle, transa, transb, m, n, k, alpha*, A, lda, strideA, B, ldb, strideB, beta*, C, ldc, strideC, batchCount): in float64
    public readonly delegate* unmanaged<nint, CublasOperation, CublasOperation, int, int, int, double*, CUdeviceptr, int, long, CUdeviceptr, int, long,
        double*, CUdeviceptr, int, long, int, CublasStatus> cublasDgemmStridedBatched;

    // (handle, transa, transb, m, n, k, alpha*, A, Atype, lda, B, Btype, ldb, beta*, C, Ctype, ldc, computeType, algo)
    public readonly delegate* unmanaged<nint, CublasOperation, CublasOperation, int, int, int, void*, CUdeviceptr, CudaDataType, int, CUdeviceptr,
        CudaDataType, int, void*, CUdeviceptr, CudaDataType, int, CublasComputeType, CublasGemmAlgo, CublasStatus> cublasGemmEx;

    // cuBLAS 11.4.2+; null when the library lacks them.
    public readonly delegate* unmanaged<CublasStatus, byte*> cublasGetStatusName;
    public readonly delegate* unmanaged<CublasStatus, byte*> cublasGetStatusString;

    internal CublasApi(CudaApi driver, nint library, string path)
    {
        Driver = driver;
        Path = path;
        cublasCreate_v2 = (delegate* unmanaged<nint*, CublasStatus>)Export(library, nameof(cublasCreate_v2));
        cublasDestroy_v2 = (delegate* unmanaged<nint, CublasStatus>)Export(library, nameof(cublasDestroy_v2));
        cublasSetStream_v2 = (delegate* unmanaged<nint, nint, CublasStatus>)Export(library, nameof(cublasSetStream_v2));
        cublasGetVersion_v2 = (delegate* unmanaged<nint, int*, CublasStatus>)Export(library, nameof(cublasGetVersion_v2));
        cublasSetMathMode = (delegate* unmanaged<nint, CublasMath, CublasStatus>)Export(library, nameof(cublasSetMathMode));
        cublasSgemm_v2 = (delegate* unmanaged<nint, CublasOperation, CublasOperation, int, int, int, float*, CUdeviceptr, int, CUdeviceptr, int, float*,
            CUdeviceptr, int, CublasStatus>)Export(library, nameof(cublasSgemm_v2));
        cublasSgemmStridedBatched = (delegate* unmanaged<nint, CublasOperation, CublasOperation, int, int, int, float*, CUdeviceptr, int, long, CUdeviceptr,
            int, long, float*, CUdeviceptr, int, long, int, CublasStatus>)Export(library, nameof(cublasSgemmStridedBatched));
        cublasDgemm_v2 = (delegate* unmanaged<nint, CublasOperation, CublasOperation, int, int, int, double*, CUdeviceptr, int, CUdeviceptr, int, double*,
            CUdeviceptr, int, CublasStatus>)Export(library, nameof(cublasDgemm_v2));
        cublasDgemmStridedBatched = (delegate* unmanaged<nint, CublasOperation, CublasOperation, int, int, int, double*, CUdeviceptr, int, long, CUdeviceptr,
            int, long, double*, CUdeviceptr, int, long, int, CublasStatus>)Export(library, nameof(cublasDgemmStridedBatched));
        cublasGemmEx = (delegate* unmanaged<nint, CublasOperation, CublasOperation, int, int, int, void*, CUdeviceptr, CudaDataType, int, CUdeviceptr,
            CudaDataType, int, void*, CUdeviceptr, CudaDataType, int, CublasComputeType, CublasGemmAlgo, CublasStatus>)Export(library, nameof(cublasGemmEx));
        cublasGetStatusName = NativeLibrary.TryGetExport(library, nameof(cublasGetStatusName), out nint name) ? (delegate* unmanaged<CublasStatus, byte*>)name : null;
        cublasGetStatusString = NativeLibrary.TryGetExport(library, nameof(cublasGetStatusString), out nint text) ? (delegate* unmanaged<CublasStatus, byte*>)text : null;
    }

    /// <summary>The driver table this library goes with (for the emulator's error detail).</summary>
    public CudaApi Driver { get; }

    /// <summary>Where the entry points came from (libcublas.so.*, or libcudaemu.so).</summary>
    public string Path { get; }

    private static nint Export(nint library, string name) =>
        NativeLibrary.TryGetExport(library, name, out nint p)
            ? p
            : throw new EntryPointNotFoundException($"cuBLAS entry point {name} is missing from the loaded library");

    /// <summary>Throws <see cref="CublasException"/> unless <paramref name="status"/> is success; the message names the call.</summary>
    public void Check(CublasStatus status, [CallerArgumentExpression(nameof(status))] string call = "")
    {
        if (status == CublasStatus.Success) return;
        string name = cublasGetStatusName != null ? Marshal.PtrToStringUTF8((nint)cublasGetStatusName(status))! : $"cublasStatus_t {(int)status}";
        string text = cublasGetStatusString != null ? Marshal.PtrToStringUTF8((nint)cublasGetStatusString(status))! : status.ToString();
        string message = $"{call} failed: {name} ({(int)status}): {text}";
        string? detail = Driver.EmulatorDetail();
        if (!string.IsNullOrEmpty(detail)) message += Environment.NewLine + "emulated device: " + detail;
        throw new CublasException(status, call, message);
    }
}
