using Sdp.Engine.Memory;

namespace Sdp.Engine.Backends.Cpu;

/// <summary>Native, 64-byte aligned host memory (aligned for Vector512 loads), outside the GC heap, from the CPU backend's
/// caching allocator (<see cref="CpuBackend.HostPool"/>).</summary>
public sealed unsafe class CpuStorage : Storage
{
    /// <summary>
    /// Host memory owned by <paramref name="backend"/>: the CPU backend, or a backend that runs its kernels
    /// through the CPU backend (a wrapper that counts or checks calls), so its tensors report it as their device.
    /// </summary>
    public CpuStorage(IBackend backend, long byteLength, MemoryCategory category, MemoryAccount account)
        : base(backend, byteLength, category, account)
    {
        Pointer = CpuBackend.HostPool.Rent(byteLength);
    }

    public byte* Pointer { get; private set; }

    /// <summary>Host memory: the finalizer may free it.</summary>
    protected override bool FreeableOnAnyThread => true;

    protected override void Free()
    {
        CpuBackend.HostPool.Return(Pointer, ByteLength);
        Pointer = null;
    }
}
