using Sdp.Engine.Memory;

namespace Sdp.Engine.Backends;

/// <summary>
/// The device interface. Ops in <c>Sdp.Engine.Ops</c> validate shapes, dtypes and devices, allocate
/// outputs and record autograd nodes; a backend only computes, on contiguous row-major tensors that
/// it may assume valid. Methods come in forward/backward pairs sized like layers (llm.c granularity),
/// so each backward is one kernel on every device.
///
/// Gradient contract: every backward method ACCUMULATES into its gradient outputs (dx += ...), so
/// fan-out in the graph needs no extra pass. Forward outputs are overwritten (=).
///
/// The interface is split by op family across partial files (IBackend.*.cs); CPU implementations
/// live in Cpu/CpuBackend.*.cs and are the reference every other backend is tested against.
/// </summary>
public partial interface IBackend
{
    Device Device { get; }

    /// <summary>What this backend runs on and holds outside the memory accounts (a fresh snapshot on each read).</summary>
    BackendDiagnostics Diagnostics { get; }

    /// <summary>Uninitialised storage of <paramref name="bytes"/>, charged to <paramref name="account"/>.</summary>
    Storage Allocate(long bytes, MemoryCategory category, MemoryAccount account);

    /// <summary>Copies host data into <paramref name="dst"/> (dst.Numel elements of dst.DType).</summary>
    void Upload<T>(ReadOnlySpan<T> src, Tensor dst) where T : unmanaged;

    /// <summary>Copies <paramref name="src"/> to host memory.</summary>
    void Download<T>(Tensor src, Span<T> dst) where T : unmanaged;

    /// <summary>dst = src, element for element (same numel and dtype; shapes may differ).</summary>
    void Copy(Tensor src, Tensor dst);

    /// <summary>
    /// dst (on this device) = src (on another device; same numel and dtype): device to device where the two
    /// can reach each other (host memory from any host backend; CUDA peer access), else staged through host
    /// memory. Not a host read of this device: it is how tensors move between workers' devices.
    /// </summary>
    void CopyPeer(Tensor src, Tensor dst);

    /// <summary>dst[...] = value, converted to dst's dtype.</summary>
    void Fill(Tensor dst, double value);

    /// <summary>dst = (dst.DType) src, element for element.</summary>
    void Cast(Tensor src, Tensor dst);

    /// <summary>Blocks until all queued work on this device is done.</summary>
    void Synchronize();
}
