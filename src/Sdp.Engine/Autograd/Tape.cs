using Sdp.Engine.Memory;

namespace Sdp.Engine.Autograd;

/// <summary>
/// A Wengert list: ops append nodes in execution order while grad mode is on and an input requires
/// grad, so reverse order is a valid topological order and backward is a reverse loop.
/// Each thread records its own tape (simulated workers run on their own threads).
/// A backward pass consumes the whole tape: nodes release their saved tensors as they run, and any
/// nodes not reached are released at the end.
/// </summary>
public sealed class Tape
{
    [ThreadStatic] private static Tape? _current;

    private readonly List<TapeNode> _nodes = [];

    public static Tape Current => _current ??= new Tape();

    public int Count => _nodes.Count;

    internal static void Record(TapeNode node)
    {
        node.Output.MarkProducedBy(node);
        Current._nodes.Add(node);
    }

    /// <summary>Drops every recorded node and its saved tensors without computing gradients.</summary>
    public void Clear()
    {
        foreach (var n in _nodes) n.Release();
        _nodes.Clear();
    }

    internal void Backward(Tensor root, Tensor? seed)
    {
        if (!root.RequiresGrad) throw new InvalidOperationException($"backward: {root.Describe()} does not require grad (no input of the ops that made it requires grad, or grad mode was off)");
        if (seed is null && root.Numel != 1) throw new InvalidOperationException($"backward: {root.Describe()} is not a scalar; pass a seed gradient of shape {root.Shape}");
        if (seed is not null && (seed.Shape != root.Shape || seed.DType != root.DType || seed.Device != root.Device))
            throw new ArgumentException($"backward: seed {seed.Describe()} on {seed.Device} must match {root.Describe()} on {root.Device}");

        int last = root.GradFn is null ? -1 : _nodes.LastIndexOf(root.GradFn);
        if (root.GradFn is not null && last < 0) throw new InvalidOperationException($"backward: {root.Describe()} was produced on another thread's tape, or its tape was already consumed by an earlier backward");

        using var sink = new GradSink();
        try
        {
            using (MemoryAccount.Use(MemoryCategory.Workspace))
            using (GradMode.Disable())
            {
                var ones = seed ?? Tensor.Allocate(root.Shape, root.DType, root.Backend, MemoryCategory.Workspace, registerInScope: false);
                try
                {
                    if (seed is null) root.Backend.Fill(ones, 1);
                    if (root.IsLeaf)
                    {
                        sink.Accumulate(root, ones);
                        sink.FlushHeld();
                        return;
                    }
                    sink.Seed(root, ones);
                }
                finally
                {
                    if (seed is null) ones.Dispose();
                }

                for (int i = last; i >= 0; i--)
                {
                    var node = _nodes[i];
                    var g = sink.Take(node.Output);
                    if (g is not null)
                    {
                        using (g)
                        using (var scratch = TensorScope.Begin())
                        {
                            node.Backward(g, sink);
                            // Held-slice leaves: fold the node's full-shape contribution into the compact Grad now, so at most one node's worth of full-size buffers exists.
                            sink.FlushHeld();
                        }
                    }
                    node.Release();
                }
            }
        }
        finally
        {
            Clear();
        }
    }
}
