using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;

namespace Sdp.Engine.Distributed;

/// <summary>
/// Backward masking's refresh of unheld weights (method reference §2.6, option B1): every worker keeps the
/// full tensors for its dense forward pass but updates only the units it holds, so after each update every
/// unit is broadcast from one holder (the lowest rank of its holder set) to all workers, over the world
/// group. Units held by all W workers need nothing. Units are bucketed by holder set exactly like
/// <see cref="HolderGroupedSync"/> (canonical order, bucket cap), one broadcast per bucket; every worker
/// passes its full-size tensors, with every unit's holders, so all workers agree on the layout. The staging
/// buffer (one per dtype, as long as the largest bucket) and its views are made at construction and
/// charged as EngineBuffers, so a refresh allocates nothing.
/// </summary>
public sealed class UnitRefresh : IDisposable
{
    private readonly Tensor[] _tensors;
    private readonly ICommunicator _comm;
    private readonly BucketStaging _staging;
    private readonly StagedBucket[] _staged;

    public UnitRefresh(IReadOnlyList<SyncParameter> tensors, ICommunicator comm, long bucketBytes = 25L << 20)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        ArgumentNullException.ThrowIfNull(comm);
        _comm = comm;
        var plan = SyncBuckets.Plan(tensors, comm.WorldSize, bucketBytes, SyncTarget.Value, holders => holders.Length < comm.WorldSize, "UnitRefresh");
        _tensors = plan.Tensors;
        Buckets = plan.Buckets;
        _staging = new BucketStaging(Buckets.Select(b => (Backend(b), b.DType, b.Elements)));
        _staged = [.. Buckets.Select(b => _staging.Stage(b, Backend(b), p => _tensors[p].Shape))];
    }

    public int Worker => _comm.Rank;

    public int WorldSize => _comm.WorldSize;

    /// <summary>One broadcast each, from the lowest holder, in this order on every worker.</summary>
    public IReadOnlyList<SyncBucket> Buckets { get; }

    /// <summary>Elements this worker receives per refresh (the units it does not hold).</summary>
    public long ElementsReceived => Buckets.Where(b => Array.BinarySearch(b.Holders, Worker) < 0).Sum(b => b.Elements);

    /// <summary>Bytes this refresh keeps from construction to disposal (<see cref="Memory.MemoryCategory.EngineBuffers"/>): its staging buffers.</summary>
    public long StagingBytes => _staging.Bytes;

    /// <summary>Overwrites every unit this worker does not hold with its lowest holder's values. Collective.</summary>
    public SyncResult Refresh()
    {
        var before = _comm.Stats.Clone();
        long received = 0;
        using var noGrad = GradMode.Disable();
        foreach (var (bucket, buffer, views) in _staged)
        {
            int root = bucket.Holders[0];
            if (Worker == root)
            {
                for (int i = 0; i < views.Length; i++) SyncBuckets.Pack(_tensors[bucket.Pieces[i].Parameter], views[i], bucket.Pieces[i]);
            }
            _comm.World.Broadcast(buffer, root);
            if (Array.BinarySearch(bucket.Holders, Worker) >= 0) continue;
            for (int i = 0; i < views.Length; i++) SyncBuckets.Unpack(views[i], _tensors[bucket.Pieces[i].Parameter], bucket.Pieces[i]);
            received += bucket.Elements;
        }
        var after = _comm.Stats;
        return new SyncResult(after.Collectives - before.Collectives, after.BytesSent - before.BytesSent, received);
    }

    public void Dispose() => _staging.Dispose();

    private IBackend Backend(SyncBucket bucket) => _tensors[bucket.Pieces[0].Parameter].Backend;
}
