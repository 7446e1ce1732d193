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

    /// <summary>
    /// Whether SDP cut this module out of a forward-masked subnetwork (a block or sub-block the worker does not
    /// hold, or a layer none of whose hidden units it holds): it has no tensors left, and the module that runs it
    /// skips it (or, for a residual block, runs only its shortcut).
    /// </summary>
    public bool IsDropped { get; private set; }

    /// <summary>This module's own parameters and buffers (not its children's), with their local names.</summary>
    internal IEnumerable<(string Name, Tensor Tensor, bool IsParameter)> OwnTensors()
        => _parameters.Select(p => (p.Name, p.Tensor, true)).Concat(_buffers.Select(b => (b.Name, b.Tensor, false)));

    /// <summary>The direct children with their local names.</summary>
    internal IReadOnlyList<(string Name, Module Module)> Children => _children;

    /// <summary>
    /// Gives this module's own tensor <paramref name="name"/> the storage and shape of <paramref name="replacement"/>
    /// (see <see cref="Tensor.TakeOver"/>): how SDP narrows a layer to its held units and moves a meta-built
    /// subnetwork onto its device. The tensor object stays, so modules may keep theirs in fields.
    /// </summary>
    internal void ReplaceTensor(string name, Tensor replacement)
    {
        ArgumentNullException.ThrowIfNull(replacement);
        var (_, tensor, _) = OwnTensors().FirstOrDefault(t => t.Name == name);
        if (tensor is null) throw new ArgumentException($"{GetType().Name}: has no tensor named {name}", nameof(name));
        tensor.TakeOver(replacement);
    }

    /// <summary>
    /// Cuts this module and its descendants out of the model, except the descendants <paramref name="keep"/> accepts
    /// (a residual block's projection shortcut): their tensors are freed and they are marked <see cref="IsDropped"/>.
    /// </summary>
    internal void Drop(Func<Module, bool> keep)
    {
        IsDropped = true;
        foreach (var (_, p) in _parameters)
        {
            p.ZeroGrad();
            p.Dispose();
        }
        foreach (var (_, b) in _buffers) b.Dispose();
        _parameters.Clear();
        _buffers.Clear();
        foreach (var (_, child) in _children)
        {
            if (!keep(child)) child.Drop(keep);
        }
    }

    /// <summary>
    /// Gives every tensor of this module and its descendants that lives on the meta device real storage of the same
    /// shape and dtype on <paramref name="device"/>, zero-filled and charged as parameters: how a subnetwork
    /// built and cut on the meta device comes into being at its own size, never the dense model's (SDP then copies
    /// its values from the dense model).
    /// </summary>
    public void Materialize(Backends.IBackend device)
    {
        ArgumentNullException.ThrowIfNull(device);
        foreach (var (name, tensor, _) in OwnTensors().ToList())
        {
            if (tensor.Backend.Device.Kind != DeviceKind.Meta) continue;
            var storage = Tensor.Allocate(tensor.Shape, tensor.DType, device, MemoryCategory.Parameters, registerInScope: false);
            device.Fill(storage, 0); // defined values (zeros) until the real ones are copied in
            ReplaceTensor(name, storage);
        }
        foreach (var (_, child) in _children) child.Materialize(device);
        OnTensorsReplaced();
    }

    /// <summary>
    /// Called on every module, children first, after SDP cut a subnetwork out of the model: a module whose
    /// sub-block lost everything it computes drops what only served it (LLaMA's pre-norm of a dropped MLP).
    /// </summary>
    protected internal virtual void OnSubnetworkCut()
    {
    }

    /// <summary>Drops <paramref name="child"/> and its descendants from this subnetwork (from <see cref="OnSubnetworkCut"/>).</summary>
    protected void DropChild(Module child)
    {
        if (!_children.Any(c => ReferenceEquals(c.Module, child))) throw new ArgumentException($"{GetType().Name}: {child?.GetType().Name} is not a child of this module", nameof(child));
        child.Drop(_ => false);
    }

    /// <summary>
    /// Forward FLOPs per element of this module's own tensor <paramref name="name"/> for one sample, from the shape
    /// of the last input it saw (a linear or convolution weight: 2 per position it is applied at). SDP's unit costs
    /// sum this over a unit's slices; 0 for tensors whose compute is not counted (biases, norms' scales, statistics).
    /// </summary>
    protected internal virtual long FlopsPerElement(string name) => 0;

    /// <summary>Forward FLOPs per sample of computation this module does beyond its tensors (attention scores).</summary>
    protected internal virtual long OwnFlops => 0;

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
