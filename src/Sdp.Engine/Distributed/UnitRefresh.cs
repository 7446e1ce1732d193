using Sdp.Engine.Autograd;
using Sdp.Engine.Memory;

namespace Sdp.Engine.Distributed;

/// <summary>
/// Backward masking's refresh of unheld weights (method reference §2.6, option B1): every worker keeps the
/// full tensors for its dense forward pass but updates only the units it holds, so after each update every
/// unit is broadcast from one holder (the lowest rank of its holder set) to all workers. Units held by all
/// W workers need nothing. Units are bucketed by holder set exactly like <see cref="HolderGroupedSync"/>
/// (canonical order, bucket cap), one broadcast per bucket; every worker passes its full-size tensors,
/// with every unit's holders, so all workers agree on the layout.
/// </summary>
public sealed class UnitRefresh
{
    private readonly Tensor[] _tensors;

    public UnitRefresh(IReadOnlyList<SyncParameter> tensors, int worker, int worldSize, long bucketBytes = 25L << 20)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        if (worldSize < 1) throw new ArgumentOutOfRangeException(nameof(worldSize), $"UnitRefresh: world size must be at least 1, got {worldSize}");
        if (worker < 0 || worker >= worldSize) throw new ArgumentOutOfRangeException(nameof(worker), $"UnitRefresh: worker {worker} is outside [0, {worldSize})");
        Worker = worker;
        WorldSize = worldSize;
        var plan = SyncBuckets.Plan(tensors, worldSize, bucketBytes, SyncTarget.Value, holders => holders.Length < worldSize, "UnitRefresh");
        _tensors = plan.Tensors;
        Buckets = plan.Buckets;
    }

    public int Worker { get; }

    public int WorldSize { get; }

    /// <summary>One broadcast each, from the lowest holder, in this order on every worker.</summary>
    public IReadOnlyList<SyncBucket> Buckets { get; }

    /// <summary>Elements this worker receives per refresh (the units it does not hold).</summary>
    public long ElementsReceived => Buckets.Where(b => Array.BinarySearch(b.Holders, Worker) < 0).Sum(b => b.Elements);

    /// <summary>Overwrites every unit this worker does not hold with its lowest holder's values. Collective.</summary>
    public SyncResult Refresh(ICommunicator comm)
    {
        ArgumentNullException.ThrowIfNull(comm);
        if (comm.Rank != Worker || comm.WorldSize != WorldSize)
            throw new ArgumentException($"UnitRefresh.Refresh: planned for worker {Worker} of {WorldSize}, but the communicator is rank {comm.Rank} of {comm.WorldSize}");
        var before = comm.Stats.Clone();
        long received = 0;
        using var noGrad = GradMode.Disable();
        foreach (var bucket in Buckets)
        {
            int root = bucket.Holders[0];
            bool holds = Array.BinarySearch(bucket.Holders, Worker) >= 0;
            var backend = _tensors[bucket.Pieces[0].Parameter].Backend;
            using (MemoryAccount.Use(MemoryCategory.Workspace))
            using (var buf = Tensor.Empty(new Shape(checked((int)bucket.Elements)), bucket.DType, backend))
            {
                if (Worker == root)
                {
                    foreach (var piece in bucket.Pieces) SyncBuckets.Pack(_tensors[piece.Parameter], buf, piece);
                }
                comm.Broadcast(buf, root);
                if (holds) continue;
                foreach (var piece in bucket.Pieces) SyncBuckets.Unpack(buf, _tensors[piece.Parameter], piece);
                received += bucket.Elements;
            }
        }
        var after = comm.Stats;
        return new SyncResult(after.Collectives - before.Collectives, after.BytesSent - before.BytesSent, received);
    }
}
