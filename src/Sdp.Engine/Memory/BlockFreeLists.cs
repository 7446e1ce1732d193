namespace Sdp.Engine.Memory;

/// <summary>
/// The bookkeeping of a caching allocator, whatever its memory: freed blocks wait in a free list per block size until
/// a request of that size takes them again, and the byte counts say what the allocator holds beyond what tensors asked
/// for. The CUDA allocator keeps device blocks here, the CPU backend's <see cref="Backends.Cpu.HostMemoryPool"/> host
/// blocks. Thread-safe: a block may come back on any thread (the finalizer's included).
/// </summary>
public sealed class BlockFreeLists<TBlock> where TBlock : unmanaged
{
    private const long SmallLimit = 1 << 20;
    private const long SmallQuantum = 512;

    private readonly Dictionary<long, Stack<TBlock>> _free = [];
    private readonly Dictionary<long, long> _lastPut = []; // size class -> when a block of it last came back
    private long _puts;
    private readonly Lock _gate = new();
    private long _reserved, _inUse, _requested, _cached, _peakReserved, _peakInUse, _misses;

    /// <summary>Bytes obtained from the device and not yet given back: blocks in use plus cached blocks.</summary>
    public long ReservedBytes { get { lock (_gate) return _reserved; } }

    /// <summary>The block bytes tensors hold now.</summary>
    public long InUseBytes { get { lock (_gate) return _inUse; } }

    /// <summary>The bytes tensors asked for, of the blocks in use (what the memory accounts are charged).</summary>
    public long RequestedBytes { get { lock (_gate) return _requested; } }

    /// <summary>Bytes in the free lists, ready for reuse.</summary>
    public long CachedBytes { get { lock (_gate) return _cached; } }

    public long PeakReservedBytes { get { lock (_gate) return _peakReserved; } }

    /// <summary>The most block bytes in use at once.</summary>
    public long PeakInUseBytes { get { lock (_gate) return _peakInUse; } }

    /// <summary>How many requests found no cached block and went to the device.</summary>
    public long Misses { get { lock (_gate) return _misses; } }

    /// <summary>
    /// The size class a request of <paramref name="bytes"/> is served from: multiples of 512 B up to 1 MiB, then four per
    /// power of two (at most 25% rounding), so that requests of nearby sizes share blocks.
    /// </summary>
    public static long SizeClass(long bytes)
    {
        bytes = Math.Max(bytes, 1);
        if (bytes <= SmallLimit) return (bytes + SmallQuantum - 1) / SmallQuantum * SmallQuantum;
        long power = 1L << (int)(63 - long.LeadingZeroCount(bytes - 1)); // largest power of two below bytes
        long step = power / 4;
        return (bytes + step - 1) / step * step;
    }

    /// <summary>Takes a cached block of <paramref name="size"/> bytes for a request of <paramref name="bytes"/>; false on a
    /// miss, after which the caller gets a block from the device and reports it with <see cref="Added"/>.</summary>
    public bool TryTake(long size, long bytes, out TBlock block)
    {
        lock (_gate)
        {
            if (_free.TryGetValue(size, out var stack) && stack.Count > 0)
            {
                block = stack.Pop();
                _cached -= size;
                InUse(size, bytes);
                return true;
            }
            _misses++;
        }
        block = default;
        return false;
    }

    /// <summary>A block of <paramref name="size"/> bytes just obtained from the device for a request of <paramref name="bytes"/>.</summary>
    public void Added(long size, long bytes)
    {
        lock (_gate)
        {
            _reserved += size;
            _peakReserved = Math.Max(_peakReserved, _reserved);
            InUse(size, bytes);
        }
    }

    private void InUse(long size, long bytes)
    {
        _inUse += size;
        _requested += bytes;
        _peakInUse = Math.Max(_peakInUse, _inUse);
    }

    /// <summary>
    /// Returns a block of a request of <paramref name="bytes"/> to its free list. If the cache would then hold more than
    /// <paramref name="cacheLimit"/> bytes, or more than the peak bytes ever in use at once (so that the device never holds
    /// more than twice its peak), blocks of the size classes least recently given back leave it first (the classes a
    /// training step no longer uses; the block just freed is the likeliest to be asked for again), or the block itself
    /// when it alone passes the limit. What leaves is added to <paramref name="evicted"/>, for the caller to give back to
    /// the device; its bytes have left the counts.
    /// </summary>
    public void Put(long size, long bytes, TBlock block, long cacheLimit, List<TBlock> evicted)
    {
        lock (_gate) Return(size, bytes, block, Math.Min(cacheLimit, _peakInUse), evicted);
    }

    /// <summary>Returns a block to its free list, with no limit on the cache.</summary>
    public void Put(long size, long bytes, TBlock block)
    {
        lock (_gate) Return(size, bytes, block, long.MaxValue, NeverEvicted);
    }

    private static readonly List<TBlock> NeverEvicted = []; // with no limit nothing is evicted

    /// <summary><see cref="Put(long, long, TBlock, long, List{TBlock})"/>'s work, under the lock.</summary>
    private void Return(long size, long bytes, TBlock block, long cacheLimit, List<TBlock> evicted)
    {
        _inUse -= size;
        _requested -= bytes;
        if (size > cacheLimit)
        {
            _reserved -= size;
            evicted.Add(block);
            return;
        }
        while (_cached + size > cacheLimit) Evict(size, evicted);
        if (!_free.TryGetValue(size, out var stack)) _free[size] = stack = new Stack<TBlock>();
        stack.Push(block);
        _lastPut[size] = ++_puts;
        _cached += size;
    }

    /// <summary>Removes one cached block of the least recently returned non-empty class other than <paramref name="keep"/>
    /// (or of <paramref name="keep"/> when it is the only one left).</summary>
    private void Evict(long keep, List<TBlock> evicted)
    {
        long victim = -1, oldest = long.MaxValue;
        foreach (var (size, stack) in _free)
        {
            if (stack.Count == 0 || size == keep) continue;
            long last = _lastPut.GetValueOrDefault(size);
            if (last < oldest) (oldest, victim) = (last, size);
        }
        if (victim < 0) victim = keep;
        evicted.Add(_free[victim].Pop());
        _cached -= victim;
        _reserved -= victim;
    }

    /// <summary>Empties the free lists: the caller gives the blocks back to the device. Returns their bytes.</summary>
    public long TakeAll(List<TBlock> blocks)
    {
        lock (_gate)
        {
            foreach (var stack in _free.Values) blocks.AddRange(stack);
            _free.Clear();
            long bytes = _cached;
            _reserved -= _cached;
            _cached = 0;
            return bytes;
        }
    }
}
