using Sdp.Engine.Memory;
using Sdp.Kernels.Cuda;

namespace Sdp.Engine.Backends.Cuda;

/// <summary>One block from a <see cref="CudaBackend"/>'s caching allocator, returned to it when the last tensor lets go.</summary>
public sealed class CudaStorage : Storage
{
    private readonly CudaAllocator _allocator;

    private CudaStorage(CudaBackend backend, long byteLength, MemoryCategory category, MemoryAccount account, CUdeviceptr pointer)
        : base(backend, byteLength, category, account)
    {
        _allocator = backend.Allocator;
        Pointer = pointer;
    }

    /// <summary>The block's device address.</summary>
    public CUdeviceptr Pointer { get; }

    /// <summary>Allocates first, so a failed allocation charges nothing to <paramref name="account"/>.</summary>
    internal static CudaStorage Create(CudaBackend backend, long byteLength, MemoryCategory category, MemoryAccount account)
    {
        CUdeviceptr p = backend.Allocator.Allocate(byteLength, () => $"memory of worker '{account.Name}':\n{account.Snapshot()}");
        return new CudaStorage(backend, byteLength, category, account, p);
    }

    /// <summary>The allocator's lists are locked, so a block may go back from any thread; only emptying the cache needs the context.</summary>
    protected override bool FreeableOnAnyThread => true;

    protected override void Free() => _allocator.Release(Pointer, ByteLength);
}
