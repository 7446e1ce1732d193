using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Sdp.Kernels.Cuda;

/// <summary>
/// The raw NCCL entry points Sdp uses (nccl.h): one <c>delegate* unmanaged</c> per C function, with the C
/// signature. Loaded from libnccl.so.2 beside the real driver, or from libcudaemu.so, whose communicators
/// span the emulated devices of this process (<see cref="Cuda.LoadNccl"/>). Communicators are opaque nint;
/// <c>count</c> is elements, not bytes; the unique id goes to ncclCommInitRank by value.
/// </summary>
public sealed unsafe class NcclApi
{
    public readonly delegate* unmanaged<int*, NcclResult> ncclGetVersion;
    public readonly delegate* unmanaged<NcclUniqueId*, NcclResult> ncclGetUniqueId;
    public readonly delegate* unmanaged<nint*, int, NcclUniqueId, int, NcclResult> ncclCommInitRank;
    public readonly delegate* unmanaged<nint*, int, int*, NcclResult> ncclCommInitAll;
    // (comm, color, key, newcomm*, config*)
    public readonly delegate* unmanaged<nint, int, int, nint*, void*, NcclResult> ncclCommSplit;
    // (sendbuff, recvbuff, count, datatype, op, comm, stream)
    public readonly delegate* unmanaged<CUdeviceptr, CUdeviceptr, nuint, NcclDataType, NcclRedOp, nint, nint, NcclResult> ncclAllReduce;
    // (sendbuff, recvbuff, count, datatype, root, comm, stream)
    public readonly delegate* unmanaged<CUdeviceptr, CUdeviceptr, nuint, NcclDataType, int, nint, nint, NcclResult> ncclBroadcast;
    public readonly delegate* unmanaged<NcclResult> ncclGroupStart;
    public readonly delegate* unmanaged<NcclResult> ncclGroupEnd;
    public readonly delegate* unmanaged<nint, NcclResult> ncclCommAbort;
    public readonly delegate* unmanaged<nint, NcclResult> ncclCommDestroy;
    public readonly delegate* unmanaged<nint, int*, NcclResult> ncclCommCount;
    public readonly delegate* unmanaged<nint, int*, NcclResult> ncclCommUserRank;
    public readonly delegate* unmanaged<nint, NcclResult*, NcclResult> ncclCommGetAsyncError;
    public readonly delegate* unmanaged<NcclResult, byte*> ncclGetErrorString;

    // NCCL 2.13+ (null when missing): the detail behind the last failure.
    public readonly delegate* unmanaged<nint, byte*> ncclGetLastError;

    // Emulator extension (null on real NCCL): the collective timeout in milliseconds (C long).
    public readonly delegate* unmanaged<nint, void> cudaemuNcclSetTimeout;

    internal NcclApi(CudaApi driver, nint library, string path)
    {
        Driver = driver;
        Path = path;
        ncclGetVersion = (delegate* unmanaged<int*, NcclResult>)Export(library, nameof(ncclGetVersion));
        ncclGetUniqueId = (delegate* unmanaged<NcclUniqueId*, NcclResult>)Export(library, nameof(ncclGetUniqueId));
        ncclCommInitRank = (delegate* unmanaged<nint*, int, NcclUniqueId, int, NcclResult>)Export(library, nameof(ncclCommInitRank));
        ncclCommInitAll = (delegate* unmanaged<nint*, int, int*, NcclResult>)Export(library, nameof(ncclCommInitAll));
        ncclCommSplit = (delegate* unmanaged<nint, int, int, nint*, void*, NcclResult>)Export(library, nameof(ncclCommSplit));
        ncclAllReduce = (delegate* unmanaged<CUdeviceptr, CUdeviceptr, nuint, NcclDataType, NcclRedOp, nint, nint, NcclResult>)Export(library, nameof(ncclAllReduce));
        ncclBroadcast = (delegate* unmanaged<CUdeviceptr, CUdeviceptr, nuint, NcclDataType, int, nint, nint, NcclResult>)Export(library, nameof(ncclBroadcast));
        ncclGroupStart = (delegate* unmanaged<NcclResult>)Export(library, nameof(ncclGroupStart));
        ncclGroupEnd = (delegate* unmanaged<NcclResult>)Export(library, nameof(ncclGroupEnd));
        ncclCommAbort = (delegate* unmanaged<nint, NcclResult>)Export(library, nameof(ncclCommAbort));
        ncclCommDestroy = (delegate* unmanaged<nint, NcclResult>)Export(library, nameof(ncclCommDestroy));
        ncclCommCount = (delegate* unmanaged<nint, int*, NcclResult>)Export(library, nameof(ncclCommCount));
        ncclCommUserRank = (delegate* unmanaged<nint, int*, NcclResult>)Export(library, nameof(ncclCommUserRank));
        ncclCommGetAsyncError = (delegate* unmanaged<nint, NcclResult*, NcclResult>)Export(library, nameof(ncclCommGetAsyncError));
        ncclGetErrorString = (delegate* unmanaged<NcclResult, byte*>)Export(library, nameof(ncclGetErrorString));
        ncclGetLastError = NativeLibrary.TryGetExport(library, nameof(ncclGetLastError), out nint last) ? (delegate* unmanaged<nint, byte*>)last : null;
        cudaemuNcclSetTimeout = NativeLibrary.TryGetExport(library, nameof(cudaemuNcclSetTimeout), out nint t) ? (delegate* unmanaged<nint, void>)t : null;
    }

    /// <summary>The driver table this library goes with.</summary>
    public CudaApi Driver { get; }

    /// <summary>Where the entry points came from (libnccl.so.2, or libcudaemu.so).</summary>
    public string Path { get; }

    private static nint Export(nint library, string name) =>
        NativeLibrary.TryGetExport(library, name, out nint p)
            ? p
            : throw new EntryPointNotFoundException($"NCCL entry point {name} is missing from the loaded library");

    /// <summary>Bounds how long a collective waits for the other ranks: the emulator's extension (true), absent from real NCCL (false).</summary>
    public bool TrySetEmulatorTimeout(TimeSpan timeout)
    {
        if (cudaemuNcclSetTimeout == null) return false;
        cudaemuNcclSetTimeout((nint)Math.Max(1, (long)timeout.TotalMilliseconds));
        return true;
    }

    /// <summary>Throws <see cref="NcclException"/> unless <paramref name="result"/> is success; the message names
    /// the call, ncclGetErrorString and ncclGetLastError's detail.</summary>
    public void Check(NcclResult result, [CallerArgumentExpression(nameof(result))] string call = "")
    {
        if (result == NcclResult.Success) return;
        string message = $"{call} failed: {result} ({(int)result}): {Marshal.PtrToStringUTF8((nint)ncclGetErrorString(result))}";
        string? detail = ncclGetLastError != null ? Marshal.PtrToStringUTF8((nint)ncclGetLastError(0)) : null;
        if (!string.IsNullOrEmpty(detail)) message += Environment.NewLine + "nccl: " + detail;
        throw new NcclException(result, call, message);
    }

    /// <summary>The NCCL version code (major·10000 + minor·100 + patch).</summary>
    public int Version
    {
        get
        {
            int v;
            Check(ncclGetVersion(&v));
            return v;
        }
    }
}
