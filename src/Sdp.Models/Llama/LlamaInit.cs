using Sdp.Engine;
using Sdp.Engine.Nn;

namespace Sdp.Models.Llama;

/// <summary>Hugging Face's LlamaPreTrainedModel._init_weights: N(0, initializer_range²) weights, no biases.</summary>
internal static class LlamaInit
{
    public static Linear Linear(int inFeatures, int outFeatures, LlamaConfig config, Rng rng, DType dtype)
    {
        // Linear draws PyTorch's default uniform init first; it is overwritten here, as HF's _init_weights does.
        var linear = new Linear(inFeatures, outFeatures, bias: false, rng, dtype);
        Init.Normal(linear.Weight, rng, config.InitializerRange);
        return linear;
    }
}
