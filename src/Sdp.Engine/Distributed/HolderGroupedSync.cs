using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Memory;

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
/// </summary>
public sealed class HolderGroupedSync
{
    private readonly Tensor[] _params;
    private readonly string[] _names;

    public HolderGroupedSync(IReadOnlyList<SyncParameter> parameters, int worker, int worldSize, long bucketBytes = 25L << 20, SyncTarget target = SyncTarget.Gradient)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (worldSize < 1) throw new ArgumentOutOfRangeException(nameof(worldSize), $"HolderGroupedSync: world size must be at least 1, got {worldSize}");
        if (worker < 0 || worker >= worldSize) throw new ArgumentOutOfRangeException(nameof(worker), $"HolderGroupedSync: worker {worker} is outside [0, {worldSize})");
        Worker = worker;
        WorldSize = worldSize;
        BucketBytes = bucketBytes;
        Target = target;
        var plan = SyncBuckets.Plan(parameters, worldSize, bucketBytes, target, holders => Array.BinarySearch(holders, worker) >= 0, "HolderGroupedSync");
        (_params, _names, Buckets) = (plan.Tensors, plan.Names, plan.Buckets);
        _piecesByParameter = Buckets.SelectMany(b => b.Pieces.Select(piece => (Piece: piece, Holders: b.Holders.Length)))
            .GroupBy(x => x.Piece.Parameter).OrderBy(g => g.Key).Select(g => (g.Key, g.ToArray())).ToArray();
    }

    /// <summary>Per parameter (ascending), its pieces with their holder counts.</summary>
    private readonly (int Parameter, (SyncPiece Piece, int Holders)[] Pieces)[] _piecesByParameter;

    public int Worker { get; }

    public int WorldSize { get; }

    public long BucketBytes { get; }

    public SyncTarget Target { get; }

    /// <summary>This worker's buckets in the order they are reduced (shared first), including size-1 holder sets (not communicated).</summary>
    public IReadOnlyList<SyncBucket> Buckets { get; }

    /// <summary>Buckets that need a collective (holder sets of two or more workers).</summary>
    public int CollectivesPerStep => Buckets.Count(b => b.Holders.Length > 1);

    /// <summary>Bytes this worker sends per step under the ring model of <see cref="CommStats"/>.</summary>
    public double BytesPerStep => Buckets.Sum(b => CommStats.RingAllReduceBytes(b.Bytes, b.Holders.Length));

    /// <summary>
    /// Averages every held unit's gradient (or value, per <see cref="Target"/>) over its holders, in place.
    /// Must be called by every worker (each from its own thread with its own communicator) at the same
    /// point. A parameter whose gradient is null contributes zeros and receives nothing.
    /// </summary>
    public SyncResult Synchronize(ICommunicator comm)
    {
        ArgumentNullException.ThrowIfNull(comm);
        if (comm.Rank != Worker || comm.WorldSize != WorldSize)
            throw new ArgumentException($"HolderGroupedSync.Synchronize: planned for worker {Worker} of {WorldSize}, but the communicator is rank {comm.Rank} of {comm.WorldSize}");
        var before = comm.Stats.Clone();
        long total = 0;
        using var noGrad = GradMode.Disable();
        foreach (var bucket in Buckets)
        {
            if (bucket.Holders.Length == 1) continue; // the mean over one holder is its own value
            var backend = _params[bucket.Pieces[0].Parameter].Backend;
            using (MemoryAccount.Use(MemoryCategory.Workspace))
            using (var buf = Tensor.Empty(new Shape(checked((int)bucket.Elements)), bucket.DType, backend))
            using (var count = Tensor.Scalar(bucket.Holders.Length, bucket.DType, backend))
            {
                foreach (var piece in bucket.Pieces)
                {
                    var source = Source(piece);
                    if (source is not null) SyncBuckets.Pack(source, buf, piece);
                    else
                    {
                        using var view = SyncBuckets.PieceView(buf, _params[piece.Parameter].GradShape, piece);
                        backend.Fill(view, 0);
                    }
                }
                comm.AllReduceSum(buf, bucket.Holders);
                backend.Binary(BinaryOp.Div, buf, count, buf);
                foreach (var piece in bucket.Pieces)
                {
                    if (Source(piece) is { } target) SyncBuckets.Unpack(buf, target, piece);
                }
            }
            total += bucket.Elements;
        }
        var after = comm.Stats;
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
        // Parameter by parameter, in order: a parameter whose units all have the same number of holders
        // (every parameter under a uniform plan) is one SumOfSquares over its whole gradient, so the sum
        // does not depend on how the units were cut into buckets (C = 1 matches DP bit for bit, A4).
        foreach (var (p, pieces) in _piecesByParameter)
        {
            var grad = Source(pieces[0].Piece);
            if (grad is null) continue;
            int holders = pieces[0].Holders;
            if (pieces.All(x => x.Holders == holders) && pieces.Sum(x => x.Piece.Elements) == grad.Numel)
            {
                grad.Backend.AddSumOfSquares(grad, holders, total);
                continue;
            }
            foreach (var (piece, n) in pieces)
            {
                using (MemoryAccount.Use(MemoryCategory.Workspace))
                using (var slice = Tensor.Empty(grad.Shape.With(piece.Axis, piece.Length), grad.DType, grad.Backend))
                {
                    grad.Backend.ReadSlice(grad, piece.Axis, piece.Start, slice, accumulate: false);
                    grad.Backend.AddSumOfSquares(slice, n, total);
                }
            }
        }
    }

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
