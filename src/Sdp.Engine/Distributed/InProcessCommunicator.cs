using Sdp.Engine.Backends;

namespace Sdp.Engine.Distributed;

/// <summary>
/// Communicators for W simulated workers living in one process, one per thread. Every collective is a
/// rendezvous: the members of a group meet in a shared slot keyed by (group, per-group call number); the
/// last rank to arrive checks that all buffers agree, computes the result (sum in ascending rank order, in
/// the buffers' dtype) and releases the others. A rank that waits longer than the timeout throws, naming
/// the collective and the ranks that never came, instead of hanging. <see cref="CreateGroup"/> only
/// registers the call with the hub, which checks that all ranks create the same groups in the same order.
/// </summary>
public sealed class InProcessCommunicator : ICommunicator
{
    private readonly Hub _hub;
    private int _groupCalls;

    private InProcessCommunicator(Hub hub, int rank)
    {
        _hub = hub;
        Rank = rank;
        World = new Group(this, Hub.WorldId, [.. Enumerable.Range(0, hub.WorldSize)]);
        Stats.AddGroup();
    }

    public int Rank { get; }

    public int WorldSize => _hub.WorldSize;

    public ICommGroup World { get; }

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

    public ICommGroup? CreateGroup(IReadOnlyList<int> ranks)
    {
        int[] sorted = SortedMembers(ranks, WorldSize);
        int id = _hub.RegisterGroup(Rank, ++_groupCalls, sorted);
        if (Array.BinarySearch(sorted, Rank) < 0) return null;
        Stats.AddGroup();
        return new Group(this, id, sorted);
    }

    public void Abort(string reason) => _hub.Abort($"rank {Rank} aborted the group: {reason}");

    public void Barrier()
    {
        ((Group)World).Run("Barrier", buffer: null, root: -1);
        Stats.AddBarrier();
    }

    internal static string Format(IEnumerable<int> ranks) => "[" + string.Join(", ", ranks) + "]";

    /// <summary>A CreateGroup argument checked (non-empty, every rank in [0, worldSize), none twice) and sorted.</summary>
    internal static int[] SortedMembers(IReadOnlyList<int> ranks, int worldSize)
    {
        ArgumentNullException.ThrowIfNull(ranks);
        var sorted = ranks.ToArray();
        Array.Sort(sorted);
        if (sorted.Length == 0) throw new ArgumentException("CreateGroup: the group is empty");
        for (int i = 0; i < sorted.Length; i++)
        {
            if (sorted[i] < 0 || sorted[i] >= worldSize)
                throw new ArgumentOutOfRangeException(nameof(ranks), $"CreateGroup: group {Format(ranks)} names rank {sorted[i]}, outside [0, {worldSize})");
            if (i > 0 && sorted[i] == sorted[i - 1])
                throw new ArgumentException($"CreateGroup: group {Format(ranks)} names rank {sorted[i]} twice");
        }
        return sorted;
    }

    /// <summary>One rank's handle on a group: its ranks, and its own count of collectives on it.</summary>
    private sealed class Group(InProcessCommunicator comm, int id, int[] ranks) : ICommGroup
    {
        private long _calls;
        private bool _disposed;

        public IReadOnlyList<int> Ranks => ranks;

        public int Position { get; } = Array.BinarySearch(ranks, comm.Rank);

        public void AllReduceSum(Tensor buffer)
        {
            ArgumentNullException.ThrowIfNull(buffer);
            Run("AllReduceSum", buffer, root: -1);
            comm.Stats.AddAllReduce(buffer.ByteLength, ranks.Length);
        }

        public void Broadcast(Tensor buffer, int root)
        {
            ArgumentNullException.ThrowIfNull(buffer);
            if (Array.BinarySearch(ranks, root) < 0)
                throw new ArgumentException($"Broadcast: root {root} is not in group {Format(ranks)}");
            Run("Broadcast", buffer, root);
            comm.Stats.AddBroadcast(buffer.ByteLength, root == comm.Rank);
        }

        public void Run(string op, Tensor? buffer, int root)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            comm._hub.Rendezvous(op, id, ranks, _calls++, comm.Rank, comm._groupCalls, buffer, root);
        }

        public void Dispose()
        {
            if (id != Hub.WorldId) _disposed = true; // the world lives as long as the communicator
        }

        public override string ToString() => $"group {Format(ranks)} on rank {comm.Rank}";
    }

    private sealed class Slot(string op, int[] ranks, int root)
    {
        public readonly string Op = op;
        public readonly int[] Ranks = ranks;
        public readonly int Root = root;
        public readonly Tensor?[] Buffers = new Tensor?[ranks.Length];
        public readonly bool[] Present = new bool[ranks.Length];
        public readonly int[] GroupCalls = new int[ranks.Length];
        public int Arrived;
        public int Left;
        public bool Executing;
        public bool Done;
        public bool TimedOut;
        public string? Error;
    }

    private sealed class Hub(int worldSize, TimeSpan timeout)
    {
        /// <summary>The world's group id; <see cref="RegisterGroup"/> numbers the others from 1.</summary>
        public const int WorldId = 0;

        private readonly object _gate = new();
        private readonly Dictionary<(int Group, long Call), Slot> _slots = new();
        private readonly List<(int[] Ranks, int By)> _groups = new();

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

        /// <summary>Records <paramref name="rank"/>'s <paramref name="call"/>-th CreateGroup (from 1) and returns the group's id.</summary>
        public int RegisterGroup(int rank, int call, int[] ranks)
        {
            lock (_gate)
            {
                if (call > _groups.Count)
                {
                    _groups.Add((ranks, rank));
                    return call;
                }
                var (first, by) = _groups[call - 1];
                if (first.AsSpan().SequenceEqual(ranks)) return call;
                string error = $"CreateGroup call {call}: rank {rank} asked for group {Format(ranks)} but rank {by} asked for {Format(first)}; every rank must create the same groups in the same order";
                _aborted ??= error;
                Monitor.PulseAll(_gate);
                throw new InvalidOperationException(error);
            }
        }

        public void Rendezvous(string op, int group, int[] ranks, long call, int rank, int groupCalls, Tensor? buffer, int root)
        {
            var key = (group, call);
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
                slot.GroupCalls[index] = groupCalls;
                slot.Arrived++;
                last = slot.Arrived == ranks.Length;
                // From here the last rank reads every member's buffer outside the lock, so an abort no longer
                // releases the others early: they wait for the (bounded) execution, keeping their buffers alive.
                slot.Executing = last;
            }

            if (last)
            {
                string? error = slot.Error ?? UnequalGroupCalls(slot, what);
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
                    if (_aborted is not null && !slot.Executing) throw new OperationCanceledException($"{what}: {_aborted}");
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

        /// <summary>
        /// A collective over every rank is a point all ranks reach at the same place in their program, so
        /// they must have made the same number of CreateGroup calls by then; a rank that skipped one (as a
        /// non-member, say) would have hung in ncclCommSplit.
        /// </summary>
        private string? UnequalGroupCalls(Slot slot, string what)
        {
            if (slot.Ranks.Length < WorldSize || slot.GroupCalls.All(c => c == slot.GroupCalls[0])) return null;
            var counts = string.Join(", ", slot.Ranks.Select((r, i) => $"rank {r}: {slot.GroupCalls[i]}"));
            return $"{what}: the ranks made different numbers of CreateGroup calls before it ({counts}); every rank must call CreateGroup for every group, member or not";
        }

        /// <summary>dst = src, whichever devices they live on.</summary>
        private static void CopyBetweenDevices(Tensor src, Tensor dst)
        {
            if (ReferenceEquals(src.Backend, dst.Backend)) dst.Backend.Copy(src, dst);
            else dst.Backend.CopyPeer(src, dst);
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
                    if (!ReferenceEquals(b, src)) CopyBetweenDevices(src, b!);
                return null;
            }
            if (!buffers[0]!.DType.IsFloatingPoint())
                return $"{what}: buffers are {buffers[0]!.DType.Name()}; AllReduceSum needs floating-point buffers";
            // Fixed order: acc = ((b_r0 + b_r1) + b_r2) + ..., ranks ascending, accumulated in place into
            // the lowest rank's buffer on its device, then copied to every other rank. Ranks may live on
            // different devices: each operand is brought to the lowest rank's device first (a transient).
            var acc = buffers[0]!;
            for (int i = 1; i < buffers.Length; i++)
            {
                using var operand = buffers[i]!.ToDeviceOf(acc);
                acc.Backend.Binary(BinaryOp.Add, acc, operand, acc);
            }
            for (int i = 1; i < buffers.Length; i++) CopyBetweenDevices(acc, buffers[i]!);
            return null;
        }
    }
}
