namespace Sdp.Engine.Autograd;

/// <summary>
/// One recorded op. A node keeps what its backward needs through <see cref="Save"/> (those bytes count
/// as activations) and lets go of it as soon as its backward has run.
/// </summary>
public abstract class TapeNode
{
    private readonly List<Tensor> _saved = [];

    protected TapeNode(Tensor output, params Tensor[] inputs)
    {
        Output = output;
        Inputs = inputs;
    }

    public virtual string OpName
    {
        get
        {
            var n = GetType().Name;
            return n.EndsWith("Node", StringComparison.Ordinal) ? n[..^4] : n;
        }
    }

    /// <summary>The tensor this node produced. Only its identity is used after the forward pass.</summary>
    internal Tensor Output { get; }

    /// <summary>The op's inputs. Their identity, shape and dtype are used; their data only if saved.</summary>
    public Tensor[] Inputs { get; }

    /// <summary>Keeps <paramref name="t"/>'s bytes alive for backward and returns the handle to use there.</summary>
    protected Tensor Save(Tensor t)
    {
        var alias = t.AliasForSave();
        _saved.Add(alias);
        return alias;
    }

    /// <summary>Accumulates the gradients of <see cref="Inputs"/> given that of <see cref="Output"/>.
    /// Use <see cref="GradSink.For"/> to get an input's accumulator (null when it needs no gradient).</summary>
    protected internal abstract void Backward(Tensor gradOutput, GradSink grads);

    internal void Release()
    {
        foreach (var t in _saved) t.Dispose();
        _saved.Clear();
    }
}
