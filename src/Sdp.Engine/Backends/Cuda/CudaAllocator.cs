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
    private const long SmallLimit = 1 << 20;
    private const long SmallQuantum = 512;

    private readonly CudaContext _context;
    private readonly Dictionary<long, Stack<CUdeviceptr>> _free = [];
    private readonly Lock _gate = new();
    private long _reserved, _inUse, _requested, _cached, _peakReserved, _deviceAllocations;

    private readonly bool _exactSizes;

    public CudaAllocator(CudaContext context)
    {
        _context = context;
        _exactSizes = context.Api.Implementation == CudaImplementation.Emulated;
    }

    /// <summary>Bytes obtained from cuMemAlloc and not yet returned: blocks in use plus cached blocks.</summary>
    public long ReservedBytes { get { lock (_gate) return _reserved; } }

    /// <summary>The size-class bytes of the blocks tensors hold now.</summary>
    public long InUseBytes { get { lock (_gate) return _inUse; } }

    /// <summary>The bytes tensors asked for, of the blocks in use (what the memory accounts are charged).</summary>
    public long RequestedBytes { get { lock (_gate) return _requested; } }

    /// <summary>Bytes in the free lists, ready for reuse.</summary>
    public long CachedBytes { get { lock (_gate) return _cached; } }

    public long PeakReservedBytes { get { lock (_gate) return _peakReserved; } }

    /// <summary>How many times a request reached cuMemAlloc (a cache miss).</summary>
    public long DeviceAllocations { get { lock (_gate) return _deviceAllocations; } }

    /// <summary>The block size this allocator serves a request of <paramref name="bytes"/> from.</summary>
    public long BlockBytes(long bytes) => _exactSizes ? Math.Max(bytes, 1) : SizeClass(bytes);

    /// <summary>The size class a request of <paramref name="bytes"/> is served from on a real device.</summary>
    public static long SizeClass(long bytes)
    {
        bytes = Math.Max(bytes, 1);
        if (bytes <= SmallLimit) return (bytes + SmallQuantum - 1) / SmallQuantum * SmallQuantum;
        long power = 1L << (int)(63 - long.LeadingZeroCount(bytes - 1)); // largest power of two below bytes
        long step = power / 4;
        return (bytes + step - 1) / step * step;
    }

    /// <summary>A block of at least <paramref name="bytes"/>; <paramref name="describeAccount"/> names the worker's memory in an out-of-memory error.</summary>
    public CUdeviceptr Allocate(long bytes, Func<string> describeAccount)
    {
        long size = BlockBytes(bytes);
        lock (_gate)
        {
            if (_free.TryGetValue(size, out var stack) && stack.Count > 0)
            {
                _cached -= size;
                _inUse += size;
                _requested += bytes;
                CUdeviceptr reused = stack.Pop();
                if (_exactSizes) Poison(reused, size);
                return reused;
            }
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
        lock (_gate)
        {
            _reserved += size;
            _inUse += size;
            _requested += bytes;
            _deviceAllocations++;
            _peakReserved = Math.Max(_peakReserved, _reserved);
        }
        return p;
    }

    private void Poison(CUdeviceptr block, long size)
    {
        _context.Bind();
        _context.Api.Check(_context.Api.cuMemsetD8_v2(block, 0xFF, (nuint)size), "cuMemsetD8_v2(poison reused block)"); // 0xFF.. is NaN in float32 and float64
    }

    /// <summary>Returns a block (of the request size it was allocated for) to its free list. Any thread.</summary>
    public void Release(CUdeviceptr block, long bytes)
    {
        long size = BlockBytes(bytes);
        lock (_gate)
        {
            if (!_free.TryGetValue(size, out var stack)) _free[size] = stack = new Stack<CUdeviceptr>();
            stack.Push(block);
            _inUse -= size;
            _requested -= bytes;
            _cached += size;
        }
    }

    /// <summary>Frees every cached block (cuMemFree waits for the device first) and returns how many bytes went back.</summary>
    public long EmptyCache()
    {
        List<CUdeviceptr> blocks = [];
        long bytes;
        lock (_gate)
        {
            foreach (var stack in _free.Values) blocks.AddRange(stack);
            _free.Clear();
            bytes = _cached;
            _reserved -= _cached;
            _cached = 0;
        }
        if (blocks.Count == 0) return 0;
        _context.Bind();
        foreach (var b in blocks) _context.Api.Check(_context.Api.cuMemFree_v2(b), "cuMemFree_v2");
        return bytes;
    }
}

/// <summary>Device memory ran out; the message carries the worker's memory report by category.</summary>
public sealed class CudaOutOfMemoryException(string message) : OutOfMemoryException(message);
