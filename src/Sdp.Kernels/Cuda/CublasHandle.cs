namespace Sdp.Kernels.Cuda;

/// <summary>
/// A cuBLAS handle on one context (cublasCreate_v2), destroyed by Dispose with the context bound. The GEMMs
/// are cuBLAS's own: column-major, <c>C = alpha·op(A)·op(B) + beta·C</c>, alpha and beta on the host, and
/// with beta = 0 C is never read. For a row-major product swap the operands and m/n (style.md §3.4).
/// </summary>
public sealed unsafe class CublasHandle : CudaResource
{
    private CublasHandle(CudaContext context, nint handle) : base(context) => SetHandle(handle);

    private CublasApi Blas => Api.Cublas;

    public static CublasHandle Create(CudaContext context)
    {
        CublasApi blas = context.Api.Cublas;
        context.Bind();
        nint h;
        blas.Check(blas.cublasCreate_v2(&h));
        return new CublasHandle(context, h);
    }

    /// <summary>cublasGetVersion: major·10000 + minor·100 + patch.</summary>
    public int Version
    {
        get
        {
            int v;
            Blas.Check(Blas.cublasGetVersion_v2(Bound(), &v));
            return v;
        }
    }

    /// <summary>Runs this handle's work on <paramref name="stream"/> (null: the legacy default stream).</summary>
    public void SetStream(CudaStream? stream) => Blas.Check(Blas.cublasSetStream_v2(Bound(), stream?.Handle ?? 0));

    /// <summary><see cref="CublasMath.Tf32TensorOp"/> lets Sgemm and GemmEx(Compute32F) round inputs to TF32; off by default.</summary>
    public void SetMathMode(CublasMath mode) => Blas.Check(Blas.cublasSetMathMode(Bound(), mode));

    /// <summary>cublasSgemm: C (m, n; ldc) = alpha·op(A)·op(B) + beta·C, op(A) (m, k), op(B) (k, n), column-major.</summary>
    public void Sgemm(CublasOperation transa, CublasOperation transb, int m, int n, int k, float alpha, DeviceBuffer a, int lda,
        DeviceBuffer b, int ldb, float beta, DeviceBuffer c, int ldc) =>
        Sgemm(transa, transb, m, n, k, alpha, a.Pointer, lda, b.Pointer, ldb, beta, c.Pointer, ldc);

    /// <summary>cublasSgemm on raw device addresses (an operand may start anywhere inside an allocation, e.g. a tensor's byte offset).</summary>
    public void Sgemm(CublasOperation transa, CublasOperation transb, int m, int n, int k, float alpha, CUdeviceptr a, int lda,
        CUdeviceptr b, int ldb, float beta, CUdeviceptr c, int ldc)
    {
        nint h = Bound();
        Blas.Check(Blas.cublasSgemm_v2(h, transa, transb, m, n, k, &alpha, a, lda, b, ldb, &beta, c, ldc));
    }

    /// <summary>cublasSgemmStridedBatched: <paramref name="batchCount"/> Sgemms, matrix i at element offset i·stride of each buffer.</summary>
    public void SgemmStridedBatched(CublasOperation transa, CublasOperation transb, int m, int n, int k, float alpha,
        DeviceBuffer a, int lda, long strideA, DeviceBuffer b, int ldb, long strideB, float beta, DeviceBuffer c, int ldc, long strideC, int batchCount) =>
        SgemmStridedBatched(transa, transb, m, n, k, alpha, a.Pointer, lda, strideA, b.Pointer, ldb, strideB, beta, c.Pointer, ldc, strideC, batchCount);

    /// <summary>cublasSgemmStridedBatched on raw device addresses; a stride of 0 shares that operand across the batch.</summary>
    public void SgemmStridedBatched(CublasOperation transa, CublasOperation transb, int m, int n, int k, float alpha,
        CUdeviceptr a, int lda, long strideA, CUdeviceptr b, int ldb, long strideB, float beta, CUdeviceptr c, int ldc, long strideC, int batchCount)
    {
        nint h = Bound();
        Blas.Check(Blas.cublasSgemmStridedBatched(h, transa, transb, m, n, k, &alpha, a, lda, strideA, b, ldb, strideB,
            &beta, c, ldc, strideC, batchCount));
    }

    /// <summary>cublasDgemm: <see cref="Sgemm(CublasOperation, CublasOperation, int, int, int, float, DeviceBuffer, int, DeviceBuffer, int, float, DeviceBuffer, int)"/> in float64.</summary>
    public void Dgemm(CublasOperation transa, CublasOperation transb, int m, int n, int k, double alpha, DeviceBuffer a, int lda,
        DeviceBuffer b, int ldb, double beta, DeviceBuffer c, int ldc) =>
        Dgemm(transa, transb, m, n, k, alpha, a.Pointer, lda, b.Pointer, ldb, beta, c.Pointer, ldc);

    /// <summary>cublasDgemm on raw device addresses.</summary>
    public void Dgemm(CublasOperation transa, CublasOperation transb, int m, int n, int k, double alpha, CUdeviceptr a, int lda,
        CUdeviceptr b, int ldb, double beta, CUdeviceptr c, int ldc)
    {
        nint h = Bound();
        Blas.Check(Blas.cublasDgemm_v2(h, transa, transb, m, n, k, &alpha, a, lda, b, ldb, &beta, c, ldc));
    }

    /// <summary>cublasDgemmStridedBatched: <paramref name="batchCount"/> Dgemms, matrix i at element offset i·stride of each buffer.</summary>
    public void DgemmStridedBatched(CublasOperation transa, CublasOperation transb, int m, int n, int k, double alpha,
        DeviceBuffer a, int lda, long strideA, DeviceBuffer b, int ldb, long strideB, double beta, DeviceBuffer c, int ldc, long strideC, int batchCount) =>
        DgemmStridedBatched(transa, transb, m, n, k, alpha, a.Pointer, lda, strideA, b.Pointer, ldb, strideB, beta, c.Pointer, ldc, strideC, batchCount);

    /// <summary>cublasDgemmStridedBatched on raw device addresses; a stride of 0 shares that operand across the batch.</summary>
    public void DgemmStridedBatched(CublasOperation transa, CublasOperation transb, int m, int n, int k, double alpha,
        CUdeviceptr a, int lda, long strideA, CUdeviceptr b, int ldb, long strideB, double beta, CUdeviceptr c, int ldc, long strideC, int batchCount)
    {
        nint h = Bound();
        Blas.Check(Blas.cublasDgemmStridedBatched(h, transa, transb, m, n, k, &alpha, a, lda, strideA, b, ldb, strideB,
            &beta, c, ldc, strideC, batchCount));
    }

    /// <summary>cublasGemmEx on float32 operands (CUDA_R_32F) with a float32 compute type: <see cref="CublasComputeType.Compute32F"/>,
    /// or <see cref="CublasComputeType.Compute32FFastTf32"/> (inputs rounded to TF32, about 1e-3 relative).</summary>
    public void GemmEx(CublasOperation transa, CublasOperation transb, int m, int n, int k, float alpha, DeviceBuffer a, int lda,
        DeviceBuffer b, int ldb, float beta, DeviceBuffer c, int ldc, CublasComputeType compute = CublasComputeType.Compute32F)
    {
        nint h = Bound();
        Blas.Check(Blas.cublasGemmEx(h, transa, transb, m, n, k, &alpha, a.Pointer, CudaDataType.R32F, lda, b.Pointer, CudaDataType.R32F, ldb,
            &beta, c.Pointer, CudaDataType.R32F, ldc, compute, CublasGemmAlgo.Default));
    }

    protected override bool Release(nint value) => Blas.cublasDestroy_v2(value) == CublasStatus.Success;
}
