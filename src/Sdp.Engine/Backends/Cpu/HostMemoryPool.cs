using System.Runtime.InteropServices;
using Sdp.Engine.Memory;

namespace Sdp.Engine.Backends.Cpu;

/// <summary>
/// The CPU backend's caching allocator: 64-byte aligned host blocks, freed ones kept in free lists by size class
/// (<see cref="BlockFreeLists{TBlock}.SizeClass"/>) for the next request of that class. A training step frees and
/// allocates the same tensors every step; handed back to the C allocator, whose heap shrinks and grows with them, the
/// blocks came back as fresh pages, each first touch a page fault (about 3 µs per 4 KiB on the development VM, some
/// 7,000-15,000 per ResNet-18 step, 25-45 ms). Reused, they are already mapped. Small blocks are pooled
/// too (rounded to 512 bytes), so that every CPU tensor comes from one place and <see cref="PoisonReusedBlocks"/> covers
/// them all. The cache holds at most as many bytes as were ever in use at once (so the process never holds more than twice its
/// peak) and at most <see cref="LimitBytes"/>. Tensors' bytes are charged to their memory accounts as before; what the
/// pool holds beyond them is reported per process (<see cref="CpuBackend.Diagnostics"/>).
/// </summary>
public sealed unsafe class HostMemoryPool
{
    private const int Alignment = 64; // Vector512 loads

    private readonly BlockFreeLists<nint> _blocks = new();

    [ThreadStatic] private static List<nint>? _evicted; // reused, so that giving a block back allocates nothing

    /// <summary>The most bytes the free lists may hold (0 turns the cache off). Default: no limit beyond the peak in use.</summary>
    public long LimitBytes { get; set; } = long.MaxValue;

    /// <summary>Fill every block handed out again with 0xFF bytes (NaN in float32 and float64), so a kernel that reads an
    /// element it never wrote cannot pass for a result. Test switch: fresh blocks are not filled.</summary>
    public bool PoisonReusedBlocks { get; set; }

    /// <summary>The blocks' counts: bytes held, in use, cached, requests that went to the C allocator.</summary>
    public BlockFreeLists<nint> Blocks => _blocks;

    /// <summary>A block of at least <paramref name="bytes"/> bytes, 64-byte aligned, its contents undefined.</summary>
    public byte* Rent(long bytes)
    {
        long size = BlockFreeLists<nint>.SizeClass(bytes);
        if (_blocks.TryTake(size, bytes, out nint reused))
        {
            if (PoisonReusedBlocks) NativeMemory.Fill((void*)reused, (nuint)size, 0xFF);
            return (byte*)reused;
        }
        var fresh = (byte*)NativeMemory.AlignedAlloc((nuint)size, Alignment);
        _blocks.Added(size, bytes);
        return fresh;
    }

    /// <summary>Gives back a block <see cref="Rent"/> returned for a request of <paramref name="bytes"/>. Any thread.</summary>
    public void Return(byte* block, long bytes)
    {
        var evicted = _evicted ??= [];
        _blocks.Put(BlockFreeLists<nint>.SizeClass(bytes), bytes, (nint)block, LimitBytes, evicted);
        foreach (var b in evicted) NativeMemory.AlignedFree((void*)b);
        evicted.Clear();
    }

    /// <summary>Frees every cached block; returns their bytes.</summary>
    public long EmptyCache()
    {
        List<nint> blocks = [];
        long bytes = _blocks.TakeAll(blocks);
        foreach (var b in blocks) NativeMemory.AlignedFree((void*)b);
        return bytes;
    }
}
