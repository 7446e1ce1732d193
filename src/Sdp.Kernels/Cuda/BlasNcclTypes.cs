using System.Runtime.CompilerServices;

namespace Sdp.Kernels.Cuda;

/// <summary>cublasStatus_t (cublas_api.h).</summary>
public enum CublasStatus
{
    Success = 0,
    NotInitialized = 1,
    AllocFailed = 3,
    InvalidValue = 7,
    ArchMismatch = 8,
    MappingError = 11,
    ExecutionFailed = 13,
    InternalError = 14,
    NotSupported = 15,
    LicenseError = 16,
}

/// <summary>cublasOperation_t: how cuBLAS reads a column-major operand.</summary>
public enum CublasOperation
{
    N = 0,
    T = 1,
    C = 2,
}

/// <summary>cublasMath_t (<see cref="Tf32TensorOp"/> lets cublasSgemm round inputs to TF32).</summary>
public enum CublasMath
{
    Default = 0,
    TensorOp = 1,
    Pedantic = 2,
    Tf32TensorOp = 3,
    DisallowReducedPrecisionReduction = 16,
}

/// <summary>cudaDataType (library_types.h), the values Sdp names.</summary>
public enum CudaDataType
{
    R32F = 0,
    R64F = 1,
    R16F = 2,
    R16BF = 14,
}

/// <summary>cublasComputeType_t (cuBLAS 11+); GemmEx takes this, not a cudaDataType.</summary>
public enum CublasComputeType
{
    Compute32F = 68,
    Compute32FPedantic = 69,
    Compute32FFast16F = 74,
    Compute32FFast16BF = 75,
    Compute32FFastTf32 = 77,
}

/// <summary>cublasGemmAlgo_t: Sdp uses only the default.</summary>
public enum CublasGemmAlgo
{
    Default = -1,
    DefaultTensorOp = 99,
}

/// <summary>ncclResult_t (nccl.h).</summary>
public enum NcclResult
{
    Success = 0,
    UnhandledCudaError = 1,
    SystemError = 2,
    InternalError = 3,
    InvalidArgument = 4,
    InvalidUsage = 5,
    RemoteError = 6,
    InProgress = 7,
}

/// <summary>ncclDataType_t (nccl.h).</summary>
public enum NcclDataType
{
    Int8 = 0,
    Uint8 = 1,
    Int32 = 2,
    Uint32 = 3,
    Int64 = 4,
    Uint64 = 5,
    Float16 = 6,
    Float32 = 7,
    Float64 = 8,
    Bfloat16 = 9,
}

/// <summary>ncclRedOp_t (nccl.h); <see cref="Avg"/> needs NCCL 2.10 or later.</summary>
public enum NcclRedOp
{
    Sum = 0,
    Prod = 1,
    Max = 2,
    Min = 3,
    Avg = 4,
}

/// <summary>ncclUniqueId: 128 opaque bytes made once (ncclGetUniqueId) and passed by value to every rank's ncclCommInitRank.</summary>
[InlineArray(128)]
public struct NcclUniqueId
{
    private byte _e0;
}

public static class NcclDataTypes
{
    /// <summary>Bytes per element of <paramref name="type"/>.</summary>
    public static int Size(this NcclDataType type) => type switch
    {
        NcclDataType.Int8 or NcclDataType.Uint8 => 1,
        NcclDataType.Float16 or NcclDataType.Bfloat16 => 2,
        NcclDataType.Int32 or NcclDataType.Uint32 or NcclDataType.Float32 => 4,
        NcclDataType.Int64 or NcclDataType.Uint64 or NcclDataType.Float64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "not an ncclDataType_t"),
    };
}
