using Sdp.Engine;
using Sdp.Engine.Nn;

namespace Sdp.Models.Llama;

/// <summary>
/// SwiGLU feed-forward (HF LlamaMLP): down_proj(silu(gate_proj(x)) · up_proj(x)), no biases. SDP's neuron units
/// are its hidden units (<see cref="LlamaForCausalLM.DeclareUnits"/>); a forward-masked MLP holds fewer of them.
/// </summary>
public sealed class LlamaMlp : Module
{
    public LlamaMlp(LlamaConfig config, Rng rng, DType dtype = DType.Float32)
    {
        ArgumentNullException.ThrowIfNull(config);
        GateProj = RegisterModule("gate_proj", LlamaInit.Linear(config.HiddenSize, config.IntermediateSize, config, rng, dtype));
        UpProj = RegisterModule("up_proj", LlamaInit.Linear(config.HiddenSize, config.IntermediateSize, config, rng, dtype));
        DownProj = RegisterModule("down_proj", LlamaInit.Linear(config.IntermediateSize, config.HiddenSize, config, rng, dtype));
    }

    /// <summary>Hidden units this MLP holds (intermediate_size when dense).</summary>
    public int IntermediateSize => GateProj.OutFeatures;

    public Linear GateProj { get; }

    public Linear UpProj { get; }

    public Linear DownProj { get; }

    /// <summary>x (B, T, C) -> y (B, T, C).</summary>
    public Tensor Forward(Tensor x)
    {
        using var hidden = Hidden(x);
        return DownProj.Forward(hidden);
    }

    /// <summary>The hidden activation silu(gate_proj(x)) · up_proj(x): (B, T, C) -> (B, T, F).</summary>
    public Tensor Hidden(Tensor x)
    {
        using var gate = GateProj.Forward(x);
        using var activated = Ops.Silu(gate);
        using var up = UpProj.Forward(x);
        return Ops.Mul(activated, up);
    }
}
