namespace Sdp.Kernels.Cuda;

/// <summary>CUresult (cuda.h): the driver's status codes that Sdp names; any other value is still reported by number.</summary>
public enum CUresult
{
    Success = 0,
    InvalidValue = 1,
    OutOfMemory = 2,
    NotInitialized = 3,
    Deinitialized = 4,
    NoDevice = 100,
    InvalidDevice = 101,
    InvalidImage = 200,
    InvalidContext = 201,
    InvalidPtx = 218,
    UnsupportedPtxVersion = 222,
    InvalidSource = 300,
    FileNotFound = 301,
    SharedObjectSymbolNotFound = 302,
    InvalidHandle = 400,
    NotFound = 500,
    NotReady = 600,
    IllegalAddress = 700,
    LaunchOutOfResources = 701,
    LaunchTimeout = 702,
    LaunchFailed = 719,
    NotPermitted = 800,
    NotSupported = 801,
    Unknown = 999,
}

/// <summary>nvrtcResult (nvrtc.h).</summary>
public enum NvrtcResult
{
    Success = 0,
    OutOfMemory = 1,
    ProgramCreationFailure = 2,
    InvalidInput = 3,
    InvalidProgram = 4,
    InvalidOption = 5,
    Compilation = 6,
    BuiltinOperationFailure = 7,
    NoNameExpressionsAfterCompilation = 8,
    NoLoweredNamesBeforeCompilation = 9,
    NameExpressionNotValid = 10,
    InternalError = 11,
}

/// <summary>CUdevice_attribute values Sdp reads.</summary>
public enum CUdeviceAttribute
{
    MaxThreadsPerBlock = 1,
    MaxSharedMemoryPerBlock = 8,
    WarpSize = 10,
    MultiprocessorCount = 16,
    ComputeCapabilityMajor = 75,
    ComputeCapabilityMinor = 76,
    MaxSharedMemoryPerBlockOptin = 97,
}

/// <summary>CUfunction_attribute values Sdp sets.</summary>
public enum CUfunctionAttribute
{
    MaxDynamicSharedSizeBytes = 8,
}

/// <summary>A device address (CUdeviceptr, 64-bit). Passed by value as a kernel argument for a <c>T*</c> parameter.</summary>
public readonly record struct CUdeviceptr(ulong Value)
{
    public static CUdeviceptr operator +(CUdeviceptr p, long bytes) => new((ulong)((long)p.Value + bytes));
    public override string ToString() => $"0x{Value:x}";
}

/// <summary>Grid or block extent of a launch.</summary>
public readonly record struct Dim3(uint X, uint Y = 1, uint Z = 1)
{
    public static implicit operator Dim3(uint x) => new(x);
    public static implicit operator Dim3(int x) => new(checked((uint)x));
}

/// <summary>Which implementation of the CUDA entry points a <see cref="CudaApi"/> table was loaded from.</summary>
public enum CudaImplementation
{
    /// <summary>The NVIDIA driver (libcuda.so.1) and NVRTC (libnvrtc.so.*).</summary>
    Real,
    /// <summary>Sdp's emulated device (libcudaemu.so, native/cudaemu): the same C entry points, kernels run on the CPU.</summary>
    Emulated,
}
