using Sdp.Engine.Distributed;
using Sdp.Engine.Nn;

namespace Sdp.Engine.Subnetworks;

/// <summary>SDP's masking regimes (method reference §2.4).</summary>
public enum Masking
{
    /// <summary>The worker's forward pass runs its subnetwork only; unheld units do not exist on it.</summary>
    Forward,

    /// <summary>The forward pass is dense; only held units get gradients and optimizer state.</summary>
    Backward,
}

/// <summary>
/// What one worker holds of a model's tensors under a plan: its units per group, and for every tensor
/// (by name, through <see cref="MaskableUnits.Bindings"/>) whether it is shared, a held or unheld whole
/// unit, or sliced into units. Everything SDP does with tensors goes through this: copying the dense
/// model into a worker, setting held slices for backward masking, the synchronisation and refresh lists,
/// and assembling the dense model back from the workers.
/// </summary>
public sealed class WorkerLayout
{
    private readonly Dictionary<string, UnitBinding> _bindings;

    public WorkerLayout(MaskableUnits units, SubnetworkPlan plan, int worker)
    {
        ArgumentNullException.ThrowIfNull(units);
        ArgumentNullException.ThrowIfNull(plan);
        if (worker < 0 || worker >= plan.Workers) throw new ArgumentOutOfRangeException(nameof(worker), $"WorkerLayout: worker {worker} is outside [0, {plan.Workers})");
        if (plan.Groups.Count != units.Groups.Count)
            throw new ArgumentException($"WorkerLayout: the plan has {plan.Groups.Count} unit groups but the model declares {units.Groups.Count}");
        for (int g = 0; g < units.Groups.Count; g++)
        {
            if (plan.Groups[g].Name != units.Groups[g].Name || plan.Groups[g].UnitCount != units.Groups[g].UnitCount)
                throw new ArgumentException($"WorkerLayout: plan group {g} is \"{plan.Groups[g].Name}\" with {plan.Groups[g].UnitCount} units, the model's is \"{units.Groups[g].Name}\" with {units.Groups[g].UnitCount}");
        }
        (Units, Plan, Worker) = (units, plan, worker);
        _bindings = new Dictionary<string, UnitBinding>(StringComparer.Ordinal);
        foreach (var b in units.TensorBindings)
        {
            if (b.Group < 0 || b.Group >= units.Groups.Count) throw new ArgumentException($"WorkerLayout: binding of {b.Tensor} names group {b.Group}; the model has {units.Groups.Count}");
            if (b.Unit is { } u && (u < 0 || u >= units.Groups[b.Group].UnitCount))
                throw new ArgumentException($"WorkerLayout: binding of {b.Tensor} names unit {u} of group \"{units.Groups[b.Group].Name}\", which has {units.Groups[b.Group].UnitCount}");
            if (b.SlicesPerUnit < 1) throw new ArgumentException($"WorkerLayout: binding of {b.Tensor} has SlicesPerUnit {b.SlicesPerUnit}; it must be at least 1");
            if (!_bindings.TryAdd(b.Tensor, b)) throw new ArgumentException($"WorkerLayout: tensor {b.Tensor} is bound twice");
        }
        HeldUnits = [.. Enumerable.Range(0, units.Groups.Count).Select(g => Enumerable.Range(0, units.Groups[g].UnitCount).Where(u => plan.Holds(worker, g, u)).ToArray())];
    }

    public MaskableUnits Units { get; }

    public SubnetworkPlan Plan { get; }

    public int Worker { get; }

    /// <summary>Per group, the units this worker holds, ascending (what <c>SubnetworkModel.Build</c> takes).</summary>
    public IReadOnlyList<int[]> HeldUnits { get; }

    public UnitBinding? BindingOf(string tensor) => _bindings.GetValueOrDefault(tensor);

    /// <summary>Whether the worker holds any part of the tensor (shared tensors: always).</summary>
    public bool HoldsAny(string tensor) => BindingOf(tensor) switch
    {
        null => true,
        { Unit: { } u } b => Plan.Holds(Worker, b.Group, u),
        { } b => HeldUnits[b.Group].Length > 0,
    };

    /// <summary>The slice indices (along the binding's axis of the dense tensor) of the units this worker holds, ascending.</summary>
    public int[] HeldSliceIndices(UnitBinding binding)
    {
        ArgumentNullException.ThrowIfNull(binding);
        if (binding.IsWhole) throw new ArgumentException($"WorkerLayout: {binding.Tensor} is a whole unit, not sliced");
        int per = binding.SlicesPerUnit;
        return [.. HeldUnits[binding.Group].SelectMany(u => Enumerable.Range(u * per, per))];
    }

    /// <summary>
    /// How <paramref name="tensor"/> (this worker's copy of dense tensor <paramref name="name"/>) is shared,
    /// for <see cref="HolderGroupedSync"/> and <see cref="UnitRefresh"/>: null holders for a shared tensor;
    /// one unit for a whole unit; for a sliced tensor one unit per held unit when its layout is compact, or
    /// one per unit of the group when it is full size. Null when the worker holds none of it.
    /// </summary>
    public SyncParameter? SyncEntry(string name, Tensor tensor, SyncTarget target)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        var binding = BindingOf(name);
        if (binding is null) return new SyncParameter(tensor);
        var group = Units.Groups[binding.Group];
        if (binding.Unit is { } unit) return new SyncParameter(tensor, 0, [[.. Plan.HoldersOf(binding.Group, unit)]]);
        var layout = target == SyncTarget.Gradient ? tensor.GradShape : tensor.Shape;
        int axis = binding.Axis < 0 ? binding.Axis + layout.Rank : binding.Axis;
        if (axis < 0 || axis >= layout.Rank) throw new ArgumentException($"WorkerLayout: binding axis {binding.Axis} is outside tensor {name} {layout}");
        int size = layout[axis], held = HeldUnits[binding.Group].Length;
        int[] units;
        if (size == group.UnitCount * binding.SlicesPerUnit) units = [.. Enumerable.Range(0, group.UnitCount)];
        else if (size == held * binding.SlicesPerUnit) units = HeldUnits[binding.Group];
        else
        {
            throw new ArgumentException(
                $"WorkerLayout: tensor {name} {layout} has {size} slices on axis {axis}; expected {group.UnitCount * binding.SlicesPerUnit} (all units of \"{group.Name}\") or {held * binding.SlicesPerUnit} (the {held} held by worker {Worker})");
        }
        if (units.Length == 0) return null;
        return new SyncParameter(tensor, axis, [.. units.Select(u => Plan.HoldersOf(binding.Group, u).ToArray())]);
    }
}
