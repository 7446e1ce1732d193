using System.Globalization;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;

namespace Sdp.Models.Subnetworks;

/// <summary>What happens to ResNet's downsampling blocks (first block of stages 2–4) at block level (§3.2) [I].</summary>
public enum DownsampleBlocks
{
    /// <summary>Default: the block is maskable; when dropped, its residual branch goes and its projection shortcut (shared) stays.</summary>
    DropBranchKeepShortcut,

    /// <summary>Downsampling blocks are never dropped: they are shared, not maskable units.</summary>
    AlwaysKeep,
}

/// <summary>
/// Describes the maskable units of the models as <see cref="UnitGroup"/>s from their configs alone,
/// without allocating them (method reference §3). Parameter counts match the built models; FLOPs are
/// forward multiply-add FLOPs (2 per MAC) per token (LLaMA) or per image (ResNet).
/// </summary>
public static class ModelUnits
{
    /// <summary>LLaMA at <paramref name="level"/>; see <see cref="LlamaNeurons"/> and <see cref="LlamaBlocks"/>.</summary>
    public static MaskableUnits Llama(LlamaConfig config, SubnetLevel level, bool maskHeads = false, bool splitSublayers = false)
        => level == SubnetLevel.Neuron ? LlamaNeurons(config, maskHeads) : LlamaBlocks(config, splitSublayers: splitSublayers);

    /// <summary>ResNet-18 at <paramref name="level"/>; see <see cref="ResNetNeurons"/> and <see cref="ResNetBlocks"/>.</summary>
    public static MaskableUnits ResNet18(ResNetConfig config, SubnetLevel level, DownsampleBlocks downsample = DownsampleBlocks.DropBranchKeepShortcut, int imageSize = 32)
        => level == SubnetLevel.Neuron ? ResNetNeurons(config, imageSize) : ResNetBlocks(config, downsample, imageSize);

    /// <summary>
    /// Neuron level: one group per decoder layer, "model.layers.{i}.mlp", with intermediate_size units;
    /// unit t = row t of gate_proj and up_proj + column t of down_proj (3·hidden parameters, 6·hidden
    /// FLOPs per token). Norms, embeddings and lm_head are always shared. Attention is shared unless
    /// <paramref name="maskHeads"/> (§3.1 flag maskHeads, default false [I]): then each layer also has a
    /// group "model.layers.{i}.self_attn" whose units are the key/value head groups; unit g = the q_proj
    /// rows of its query heads, the k_proj and v_proj rows of KV head g, and the matching o_proj columns.
    /// Bindings: gate_proj/up_proj.weight axis 0, down_proj.weight axis 1; q_proj axis 0 and o_proj axis 1
    /// with GroupSize·head_dim slices per unit, k_proj/v_proj axis 0 with head_dim slices per unit.
    /// </summary>
    public static MaskableUnits LlamaNeurons(LlamaConfig config, bool maskHeads = false)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        long h = config.HiddenSize, per = 3L * h;
        long headUnit = (2L * config.GroupSize + 2) * config.HeadDim * h;
        var groups = new List<UnitGroup>();
        var bindings = new List<UnitBinding>();
        long maskable = 0;
        int queryRows = config.GroupSize * config.HeadDim;
        for (int l = 0; l < config.NumHiddenLayers; l++)
        {
            if (maskHeads)
            {
                // Weights 2·headUnit FLOPs plus the scores and weighted values of its query heads (4·head_dim·T each, T = max_position_embeddings).
                long flops = 2 * headUnit + 4L * config.GroupSize * config.HeadDim * config.MaxPositionEmbeddings;
                string attn = $"model.layers.{Str(l)}.self_attn";
                int g = groups.Count;
                groups.Add(UnitGroup.Uniform(attn, config.NumKeyValueHeads, headUnit, flops));
                maskable += headUnit * config.NumKeyValueHeads;
                bindings.Add(new UnitBinding(attn + ".q_proj.weight", g, Axis: 0, SlicesPerUnit: queryRows));
                bindings.Add(new UnitBinding(attn + ".k_proj.weight", g, Axis: 0, SlicesPerUnit: config.HeadDim));
                bindings.Add(new UnitBinding(attn + ".v_proj.weight", g, Axis: 0, SlicesPerUnit: config.HeadDim));
                bindings.Add(new UnitBinding(attn + ".o_proj.weight", g, Axis: 1, SlicesPerUnit: queryRows));
            }
            string mlp = $"model.layers.{Str(l)}.mlp";
            int m = groups.Count;
            groups.Add(UnitGroup.Uniform(mlp, config.IntermediateSize, per, 2 * per));
            maskable += per * config.IntermediateSize;
            bindings.Add(new UnitBinding(mlp + ".gate_proj.weight", m, Axis: 0));
            bindings.Add(new UnitBinding(mlp + ".up_proj.weight", m, Axis: 0));
            bindings.Add(new UnitBinding(mlp + ".down_proj.weight", m, Axis: 1));
        }
        return new MaskableUnits(groups, config.ParameterCount - maskable, SubnetLevel.Neuron, bindings);
    }

    /// <summary>
    /// Block level: one group "model.layers" whose units are the decoder layers "model.layers.{i}" (all
    /// of a layer's parameters; FLOPs per token = 2·weights + 4·hidden·T for the attention scores and the
    /// weighted values, T = <paramref name="seqLen"/>, default max_position_embeddings). With
    /// <paramref name="splitSublayers"/> (§3.2 flag, default false [I]) the units are the sub-blocks
    /// "model.layers.{i}.self_attn" and "model.layers.{i}.mlp", each including its pre-norm
    /// (input_layernorm and post_attention_layernorm respectively). Every tensor of a unit is bound whole.
    /// </summary>
    public static MaskableUnits LlamaBlocks(LlamaConfig config, int? seqLen = null, bool splitSublayers = false)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        int t = seqLen ?? config.MaxPositionEmbeddings;
        if (t < 1) throw new ArgumentException($"ModelUnits.LlamaBlocks: seqLen must be positive, got {t}");
        int n = config.NumHiddenLayers;
        long h = config.HiddenSize, kv = (long)config.NumKeyValueHeads * config.HeadDim;
        long attnWeights = 2 * h * h + 2 * h * kv, mlpWeights = 3 * h * config.IntermediateSize;
        long attnFlops = checked(2 * attnWeights + 4 * h * t), mlpFlops = 2 * mlpWeights;
        var names = new List<string>();
        var ps = new List<long>();
        var fs = new List<long>();
        var bindings = new List<UnitBinding>();
        for (int i = 0; i < n; i++)
        {
            string layer = $"model.layers.{Str(i)}";
            int attnUnit = names.Count, mlpUnit = splitSublayers ? attnUnit + 1 : attnUnit;
            if (splitSublayers)
            {
                names.Add(layer + ".self_attn");
                ps.Add(attnWeights + h);
                fs.Add(attnFlops);
                names.Add(layer + ".mlp");
                ps.Add(mlpWeights + h);
                fs.Add(mlpFlops);
            }
            else
            {
                names.Add(layer);
                ps.Add(config.LayerParameterCount);
                fs.Add(attnFlops + mlpFlops);
            }
            foreach (string tensor in LlamaAttentionTensors) bindings.Add(new UnitBinding($"{layer}.{tensor}", 0, Unit: attnUnit));
            foreach (string tensor in LlamaMlpTensors) bindings.Add(new UnitBinding($"{layer}.{tensor}", 0, Unit: mlpUnit));
        }
        var group = new UnitGroup("model.layers", names.Count, names, [.. ps], [.. fs]);
        return new MaskableUnits([group], config.ParameterCount - ps.Sum(), SubnetLevel.Block, bindings);
    }

    /// <summary>
    /// Neuron level (widthMode = internal [I]): one group per BasicBlock ("layer1.0" … "layer4.1") whose
    /// units are the block's internal channels; channel t = conv1 filter t (in·9) + bn1 γ_t, β_t (2) +
    /// conv2 input channel t (out·9). The stem, bn2, shortcuts and fc are shared. Bindings: conv1.weight
    /// axis 0, bn1 weight/bias/running_mean/running_var axis 0, conv2.weight axis 1 (bn1's scalar
    /// num_batches_tracked cannot be sliced and stays shared).
    /// </summary>
    public static MaskableUnits ResNetNeurons(ResNetConfig config, int imageSize = 32)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        var groups = new List<UnitGroup>();
        var bindings = new List<UnitBinding>();
        long maskable = 0;
        foreach (var b in config.Blocks(imageSize))
        {
            long per = 9L * b.In + 2 + 9L * b.Out;
            long flops = 2 * (9L * b.In + 9L * b.Out) * b.OutPixels + 2L * b.OutPixels;
            int g = groups.Count;
            groups.Add(UnitGroup.Uniform(b.Name, b.Out, per, flops));
            maskable += per * b.Out;
            bindings.Add(new UnitBinding(b.Name + ".conv1.weight", g, Axis: 0));
            foreach (string t in BnChannelTensors) bindings.Add(new UnitBinding($"{b.Name}.bn1.{t}", g, Axis: 0));
            bindings.Add(new UnitBinding(b.Name + ".conv2.weight", g, Axis: 1));
        }
        return new MaskableUnits(groups, config.ParameterCount - maskable, SubnetLevel.Neuron, bindings);
    }

    /// <summary>
    /// Block level: one group "blocks" whose units are the BasicBlocks "layer1.0" … "layer4.1" (conv1,
    /// bn1, conv2, bn2: the residual branch). A downsampling block's projection shortcut is shared (it
    /// stays when the block is dropped); with <see cref="DownsampleBlocks.AlwaysKeep"/> downsampling
    /// blocks are shared entirely and not listed. Bindings: every parameter and buffer of a unit's conv1,
    /// bn1, conv2 and bn2 (num_batches_tracked included), whole; downsample.* has none (shared).
    /// </summary>
    public static MaskableUnits ResNetBlocks(ResNetConfig config, DownsampleBlocks downsample = DownsampleBlocks.DropBranchKeepShortcut, int imageSize = 32)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        var names = new List<string>();
        var ps = new List<long>();
        var fs = new List<long>();
        var bindings = new List<UnitBinding>();
        foreach (var b in config.Blocks(imageSize))
        {
            if (b.Downsamples && downsample == DownsampleBlocks.AlwaysKeep) continue;
            int unit = names.Count;
            bindings.Add(new UnitBinding(b.Name + ".conv1.weight", 0, Unit: unit));
            foreach (string t in BnTensors) bindings.Add(new UnitBinding($"{b.Name}.bn1.{t}", 0, Unit: unit));
            bindings.Add(new UnitBinding(b.Name + ".conv2.weight", 0, Unit: unit));
            foreach (string t in BnTensors) bindings.Add(new UnitBinding($"{b.Name}.bn2.{t}", 0, Unit: unit));
            names.Add(b.Name);
            ps.Add(9L * b.In * b.Out + 9L * b.Out * b.Out + 4L * b.Out);
            fs.Add(2 * (9L * b.In * b.Out + 9L * b.Out * b.Out) * b.OutPixels + 4L * b.Out * b.OutPixels);
        }
        if (names.Count == 0) throw new ArgumentException("ModelUnits.ResNetBlocks: no maskable blocks");
        var group = new UnitGroup("blocks", names.Count, names, [.. ps], [.. fs]);
        return new MaskableUnits([group], config.ParameterCount - ps.Sum(), SubnetLevel.Block, bindings);
    }

    private static readonly string[] LlamaAttentionTensors =
        ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight", "input_layernorm.weight"];

    private static readonly string[] LlamaMlpTensors =
        ["mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "post_attention_layernorm.weight"];

    /// <summary>The per-channel tensors of a BatchNorm2d (parameters and running statistics).</summary>
    private static readonly string[] BnChannelTensors = ["weight", "bias", "running_mean", "running_var"];

    /// <summary>Every tensor of a BatchNorm2d.</summary>
    private static readonly string[] BnTensors = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"];

    private static string Str(int i) => i.ToString(CultureInfo.InvariantCulture);
}
