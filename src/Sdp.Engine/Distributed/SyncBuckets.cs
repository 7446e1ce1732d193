using Sdp.Engine.Backends;
using Sdp.Engine.Memory;

namespace Sdp.Engine.Distributed;

/// <summary>
/// Packs the units of a parameter list into buckets by holder set (shared between
/// <see cref="HolderGroupedSync"/> and <see cref="UnitRefresh"/>): units with the same holder set and dtype
/// go, in parameter order and then unit order, into contiguous buckets of at most the cap (a single larger
/// slice gets its own bucket). Sets are ordered canonically: all W workers first, then lexicographically.
/// </summary>
internal static class SyncBuckets
{
    public sealed record Result(Tensor[] Tensors, string[] Names, IReadOnlyList<SyncBucket> Buckets);

    /// <summary>
    /// <paramref name="include"/> decides, per unit holder set (sorted), whether this worker packs the unit.
    /// The layout of each tensor is its <see cref="Tensor.GradShape"/> for <see cref="SyncTarget.Gradient"/>,
    /// its shape otherwise.
    /// </summary>
    public static Result Plan(IReadOnlyList<SyncParameter> parameters, int worldSize, long bucketBytes, SyncTarget target, Func<int[], bool> include, string who)
    {
        if (bucketBytes < 1) throw new ArgumentOutOfRangeException(nameof(bucketBytes), $"{who}: bucket size must be positive, got {bucketBytes} bytes");
        var tensors = new Tensor[parameters.Count];
        var names = new string[parameters.Count];
        var everyone = Enumerable.Range(0, worldSize).ToArray();
        var groups = new Dictionary<(string, DType), (int[] Holders, List<(int P, int Axis, int Start, int Len, long Elems, bool Mergeable)> Units)>();
        // Mergeable: adjacent runs of slices can share one piece, because a run packs as the concatenation
        // of its slices (axis 0, or only size-1 dims before it). Elsewhere a run interleaves its slices, and
        // holders that keep the same units at different positions (compact tensors) must still agree on the layout.
        void Add(int[] holders, DType dtype, int p, int axis, int start, int len, long elems, bool mergeable)
        {
            var key = (string.Join(",", holders), dtype);
            if (!groups.TryGetValue(key, out var g))
            {
                g = (holders, new());
                groups[key] = g;
            }
            g.Units.Add((p, axis, start, len, elems, mergeable));
        }

        for (int p = 0; p < parameters.Count; p++)
        {
            var sp = parameters[p] ?? throw new ArgumentNullException(nameof(parameters), $"{who}: parameter {p} is null");
            var t = sp.Parameter ?? throw new ArgumentNullException(nameof(parameters), $"{who}: parameter {p} has no tensor");
            string name = t.Name ?? $"#{p}";
            tensors[p] = t;
            names[p] = name;
            if (!t.DType.IsFloatingPoint()) throw new ArgumentException($"{who}: tensor {name} {t.Shape} is {t.DType.Name()}; only floating-point tensors are synchronised");
            var shape = target == SyncTarget.Gradient ? t.GradShape : t.Shape;
            if (sp.UnitHolders is null)
            {
                if (shape.Numel > 0 && include(everyone)) Add(everyone, t.DType, p, 0, 0, shape.Rank == 0 ? 1 : shape[0], shape.Rank == 0 ? 1 : shape.Product(1, shape.Rank), true);
                continue;
            }
            int units = sp.UnitHolders.Length;
            if (units == 0) throw new ArgumentException($"{who}: tensor {name} {shape} has an empty unit list; pass null for a shared tensor");
            int axis;
            int size;
            if (shape.Rank == 0)
            {
                if (units != 1) throw new ArgumentException($"{who}: scalar tensor {name} can only be one unit, got {units}");
                axis = 0;
                size = 1;
            }
            else
            {
                if (sp.Axis < -shape.Rank || sp.Axis >= shape.Rank) throw new ArgumentOutOfRangeException(nameof(parameters), $"{who}: axis {sp.Axis} is outside tensor {name} {shape}");
                axis = sp.Axis < 0 ? sp.Axis + shape.Rank : sp.Axis;
                size = shape[axis];
            }
            if (size % units != 0) throw new ArgumentException($"{who}: tensor {name} {shape} has {size} slices along axis {axis}, which cannot be cut into {units} equal units");
            int per = size / units;
            long sliceElems = shape.Rank == 0 ? 1 : shape.Numel / size;
            for (int u = 0; u < units; u++)
            {
                var h = sp.UnitHolders[u] ?? throw new ArgumentException($"{who}: tensor {name} unit {u} has no holder list");
                var holders = h.ToArray();
                Array.Sort(holders);
                if (holders.Length == 0) throw new ArgumentException($"{who}: tensor {name} unit {u} has no holders; every unit needs at least one");
                for (int i = 0; i < holders.Length; i++)
                {
                    if (holders[i] < 0 || holders[i] >= worldSize) throw new ArgumentOutOfRangeException(nameof(parameters), $"{who}: tensor {name} unit {u} names worker {holders[i]}, outside [0, {worldSize})");
                    if (i > 0 && holders[i] == holders[i - 1]) throw new ArgumentException($"{who}: tensor {name} unit {u} names worker {holders[i]} twice");
                }
                if (!include(holders) || per == 0 || sliceElems == 0) continue;
                Add(holders, t.DType, p, axis, u * per, per, sliceElems, shape.Rank == 0 || shape.Product(0, axis) == 1);
            }
        }

        var buckets = new List<SyncBucket>();
        foreach (var key in groups.Keys.OrderBy(k => k.Item1.Split(',').Length == worldSize ? 0 : 1).ThenBy(k => groups[k].Holders, HolderOrder.Instance).ThenBy(k => k.Item2))
        {
            var (holders, units) = groups[key];
            var pieces = new List<SyncPiece>();
            long elems = 0;
            void Close()
            {
                if (pieces.Count == 0) return;
                buckets.Add(new SyncBucket(holders, key.Item2, elems, pieces.ToArray()));
                pieces.Clear();
                elems = 0;
            }
            long esize = key.Item2.ElementSize();
            foreach (var (p, axis, start, len, sliceElems, mergeable) in units)
            {
                for (int s = start; s < start + len;)
                {
                    // Take as many slices of this unit as fit (at least one slice when the bucket is empty).
                    long room = (bucketBytes / esize - elems) / sliceElems;
                    int take = (int)Math.Min(len - (s - start), Math.Max(room, 0));
                    if (take == 0)
                    {
                        if (elems > 0) { Close(); continue; }
                        take = 1;
                    }
                    var last = pieces.Count > 0 ? pieces[^1] : null;
                    if (mergeable && last is not null && last.Parameter == p && last.Axis == axis && last.Start + last.Length == s)
                        pieces[^1] = last with { Length = last.Length + take, Elements = last.Elements + take * sliceElems };
                    else
                        pieces.Add(new SyncPiece(p, axis, s, take, elems, take * sliceElems));
                    elems += take * sliceElems;
                    s += take;
                }
            }
            Close();
        }
        return new Result(tensors, names, buckets);
    }

    /// <summary>The shape of a piece's region: the layout with Length slices on the axis.</summary>
    public static Shape PieceShape(Shape layout, SyncPiece piece) => layout.Rank == 0 ? Shape.Scalar : layout.With(piece.Axis, piece.Length);

    /// <summary>Copies the piece of <paramref name="source"/> into its region of the bucket, <paramref name="view"/>.</summary>
    public static void Pack(Tensor source, Tensor view, SyncPiece piece)
    {
        if (source.Rank == 0) source.Backend.Copy(source, view);
        else source.Backend.ReadSlice(source, piece.Axis, piece.Start, view, accumulate: false);
    }

    /// <summary>Copies the piece's region of the bucket, <paramref name="view"/>, back into <paramref name="target"/>.</summary>
    public static void Unpack(Tensor view, Tensor target, SyncPiece piece)
    {
        if (target.Rank == 0) target.Backend.Copy(view, target);
        else target.Backend.WriteSlice(view, piece.Axis, piece.Start, target, accumulate: false);
    }
}

/// <summary>Holder sets in canonical order: lexicographic, a prefix before its extensions.</summary>
internal sealed class HolderOrder : IComparer<IReadOnlyList<int>>
{
    public static readonly HolderOrder Instance = new();

    public int Compare(IReadOnlyList<int>? x, IReadOnlyList<int>? y)
    {
        for (int i = 0; i < Math.Min(x!.Count, y!.Count); i++)
            if (x[i] != y[i]) return x[i].CompareTo(y[i]);
        return x.Count.CompareTo(y.Count);
    }
}

/// <summary>A bucket's region of a <see cref="BucketStaging"/> buffer, and its pieces' regions, shaped like their tensors' slices.</summary>
internal sealed record StagedBucket(SyncBucket Bucket, Tensor Buffer, Tensor[] Pieces);

/// <summary>
/// The staging memory of a sync, allocated once at construction and charged as EngineBuffers: one buffer per
/// (device, dtype), as long as the largest region of that kind, with fixed views into it, and the scalar
/// constants the sync divides by. Buckets are processed one after another and so share the buffer: the
/// peak is the largest bucket, as when every bucket had its own buffer for the length of its collective,
/// and a step allocates nothing.
/// </summary>
internal sealed class BucketStaging : IDisposable
{
    private readonly Dictionary<(IBackend Backend, DType DType), Tensor> _buffers = new();
    private readonly Dictionary<(IBackend Backend, DType DType, double Value), Tensor> _constants = new();
    private readonly List<Tensor> _views = new();

    /// <param name="regions">Every region that views will cover, by device and dtype, in elements from the start of the buffer.</param>
    public BucketStaging(IEnumerable<(IBackend Backend, DType DType, long Elements)> regions)
    {
        foreach (var kind in regions.GroupBy(r => (r.Backend, r.DType)))
        {
            long elements = kind.Max(r => r.Elements);
            _buffers[kind.Key] = Tensor.Allocate(new Shape(checked((int)elements)), kind.Key.DType, kind.Key.Backend, MemoryCategory.EngineBuffers, registerInScope: false);
        }
    }

    /// <summary>Bytes of the buffers and constants.</summary>
    public long Bytes => _buffers.Values.Concat(_constants.Values).Sum(t => t.ByteLength);

    /// <summary>A view of <paramref name="shape"/> at element <paramref name="offset"/> of the (device, dtype) buffer.</summary>
    public Tensor View(IBackend backend, DType dtype, Shape shape, long offset)
    {
        var buffer = _buffers[(backend, dtype)];
        var view = buffer.Alias(shape, buffer.Offset + offset, registerInScope: false);
        _views.Add(view);
        return view;
    }

    /// <summary>Views of <paramref name="bucket"/> on <paramref name="backend"/>; <paramref name="layout"/> gives each parameter's layout.</summary>
    public StagedBucket Stage(SyncBucket bucket, IBackend backend, Func<int, Shape> layout)
        => new(bucket, View(backend, bucket.DType, new Shape(checked((int)bucket.Elements)), 0),
            [.. bucket.Pieces.Select(p => View(backend, bucket.DType, SyncBuckets.PieceShape(layout(p.Parameter), p), p.Offset))]);

    /// <summary>A scalar holding <paramref name="value"/> (allocated on first request, kept until disposal).</summary>
    public Tensor Constant(IBackend backend, DType dtype, double value)
    {
        if (!_constants.TryGetValue((backend, dtype, value), out var scalar))
        {
            scalar = Tensor.Allocate(Shape.Scalar, dtype, backend, MemoryCategory.EngineBuffers, registerInScope: false);
            backend.Fill(scalar, value);
            _constants[(backend, dtype, value)] = scalar;
        }
        return scalar;
    }

    public void Dispose()
    {
        foreach (var t in _views.Concat(_buffers.Values).Concat(_constants.Values)) t.Dispose();
        _views.Clear();
        _buffers.Clear();
        _constants.Clear();
    }
}
