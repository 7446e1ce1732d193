using System.Text;

namespace Sdp.Engine.Memory;

/// <summary>
/// Current and peak bytes per <see cref="MemoryCategory"/> for one scope of work, typically one
/// (simulated) worker. Allocations are charged to the account that is current on the allocating
/// thread (<see cref="Activate"/>), or to <see cref="Default"/>.
/// </summary>
public sealed class MemoryAccount
{
    private static readonly int CategoryCount = Enum.GetValues<MemoryCategory>().Length;

    [ThreadStatic] private static MemoryAccount? _current;
    [ThreadStatic] private static MemoryCategory? _category;

    private readonly object _gate = new();
    private readonly long[] _currentBytes = new long[CategoryCount];
    private readonly long[] _peak = new long[CategoryCount];
    private long _total;
    private long _peakTotal;
    private long _liveAllocations;

    public MemoryAccount(string name) => Name = name;

    /// <summary>The account charged when no other is active on the thread.</summary>
    public static MemoryAccount Default { get; } = new("default");

    /// <summary>The account charged for allocations made on this thread now.</summary>
    public static MemoryAccount Current => _current ?? Default;

    /// <summary>The category new tensors are charged to on this thread (Workspace unless overridden).</summary>
    public static MemoryCategory CurrentCategory => _category ?? MemoryCategory.Workspace;

    public string Name { get; }

    public long CurrentTotal { get { lock (_gate) return _total; } }

    /// <summary>The highest value <see cref="CurrentTotal"/> reached since creation or the last <see cref="ResetPeaks"/>.</summary>
    public long PeakTotal { get { lock (_gate) return _peakTotal; } }

    public long LiveAllocations { get { lock (_gate) return _liveAllocations; } }

    public long CurrentBytes(MemoryCategory category) { lock (_gate) return _currentBytes[(int)category]; }

    public long PeakBytes(MemoryCategory category) { lock (_gate) return _peak[(int)category]; }

    /// <summary>Makes this account current on the calling thread until the returned scope is disposed.</summary>
    public IDisposable Activate()
    {
        var previous = _current;
        _current = this;
        return new Restore(() => _current = previous);
    }

    /// <summary>Charges tensors created on this thread to <paramref name="category"/> until disposed.</summary>
    public static IDisposable Use(MemoryCategory category)
    {
        var previous = _category;
        _category = category;
        return new Restore(() => _category = previous);
    }

    /// <summary>Sets every peak to the current value, to measure a new phase.</summary>
    public void ResetPeaks()
    {
        lock (_gate)
        {
            Array.Copy(_currentBytes, _peak, CategoryCount);
            _peakTotal = _total;
        }
    }

    public MemorySnapshot Snapshot()
    {
        lock (_gate)
        {
            return new MemorySnapshot(Name, (long[])_currentBytes.Clone(), (long[])_peak.Clone(), _total, _peakTotal);
        }
    }

    public override string ToString() => Snapshot().ToString();

    internal void Charge(MemoryCategory category, long bytes)
    {
        lock (_gate)
        {
            _liveAllocations++;
            Add(category, bytes);
        }
    }

    internal void Refund(MemoryCategory category, long bytes)
    {
        lock (_gate)
        {
            _liveAllocations--;
            Add(category, -bytes);
        }
    }

    internal void Move(MemoryCategory from, MemoryCategory to, long bytes)
    {
        lock (_gate)
        {
            _currentBytes[(int)from] -= bytes;
            _currentBytes[(int)to] += bytes;
            if (_currentBytes[(int)to] > _peak[(int)to]) _peak[(int)to] = _currentBytes[(int)to];
        }
    }

    private void Add(MemoryCategory category, long bytes)
    {
        int c = (int)category;
        _currentBytes[c] += bytes;
        _total += bytes;
        if (_currentBytes[c] > _peak[c]) _peak[c] = _currentBytes[c];
        if (_total > _peakTotal) _peakTotal = _total;
    }

    private sealed class Restore(Action restore) : IDisposable
    {
        private Action? _restore = restore;

        public void Dispose()
        {
            _restore?.Invoke();
            _restore = null;
        }
    }
}

/// <summary>A consistent copy of an account's counters.</summary>
public sealed record MemorySnapshot(string Name, long[] Current, long[] Peak, long CurrentTotal, long PeakTotal)
{
    public long CurrentBytes(MemoryCategory c) => Current[(int)c];

    public long PeakBytes(MemoryCategory c) => Peak[(int)c];

    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"memory [{Name}]        current        peak");
        foreach (var c in Enum.GetValues<MemoryCategory>())
        {
            sb.AppendLine($"  {c,-15} {FormatBytes(Current[(int)c]),12} {FormatBytes(Peak[(int)c]),12}");
        }
        sb.Append($"  {"total",-15} {FormatBytes(CurrentTotal),12} {FormatBytes(PeakTotal),12}");
        return sb.ToString();
    }

    public static string FormatBytes(long bytes)
    {
        double b = bytes;
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        int u = 0;
        while (Math.Abs(b) >= 1024 && u < units.Length - 1)
        {
            b /= 1024;
            u++;
        }
        return u == 0 ? $"{bytes} B" : $"{b:0.00} {units[u]}";
    }
}
