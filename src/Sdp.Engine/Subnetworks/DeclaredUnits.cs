using System.Globalization;
using Sdp.Engine.Autograd;
using Sdp.Engine.Nn;

namespace Sdp.Engine.Subnetworks;

/// <summary>
/// A model's unit declarations resolved against one instance of it: the <see cref="MaskableUnits"/> (groups,
/// parameter counts and FLOPs from the modules' shapes, tensor bindings from their paths) and what
/// <see cref="Cut"/> needs to turn that instance into a worker's forward-masked subnetwork.
/// </summary>
public sealed class DeclaredUnits
{
    /// <summary>One sliced tensor of a neuron group: the module, its local tensor name, the axis and the slices per unit.</summary>
    private sealed record Slice(Module Module, string Tensor, int Axis, int PerUnit);

    /// <summary>A neuron group: its sliced tensors, the modules that go when a worker holds none of it, and the layer that reads it (scaled under inverse coverage).</summary>
    private sealed record NeuronGroup(IReadOnlyList<Slice> Slices, IReadOnlyList<Module> Modules, WeightedLayer? Reader);

    private readonly List<NeuronGroup> _neuronGroups = [];
    private readonly List<BlockUnit> _blocks = [];
    private readonly Module _model;

    private DeclaredUnits(Module model) => _model = model;

    /// <summary>The units, with their tensor bindings.</summary>
    public MaskableUnits Units { get; private set; } = null!;

    /// <summary>
    /// Resolves <paramref name="declarations"/> against <paramref name="model"/>. A model is cut at one level: all
    /// declarations are neuron-level (one group each) or all are blocks (one group of them). FLOPs come from each
    /// layer's last input (see <see cref="Module.FlopsPerElement"/>): run one sample through the model first, on the
    /// meta device, for per-sample counts. Refused with an <see cref="ArgumentException"/>: a module that is not part
    /// of the model, a module that cannot be sliced, sizes that disagree between the modules of one group, and a
    /// tensor claimed by two units.
    /// </summary>
    public static DeclaredUnits Resolve(Module model, IEnumerable<UnitDeclaration> declarations)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(declarations);
        var declared = declarations.ToList();
        if (declared.Count == 0) throw new ArgumentException("DeclaredUnits: the model declares no units");
        if (declared.Any(d => d is null)) throw new ArgumentException("DeclaredUnits: a unit declaration is null");
        bool blocks = declared[0] is BlockUnit;
        if (declared.Any(d => d is BlockUnit != blocks))
            throw new ArgumentException("DeclaredUnits: block units and neuron-level units (Hidden, Heads) are declared together; a model is cut at one level, declare one or the other");
        var paths = new Dictionary<Module, string>(ReferenceEqualityComparer.Instance);
        foreach (var (path, module) in model.NamedModules()) paths.TryAdd(module, path);
        var result = new DeclaredUnits(model);
        var claims = new Dictionary<string, string>(StringComparer.Ordinal);
        result.Units = blocks
            ? result.ResolveBlocks([.. declared.Cast<BlockUnit>()], paths, claims)
            : result.ResolveNeurons(declared, paths, claims);
        result.Units.Groups.ToList().ForEach(g => g.Validate());
        return result;
    }

    private MaskableUnits ResolveNeurons(List<UnitDeclaration> declared, Dictionary<Module, string> paths, Dictionary<string, string> claims)
    {
        var groups = new List<(string Name, int Count, long Params, long Flops, string Fallback)>();
        var bindings = new List<UnitBinding>();
        foreach (var declaration in declared)
        {
            var (group, count, fallback) = declaration switch
            {
                HiddenUnits h => ResolveHidden(h, paths),
                HeadUnits h => ResolveHeads(h, paths),
                _ => throw new ArgumentException($"DeclaredUnits: unknown declaration {declaration}"),
            };
            string name = CommonParent(group.Modules.Select(m => paths[m]));
            long parameters = 0, flops = 0;
            foreach (var s in group.Slices)
            {
                var (tensor, isParameter) = OwnTensor(s.Module, s.Tensor);
                long perUnit = tensor.Numel / count;
                if (isParameter) parameters += perUnit;
                flops += perUnit * s.Module.FlopsPerElement(s.Tensor);
            }
            groups.Add((name, count, parameters, flops, fallback));
            _neuronGroups.Add(group);
        }
        // Two groups under one module (two hidden layers of one block) are named after their producers instead.
        var repeated = groups.GroupBy(g => g.Name).Where(g => g.Count() > 1 || g.Key.Length == 0).Select(g => g.Key).ToHashSet();
        var owners = paths.Where(p => p.Value.Length > 0).ToDictionary(p => p.Value, p => p.Key, StringComparer.Ordinal);
        var unitGroups = groups.Select(g => repeated.Contains(g.Name)
            ? UnitGroup.Uniform(g.Fallback, g.Count, g.Params, g.Flops)
            // The group's own module (the attention around its heads) shares its extra compute among the units.
            : UnitGroup.Uniform(g.Name, g.Count, g.Params, g.Flops + (owners.TryGetValue(g.Name, out var owner) ? owner.OwnFlops / g.Count : 0))).ToList();
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var g in unitGroups)
        {
            if (!names.Add(g.Name)) throw new ArgumentException($"DeclaredUnits: two unit groups are both named \"{g.Name}\" (the same hidden layer declared twice?)");
        }
        for (int g = 0; g < _neuronGroups.Count; g++)
        {
            foreach (var s in _neuronGroups[g].Slices)
            {
                string tensor = Join(paths[s.Module], s.Tensor);
                Claim(claims, tensor, $"unit group \"{unitGroups[g].Name}\"");
                bindings.Add(new UnitBinding(tensor, g, s.Axis, s.PerUnit));
            }
        }
        return new MaskableUnits(unitGroups, _model.ParameterCount - unitGroups.Sum(g => g.TotalParams), SubnetLevel.Neuron, bindings);
    }

    private static (NeuronGroup Group, int Count, string Fallback) ResolveHidden(HiddenUnits h, Dictionary<Module, string> paths)
    {
        string producer = PathOf(h.Producer, paths, "the producer"), consumer = PathOf(h.Consumer, paths, "the consumer");
        var (count, slices) = Rows(h.Producer, producer, "producer");
        int consumed = h.Consumer is WeightedLayer reader ? reader.Weight.Shape[1]
            : throw CannotSlice(h.Consumer, consumer, "consumer (a Linear or Conv2d reading the hidden units)");
        if (consumed != count)
            throw new ArgumentException($"DeclaredUnits: {consumer} reads {consumed} inputs but {producer} makes {count} hidden units; the consumer of a hidden layer must read exactly its producer's outputs");
        slices.Add(new Slice(h.Consumer, "weight", 1, 1));
        foreach (var extra in h.Alongside ?? [])
        {
            string path = PathOf(extra, paths, "a module alongside");
            var (n, more) = extra is BatchNorm2d bn ? (bn.Weight.Shape[0], new List<Slice> { new(bn, "weight", 0, 1), new(bn, "bias", 0, 1), new(bn, "running_mean", 0, 1), new(bn, "running_var", 0, 1) }) : Rows(extra, path, "module alongside");
            if (n != count) throw new ArgumentException($"DeclaredUnits: {path} has {n} units along the sliced axis but {producer} makes {count}; modules sliced with a hidden layer must have its width");
            slices.AddRange(more);
        }
        return (new NeuronGroup(slices, [h.Producer, h.Consumer, .. h.Alongside ?? []], (WeightedLayer)h.Consumer), count, producer);
    }

    /// <summary>The output rows (Linear) or channels (Conv2d) of <paramref name="module"/>, weight and bias, one slice each.</summary>
    private static (int Count, List<Slice> Slices) Rows(Module module, string path, string role)
    {
        var layer = module as WeightedLayer ?? throw CannotSlice(module, path, $"{role} (a Linear or Conv2d sliced by output rows or channels, or a BatchNorm2d)");
        var slices = new List<Slice> { new(module, "weight", 0, 1) };
        if (layer.Bias is not null) slices.Add(new Slice(module, "bias", 0, 1));
        return (layer.Weight.Shape[0], slices);
    }

    private static (NeuronGroup Group, int Count, string Fallback) ResolveHeads(HeadUnits h, Dictionary<Module, string> paths)
    {
        string q = PathOf(h.Query, paths, "the query projection"), k = PathOf(h.Key, paths, "the key projection");
        string v = PathOf(h.Value, paths, "the value projection"), o = PathOf(h.Output, paths, "the output projection");
        int d = h.HeadDim, keyRows = h.Key.OutFeatures;
        if (d < 1 || keyRows % d != 0) throw new ArgumentException($"DeclaredUnits: {k} has {keyRows} rows, not a whole number of heads of head_dim {d}");
        if (h.Value.OutFeatures != keyRows) throw new ArgumentException($"DeclaredUnits: {v} has {h.Value.OutFeatures} rows but {k} has {keyRows}; keys and values must have the same heads");
        int groups = keyRows / d, queryRows = h.Query.OutFeatures;
        if (queryRows % keyRows != 0) throw new ArgumentException($"DeclaredUnits: {q} has {queryRows} rows, not a whole number of key/value groups of {keyRows} rows ({k})");
        if (h.Output.InFeatures != queryRows) throw new ArgumentException($"DeclaredUnits: {o} reads {h.Output.InFeatures} inputs but {q} makes {queryRows}");
        int perGroup = queryRows / groups;
        Slice[] slices = [new(h.Query, "weight", 0, perGroup), new(h.Key, "weight", 0, d), new(h.Value, "weight", 0, d), new(h.Output, "weight", 1, perGroup)];
        foreach (var (proj, path) in new[] { (h.Query, q), (h.Key, k), (h.Value, v) })
        {
            if (proj.Bias is not null) throw new ArgumentException($"DeclaredUnits: {path} has a bias; head units are declared for bias-free projections");
        }
        return (new NeuronGroup(slices, [h.Query, h.Key, h.Value, h.Output], null), groups, q);
    }

    private MaskableUnits ResolveBlocks(List<BlockUnit> declared, Dictionary<Module, string> paths, Dictionary<string, string> claims)
    {
        var names = new List<string>();
        var parameters = new List<long>();
        var flops = new List<long>();
        var bindings = new List<UnitBinding>();
        foreach (var block in declared)
        {
            string name = PathOf(block.Block, paths, "the block");
            foreach (var m in block.Alongside ?? []) PathOf(m, paths, "a module alongside block " + name);
            var keep = new HashSet<Module>(block.Keep ?? [], ReferenceEqualityComparer.Instance);
            foreach (var m in keep) PathOf(m, paths, "a module kept with block " + name);
            long p = 0, f = 0;
            foreach (var module in new[] { block.Block }.Concat(block.Alongside ?? []))
            {
                foreach (var (m, path) in Subtree(module, paths[module], keep))
                {
                    f += m.OwnFlops;
                    foreach (var (local, tensor, isParameter) in m.OwnTensors())
                    {
                        string full = Join(path, local);
                        Claim(claims, full, $"block \"{name}\"");
                        bindings.Add(new UnitBinding(full, 0, Unit: names.Count));
                        if (isParameter) p += tensor.Numel;
                        f += tensor.Numel * m.FlopsPerElement(local);
                    }
                }
            }
            if (names.Contains(name)) throw new ArgumentException($"DeclaredUnits: block {name} is declared twice");
            names.Add(name);
            parameters.Add(p);
            flops.Add(f);
            _blocks.Add(block);
        }
        string group = CommonParent(names);
        var unitGroup = new UnitGroup(group.Length == 0 || names.Contains(group) ? "blocks" : group, names.Count, names, [.. parameters], [.. flops]);
        return new MaskableUnits([unitGroup], _model.ParameterCount - parameters.Sum(), SubnetLevel.Block, bindings);
    }

    /// <summary>
    /// Cuts the model this was resolved on down to a worker's forward-masked subnetwork holding
    /// <paramref name="held"/>[g] (ascending) of every group g: sliced tensors keep their held slices in unit order;
    /// a neuron group none of whose units is held loses its modules; an unheld block is dropped (its kept modules
    /// stay). With <paramref name="inverseCoverageScale"/>, the layer reading a hidden layer that holds c of its n
    /// units scales its input by n / c. On the meta device this allocates nothing real; elsewhere the held values
    /// are copied.
    /// </summary>
    public void Cut(IReadOnlyList<int[]> held, bool inverseCoverageScale = false)
    {
        ArgumentNullException.ThrowIfNull(held);
        var groups = Units.Groups;
        if (held.Count != groups.Count) throw new ArgumentException($"DeclaredUnits.Cut: held has {held.Count} entries, expected one per unit group ({groups.Count})", nameof(held));
        for (int g = 0; g < groups.Count; g++)
        {
            var h = held[g] ?? throw new ArgumentException($"DeclaredUnits.Cut: held[{g}] (group \"{groups[g].Name}\") is null", nameof(held));
            for (int i = 0; i < h.Length; i++)
            {
                if (h[i] < 0 || h[i] >= groups[g].UnitCount || (i > 0 && h[i] <= h[i - 1]))
                    throw new ArgumentException($"DeclaredUnits.Cut: held[{g}] (group \"{groups[g].Name}\") must be strictly ascending units in [0, {groups[g].UnitCount}), got [{string.Join(", ", h)}]", nameof(held));
            }
        }
        using (GradMode.Disable())
        {
            if (_blocks.Count > 0) CutBlocks(held[0]);
            else CutNeurons(held, inverseCoverageScale);
        }
        AfterCut(_model);
    }

    private void CutBlocks(int[] held)
    {
        var kept = held.ToHashSet();
        for (int u = 0; u < _blocks.Count; u++)
        {
            if (kept.Contains(u)) continue;
            var keep = new HashSet<Module>(_blocks[u].Keep ?? [], ReferenceEqualityComparer.Instance);
            foreach (var module in new[] { _blocks[u].Block }.Concat(_blocks[u].Alongside ?? [])) module.Drop(keep.Contains);
        }
    }

    private void CutNeurons(IReadOnlyList<int[]> held, bool inverseCoverageScale)
    {
        for (int g = 0; g < _neuronGroups.Count; g++)
        {
            var group = _neuronGroups[g];
            int n = Units.Groups[g].UnitCount, c = held[g].Length;
            if (c == n) continue;
            if (c == 0)
            {
                foreach (var m in group.Modules) m.Drop(_ => false);
                continue;
            }
            foreach (var s in group.Slices)
            {
                var (dense, _) = OwnTensor(s.Module, s.Tensor);
                int[] indices = [.. held[g].SelectMany(u => Enumerable.Range(u * s.PerUnit, s.PerUnit))];
                using var index = Tensor.FromArray(indices, new Shape(indices.Length), dense.Backend);
                var narrow = Tensor.Allocate(dense.Shape.With(s.Axis, indices.Length), dense.DType, dense.Backend, Memory.MemoryCategory.Parameters, registerInScope: false);
                dense.Backend.IndexSelect(dense, s.Axis, index, narrow, accumulate: false);
                s.Module.ReplaceTensor(s.Tensor, narrow);
            }
            if (inverseCoverageScale && group.Reader is { } reader) reader.InputScale = (double)n / c;
        }
    }

    /// <summary>Tells every module, children first, that the cut is done (see <see cref="Module.OnSubnetworkCut"/>).</summary>
    private static void AfterCut(Module module)
    {
        foreach (var (_, child) in module.Children) AfterCut(child);
        module.OnSubnetworkCut();
        // A container with nothing left (an MLP whose hidden layer is not held at all) is dropped itself; one that
        // still has a kept part (a stage whose blocks are dropped but whose projection shortcut stays) is not.
        if (!module.IsDropped && module.Children.Count > 0 && !module.NamedParameters().Any() && !module.NamedBuffers().Any()) module.Drop(_ => false);
    }

    private static IEnumerable<(Module Module, string Path)> Subtree(Module module, string path, HashSet<Module> keep)
    {
        if (keep.Contains(module)) yield break;
        yield return (module, path);
        foreach (var (name, child) in module.Children)
        {
            foreach (var pair in Subtree(child, Join(path, name), keep)) yield return pair;
        }
    }

    private static (Tensor Tensor, bool IsParameter) OwnTensor(Module module, string name)
    {
        var (_, tensor, isParameter) = module.OwnTensors().First(t => t.Name == name);
        return (tensor, isParameter);
    }

    private static void Claim(Dictionary<string, string> claims, string tensor, string unit)
    {
        if (!claims.TryAdd(tensor, unit)) throw new ArgumentException($"DeclaredUnits: tensor {tensor} is claimed by {claims[tensor]} and by {unit}; a parameter belongs to one unit at most");
    }

    private static string PathOf(Module module, Dictionary<Module, string> paths, string role)
    {
        ArgumentNullException.ThrowIfNull(module, role);
        return paths.TryGetValue(module, out var path) ? path
            : throw new ArgumentException($"DeclaredUnits: {role}, a {module.GetType().Name} with {module.ParameterCount.ToString("N0", CultureInfo.InvariantCulture)} parameters, is not part of the model (declare units from the modules of the model instance you pass)");
    }

    private static ArgumentException CannotSlice(Module module, string path, string expected)
        => new($"DeclaredUnits: {path} is a {module.GetType().Name}, which cannot be sliced into hidden units; expected the {expected}");

    /// <summary>The longest common dotted prefix of <paramref name="paths"/> ("model.layers.0.mlp" for its three projections).</summary>
    private static string CommonParent(IEnumerable<string> paths)
    {
        string[]? common = null;
        foreach (var parts in paths.Select(p => p.Split('.')))
        {
            if (common is null)
            {
                common = parts.Length > 1 ? parts[..^1] : [];
                continue;
            }
            int n = 0;
            while (n < common.Length && n < parts.Length - 1 && common[n] == parts[n]) n++;
            common = common[..n];
        }
        return string.Join('.', common ?? []);
    }

    private static string Join(string prefix, string name) => prefix.Length == 0 ? name : prefix + "." + name;
}
