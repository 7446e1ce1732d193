namespace Sdp.Engine.Subnetworks;

/// <summary>Granularity of SDP subnetworks (method reference §3): hidden neurons/channels, or whole blocks.</summary>
public enum SubnetLevel
{
    /// <summary>N-SDP: one group per layer; units are hidden-unit indices (MLP neurons, internal conv channels).</summary>
    Neuron,

    /// <summary>B-SDP: one group of residual/decoder blocks; units are module names.</summary>
    Block,
}

/// <summary>
/// A model-agnostic set of maskable units (method reference §2.2): <paramref name="UnitCount"/> units,
/// each with its parameter count and forward FLOPs (per token or per sample; only ratios matter).
/// At neuron level the group is named after its module (e.g. "model.layers.0.mlp") and units are
/// indices 0..UnitCount-1 (<paramref name="UnitNames"/> null); at block level the units are module
/// names ("model.layers.2", "layer3.1").
/// </summary>
public sealed record UnitGroup(string Name, int UnitCount, IReadOnlyList<string>? UnitNames, long[] ParamsPerUnit, long[] FlopsPerUnit)
{
    /// <summary>A group of <paramref name="count"/> index units that all have the same cost.</summary>
    public static UnitGroup Uniform(string name, int count, long paramsPerUnit, long flopsPerUnit = 0)
        => new(name, count, null, Enumerable.Repeat(paramsPerUnit, count).ToArray(), Enumerable.Repeat(flopsPerUnit, count).ToArray());

    /// <summary>The label of unit <paramref name="unit"/>: its module name, or its index.</summary>
    public string UnitLabel(int unit) => UnitNames?[unit] ?? unit.ToString(System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>Parameters of all units of the group.</summary>
    public long TotalParams => ParamsPerUnit.Sum();

    /// <summary>Throws <see cref="ArgumentException"/> naming the group and the inconsistent field.</summary>
    public void Validate()
    {
        if (string.IsNullOrEmpty(Name)) throw new ArgumentException("UnitGroup: the name must not be empty");
        if (UnitCount < 1) throw new ArgumentException($"UnitGroup \"{Name}\": UnitCount must be at least 1, got {UnitCount}");
        if (ParamsPerUnit is null || ParamsPerUnit.Length != UnitCount)
            throw new ArgumentException($"UnitGroup \"{Name}\": ParamsPerUnit has {ParamsPerUnit?.Length ?? 0} entries, expected UnitCount = {UnitCount}");
        if (FlopsPerUnit is null || FlopsPerUnit.Length != UnitCount)
            throw new ArgumentException($"UnitGroup \"{Name}\": FlopsPerUnit has {FlopsPerUnit?.Length ?? 0} entries, expected UnitCount = {UnitCount}");
        if (UnitNames is not null)
        {
            if (UnitNames.Count != UnitCount) throw new ArgumentException($"UnitGroup \"{Name}\": UnitNames has {UnitNames.Count} entries, expected UnitCount = {UnitCount}");
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (string n in UnitNames)
            {
                if (string.IsNullOrEmpty(n)) throw new ArgumentException($"UnitGroup \"{Name}\": unit names must not be empty");
                if (!seen.Add(n)) throw new ArgumentException($"UnitGroup \"{Name}\": unit name \"{n}\" appears twice");
            }
        }
        for (int u = 0; u < UnitCount; u++)
        {
            if (ParamsPerUnit[u] < 0 || FlopsPerUnit[u] < 0)
                throw new ArgumentException($"UnitGroup \"{Name}\": unit {UnitLabel(u)} has a negative cost (params {ParamsPerUnit[u]}, flops {FlopsPerUnit[u]})");
        }
    }
}

/// <summary>
/// Where one tensor of a model (a parameter or a buffer, by its dotted name, e.g.
/// "model.layers.0.mlp.gate_proj.weight" or "layer1.0.bn1.running_mean") sits in the maskable units.
/// <para>
/// Sliced (<paramref name="Unit"/> null, neuron level): the tensor is cut along <paramref name="Axis"/>
/// into <c>Groups[Group].UnitCount · SlicesPerUnit</c> slices and unit u owns the consecutive slices
/// [u·SlicesPerUnit, (u+1)·SlicesPerUnit). gate_proj (F, D): Axis 0; down_proj (D, F): Axis 1; a KV-group
/// unit of q_proj owns GroupSize·HeadDim rows (SlicesPerUnit = GroupSize·HeadDim).
/// </para>
/// <para>Whole (<paramref name="Unit"/> set, block level): the entire tensor belongs to that unit.</para>
/// Tensors without a binding are shared: every worker holds them.
/// </summary>
public sealed record UnitBinding(string Tensor, int Group, int Axis = 0, int SlicesPerUnit = 1, int? Unit = null)
{
    public bool IsWhole => Unit is not null;
}

/// <summary>
/// The maskable units of a model plus the parameters every worker holds (embeddings, stem, norms, head,
/// projection shortcuts): <see cref="SharedParams"/> + Σ group params = the model's parameter count.
/// <see cref="Bindings"/> maps the model's tensors onto the units (empty when only a plan is needed).
/// </summary>
public sealed record MaskableUnits(IReadOnlyList<UnitGroup> Groups, long SharedParams, SubnetLevel Level, IReadOnlyList<UnitBinding>? Bindings = null)
{
    /// <summary>The bindings, never null.</summary>
    public IReadOnlyList<UnitBinding> TensorBindings => Bindings ?? [];

    /// <summary>Shared plus maskable parameters.</summary>
    public long TotalParams => SharedParams + Groups.Sum(g => g.TotalParams);
}
