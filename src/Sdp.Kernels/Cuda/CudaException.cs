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
