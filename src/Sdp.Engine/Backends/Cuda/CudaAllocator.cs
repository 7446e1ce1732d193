using Sdp.Engine.Memory;
using Sdp.Kernels.Cuda;

namespace Sdp.Engine.Backends.Cuda;

/// <summary>
/// A caching device allocator, one per backend (so per worker and per stream: a freed block is reused only by
/// work queued after the work that last used it, on the same stream, which needs no event). Requests are rounded
/// up to a size class and freed blocks wait in a free list of their class, so a training step allocates from
/// cuMemAlloc only in its first iterations. Classes: multiples of 512 B up to 1 MiB, then four per power of two
/// (at most 25% rounding waste). When cuMemAlloc reports out of memory the cache is emptied and the call retried
/// once; a second failure throws <see cref="CudaOutOfMemoryException"/> with the worker's memory report.
/// The bytes tensors asked for are charged to their <see cref="MemoryAccount"/> by <see cref="Storage"/>; what this
/// allocator holds beyond them (rounding and cached blocks) is reported by <see cref="ReservedBytes"/>.
/// On the emulated device every request is its own class (exact sizes): the emulator puts a guard page right
/// after each allocation, so a kernel that writes one element past a tensor faults instead of landing in rounding,
/// and every block handed out holds NaN (the emulator poisons fresh memory, this allocator reused blocks), so a
/// kernel that leaves an output element unwritten cannot pass for a result.
/// </summary>
public sealed unsafe class CudaAllocator
{
    private readonly CudaContext _context;
    private readonly BlockFreeLists<CUdeviceptr> _blocks = new();
    private readonly bool _exactSizes;

    public CudaAllocator(CudaContext context)
    {
        _context = context;
        _exactSizes = context.Api.Implementation == CudaImplementation.Emulated;
    }

    /// <summary>Bytes obtained from cuMemAlloc and not yet returned: blocks in use plus cached blocks.</summary>
    public long ReservedBytes => _blocks.ReservedBytes;

    /// <summary>The size-class bytes of the blocks tensors hold now.</summary>
    public long InUseBytes => _blocks.InUseBytes;

    /// <summary>The bytes tensors asked for, of the blocks in use (what the memory accounts are charged).</summary>
    public long RequestedBytes => _blocks.RequestedBytes;

    /// <summary>Bytes in the free lists, ready for reuse.</summary>
    public long CachedBytes => _blocks.CachedBytes;

    public long PeakReservedBytes => _blocks.PeakReservedBytes;

    /// <summary>How many times a request reached cuMemAlloc (a cache miss).</summary>
    public long DeviceAllocations => _blocks.Misses;

    /// <summary>The block size this allocator serves a request of <paramref name="bytes"/> from.</summary>
    public long BlockBytes(long bytes) => _exactSizes ? Math.Max(bytes, 1) : BlockFreeLists<CUdeviceptr>.SizeClass(bytes);

    /// <summary>A block of at least <paramref name="bytes"/>; <paramref name="describeAccount"/> names the worker's memory in an out-of-memory error.</summary>
    public CUdeviceptr Allocate(long bytes, Func<string> describeAccount)
    {
        long size = BlockBytes(bytes);
        if (_blocks.TryTake(size, bytes, out var reused))
        {
            if (_exactSizes) Poison(reused, size);
            return reused;
        }
        _context.Bind();
        CUdeviceptr p;
        CUresult r = _context.Api.cuMemAlloc_v2(&p, (nuint)size);
        if (r == CUresult.OutOfMemory)
        {
            EmptyCache();
            r = _context.Api.cuMemAlloc_v2(&p, (nuint)size);
            if (r == CUresult.OutOfMemory)
            {
                var (free, total) = _context.MemoryInfo();
                throw new CudaOutOfMemoryException(
                    $"CUDA out of memory on device {_context.Device}: cuMemAlloc_v2({size} B) failed for a {bytes}-byte tensor; " +
                    $"the device has {MemorySnapshot.FormatBytes(free)} free of {MemorySnapshot.FormatBytes(total)}, this allocator holds " +
                    $"{MemorySnapshot.FormatBytes(ReservedBytes)}.\n{describeAccount()}");
            }
        }
        _context.Api.Check(r, $"cuMemAlloc_v2({size})");
        _blocks.Added(size, bytes);
        return p;
    }

    private void Poison(CUdeviceptr block, long size)
    {
        _context.Bind();
        _context.Api.Check(_context.Api.cuMemsetD8_v2(block, 0xFF, (nuint)size), "cuMemsetD8_v2(poison reused block)"); // 0xFF.. is NaN in float32 and float64
    }

    /// <summary>Returns a block (of the request size it was allocated for) to its free list. Any thread.</summary>
    public void Release(CUdeviceptr block, long bytes) => _blocks.Put(BlockBytes(bytes), bytes, block);

    /// <summary>Frees every cached block (cuMemFree waits for the device first) and returns how many bytes went back.</summary>
    public long EmptyCache()
    {
        List<CUdeviceptr> blocks = [];
        long bytes = _blocks.TakeAll(blocks);
        if (blocks.Count == 0) return 0;
        _context.Bind();
        foreach (var b in blocks) _context.Api.Check(_context.Api.cuMemFree_v2(b), "cuMemFree_v2");
        return bytes;
    }
}

/// <summary>Device memory ran out; the message carries the worker's memory report by category.</summary>
public sealed class CudaOutOfMemoryException(string message) : OutOfMemoryException(message);
