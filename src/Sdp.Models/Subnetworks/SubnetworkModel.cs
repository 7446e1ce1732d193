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

/// <summary>
/// A model that SDP can cut into subnetworks: its maskable units (with <see cref="MaskableUnits.Bindings"/>
/// naming the tensors of every unit) and a factory for the dense model and for forward-masked
/// subnetworks. This is what a user implements to train their own model with SDP.
/// </summary>
public sealed class SubnetworkModel(MaskableUnits units, Func<IReadOnlyList<int[]>?, ITrainable> build)
{
    /// <summary>The maskable units, with tensor bindings.</summary>
    public MaskableUnits Units { get; } = units;

    /// <summary>
    /// Builds a model. <c>held</c> null: the dense model, initialised from the model's seed (identical to
    /// single-worker training). Otherwise a forward-masked subnetwork holding, for every group g of
    /// <see cref="Units"/>, exactly the units <c>held[g]</c> (ascending): tensors keep the dense model's
    /// names; a sliced tensor (see <see cref="UnitBinding"/>) holds only its held slices, in ascending unit
    /// order; tensors of whole units that are not held do not exist and their computation is skipped.
    /// A subnetwork's weights are placeholders: the SDP runtime overwrites every tensor from the dense model.
    /// </summary>
    public ITrainable Build(IReadOnlyList<int[]>? held) => build(held);
}
