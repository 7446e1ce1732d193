using Sdp.Engine.Backends;

namespace Sdp.Engine.Distributed;

/// <summary>
/// Communicators for W simulated workers living in one process, one per thread. Every collective is a
/// rendezvous: the ranks of a group meet in a shared slot keyed by (sorted group, per-group call number);
/// the last rank to arrive checks that all buffers agree, computes the result (sum in ascending rank
/// order, in the buffers' dtype) and releases the others. A rank that waits longer than the timeout
/// throws, naming the collective and the ranks that never came, instead of hanging.
/// </summary>
public sealed class InProcessCommunicator : ICommunicator
{
    private readonly Hub _hub;
    private readonly Dictionary<string, long> _calls = new();

    private InProcessCommunicator(Hub hub, int rank)
    {
        _hub = hub;
        Rank = rank;
    }

    public int Rank { get; }

    public int WorldSize => _hub.WorldSize;

    public CommStats Stats { get; } = new();

    /// <summary>W communicators sharing one hub; give communicator r to the thread of worker r.</summary>
    public static InProcessCommunicator[] Create(int worldSize, TimeSpan? timeout = null)
    {
        if (worldSize < 1) throw new ArgumentOutOfRangeException(nameof(worldSize), $"InProcessCommunicator: world size must be at least 1, got {worldSize}");
        var t = timeout ?? TimeSpan.FromSeconds(30);
        if (t <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(timeout), $"InProcessCommunicator: timeout must be positive, got {t}");
        var hub = new Hub(worldSize, t);
        var comms = new InProcessCommunicator[worldSize];
        for (int r = 0; r < worldSize; r++) comms[r] = new InProcessCommunicator(hub, r);
        return comms;
    }

    public void AllReduceSum(Tensor buffer, IReadOnlyList<int> group)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        var ranks = Normalize("AllReduceSum", group);
        Run("AllReduceSum", ranks, buffer, root: -1);
        Stats.AddAllReduce(buffer.ByteLength, ranks.Length);
    }

    public void Broadcast(Tensor buffer, int root, IReadOnlyList<int>? group = null)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        var ranks = Normalize("Broadcast", group);
        if (Array.IndexOf(ranks, root) < 0)
            throw new ArgumentException($"Broadcast: root {root} is not in group {Format(ranks)}");
        Run("Broadcast", ranks, buffer, root);
        Stats.AddBroadcast(buffer.ByteLength, root == Rank);
    }

    public void Abort(string reason) => _hub.Abort($"rank {Rank} aborted the group: {reason}");

    public void Barrier()
    {
        Run("Barrier", Normalize("Barrier", null), buffer: null, root: -1);
        Stats.AddBarrier();
    }

    private int[] Normalize(string op, IReadOnlyList<int>? group)
    {
        int w = WorldSize;
        if (group is null) return Enumerable.Range(0, w).ToArray();
        if (group.Count == 0) throw new ArgumentException($"{op}: the group is empty");
        var ranks = group.ToArray();
        Array.Sort(ranks);
        for (int i = 0; i < ranks.Length; i++)
        {
            if (ranks[i] < 0 || ranks[i] >= w)
                throw new ArgumentOutOfRangeException(nameof(group), $"{op}: group {Format(group)} names rank {ranks[i]}, outside [0, {w})");
            if (i > 0 && ranks[i] == ranks[i - 1])
                throw new ArgumentException($"{op}: group {Format(group)} names rank {ranks[i]} twice");
        }
        if (Array.BinarySearch(ranks, Rank) < 0)
            throw new ArgumentException($"{op}: rank {Rank} called it with group {Format(group)}, which does not contain rank {Rank}");
        return ranks;
    }

    private void Run(string op, int[] ranks, Tensor? buffer, int root)
    {
        string groupKey = string.Join(",", ranks);
        long call = _calls.TryGetValue(groupKey, out var c) ? c : 0;
        _calls[groupKey] = call + 1;
        _hub.Rendezvous(op, ranks, groupKey, call, Rank, buffer, root);
    }

    internal static string Format(IEnumerable<int> ranks) => "[" + string.Join(", ", ranks) + "]";

    private sealed class Slot(string op, int[] ranks, int root)
    {
        public readonly string Op = op;
        public readonly int[] Ranks = ranks;
        public readonly int Root = root;
        public readonly Tensor?[] Buffers = new Tensor?[ranks.Length];
        public readonly bool[] Present = new bool[ranks.Length];
        public int Arrived;
        public int Left;
        public bool Done;
        public bool TimedOut;
        public string? Error;
    }

    private sealed class Hub(int worldSize, TimeSpan timeout)
    {
        private readonly object _gate = new();
        private readonly Dictionary<string, Slot> _slots = new();

        public int WorldSize { get; } = worldSize;

        private string? _aborted;

        public void Abort(string reason)
        {
            lock (_gate)
            {
                _aborted ??= reason;
                Monitor.PulseAll(_gate);
            }
        }

        public void Rendezvous(string op, int[] ranks, string groupKey, long call, int rank, Tensor? buffer, int root)
        {
            string key = groupKey + "#" + call;
            string what = $"{op} over ranks {Format(ranks)} (call {call + 1} on this group)";
            Slot slot;
            bool last;
            lock (_gate)
            {
                if (_aborted is not null) throw new OperationCanceledException($"{what}: {_aborted}");
                if (!_slots.TryGetValue(key, out slot!))
                {
                    slot = new Slot(op, ranks, root);
                    _slots[key] = slot;
                }
                int index = Array.IndexOf(ranks, rank);
                if (slot.Op != op || slot.Root != root)
                    slot.Error ??= $"{what}: rank {rank} called {op}{(root >= 0 ? $" with root {root}" : "")} but another rank of the group called {slot.Op}{(slot.Root >= 0 ? $" with root {slot.Root}" : "")} at the same point";
                slot.Buffers[index] = buffer;
                slot.Present[index] = true;
                slot.Arrived++;
                last = slot.Arrived == ranks.Length;
            }

            if (last)
            {
                string? error = slot.Error;
                if (error is null)
                {
                    try { error = Execute(slot, what); }
                    catch (Exception e) { error = $"{what} failed: {e.Message}"; }
                }
                lock (_gate)
                {
                    slot.Error = error;
                    slot.Done = true;
                    Monitor.PulseAll(_gate);
                }
            }

            lock (_gate)
            {
                var deadline = DateTime.UtcNow + timeout;
                while (!slot.Done)
                {
                    if (_aborted is not null) throw new OperationCanceledException($"{what}: {_aborted}");
                    var remaining = deadline - DateTime.UtcNow;
                    if (remaining <= TimeSpan.Zero || !Monitor.Wait(_gate, remaining))
                    {
                        if (slot.Done) break;
                        var missing = ranks.Where((_, i) => !slot.Present[i]).ToArray();
                        slot.Error ??= $"{what} timed out after {timeout.TotalSeconds:G4} s on rank {rank}: ranks {Format(missing)} never joined";
                        slot.Done = true;
                        slot.TimedOut = true;
                        _slots.Remove(key);
                        Monitor.PulseAll(_gate);
                        throw new TimeoutException(slot.Error);
                    }
                }
                slot.Left++;
                if (slot.Left == ranks.Length) _slots.Remove(key);
                if (slot.TimedOut) throw new TimeoutException(slot.Error);
                if (slot.Error is not null)
                    throw new InvalidOperationException(slot.Error);
            }
        }

        /// <summary>Runs on the last rank to arrive, outside the lock; the others are waiting. Returns an error or null.</summary>
        private static string? Execute(Slot slot, string what)
        {
            if (slot.Op == "Barrier") return null;
            var buffers = slot.Buffers;
            for (int i = 0; i < buffers.Length; i++)
            {
                var b = buffers[i]!;
                if (b.IsDisposed) return $"{what}: rank {slot.Ranks[i]} passed a disposed buffer";
                if (b.Shape != buffers[0]!.Shape || b.DType != buffers[0]!.DType)
                    return $"{what}: rank {slot.Ranks[0]} passed {buffers[0]!.DType.Name()} {buffers[0]!.Shape} but rank {slot.Ranks[i]} passed {b.DType.Name()} {b.Shape}; all ranks of a collective must pass equally shaped buffers of one dtype";
            }
            if (slot.Op == "Broadcast")
            {
                var src = buffers[Array.IndexOf(slot.Ranks, slot.Root)]!;
                foreach (var b in buffers)
                    if (!ReferenceEquals(b, src)) b!.Backend.Copy(src, b);
                return null;
            }
            if (!buffers[0]!.DType.IsFloatingPoint())
                return $"{what}: buffers are {buffers[0]!.DType.Name()}; AllReduceSum needs floating-point buffers";
            // Fixed order: acc = ((b_r0 + b_r1) + b_r2) + ..., ranks ascending, accumulated in place into
            // the lowest rank's buffer, then copied to every other rank.
            var acc = buffers[0]!;
            for (int i = 1; i < buffers.Length; i++) acc.Backend.Binary(BinaryOp.Add, acc, buffers[i]!, acc);
            for (int i = 1; i < buffers.Length; i++) buffers[i]!.Backend.Copy(acc, buffers[i]!);
            return null;
        }
    }
}
