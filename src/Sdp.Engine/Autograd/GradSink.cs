using Sdp.Engine.Memory;

namespace Sdp.Engine.Autograd;

/// <summary>
/// Gradients in flight during one backward pass. Leaves accumulate into their persistent
/// <see cref="Tensor.Grad"/> (category Gradients); intermediate tensors get transient buffers
/// (Workspace) that are freed once the node that produced them has consumed them.
/// </summary>
public sealed class GradSink : IDisposable
{
    private readonly Dictionary<long, Tensor> _pending = [];

    /// <summary>
    /// The buffer to accumulate <paramref name="input"/>'s gradient into (zeros on first request), or
    /// null when no gradient is needed for it.
    /// </summary>
    public Tensor? For(Tensor input)
    {
        if (!input.RequiresGrad) return null;
        if (input.IsLeaf)
        {
            if (input.Grad is null)
            {
                input.Grad = Tensor.Allocate(input.Shape, input.DType, input.Backend, MemoryCategory.Gradients, registerInScope: false);
                input.Grad.Name = input.Name is null ? null : input.Name + ".grad";
                input.Backend.Fill(input.Grad, 0);
            }
            return input.Grad;
        }
        if (!_pending.TryGetValue(input.Id, out var g))
        {
            g = Tensor.Allocate(input.Shape, input.DType, input.Backend, MemoryCategory.Workspace, registerInScope: false);
            input.Backend.Fill(g, 0);
            _pending.Add(input.Id, g);
        }
        return g;
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
    }
}
