using System.Globalization;

namespace Sdp.Models.Llama;

/// <summary>
/// The shape of a forward-masked LLaMA subnetwork (method reference §2.4, §3), per decoder layer; a
/// null array means "dense" for that property. Layer l's MLP keeps <see cref="MlpWidths"/>[l] of the
/// intermediate_size hidden units (gate_proj/up_proj (c, hidden), down_proj (hidden, c)) and multiplies
/// its hidden activation silu(gate)·up by <see cref="MlpScale"/>[l] before down_proj; its attention keeps
/// <see cref="KeyValueHeads"/>[l] key/value groups (with all GroupSize query heads of each). A sub-block
/// that is not present (<see cref="AttentionPresent"/>/<see cref="MlpPresent"/> false, or width/heads 0)
/// has no parameters, its pre-norm included, and its residual branch is the identity; a layer with
/// neither sub-block is not built at all.
/// </summary>
public sealed record LlamaSubnetShape(
    int[]? MlpWidths = null,
    int[]? KeyValueHeads = null,
    bool[]? AttentionPresent = null,
    bool[]? MlpPresent = null,
    double[]? MlpScale = null)
{
    /// <summary>Hidden units of layer <paramref name="layer"/>'s MLP, 0 when the MLP is absent.</summary>
    public int MlpWidth(LlamaConfig config, int layer)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (MlpPresent is not null && !MlpPresent[layer]) return 0;
        return MlpWidths?[layer] ?? config.IntermediateSize;
    }

    /// <summary>Key/value head groups of layer <paramref name="layer"/>'s attention, 0 when it is absent.</summary>
    public int KeyValueHeadCount(LlamaConfig config, int layer)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (AttentionPresent is not null && !AttentionPresent[layer]) return 0;
        return KeyValueHeads?[layer] ?? config.NumKeyValueHeads;
    }

    /// <summary>The factor on layer <paramref name="layer"/>'s MLP hidden activation (1 when unscaled).</summary>
    public double Scale(int layer) => MlpScale?[layer] ?? 1.0;

    /// <summary>Throws <see cref="ArgumentException"/> naming the field and layer when the shape does not fit <paramref name="config"/>.</summary>
    public void Validate(LlamaConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        int n = config.NumHiddenLayers;
        CheckLength(MlpWidths?.Length, nameof(MlpWidths), n);
        CheckLength(KeyValueHeads?.Length, nameof(KeyValueHeads), n);
        CheckLength(AttentionPresent?.Length, nameof(AttentionPresent), n);
        CheckLength(MlpPresent?.Length, nameof(MlpPresent), n);
        CheckLength(MlpScale?.Length, nameof(MlpScale), n);
        for (int l = 0; l < n; l++)
        {
            if (MlpWidths is not null && (MlpWidths[l] < 0 || MlpWidths[l] > config.IntermediateSize))
                throw new ArgumentException($"LlamaSubnetShape: MlpWidths[{Str(l)}] = {Str(MlpWidths[l])} must be in [0, intermediate_size = {Str(config.IntermediateSize)}]");
            if (KeyValueHeads is not null && (KeyValueHeads[l] < 0 || KeyValueHeads[l] > config.NumKeyValueHeads))
                throw new ArgumentException($"LlamaSubnetShape: KeyValueHeads[{Str(l)}] = {Str(KeyValueHeads[l])} must be in [0, num_key_value_heads = {Str(config.NumKeyValueHeads)}]");
            if (MlpScale is not null && !(double.IsFinite(MlpScale[l]) && MlpScale[l] > 0))
                throw new ArgumentException($"LlamaSubnetShape: MlpScale[{Str(l)}] = {MlpScale[l].ToString(CultureInfo.InvariantCulture)} must be a positive finite number");
        }

        static void CheckLength(int? length, string field, int layers)
        {
            if (length is { } len && len != layers)
                throw new ArgumentException($"LlamaSubnetShape: {field} has {Str(len)} entries, expected num_hidden_layers = {Str(layers)}");
        }
    }

    private static string Str(int i) => i.ToString(CultureInfo.InvariantCulture);
}
