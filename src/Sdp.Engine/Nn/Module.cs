using Sdp.Engine.Memory;

namespace Sdp.Engine.Nn;

/// <summary>
/// A layer or model: named parameters, buffers and child modules, registered in order. Names join
/// with dots exactly like PyTorch's state_dict keys ("model.layers.0.mlp.gate_proj.weight"), so a
/// checkpoint load is a lookup by name. Parameters are charged to <see cref="MemoryCategory.Parameters"/>
/// and live outside any <see cref="TensorScope"/>; <see cref="Dispose"/> frees them and their gradients.
/// </summary>
public abstract class Module : IDisposable
{
    private readonly List<(string Name, Tensor Tensor)> _parameters = [];
    private readonly List<(string Name, Tensor Tensor)> _buffers = [];
    private readonly List<(string Name, Module Module)> _children = [];

    /// <summary>Training mode (batch statistics, dropout) or evaluation mode.</summary>
    public bool IsTraining { get; private set; } = true;

    /// <summary>Sets training mode on this module and every descendant.</summary>
    public void Train(bool training = true)
    {
        IsTraining = training;
        foreach (var (_, child) in _children) child.Train(training);
    }

    public void Eval() => Train(false);

    /// <summary>Every parameter, depth first in registration order, with its dotted name.</summary>
    public IEnumerable<(string Name, Tensor Tensor)> NamedParameters() => Named(m => m._parameters, "");

    /// <summary>Every buffer (state that is saved but not trained, e.g. running statistics).</summary>
    public IEnumerable<(string Name, Tensor Tensor)> NamedBuffers() => Named(m => m._buffers, "");

    /// <summary>This module and every descendant with its dotted path ("" for this one).</summary>
    public IEnumerable<(string Name, Module Module)> NamedModules(string prefix = "")
    {
        yield return (prefix, this);
        foreach (var (name, child) in _children)
        {
            foreach (var pair in child.NamedModules(Join(prefix, name))) yield return pair;
        }
    }

    public IReadOnlyList<Tensor> Parameters() => [.. NamedParameters().Select(p => p.Tensor)];

    /// <summary>
    /// Tells this module and every descendant that their tensors were overwritten from outside (a
    /// checkpoint load, a copy between models), so state a module keeps on the host (BatchNorm's batch
    /// counter) is re-read from its tensor once, instead of on every step.
    /// </summary>
    public void TensorsReplaced()
    {
        OnTensorsReplaced();
        foreach (var (_, child) in _children) child.TensorsReplaced();
    }

    /// <summary>See <see cref="TensorsReplaced"/>; modules with host-side state override it.</summary>
    protected virtual void OnTensorsReplaced()
    {
    }

    public long ParameterCount => NamedParameters().Sum(p => p.Tensor.Numel);

    protected T RegisterModule<T>(string name, T module) where T : Module
    {
        _children.Add((name, module));
        return module;
    }

    /// <summary>Registers a trainable tensor: a leaf that requires grad.</summary>
    protected Tensor RegisterParameter(string name, Tensor tensor)
    {
        tensor.RequiresGrad = true;
        tensor.Name ??= name;
        _parameters.Add((name, tensor));
        return tensor;
    }

    protected Tensor RegisterBuffer(string name, Tensor tensor)
    {
        tensor.Name ??= name;
        _buffers.Add((name, tensor));
        return tensor;
    }

    /// <summary>
    /// A parameter-category tensor owned by the module (never by an open TensorScope), on
    /// <paramref name="backend"/> or else the current device (<see cref="DeviceScope"/>): a model is built
    /// where it will train.
    /// </summary>
    protected static Tensor NewParameterTensor(Shape shape, DType dtype, Backends.IBackend? backend = null)
        => Tensor.Allocate(shape, dtype, backend ?? DeviceScope.Current, MemoryCategory.Parameters, registerInScope: false);

    private IEnumerable<(string, Tensor)> Named(Func<Module, List<(string, Tensor)>> select, string prefix)
    {
        foreach (var (name, t) in select(this)) yield return (Join(prefix, name), t);
        foreach (var (name, child) in _children)
        {
            foreach (var pair in child.Named(select, Join(prefix, name))) yield return pair;
        }
    }

    private static string Join(string prefix, string name) => prefix.Length == 0 ? name : prefix + "." + name;

    public virtual void Dispose()
    {
        foreach (var (_, p) in _parameters)
        {
            p.ZeroGrad();
            p.Dispose();
        }
        foreach (var (_, b) in _buffers) b.Dispose();
        foreach (var (_, c) in _children) c.Dispose();
        GC.SuppressFinalize(this);
    }
}
