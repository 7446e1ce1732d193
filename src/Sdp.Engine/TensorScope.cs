namespace Sdp.Engine;

/// <summary>
/// Owns every tensor created on this thread while it is the innermost open scope, and disposes them
/// all at once. A training step runs inside one, so activations and temporaries are freed
/// deterministically at the end of the step:
/// <code>
/// using (var step = TensorScope.Begin()) { var loss = model.Forward(x); loss.Backward(); opt.Step(); }
/// </code>
/// Use <see cref="Keep"/> to hand a result to the enclosing scope (or to the caller when there is none).
/// </summary>
public sealed class TensorScope : IDisposable
{
    [ThreadStatic] private static TensorScope? _innermost;

    private readonly TensorScope? _parent;
    private readonly List<Tensor> _owned = [];
    private bool _disposed;

    private TensorScope(TensorScope? parent) => _parent = parent;

    public static TensorScope Begin() => _innermost = new TensorScope(_innermost);

    /// <summary>Tensors currently owned by this scope.</summary>
    public int Count => _owned.Count;

    internal static void Register(Tensor tensor) => _innermost?._owned.Add(tensor);

    /// <summary>Moves <paramref name="tensor"/> out of this scope into the enclosing one, or to the caller.</summary>
    public Tensor Keep(Tensor tensor)
    {
        if (_owned.Remove(tensor)) _parent?._owned.Add(tensor);
        return tensor;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_innermost != this) throw new InvalidOperationException("TensorScope disposed out of order: inner scopes must be disposed first");
        _innermost = _parent;
        foreach (var t in _owned) t.Dispose();
        _owned.Clear();
    }
}
