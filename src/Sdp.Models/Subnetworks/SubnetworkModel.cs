using Sdp.Engine;
using Sdp.Engine.Backends.Meta;
using Sdp.Engine.Memory;
using Sdp.Engine.Nn;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Training;

namespace Sdp.Models.Subnetworks;

/// <summary>How forward-masked neuron-level subnetworks scale their hidden activations (§2.4) [I].</summary>
public enum NeuronScale
{
    /// <summary>No rescaling (default).</summary>
    None,

    /// <summary>HeteroFL-style: a layer holding c of its n units multiplies its hidden activations by n / c during training.</summary>
    InverseCoverage,
}

/// <summary>What happens to ResNet's downsampling blocks (first block of stages 2–4) at block level (§3.2) [I].</summary>
public enum DownsampleBlocks
{
    /// <summary>Default: the block is maskable; when dropped, its residual branch goes and its projection shortcut (shared) stays.</summary>
    DropBranchKeepShortcut,

    /// <summary>Downsampling blocks are never dropped: they are shared, not maskable units.</summary>
    AlwaysKeep,
}

/// <summary>Model-specific switches of the subnetwork constructions (method reference §3) [I].</summary>
public sealed record SubnetOptions
{
    /// <summary>Neuron level, LLaMA: also mask attention heads, by key/value group (default off).</summary>
    public bool MaskHeads { get; init; }

    /// <summary>Block level, LLaMA: the units are the attention and MLP sub-blocks instead of whole decoder layers.</summary>
    public bool SplitSublayers { get; init; }

    /// <summary>Block level, ResNet: what happens to downsampling blocks.</summary>
    public DownsampleBlocks Downsample { get; init; } = DownsampleBlocks.DropBranchKeepShortcut;

    /// <summary>Forward masking, neuron level: activation scaling.</summary>
    public NeuronScale NeuronScale { get; init; } = NeuronScale.None;
}

/// <summary>One sample's input and target shapes, run through a model on the meta device to count its units' FLOPs.</summary>
public sealed record SampleShape(Shape Inputs, DType InputType, Shape Targets, DType TargetType);

/// <summary>
/// A model SDP can train: how to build it, and its units declared from its modules (<see cref="Engine.Subnetworks.Units"/>).
/// The engine does the rest: it counts every unit's parameters and FLOPs from the modules, binds the tensors by
/// their paths, and cuts each worker's forward-masked subnetwork from the dense module tree. This is what a user
/// writes to train their own model with SDP:
/// <code>
/// var model = SubnetworkModel.For(() => new Mlp(), net => new Classifier(net, net.Forward),
///     net => net.Blocks.Select(b => Units.Hidden(b.Up, b.Down)));
/// </code>
/// </summary>
public sealed class SubnetworkModel
{
    private readonly Func<ITrainable> _build;
    private readonly Func<Module, IEnumerable<UnitDeclaration>> _declare;
    private readonly NeuronScale _scale;
    private readonly SampleShape? _sample;
    private readonly Lazy<MaskableUnits> _units;
    private Action<ITrainable>? _afterDense;
    private Func<ITrainable, ITrainable>? _wrap;

    /// <param name="build">Builds the dense model, initialised from its seed, on the current device (<see cref="DeviceScope"/>).</param>
    /// <param name="declare">The units of a model <paramref name="build"/> made, declared from its modules.</param>
    /// <param name="scale">Forward masking, neuron level: how held hidden units are scaled.</param>
    /// <param name="sample">
    /// One sample's shapes: FLOPs are then counted per sample (a convolution's per output pixel, attention's scores per
    /// token pair). Without one every layer counts as applied once, right for models of vectors (an MLP).
    /// </param>
    public SubnetworkModel(Func<ITrainable> build, Func<Module, IEnumerable<UnitDeclaration>> declare, NeuronScale scale = NeuronScale.None, SampleShape? sample = null)
    {
        (_build, _declare, _scale, _sample) = (build ?? throw new ArgumentNullException(nameof(build)), declare ?? throw new ArgumentNullException(nameof(declare)), scale, sample);
        _units = new Lazy<MaskableUnits>(ResolveUnits);
    }

    /// <summary>A model of type <typeparamref name="TModule"/>: built by <paramref name="build"/>, trained as <paramref name="trainable"/>, with units <paramref name="units"/>.</summary>
    public static SubnetworkModel For<TModule>(Func<TModule> build, Func<TModule, ITrainable> trainable, Func<TModule, IEnumerable<UnitDeclaration>> units,
        NeuronScale scale = NeuronScale.None, SampleShape? sample = null) where TModule : Module
    {
        ArgumentNullException.ThrowIfNull(build);
        ArgumentNullException.ThrowIfNull(trainable);
        ArgumentNullException.ThrowIfNull(units);
        return new SubnetworkModel(() => trainable(build()), module => units((TModule)module), scale, sample);
    }

    /// <summary>
    /// The same model whose dense builds (<see cref="Build"/> with null) are then passed to <paramref name="initialise"/>
    /// (weights loaded from a file); subnetworks take their values from the dense model anyway.
    /// </summary>
    public SubnetworkModel WithDenseInitialisation(Action<ITrainable> initialise)
    {
        ArgumentNullException.ThrowIfNull(initialise);
        return new SubnetworkModel(_build, _declare, _scale, _sample) { _afterDense = initialise, _wrap = _wrap };
    }

    /// <summary>The same model with every build, dense or cut, passed through <paramref name="wrap"/> (a trainable around the built one, on the same module).</summary>
    public SubnetworkModel Wrapping(Func<ITrainable, ITrainable> wrap)
    {
        ArgumentNullException.ThrowIfNull(wrap);
        return new SubnetworkModel(_build, _declare, _scale, _sample) { _afterDense = _afterDense, _wrap = wrap };
    }

    /// <summary>The maskable units with their tensor bindings, resolved once on a model built on the meta device.</summary>
    public MaskableUnits Units => _units.Value;

    /// <summary>
    /// Builds a model on the current device. <c>held</c> null: the dense model, initialised from the model's seed
    /// (identical to single-worker training). Otherwise the forward-masked subnetwork holding, for every group g of
    /// <see cref="Units"/>, exactly the units <c>held[g]</c> (ascending): it is built and cut on the meta device and
    /// only then given storage, so it never costs the dense model's memory. Tensors keep the dense names; a sliced
    /// tensor holds its held slices in unit order; an unheld block or an empty hidden layer is dropped. A
    /// subnetwork's values are zeros: the SDP runtime copies every tensor from the dense model.
    /// </summary>
    public ITrainable Build(IReadOnlyList<int[]>? held)
    {
        if (held is null)
        {
            var dense = _build();
            try
            {
                _afterDense?.Invoke(dense);
                return _wrap?.Invoke(dense) ?? dense;
            }
            catch
            {
                dense.Dispose();
                throw;
            }
        }
        var device = DeviceScope.Current;
        ITrainable model;
        // The skeleton is built and cut on the meta device, in an account of its own: it costs no worker anything.
        using (new MemoryAccount("subnetwork skeleton").Activate())
        using (DeviceScope.Use(MetaBackend.Instance))
        {
            model = _build();
            try
            {
                var declared = DeclaredUnits.Resolve(model.Module, _declare(model.Module));
                var (built, planned) = (declared.Units.Groups, Units.Groups);
                if (built.Count != planned.Count || built.Zip(planned).Any(p => p.First.Name != p.Second.Name || p.First.UnitCount != p.Second.UnitCount))
                    throw new InvalidOperationException("SubnetworkModel: the model declared different units on a second build; the declarations must depend only on the model's structure");
                declared.Cut(held, _scale == NeuronScale.InverseCoverage);
            }
            catch
            {
                model.Dispose();
                throw;
            }
        }
        try
        {
            model.Module.Materialize(device);
            return _wrap?.Invoke(model) ?? model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    private MaskableUnits ResolveUnits()
    {
        using var account = new MemoryAccount("unit resolution").Activate();
        using var meta = DeviceScope.Use(MetaBackend.Instance);
        using var model = _build();
        if (_sample is { } s)
        {
            using var noGrad = Engine.Autograd.GradMode.Disable();
            model.Module.Eval(); // one sample: batch statistics would be undefined; the skeleton is thrown away
            using var inputs = Tensor.Empty(s.Inputs, s.InputType, MetaBackend.Instance);
            using var targets = Tensor.Empty(s.Targets, s.TargetType, MetaBackend.Instance);
            using var loss = model.Loss(inputs, targets);
        }
        return DeclaredUnits.Resolve(model.Module, _declare(model.Module)).Units;
    }
}
