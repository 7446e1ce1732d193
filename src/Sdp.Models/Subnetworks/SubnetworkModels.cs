using System.Globalization;
using Sdp.Engine;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Training;

namespace Sdp.Models.Subnetworks;

/// <summary>
/// The <see cref="SubnetworkModel"/>s of the built-in models (method reference §2.4, §3): their maskable
/// units with tensor bindings (<see cref="ModelUnits"/>) and a factory that builds the dense model exactly
/// as single-worker training does, or a forward-masked subnetwork that materialises only the held units.
/// </summary>
public static class SubnetworkModels
{
    /// <summary>
    /// LLaMA at <paramref name="level"/>. Neuron level: layer l's MLP keeps the held hidden units of group
    /// "model.layers.{l}.mlp" (scaled by n / c under <see cref="NeuronScale.InverseCoverage"/>) and, with
    /// <see cref="SubnetOptions.MaskHeads"/>, its attention keeps the held key/value groups of
    /// "model.layers.{l}.self_attn"; holding none of a group's units drops that sub-block. Block level:
    /// unheld layers (or, with <see cref="SubnetOptions.SplitSublayers"/>, sub-blocks) are not built.
    /// </summary>
    public static SubnetworkModel Llama(LlamaConfig config, SubnetLevel level, SubnetOptions options, ulong seed, DType dtype = DType.Float32)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(options);
        var units = ModelUnits.Llama(config, level, options.MaskHeads, options.SplitSublayers);
        return new SubnetworkModel(units, held =>
        {
            if (held is null) return new LlamaTrainable(new LlamaForCausalLM(config, new Rng(seed), dtype));
            CheckHeld(units, held);
            var shape = level == SubnetLevel.Neuron ? LlamaNeuronShape(config, units, held, options) : LlamaBlockShape(config, units, held);
            return new LlamaTrainable(new LlamaForCausalLM(config, new Rng(seed), dtype, shape));
        });
    }

    /// <summary>
    /// ResNet-18 at <paramref name="level"/>. Neuron level: block b keeps the held internal channels of its
    /// group (scaled by n / c under <see cref="NeuronScale.InverseCoverage"/>; none held drops its residual
    /// branch). Block level: unheld blocks lose their residual branch (conv1, bn1, conv2, bn2) and run their
    /// shortcut; projection shortcuts stay (<see cref="SubnetOptions.Downsample"/>).
    /// </summary>
    public static SubnetworkModel ResNet18(ResNetConfig config, SubnetLevel level, SubnetOptions options, ulong seed, DType dtype = DType.Float32)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(options);
        var units = ModelUnits.ResNet18(config, level, options.Downsample);
        return new SubnetworkModel(units, held =>
        {
            if (held is null) return new ResNetTrainable(new ResNet.ResNet18(config, new Rng(seed), dtype));
            CheckHeld(units, held);
            var shape = level == SubnetLevel.Neuron ? ResNetNeuronShape(units, held, options) : ResNetBlockShape(units, held);
            return new ResNetTrainable(new ResNet.ResNet18(config, new Rng(seed), dtype, shape));
        });
    }

    private static LlamaSubnetShape LlamaNeuronShape(LlamaConfig config, MaskableUnits units, IReadOnlyList<int[]> held, SubnetOptions options)
    {
        int n = config.NumHiddenLayers;
        var widths = new int[n];
        var scales = new double[n];
        int[]? heads = options.MaskHeads ? new int[n] : null;
        var index = GroupIndex(units);
        for (int l = 0; l < n; l++)
        {
            int m = index[$"model.layers.{Str(l)}.mlp"];
            widths[l] = held[m].Length;
            scales[l] = ScaleOf(options, units.Groups[m].UnitCount, held[m].Length);
            if (heads is not null) heads[l] = held[index[$"model.layers.{Str(l)}.self_attn"]].Length;
        }
        return new LlamaSubnetShape(MlpWidths: widths, KeyValueHeads: heads, MlpScale: scales);
    }

    private static LlamaSubnetShape LlamaBlockShape(LlamaConfig config, MaskableUnits units, IReadOnlyList<int[]> held)
    {
        var group = units.Groups[0];
        var names = new HashSet<string>(held[0].Select(group.UnitLabel), StringComparer.Ordinal);
        int n = config.NumHiddenLayers;
        var attention = new bool[n];
        var mlp = new bool[n];
        for (int l = 0; l < n; l++)
        {
            string layer = $"model.layers.{Str(l)}";
            attention[l] = names.Contains(layer) || names.Contains(layer + ".self_attn");
            mlp[l] = names.Contains(layer) || names.Contains(layer + ".mlp");
        }
        return new LlamaSubnetShape(AttentionPresent: attention, MlpPresent: mlp);
    }

    private static ResNetSubnetShape ResNetNeuronShape(MaskableUnits units, IReadOnlyList<int[]> held, SubnetOptions options)
    {
        var widths = new int[ResNetSubnetShape.BlockCount];
        var scales = new double[ResNetSubnetShape.BlockCount];
        var index = GroupIndex(units);
        for (int b = 0; b < ResNetSubnetShape.BlockCount; b++)
        {
            int g = index[BlockName(b)];
            widths[b] = held[g].Length;
            scales[b] = ScaleOf(options, units.Groups[g].UnitCount, held[g].Length);
        }
        return new ResNetSubnetShape(InternalWidths: widths, Scale: scales);
    }

    private static ResNetSubnetShape ResNetBlockShape(MaskableUnits units, IReadOnlyList<int[]> held)
    {
        var group = units.Groups[0];
        var unitNames = group.UnitNames ?? throw new InvalidOperationException($"SubnetworkModels: block group \"{group.Name}\" has no unit names");
        var names = new HashSet<string>(held[0].Select(group.UnitLabel), StringComparer.Ordinal);
        var present = new bool[ResNetSubnetShape.BlockCount];
        for (int b = 0; b < present.Length; b++)
        {
            // Blocks that are not units (AlwaysKeep downsampling blocks) are shared: always present.
            string name = BlockName(b);
            present[b] = !unitNames.Contains(name) || names.Contains(name);
        }
        return new ResNetSubnetShape(BranchPresent: present);
    }

    /// <summary>n / c under inverse coverage (a layer holding c of its n units), else 1; 1 when nothing is held (the sub-block is absent anyway).</summary>
    private static double ScaleOf(SubnetOptions options, int total, int heldCount)
        => options.NeuronScale == NeuronScale.InverseCoverage && heldCount > 0 ? (double)total / heldCount : 1.0;

    private static Dictionary<string, int> GroupIndex(MaskableUnits units)
    {
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int g = 0; g < units.Groups.Count; g++) index[units.Groups[g].Name] = g;
        return index;
    }

    private static void CheckHeld(MaskableUnits units, IReadOnlyList<int[]> held)
    {
        if (held.Count != units.Groups.Count)
            throw new ArgumentException($"SubnetworkModel.Build: held has {held.Count} entries, expected one per unit group ({units.Groups.Count})", nameof(held));
        for (int g = 0; g < held.Count; g++)
        {
            var group = units.Groups[g];
            var h = held[g] ?? throw new ArgumentException($"SubnetworkModel.Build: held[{g}] (group \"{group.Name}\") is null", nameof(held));
            for (int i = 0; i < h.Length; i++)
            {
                if (h[i] < 0 || h[i] >= group.UnitCount)
                    throw new ArgumentException($"SubnetworkModel.Build: held[{g}] (group \"{group.Name}\") has unit {h[i]}, expected [0, {group.UnitCount})", nameof(held));
                if (i > 0 && h[i] <= h[i - 1])
                    throw new ArgumentException($"SubnetworkModel.Build: held[{g}] (group \"{group.Name}\") must be strictly ascending, got [{string.Join(", ", h)}]", nameof(held));
            }
        }
    }

    private static string BlockName(int block) => $"layer{Str(block / 2 + 1)}.{Str(block % 2)}";

    private static string Str(int i) => i.ToString(CultureInfo.InvariantCulture);
}
