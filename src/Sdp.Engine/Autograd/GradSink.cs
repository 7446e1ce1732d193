using Sdp.Engine.Memory;

namespace Sdp.Engine.Autograd;

/// <summary>
/// Gradients in flight during one backward pass. Leaves accumulate into their persistent
/// <see cref="Tensor.Grad"/> (category Gradients); intermediate tensors get transient buffers
/// (Workspace) that are freed once the node that produced them has consumed them.
/// A leaf with <see cref="Tensor.Held"/> has a compact Grad: ops that write full-shape gradients get a
/// transient full-shape buffer (Workspace) from <see cref="For"/>, and the tape folds its held slices into
/// the compact Grad as soon as the node's backward returns (<see cref="FlushHeld"/>).
/// </summary>
public sealed class GradSink : IDisposable
{
    private readonly Dictionary<long, Tensor> _pending = [];
    private readonly List<(Tensor Leaf, Tensor Full)> _heldPending = [];

    /// <summary>
    /// The buffer to accumulate <paramref name="input"/>'s gradient into (zeros on first request), or
    /// null when no gradient is needed for it. Always shaped like <paramref name="input"/>, also for a leaf
    /// with held slices.
    /// </summary>
    public Tensor? For(Tensor input)
    {
        if (!input.RequiresGrad) return null;
        if (input.IsLeaf)
        {
            AutogradCounters.AddWeightGrad(input.Numel);
            if (input.Held is not null)
            {
                foreach (var (leaf, full) in _heldPending)
                {
                    if (ReferenceEquals(leaf, input)) return full;
                }
                var buffer = Tensor.Allocate(input.Shape, input.DType, input.Backend, MemoryCategory.Workspace, registerInScope: false);
                input.Backend.Fill(buffer, 0);
                _heldPending.Add((input, buffer));
                return buffer;
            }
            return LeafGrad(input);
        }
        if (!_pending.TryGetValue(input.Id, out var g))
        {
            g = Tensor.Allocate(input.Shape, input.DType, input.Backend, MemoryCategory.Workspace, registerInScope: false);
            input.Backend.Fill(g, 0);
            _pending.Add(input.Id, g);
        }
        return g;
    }

    /// <summary>
    /// The buffer for <paramref name="input"/>'s gradient when the caller writes every element of it. When nothing has
    /// been accumulated for it yet (a non-leaf seen for the first time, or a leaf without held slices whose Grad does
    /// not exist yet), the buffer is fresh and unfilled (Fresh = true): the caller overwrites it, which saves the zero
    /// fill and one read of the buffer. Otherwise it is <see cref="For"/>'s buffer (Fresh = false) and the caller adds
    /// into it. Null Buffer when no gradient is needed.
    /// </summary>
    internal (Tensor? Buffer, bool Fresh) ForWrite(Tensor input)
    {
        if (!input.RequiresGrad) return (null, false);
        if (input.IsLeaf)
        {
            if (input.Held is not null || input.Grad is not null) return (For(input), false);
            AutogradCounters.AddWeightGrad(input.Numel);
            return (NewLeafGrad(input), true);
        }
        if (_pending.ContainsKey(input.Id)) return (For(input), false);
        var g = Tensor.Allocate(input.Shape, input.DType, input.Backend, MemoryCategory.Workspace, registerInScope: false);
        _pending.Add(input.Id, g);
        return (g, true);
    }

    /// <summary>
    /// <see cref="ForWrite"/> for up to three inputs whose gradients one backend call writes under one overwrite flag
    /// (a null input: no gradient wanted). Overwrite when every buffer returned is fresh, the usual case (an activation's
    /// first gradient, a weight's first of the step); otherwise the fresh ones are zeroed here and the call accumulates.
    /// </summary>
    internal (Tensor? First, Tensor? Second, Tensor? Third, bool Overwrite) ForWriteTogether(Tensor? first, Tensor? second, Tensor? third)
    {
        var (a, aFresh) = first is null ? (null, false) : ForWrite(first);
        var (b, bFresh) = second is null ? (null, false) : ForWrite(second);
        var (c, cFresh) = third is null ? (null, false) : ForWrite(third);
        bool overwrite = (a is null || aFresh) && (b is null || bFresh) && (c is null || cFresh);
        if (!overwrite)
        {
            if (aFresh) a!.Backend.Fill(a, 0);
            if (bFresh) b!.Backend.Fill(b, 0);
            if (cFresh) c!.Backend.Fill(c, 0);
        }
        return (a, b, c, overwrite);
    }

    /// <summary>
    /// Gives <paramref name="input"/> the gradient <paramref name="grad"/> elementwise (same element count, any shape).
    /// <paramref name="grad"/> must be the node's own incoming gradient, which no one reads after the node: when
    /// nothing has been accumulated for a non-leaf input yet, its storage becomes the input's gradient (an alias in
    /// the input's shape), with no copy; otherwise it is added.
    /// </summary>
    internal void Adopt(Tensor input, Tensor grad)
    {
        if (!input.RequiresGrad) return;
        if (input.IsLeaf || _pending.ContainsKey(input.Id) || grad.Numel != input.Numel)
        {
            var target = For(input)!;
            using var view = grad.Alias(input.Shape, grad.Offset, registerInScope: false);
            target.Backend.Binary(Backends.BinaryOp.Add, target, view, target);
            return;
        }
        _pending.Add(input.Id, grad.Alias(input.Shape, grad.Offset, registerInScope: false));
    }

    /// <summary>
    /// The compact gradient (shape <see cref="Tensor.GradShape"/>) of a leaf with held slices, for ops that
    /// compute only the held slices' gradient (the += contract applies), or null when it needs none.
    /// </summary>
    internal Tensor? CompactFor(Tensor leaf)
    {
        if (!leaf.RequiresGrad) return null;
        if (!leaf.IsLeaf || leaf.Held is null) throw new InvalidOperationException($"CompactFor: {leaf.Describe()} is not a leaf with held slices");
        var g = LeafGrad(leaf);
        AutogradCounters.AddWeightGrad(g.Numel);
        return g;
    }

    /// <summary>The leaf's persistent gradient, allocated zero-filled (Gradients) with its GradShape on first use.</summary>
    private static Tensor LeafGrad(Tensor leaf)
    {
        if (leaf.Grad is null) leaf.Backend.Fill(NewLeafGrad(leaf), 0);
        return leaf.Grad!;
    }

    /// <summary>Gives the leaf a new, unfilled persistent gradient (Gradients) of its GradShape.</summary>
    private static Tensor NewLeafGrad(Tensor leaf)
    {
        leaf.Grad = Tensor.Allocate(leaf.GradShape, leaf.DType, leaf.Backend, MemoryCategory.Gradients, registerInScope: false);
        leaf.Grad.Name = leaf.Name is null ? null : leaf.Name + ".grad";
        return leaf.Grad;
    }

    /// <summary>Adds the held slices of every transient full-shape leaf buffer into the leaf's compact Grad and frees the buffer.</summary>
    internal void FlushHeld()
    {
        if (_heldPending.Count == 0) return;
        try
        {
            foreach (var (leaf, full) in _heldPending)
            {
                leaf.Backend.GatherHeld(full, leaf.Held!.Axis, leaf.HeldIndices!, LeafGrad(leaf), accumulate: true);
            }
        }
        finally
        {
            foreach (var (_, full) in _heldPending) full.Dispose();
            _heldPending.Clear();
        }
    }

    /// <summary>Adds <paramref name="grad"/> to <paramref name="input"/>'s gradient.</summary>
    public void Accumulate(Tensor input, Tensor grad)
    {
        var target = For(input);
        if (target is null) return;
        if (target.Shape.Numel != grad.Numel) throw new InvalidOperationException($"gradient for {input.Describe()} has shape {grad.Shape}");
        target.Backend.Binary(Backends.BinaryOp.Add, target, grad, target);
    }

    internal void Seed(Tensor root, Tensor seed)
    {
        var g = Tensor.Allocate(root.Shape, root.DType, root.Backend, MemoryCategory.Workspace, registerInScope: false);
        root.Backend.Copy(seed, g);
        _pending[root.Id] = g;
    }

    internal Tensor? Take(Tensor output) => _pending.Remove(output.Id, out var g) ? g : null;

    public void Dispose()
    {
        foreach (var g in _pending.Values) g.Dispose();
        _pending.Clear();
        foreach (var (_, full) in _heldPending) full.Dispose();
        _heldPending.Clear();
    }
}
