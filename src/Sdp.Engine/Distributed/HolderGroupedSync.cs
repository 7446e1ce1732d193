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

/// <summary>
/// Masked averaging among holders (method reference §2.4): every unit's gradient becomes the mean of
/// its holders' gradients, ĝ_u = Σ_{i∈H_u} g_{i,u} / |H_u|; shared parameters get the plain mean over all
/// W workers. Units (across all parameters) with the same holder set and dtype are packed into contiguous
/// buckets of at most <c>bucketBytes</c> (a single larger unit gets its own bucket), so a step costs one
/// all-reduce per bucket: about one per distinct holder set, plus the shared one (units held by all W
/// workers go into the shared buckets). Holder sets of size 1 need no communication and are skipped.
/// Works on full-size gradient tensors; slices of units this worker does not hold are never read or
/// written. The plan depends only on the parameter list, so all workers given the same list (their own
/// tensors, same shapes) agree on every bucket's layout.
/// </summary>
public sealed class HolderGroupedSync
{
    private readonly Tensor[] _params;
    private readonly string[] _names;

    public HolderGroupedSync(IReadOnlyList<SyncParameter> parameters, int worker, int worldSize, long bucketBytes = 25L << 20)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (worldSize < 1) throw new ArgumentOutOfRangeException(nameof(worldSize), $"HolderGroupedSync: world size must be at least 1, got {worldSize}");
        if (worker < 0 || worker >= worldSize) throw new ArgumentOutOfRangeException(nameof(worker), $"HolderGroupedSync: worker {worker} is outside [0, {worldSize})");
        if (bucketBytes < 1) throw new ArgumentOutOfRangeException(nameof(bucketBytes), $"HolderGroupedSync: bucket size must be positive, got {bucketBytes} bytes");
        Worker = worker;
        WorldSize = worldSize;
        BucketBytes = bucketBytes;
        _params = new Tensor[parameters.Count];
        _names = new string[parameters.Count];

        // (holder key, dtype) -> ordered list of (parameter, axis, unit start, unit length, elements per slice)
        var everyone = Enumerable.Range(0, worldSize).ToArray();
        var order = new List<(string Key, DType DType)>();
        var groups = new Dictionary<(string, DType), (int[] Holders, List<(int P, int Axis, int Start, int Len, long Elems)> Units)>();
        void Add(int[] holders, DType dtype, int p, int axis, int start, int len, long elems)
        {
            var key = (string.Join(",", holders), dtype);
            if (!groups.TryGetValue(key, out var g))
            {
                g = (holders, new());
                groups[key] = g;
                order.Add(key);
            }
            g.Units.Add((p, axis, start, len, elems));
        }

        for (int p = 0; p < parameters.Count; p++)
        {
            var sp = parameters[p] ?? throw new ArgumentNullException(nameof(parameters), $"HolderGroupedSync: parameter {p} is null");
            var t = sp.Parameter ?? throw new ArgumentNullException(nameof(parameters), $"HolderGroupedSync: parameter {p} has no tensor");
            string name = t.Name ?? $"#{p}";
            _params[p] = t;
            _names[p] = name;
            if (!t.DType.IsFloatingPoint()) throw new ArgumentException($"HolderGroupedSync: parameter {name} {t.Shape} is {t.DType.Name()}; only floating-point parameters are synchronised");
            if (sp.UnitHolders is null)
            {
                if (t.Numel > 0) Add(everyone, t.DType, p, 0, 0, t.Rank == 0 ? 1 : t.Shape[0], t.Rank == 0 ? 1 : t.Shape.Product(1, t.Rank));
                continue;
            }
            int units = sp.UnitHolders.Length;
            if (units == 0) throw new ArgumentException($"HolderGroupedSync: parameter {name} {t.Shape} has an empty unit list; pass null for a shared parameter");
            int axis;
            int size;
            if (t.Rank == 0)
            {
                if (units != 1) throw new ArgumentException($"HolderGroupedSync: scalar parameter {name} can only be one unit, got {units}");
                axis = 0; size = 1;
            }
            else
            {
                if (sp.Axis < -t.Rank || sp.Axis >= t.Rank) throw new ArgumentOutOfRangeException(nameof(parameters), $"HolderGroupedSync: axis {sp.Axis} is outside parameter {name} {t.Shape}");
                axis = sp.Axis < 0 ? sp.Axis + t.Rank : sp.Axis;
                size = t.Shape[axis];
            }
            if (size % units != 0) throw new ArgumentException($"HolderGroupedSync: parameter {name} {t.Shape} has {size} slices along axis {axis}, which cannot be cut into {units} equal units");
            int per = size / units;
            long sliceElems = t.Rank == 0 ? 1 : t.Numel / size;
            for (int u = 0; u < units; u++)
            {
                var h = sp.UnitHolders[u] ?? throw new ArgumentException($"HolderGroupedSync: parameter {name} unit {u} has no holder list");
                var holders = h.ToArray();
                Array.Sort(holders);
                if (holders.Length == 0) throw new ArgumentException($"HolderGroupedSync: parameter {name} unit {u} has no holders; every unit needs at least one");
                for (int i = 0; i < holders.Length; i++)
                {
                    if (holders[i] < 0 || holders[i] >= worldSize) throw new ArgumentOutOfRangeException(nameof(parameters), $"HolderGroupedSync: parameter {name} unit {u} names worker {holders[i]}, outside [0, {worldSize})");
                    if (i > 0 && holders[i] == holders[i - 1]) throw new ArgumentException($"HolderGroupedSync: parameter {name} unit {u} names worker {holders[i]} twice");
                }
                if (Array.BinarySearch(holders, worker) < 0 || per == 0 || sliceElems == 0) continue;
                Add(holders, t.DType, p, axis, u * per, per, sliceElems);
            }
        }

        // Shared set first, then the others in order of first appearance; greedy packing up to the cap,
        // merging adjacent units of one parameter into one piece.
        string everyoneKey = string.Join(",", everyone);
        var buckets = new List<SyncBucket>();
        foreach (var key in order.OrderBy(k => k.Key == everyoneKey ? 0 : 1))
        {
            var (holders, units) = groups[key];
            var pieces = new List<SyncPiece>();
            long elems = 0;
            void Close()
            {
                if (pieces.Count == 0) return;
                buckets.Add(new SyncBucket(holders, key.DType, elems, pieces.ToArray()));
                pieces.Clear();
                elems = 0;
            }
            long esize = key.DType.ElementSize();
            foreach (var (p, axis, start, len, sliceElems) in units)
            {
                for (int s = start; s < start + len;)
                {
                    // Take as many slices of this unit as fit (at least one slice of the whole unit run when the bucket is empty).
                    long room = (BucketBytes / esize - elems) / sliceElems;
                    int take = (int)Math.Min(len - (s - start), Math.Max(room, 0));
                    if (take == 0)
                    {
                        if (elems > 0) { Close(); continue; }
                        take = 1; // one slice larger than the cap: its own bucket
                    }
                    var last = pieces.Count > 0 ? pieces[^1] : null;
                    if (last is not null && last.Parameter == p && last.Axis == axis && last.Start + last.Length == s)
                        pieces[^1] = last with { Length = last.Length + take, Elements = last.Elements + take * sliceElems };
                    else
                        pieces.Add(new SyncPiece(p, axis, s, take, elems, take * sliceElems));
                    elems += take * sliceElems;
                    s += take;
                }
            }
            Close();
        }
        Buckets = buckets;
    }

    public int Worker { get; }

    public int WorldSize { get; }

    public long BucketBytes { get; }

    /// <summary>This worker's buckets in the order they are reduced (shared first), including size-1 holder sets (not communicated).</summary>
    public IReadOnlyList<SyncBucket> Buckets { get; }

    /// <summary>Buckets that need a collective (holder sets of two or more workers).</summary>
    public int CollectivesPerStep => Buckets.Count(b => b.Holders.Length > 1);

    /// <summary>Bytes this worker sends per step under the ring model of <see cref="CommStats"/>.</summary>
    public double BytesPerStep => Buckets.Sum(b => CommStats.RingAllReduceBytes(b.Bytes, b.Holders.Length));

    /// <summary>
    /// Averages every held unit's gradient over its holders, in place in <c>Parameter.Grad</c>. Must be
    /// called by every worker (each from its own thread with its own communicator) at the same point.
    /// A parameter whose gradient is null contributes zeros and receives nothing.
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
            if (bucket.Holders.Length == 1) continue; // the mean over one holder is its own gradient
            var backend = _params[bucket.Pieces[0].Parameter].Backend;
            using (MemoryAccount.Use(MemoryCategory.Workspace))
            using (var buf = Tensor.Empty(new Shape(checked((int)bucket.Elements)), bucket.DType, backend))
            using (var count = Tensor.Scalar(bucket.Holders.Length, bucket.DType, backend))
            {
                foreach (var piece in bucket.Pieces)
                {
                    using var view = PieceView(buf, piece);
                    var grad = Grad(piece);
                    if (grad is null) backend.Fill(view, 0);
                    else if (grad.Rank == 0) backend.Copy(grad, view);
                    else backend.ReadSlice(grad, piece.Axis, piece.Start, view, accumulate: false);
                }
                comm.AllReduceSum(buf, bucket.Holders);
                backend.Binary(BinaryOp.Div, buf, count, buf);
                foreach (var piece in bucket.Pieces)
                {
                    var grad = Grad(piece);
                    if (grad is null) continue;
                    using var view = PieceView(buf, piece);
                    if (grad.Rank == 0) backend.Copy(view, grad);
                    else backend.WriteSlice(view, piece.Axis, piece.Start, grad, accumulate: false);
                }
            }
            total += bucket.Elements;
        }
        var after = comm.Stats;
        return new SyncResult(after.Collectives - before.Collectives, after.BytesSent - before.BytesSent, total);
    }

    private Tensor? Grad(SyncPiece piece)
    {
        var p = _params[piece.Parameter];
        var g = p.Grad;
        if (g is not null && g.Shape != p.Shape)
            throw new InvalidOperationException($"HolderGroupedSync: gradient of {_names[piece.Parameter]} is {g.Shape} but the parameter is {p.Shape}");
        return g;
    }

    /// <summary>The piece's region of the flat bucket, shaped like the parameter with Length slices on the axis.</summary>
    private Tensor PieceView(Tensor buf, SyncPiece piece)
    {
        var p = _params[piece.Parameter];
        var shape = p.Rank == 0 ? Shape.Scalar : p.Shape.With(piece.Axis, piece.Length);
        return buf.Alias(shape, buf.Offset + piece.Offset, registerInScope: false);
    }
}
