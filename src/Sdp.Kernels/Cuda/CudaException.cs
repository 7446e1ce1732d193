namespace Sdp.Kernels.Cuda;

/// <summary>A driver call failed. The message names the call, the CUresult and, on the emulated device,
/// what the emulator saw (kernel, block, thread, allocation).</summary>
public sealed class CudaException : Exception
{
    public CudaException(CUresult result, string call, string message) : base(message)
    {
        Result = result;
        Call = call;
    }

    public CUresult Result { get; }
    public string Call { get; }
}

/// <summary>An NVRTC call failed; for a compilation the message holds the compiler's whole log.</summary>
public sealed class NvrtcException : Exception
{
    public NvrtcException(NvrtcResult result, string call, string message, string log = "") : base(message)
    {
        Result = result;
        Call = call;
        Log = log;
    }

    public NvrtcResult Result { get; }
    public string Call { get; }
    public string Log { get; }
}

/// <summary>A cuBLAS call failed; the message names the call, the status and, where known, the detail.</summary>
public sealed class CublasException : Exception
{
    public CublasException(CublasStatus status, string call, string message) : base(message)
    {
        Status = status;
        Call = call;
    }

    public CublasStatus Status { get; }
    public string Call { get; }
}

/// <summary>An NCCL call failed; the message names the call, the result and NCCL's last-error detail.</summary>
public sealed class NcclException : Exception
{
    public NcclException(NcclResult result, string call, string message) : base(message)
    {
        Result = result;
        Call = call;
    }

    public NcclResult Result { get; }
    public string Call { get; }
}
