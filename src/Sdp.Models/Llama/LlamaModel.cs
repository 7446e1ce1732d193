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

    public LlamaModel(LlamaConfig config, Rng rng, DType dtype = DType.Float32)
    {
        ArgumentNullException.ThrowIfNull(config);
        Config = config;
        DType = dtype;
        EmbedTokens = RegisterModule("embed_tokens", new Embedding(config.VocabSize, config.HiddenSize, rng, config.InitializerRange, dtype));
        var layers = RegisterModule("layers", new LayerList());
        for (int i = 0; i < config.NumHiddenLayers; i++)
        {
            _layers.Add(layers.Add(i.ToString(System.Globalization.CultureInfo.InvariantCulture), new LlamaDecoderLayer(config, rng, dtype)));
        }
        Norm = RegisterModule("norm", new RmsNorm(config.HiddenSize, config.RmsNormEps, dtype));
    }

    public LlamaConfig Config { get; }

    public DType DType { get; }

    public Embedding EmbedTokens { get; }

    /// <summary>
    /// The decoder layers in order, "layers.{i}"; in a forward-masked subnetwork some may be
    /// <see cref="Module.IsDropped"/> (the residual stream passes them by).
    /// </summary>
    public IReadOnlyList<LlamaDecoderLayer> Layers => _layers;

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
                if (layer.IsDropped) continue;
                var next = layer.Forward(x, rope);
                x.Dispose();
                x = next;
            }
            using (x) return Norm.Forward(x);
        }
    }

    /// <summary>The "layers" container: children "0", "1", ... so names come out as model.layers.{i}.*.</summary>
    private sealed class LayerList : Module
    {
        public LlamaDecoderLayer Add(string name, LlamaDecoderLayer layer) => RegisterModule(name, layer);
    }
}
