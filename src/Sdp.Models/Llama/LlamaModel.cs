using Sdp.Engine;
using Sdp.Engine.Nn;

namespace Sdp.Models.Llama;

/// <summary>
/// HF LlamaModel: the token embedding ("embed_tokens"), the decoder layers ("layers.0", "layers.1", ...)
/// and the final RMSNorm ("norm"). Produces the normalised hidden states.
/// </summary>
public sealed class LlamaModel : Module
{
    private readonly List<LlamaDecoderLayer> _layers = [];
    private readonly List<int> _layerIndices = [];

    public LlamaModel(LlamaConfig config, Rng rng, DType dtype = DType.Float32, LlamaSubnetShape? shape = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        shape?.Validate(config);
        Config = config;
        DType = dtype;
        EmbedTokens = RegisterModule("embed_tokens", new Embedding(config.VocabSize, config.HiddenSize, rng, config.InitializerRange, dtype));
        var layers = RegisterModule("layers", new LayerList());
        for (int i = 0; i < config.NumHiddenLayers; i++)
        {
            var layer = shape is null
                ? new LlamaDecoderLayer(config, rng, dtype)
                : LayerOf(shape, config, i, rng, dtype);
            if (layer is null) continue; // a dropped layer: not registered, its residual stream passes through
            _layers.Add(layers.Add(i.ToString(System.Globalization.CultureInfo.InvariantCulture), layer));
            _layerIndices.Add(i);
        }
        Norm = RegisterModule("norm", new RmsNorm(config.HiddenSize, config.RmsNormEps, dtype));
    }

    public LlamaConfig Config { get; }

    public DType DType { get; }

    public Embedding EmbedTokens { get; }

    /// <summary>
    /// The decoder layers in order; Layers[j] is named "layers.{LayerIndices[j]}" (j itself for the dense
    /// model; a forward-masked subnetwork lacks its dropped layers).
    /// </summary>
    public IReadOnlyList<LlamaDecoderLayer> Layers => _layers;

    /// <summary>The config index of each entry of <see cref="Layers"/>.</summary>
    public IReadOnlyList<int> LayerIndices => _layerIndices;

    public RmsNorm Norm { get; }

    /// <summary>ids (B, T) int -> hidden states (B, T, C) after the final norm.</summary>
    public Tensor Forward(Tensor ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        if (ids.Rank != 2 || ids.Shape[1] == 0 || ids.DType is not (DType.Int32 or DType.Int64))
            throw new ArgumentException($"LlamaForCausalLM: ids must be (B, T) int32 or int64 token ids with T >= 1, got {ids.Shape} {ids.DType.Name()}", nameof(ids));
        var (cos, sin) = Ops.RopeTables(ids.Shape[1], Config.HeadDim, Config.RopeTheta, DType, ids.Backend);
        using (cos)
        using (sin)
        {
            var rope = new LlamaRotary(cos, sin);
            var x = EmbedTokens.Forward(ids);
            foreach (var layer in _layers)
            {
                var next = layer.Forward(x, rope);
                x.Dispose();
                x = next;
            }
            using (x) return Norm.Forward(x);
        }
    }

    private static LlamaDecoderLayer? LayerOf(LlamaSubnetShape shape, LlamaConfig config, int i, Rng rng, DType dtype)
    {
        int width = shape.MlpWidth(config, i), heads = shape.KeyValueHeadCount(config, i);
        return width == 0 && heads == 0 ? null : new LlamaDecoderLayer(config, rng, dtype, width, heads, shape.Scale(i));
    }

    /// <summary>The "layers" container: children "0", "1", ... so names come out as model.layers.{i}.*.</summary>
    private sealed class LayerList : Module
    {
        public LlamaDecoderLayer Add(string name, LlamaDecoderLayer layer) => RegisterModule(name, layer);
    }
}
