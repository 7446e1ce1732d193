using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;

namespace Sdp.Engine.Distributed;

/// <summary>
/// How one parameter's gradient is shared among workers. <see cref="UnitHolders"/> null: a shared
/// parameter, held by all W workers. Otherwise the parameter is cut along <see cref="Axis"/> into
/// <c>UnitHolders.Length</c> equal units of consecutive slices (a single unit: the whole parameter, as for
/// block level), and <c>UnitHolders[u]</c> lists the workers that hold unit u (any order, no repeats).
/// Examples: gate_proj (F, D) with one unit per hidden neuron: Axis 0, F units; down_proj (D, F): Axis 1.
/// The gradient is read from <c>Parameter.Grad</c> when synchronising.
/// </summary>
public sealed record SyncParameter(Tensor Parameter, int Axis = 0, int[][]? UnitHolders = null);

/// <summary>One contiguous packing buffer: all its units have the same holder set and dtype.</summary>
public sealed record SyncBucket(int[] Holders, DType DType, long Elements, IReadOnlyList<SyncPiece> Pieces)
{
    public long Bytes => Elements * DType.ElementSize();
}

/// <summary>Slices [Start, Start + Length) along the parameter's axis, packed at <see cref="Offset"/> (elements) in the bucket.</summary>
public sealed record SyncPiece(int Parameter, int Axis, int Start, int Length, long Offset, long Elements);

/// <summary>What one <see cref="HolderGroupedSync.Synchronize"/> call did on this worker.</summary>
public sealed record SyncResult(int Collectives, double BytesSent, long ElementsSynchronized);

/// <summary>What a <see cref="HolderGroupedSync"/> averages: the parameters' gradients or the tensors themselves.</summary>
public enum SyncTarget
{
    /// <summary><c>Parameter.Grad</c>, laid out as <see cref="Tensor.GradShape"/> (compact for held-slice parameters).</summary>
    Gradient,

    /// <summary>The tensor's own values (e.g. BatchNorm running statistics).</summary>
    Value,
}

/// <summary>
/// Masked averaging among holders (method reference §2.4): every unit's gradient becomes the mean of
/// its holders' gradients, ĝ_u = Σ_{i∈H_u} g_{i,u} / |H_u|; shared parameters get the plain mean over all
/// W workers. Units (across all parameters) with the same holder set and dtype are packed into contiguous
/// buckets of at most <c>bucketBytes</c> (a single larger unit gets its own bucket), so a step costs one
/// all-reduce per bucket: about one per distinct holder set, plus the shared one (units held by all W
/// workers go into the shared buckets). Holder sets of size 1 need no communication and are skipped.
/// <para>
/// Each worker passes its own tensors, which may be compact (holding only its units, in ascending unit
/// order: forward masking, or a held-slice gradient) or full size (listing every unit; slices of units the
/// worker does not hold are then never read or written). Buckets are reduced in a canonical order (the
/// shared set first, then holder sets in lexicographic order) and packed in parameter order, so every
/// holder of a set agrees on its buckets' layout and no two workers can wait on each other in a cycle.
/// </para>
/// <para>
/// Everything a step needs is made at construction: each holder set's group (from <see cref="HolderGroups"/>),
/// one staging buffer per dtype as long as the largest bucket, with the views of every bucket and piece into
/// it, and the holder counts to divide by, all charged as EngineBuffers to the account current then. A step
/// allocates nothing.
/// </para>
/// </summary>
public sealed class HolderGroupedSync : IDisposable
{
    private readonly Tensor[] _params;
    private readonly string[] _names;
    private readonly ICommunicator _comm;
    private readonly BucketStaging _staging;

    /// <summary>The buckets that need a collective, in reduction order, with their group and the holder count to divide by.</summary>
    private readonly (StagedBucket Staged, ICommGroup Group, Tensor HolderCount)[] _reduced;

    /// <summary>Per parameter (ascending), its pieces with their holder counts, and for a parameter whose norm share is summed slice by slice, a staging view per piece to copy the slice into.</summary>
    private readonly ((SyncPiece Piece, int Holders)[] Pieces, Tensor[]? Slices)[] _normTerms;

    /// <param name="parameters">This worker's tensors and how their units are shared.</param>
    /// <param name="groups">This worker's groups; every holder set of two or more workers that a bucket uses must be among them.</param>
    /// <param name="bucketBytes">The bucket cap.</param>
    /// <param name="target">Gradients or the tensors' own values.</param>
    public HolderGroupedSync(IReadOnlyList<SyncParameter> parameters, HolderGroups groups, long bucketBytes = 25L << 20, SyncTarget target = SyncTarget.Gradient)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(groups);
        _comm = groups.Communicator;
        int worker = _comm.Rank;
        BucketBytes = bucketBytes;
        Target = target;
        var plan = SyncBuckets.Plan(parameters, _comm.WorldSize, bucketBytes, target, holders => Array.BinarySearch(holders, worker) >= 0, "HolderGroupedSync");
        (_params, _names, Buckets) = (plan.Tensors, plan.Names, plan.Buckets);
        var reduced = Buckets.Where(b => b.Holders.Length > 1).Select(b => (Bucket: b, Group: groups.Of(b.Holders))).ToArray();

        // The norm share sums a parameter in one go when all its units have the same number of holders and its
        // pieces cover all of it (every parameter under a uniform plan); any other slice by slice, each slice
        // copied into the staging buffer first.
        var byParameter = Buckets.SelectMany(b => b.Pieces.Select(piece => (Piece: piece, Holders: b.Holders.Length)))
            .GroupBy(x => x.Piece.Parameter).OrderBy(g => g.Key).Select(g => (Parameter: g.Key, Pieces: g.ToArray())).ToArray();
        bool SumsSlices(int parameter, (SyncPiece Piece, int Holders)[] pieces) => target == SyncTarget.Gradient
            && (pieces.Any(x => x.Holders != pieces[0].Holders) || pieces.Sum(x => x.Piece.Elements) != _params[parameter].GradShape.Numel);
        var sliced = byParameter.Where(p => SumsSlices(p.Parameter, p.Pieces)).Select(p => p.Parameter).ToHashSet();

        _staging = new BucketStaging(reduced.Select(r => (Backend(r.Bucket), r.Bucket.DType, r.Bucket.Elements))
            .Concat(byParameter.Where(p => sliced.Contains(p.Parameter)).SelectMany(p => p.Pieces.Select(x => (_params[p.Parameter].Backend, _params[p.Parameter].DType, x.Piece.Elements)))));
        _reduced = [.. reduced.Select(r => (_staging.Stage(r.Bucket, Backend(r.Bucket), Layout), r.Group, _staging.Constant(Backend(r.Bucket), r.Bucket.DType, r.Bucket.Holders.Length)))];
        _normTerms = [.. byParameter.Select(p => (p.Pieces, sliced.Contains(p.Parameter) ? SliceViews(p.Parameter, p.Pieces) : null))];
    }

    public int Worker => _comm.Rank;

    public int WorldSize => _comm.WorldSize;

    public long BucketBytes { get; }

    public SyncTarget Target { get; }

    /// <summary>This worker's buckets in the order they are reduced (shared first), including size-1 holder sets (not communicated).</summary>
    public IReadOnlyList<SyncBucket> Buckets { get; }

    /// <summary>Buckets that need a collective (holder sets of two or more workers).</summary>
    public int CollectivesPerStep => _reduced.Length;

    /// <summary>Bytes this worker sends per step under the ring model of <see cref="CommStats"/>.</summary>
    public double BytesPerStep => Buckets.Sum(b => CommStats.RingAllReduceBytes(b.Bytes, b.Holders.Length));

    /// <summary>Bytes this sync keeps from construction to disposal (<see cref="Memory.MemoryCategory.EngineBuffers"/>): the staging buffers and holder counts.</summary>
    public long StagingBytes => _staging.Bytes;

    /// <summary>
    /// Averages every held unit's gradient (or value, per <see cref="Target"/>) over its holders, in place.
    /// Must be called by every worker (each from its own thread) at the same point. A parameter whose
    /// gradient is null contributes zeros and receives nothing.
    /// </summary>
    public SyncResult Synchronize()
    {
        var before = _comm.Stats.Clone();
        long total = 0;
        using var noGrad = GradMode.Disable();
        foreach (var ((bucket, buffer, views), group, holderCount) in _reduced)
        {
            for (int i = 0; i < views.Length; i++)
            {
                var piece = bucket.Pieces[i];
                if (Source(piece) is { } source) SyncBuckets.Pack(source, views[i], piece);
                else buffer.Backend.Fill(views[i], 0);
            }
            // One bucket at a time: every bucket is staged in the same bucket-sized buffer (memory is the point of
            // SDP), so the buckets cannot be posted together in one ncclGroupStart/End as separate buffers could.
            group.AllReduceSum(buffer);
            buffer.Backend.Binary(BinaryOp.Div, buffer, holderCount, buffer);
            for (int i = 0; i < views.Length; i++)
            {
                if (Source(bucket.Pieces[i]) is { } target) SyncBuckets.Unpack(views[i], target, bucket.Pieces[i]);
            }
            total += bucket.Elements;
        }
        var after = _comm.Stats;
        return new SyncResult(after.Collectives - before.Collectives, after.BytesSent - before.BytesSent, total);
    }

    /// <summary>
    /// This worker's share of the squared global norm of the synchronised gradients (A14): Σ over its
    /// held units of ‖ĝ_u‖² / |H_u| (shared parameters: / W). Summed over all workers it is ‖ĝ‖², each
    /// parameter counted exactly once. Accumulated in float64, in parameter order, into
    /// <paramref name="total"/> (a float64 scalar on the gradients' device), so nothing is read back here.
    /// </summary>
    public void AddSquaredNormShare(Tensor total)
    {
        if (Target != SyncTarget.Gradient) throw new InvalidOperationException("HolderGroupedSync.AddSquaredNormShare: only gradient syncs have a gradient norm");
        using var noGrad = GradMode.Disable();
        // Parameter by parameter, in order; a whole parameter's sum does not depend on how its units were
        // cut into buckets (C = 1 matches DP bit for bit, A4).
        foreach (var (pieces, slices) in _normTerms)
        {
            var grad = Source(pieces[0].Piece);
            if (grad is null) continue;
            if (slices is null)
            {
                grad.Backend.AddSumOfSquares(grad, pieces[0].Holders, total);
                continue;
            }
            for (int i = 0; i < pieces.Length; i++)
            {
                grad.Backend.ReadSlice(grad, pieces[i].Piece.Axis, pieces[i].Piece.Start, slices[i], accumulate: false);
                grad.Backend.AddSumOfSquares(slices[i], pieces[i].Holders, total);
            }
        }
    }

    public void Dispose() => _staging.Dispose();

    /// <summary>Staging views, from the start of the buffer, shaped like the parameter's slice of each piece.</summary>
    private Tensor[] SliceViews(int parameter, (SyncPiece Piece, int Holders)[] pieces)
    {
        var p = _params[parameter];
        return [.. pieces.Select(x => _staging.View(p.Backend, p.DType, SyncBuckets.PieceShape(Layout(parameter), x.Piece), 0))];
    }

    private IBackend Backend(SyncBucket bucket) => _params[bucket.Pieces[0].Parameter].Backend;

    /// <summary>How a parameter is laid out in the buckets: its gradient's shape, or its own.</summary>
    private Shape Layout(int parameter) => Target == SyncTarget.Gradient ? _params[parameter].GradShape : _params[parameter].Shape;

    /// <summary>The tensor a piece is read from and written to: the gradient (null when absent) or the tensor itself.</summary>
    private Tensor? Source(SyncPiece piece)
    {
        var p = _params[piece.Parameter];
        if (Target == SyncTarget.Value) return p;
        var g = p.Grad;
        if (g is not null && g.Shape != p.GradShape)
            throw new InvalidOperationException($"HolderGroupedSync: gradient of {_names[piece.Parameter]} is {g.Shape} but {p.GradShape} was expected");
        return g;
    }
}
