using System.Text;
using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Memory;

namespace Sdp.Engine;

/// <summary>
/// A contiguous, row-major n-dimensional array on one device.
///
/// Lifetime: a tensor holds one reference to its <see cref="Storage"/>; <see cref="Dispose"/> drops
/// it, and views (<see cref="Reshape"/>, <see cref="Narrow"/>) share the storage. Tensors created
/// while a <see cref="TensorScope"/> is open belong to that scope and are disposed with it, which is
/// how a training step frees its activations without waiting for the GC. Tensors created outside any
/// scope (parameters, optimizer state) belong to whoever created them.
/// </summary>
public sealed class Tensor : IDisposable
{
    private static long _nextId;
    private Storage? _storage;
    private bool _requiresGrad;
    private HeldSlices? _held;

    internal Tensor(Storage storage, long offset, Shape shape, DType dtype, bool registerInScope = true)
    {
        _storage = storage;
        Backend = storage.Backend;
        Offset = offset;
        Shape = shape;
        DType = dtype;
        Id = Interlocked.Increment(ref _nextId);
        if (registerInScope) TensorScope.Register(this);
    }

    /// <summary>Process-unique identity, used by the autograd tape.</summary>
    public long Id { get; }

    public Shape Shape { get; private set; }

    public DType DType { get; }

    /// <summary>Element offset of this view into its storage.</summary>
    public long Offset { get; private set; }

    public long ByteOffset => Offset * DType.ElementSize();

    /// <summary>The device's backend; still readable after dispose, so tape nodes can size gradients.</summary>
    public IBackend Backend { get; private set; }

    public Device Device => Backend.Device;

    public int Rank => Shape.Rank;

    public long Numel => Shape.Numel;

    public long ByteLength => Numel * DType.ElementSize();

    /// <summary>Optional name, used in error messages and checkpoints.</summary>
    public string? Name { get; set; }

    public bool IsDisposed => _storage is null;

    public Storage Storage => _storage ?? throw new ObjectDisposedException(Describe(), $"tensor {Describe()} was used after it was disposed");

    /// <summary>Accumulated gradient of a leaf that requires grad, allocated by the first backward pass.</summary>
    public Tensor? Grad { get; internal set; }

    /// <summary>
    /// SDP backward masking: the slices of this leaf that backward and the optimizer train, or null for
    /// all of it. When set, <see cref="Grad"/> is compact (shape <see cref="GradShape"/>, the held slices in
    /// index order), optimizer state is compact too, and an optimizer step changes only the held slices.
    /// The forward pass is unaffected. Only leaves that require grad may hold slices; the axis and indices
    /// must fit <see cref="Shape"/>; and the value can only change while there is no gradient (call
    /// <see cref="ZeroGrad"/> first), since the gradient's shape depends on it.
    /// </summary>
    public HeldSlices? Held
    {
        get => _held;
        set
        {
            if (Grad is not null)
                throw new InvalidOperationException($"Held: {Describe()} already has a gradient {Grad.Describe()}; call ZeroGrad() before changing which slices it holds");
            if (value is not null)
            {
                if (!IsLeaf) throw new InvalidOperationException($"Held: only leaf tensors can hold slices; {Describe()} was produced by {GradFn!.OpName}");
                if (!_requiresGrad) throw new InvalidOperationException($"Held: {Describe()} does not require grad; set RequiresGrad = true before choosing the slices it trains");
                if (value.Axis >= Rank)
                    throw new ArgumentOutOfRangeException(nameof(value), value.Axis, $"Held: axis {value.Axis} is out of range for {Describe()} of rank {Rank}");
                int size = Shape[value.Axis];
                int last = value.Indices[^1];
                if (last >= size)
                    throw new ArgumentOutOfRangeException(nameof(value), last, $"Held: index {last} is out of range for axis {value.Axis} of {Describe()} (size {size})");
            }
            _held = value;
            _heldIndices?.Dispose();
            _heldIndices = value is null ? null : IndexTensor(value);
        }
    }

    private Tensor? _heldIndices;

    /// <summary>
    /// <see cref="Held"/>'s indices as an int32 tensor on this tensor's device, built once when the held set
    /// is assigned (charged to this tensor's account as <see cref="MemoryCategory.EngineBuffers"/>), so kernels
    /// read them where they run instead of uploading a host list on every call. Null when nothing is held.
    /// </summary>
    public Tensor? HeldIndices => _heldIndices;

    private Tensor IndexTensor(HeldSlices held)
    {
        var storage = Backend.Allocate((long)held.Count * sizeof(int), MemoryCategory.EngineBuffers, Storage.Account);
        var indices = new Tensor(storage, 0, new Shape(held.Count), DType.Int32, registerInScope: false) { Name = (Name ?? "tensor") + ".held_indices" };
        Backend.Upload(held.Span, indices);
        return indices;
    }

    /// <summary>The shape of <see cref="Grad"/>: <see cref="Shape"/>, with the held axis shrunk to the number of held slices when <see cref="Held"/> is set.</summary>
    public Shape GradShape => _held is null ? Shape : Shape.With(_held.Axis, _held.Count);

    /// <summary>The tape node that produced this tensor, or null for leaves.</summary>
    internal TapeNode? GradFn { get; set; }

    public bool IsLeaf => GradFn is null;

    /// <summary>Whether backward computes a gradient for this tensor. Only leaves may be switched.</summary>
    public bool RequiresGrad
    {
        get => _requiresGrad;
        set
        {
            if (!IsLeaf) throw new InvalidOperationException($"RequiresGrad can only be set on leaf tensors; {Describe()} was produced by {GradFn!.OpName}");
            if (value && !DType.IsFloatingPoint()) throw new InvalidOperationException($"only floating-point tensors can require grad; {Describe()} is {DType.Name()}");
            _requiresGrad = value;
        }
    }

    internal void MarkProducedBy(TapeNode node)
    {
        GradFn = node;
        _requiresGrad = true;
    }

    // ---- factories ------------------------------------------------------------------------------

    /// <summary>
    /// Uninitialised tensor on <paramref name="backend"/>, or on <see cref="DeviceScope.Current"/> when none is
    /// given, charged to the current account and category.
    /// </summary>
    public static Tensor Empty(Shape shape, DType dtype = DType.Float32, IBackend? backend = null)
        => Allocate(shape, dtype, backend ?? DeviceScope.Current, MemoryAccount.CurrentCategory, registerInScope: true);

    internal static Tensor Allocate(Shape shape, DType dtype, IBackend backend, MemoryCategory category, bool registerInScope)
    {
        var storage = backend.Allocate(shape.Numel * dtype.ElementSize(), category, MemoryAccount.Current);
        return new Tensor(storage, 0, shape, dtype, registerInScope);
    }

    public static Tensor Full(Shape shape, double value, DType dtype = DType.Float32, IBackend? backend = null)
    {
        var t = Empty(shape, dtype, backend);
        t.Backend.Fill(t, value);
        return t;
    }

    public static Tensor Zeros(Shape shape, DType dtype = DType.Float32, IBackend? backend = null) => Full(shape, 0, dtype, backend);

    public static Tensor Ones(Shape shape, DType dtype = DType.Float32, IBackend? backend = null) => Full(shape, 1, dtype, backend);

    public static Tensor ZerosLike(Tensor t) => Zeros(t.Shape, t.DType, t.Backend);

    /// <summary>A tensor holding a copy of <paramref name="data"/>, with dtype inferred from T.</summary>
    public static Tensor FromArray<T>(T[] data, Shape shape, IBackend? backend = null) where T : unmanaged
        => FromSpan<T>(data, shape, backend);

    public static Tensor FromSpan<T>(ReadOnlySpan<T> data, Shape shape, IBackend? backend = null) where T : unmanaged
    {
        if (data.Length != shape.Numel) throw new ArgumentException($"FromArray: {data.Length} values cannot fill shape {shape} ({shape.Numel} elements)");
        var t = Empty(shape, DTypeExtensions.Of<T>(), backend);
        t.Backend.Upload(data, t);
        return t;
    }

    public static Tensor Scalar(double value, DType dtype = DType.Float32, IBackend? backend = null) => Full(Shape.Scalar, value, dtype, backend);

    /// <summary>Standard-normal values times <paramref name="std"/>, drawn from <paramref name="rng"/>.</summary>
    public static Tensor Randn(Shape shape, Rng rng, double std = 1.0, DType dtype = DType.Float32, IBackend? backend = null)
    {
        if (OnMeta(backend)) return Empty(shape, dtype, backend);
        var values = new double[shape.Numel];
        for (int i = 0; i < values.Length; i++) values[i] = rng.NextNormal() * std;
        return FromDoubles(values, shape, dtype, backend);
    }

    /// <summary>Uniform values in [low, high), drawn from <paramref name="rng"/>.</summary>
    public static Tensor Uniform(Shape shape, Rng rng, double low, double high, DType dtype = DType.Float32, IBackend? backend = null)
    {
        if (OnMeta(backend)) return Empty(shape, dtype, backend);
        var values = new double[shape.Numel];
        for (int i = 0; i < values.Length; i++) values[i] = low + (high - low) * rng.NextDouble();
        return FromDoubles(values, shape, dtype, backend);
    }

    /// <summary>True when a tensor made on <paramref name="backend"/> (null: the current device) would be a meta tensor, which holds no values to draw.</summary>
    private static bool OnMeta(IBackend? backend) => (backend ?? DeviceScope.Current).Device.Kind == DeviceKind.Meta;

    public static Tensor FromDoubles(double[] values, Shape shape, DType dtype = DType.Float32, IBackend? backend = null) => dtype switch
    {
        DType.Float64 => FromArray(values, shape, backend),
        DType.Float32 => FromArray(Array.ConvertAll(values, v => (float)v), shape, backend),
        DType.Int32 => FromArray(Array.ConvertAll(values, v => (int)v), shape, backend),
        _ => FromArray(Array.ConvertAll(values, v => (long)v), shape, backend),
    };

    // ---- data access ------------------------------------------------------------------------------

    public T[] ToArray<T>() where T : unmanaged
    {
        if (DTypeExtensions.Of<T>() != DType) throw new InvalidOperationException($"ToArray<{typeof(T).Name}>: tensor {Describe()} holds {DType.Name()}");
        var result = new T[Numel];
        Backend.Download<T>(this, result);
        return result;
    }

    /// <summary>All elements converted to double, whatever the dtype.</summary>
    public double[] ToDoubles() => DType switch
    {
        DType.Float32 => Array.ConvertAll(ToArray<float>(), v => (double)v),
        DType.Float64 => ToArray<double>(),
        DType.Int32 => Array.ConvertAll(ToArray<int>(), v => (double)v),
        _ => Array.ConvertAll(ToArray<long>(), v => (double)v),
    };

    /// <summary>The value of a one-element tensor.</summary>
    public double Item()
    {
        if (Numel != 1) throw new InvalidOperationException($"Item() needs a one-element tensor; {Describe()} has {Numel}");
        return ToDoubles()[0];
    }

    // ---- views --------------------------------------------------------------------------------------

    /// <summary>
    /// A tensor sharing this one's storage with another shape of the same size; one dimension may be -1.
    /// Differentiable.
    /// </summary>
    public Tensor Reshape(params int[] dims) => Ops.Reshape(this, dims);

    /// <summary>Rows [start, start+length) of the leading axis, sharing storage. Differentiable.</summary>
    public Tensor Narrow(int start, int length) => Ops.Narrow(this, start, length);

    /// <summary>A new handle on the same storage (refcount + 1), outside any scope and the tape.</summary>
    internal Tensor Alias(Shape shape, long offset, bool registerInScope)
    {
        Storage.Retain();
        return new Tensor(Storage, offset, shape, DType, registerInScope);
    }

    /// <summary>A handle for the tape: keeps the bytes alive and counts them as activations.</summary>
    internal Tensor AliasForSave()
    {
        var alias = Alias(Shape, Offset, registerInScope: false);
        alias.Storage.MarkSaved();
        alias._savedAlias = true;
        return alias;
    }

    private bool _savedAlias;

    /// <summary>A copy with no autograd history. Gradients do not flow through it.</summary>
    public Tensor Detach()
    {
        var copy = Empty(Shape, DType, Backend);
        Backend.Copy(this, copy);
        return copy;
    }

    public Tensor Clone() => Ops.Clone(this);

    /// <summary>
    /// This tensor on <paramref name="backend"/> (PyTorch's <c>.to(device)</c>), outside autograd: a new handle
    /// on the same storage when it already lives there, else a device-to-device copy
    /// (<see cref="IBackend.CopyPeer"/>), charged to the current account and category. The caller disposes
    /// the result either way.
    /// </summary>
    public Tensor To(IBackend backend)
    {
        ArgumentNullException.ThrowIfNull(backend);
        if (ReferenceEquals(backend, Backend)) return Alias(Shape, Offset, registerInScope: true);
        var copy = Empty(Shape, DType, backend);
        backend.CopyPeer(this, copy);
        return copy;
    }

    /// <summary><see cref="To"/> the device of <paramref name="target"/>, a transient charged as workspace when a copy is needed.</summary>
    internal Tensor ToDeviceOf(Tensor target)
    {
        using (MemoryAccount.Use(MemoryCategory.Workspace)) return To(target.Backend);
    }

    /// <summary>Drops the leaf gradient, so the next backward starts from zero.</summary>
    public void ZeroGrad()
    {
        Grad?.Dispose();
        Grad = null;
    }

    /// <summary>Back-propagates from this scalar (or from any tensor given a seed of its shape).</summary>
    public void Backward(Tensor? seed = null) => Tape.Current.Backward(this, seed);

    /// <summary>
    /// Gives this tensor the storage, device and shape of <paramref name="replacement"/> (a fresh tensor of the same
    /// dtype, which is consumed) and releases its own. Its identity, name and every reference to it stay valid: how
    /// SDP narrows a layer's weight to the held units, or gives a meta-built subnetwork its storage, while the layer
    /// keeps the tensor in a field.
    /// </summary>
    internal void TakeOver(Tensor replacement)
    {
        ArgumentNullException.ThrowIfNull(replacement);
        if (replacement.DType != DType || replacement.Offset != 0 || replacement._savedAlias || replacement.Grad is not null)
            throw new ArgumentException($"Tensor.TakeOver: {replacement.Describe()} must be a fresh tensor of {DType.Name()}", nameof(replacement));
        if (Grad is not null || _held is not null || _savedAlias)
            throw new InvalidOperationException($"Tensor.TakeOver: {Describe()} has a gradient, held slices or a saved alias; only a tensor at rest can change its storage");
        var old = _storage ?? throw new ObjectDisposedException(Describe());
        _storage = replacement._storage ?? throw new ObjectDisposedException(replacement.Describe());
        replacement._storage = null;
        (Backend, Shape, Offset) = (replacement.Backend, replacement.Shape, 0);
        old.Release();
    }

    public void Dispose()
    {
        var storage = _storage;
        if (storage is null) return;
        _heldIndices?.Dispose();
        _heldIndices = null;
        _storage = null;
        if (_savedAlias) storage.UnmarkSaved();
        storage.Release();
    }

    internal string Describe() => $"{Name ?? "tensor"}{Shape} {DType.Name()}";

    public override string ToString()
    {
        if (IsDisposed) return $"{Describe()} [disposed]";
        var sb = new StringBuilder();
        sb.Append(Describe()).Append(" on ").Append(Device);
        if (Numel <= 16)
        {
            sb.Append(" [").Append(string.Join(", ", ToDoubles().Select(v => v.ToString("G6")))).Append(']');
        }
        return sb.ToString();
    }

    // ---- operators (each records autograd when an input requires grad) -----------------------------

    public static Tensor operator +(Tensor a, Tensor b) => Ops.Add(a, b);

    public static Tensor operator -(Tensor a, Tensor b) => Ops.Sub(a, b);

    public static Tensor operator *(Tensor a, Tensor b) => Ops.Mul(a, b);

    public static Tensor operator /(Tensor a, Tensor b) => Ops.Div(a, b);

    public static Tensor operator -(Tensor a) => Ops.Neg(a);

    public static Tensor operator *(Tensor a, double s) => Ops.Scale(a, s);

    public static Tensor operator *(double s, Tensor a) => Ops.Scale(a, s);

    public static Tensor operator +(Tensor a, double s) => Ops.AddScalar(a, s);
}
