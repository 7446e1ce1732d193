using Sdp.Engine;
using Sdp.Engine.Nn;

namespace Sdp.Models.Llama;

/// <summary>
/// SwiGLU feed-forward (HF LlamaMLP): down_proj(silu(gate_proj(x)) · up_proj(x)), no biases. A
/// forward-masked MLP has fewer hidden units and may scale its hidden activation (§2.4 neuronScale).
/// </summary>
public sealed class LlamaMlp : Module
{
    public LlamaMlp(LlamaConfig config, Rng rng, DType dtype = DType.Float32)
        : this(config, rng, dtype, config.IntermediateSize, 1.0)
    {
    }

    /// <summary>
    /// An MLP of <paramref name="width"/> hidden units: gate_proj/up_proj (width, C), down_proj (C, width);
    /// the hidden activation is multiplied by <paramref name="scale"/> before down_proj.
    /// </summary>
    public LlamaMlp(LlamaConfig config, Rng rng, DType dtype, int width, double scale)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (width < 1 || width > config.IntermediateSize)
            throw new ArgumentOutOfRangeException(nameof(width), width, $"LlamaMlp: width must be in [1, intermediate_size = {config.IntermediateSize}], got {width}");
        if (!(double.IsFinite(scale) && scale > 0))
            throw new ArgumentOutOfRangeException(nameof(scale), scale, $"LlamaMlp: scale must be a positive finite number, got {scale}");
        IntermediateSize = width;
        Scale = scale;
        GateProj = RegisterModule("gate_proj", LlamaInit.Linear(config.HiddenSize, IntermediateSize, config, rng, dtype));
        UpProj = RegisterModule("up_proj", LlamaInit.Linear(config.HiddenSize, IntermediateSize, config, rng, dtype));
        DownProj = RegisterModule("down_proj", LlamaInit.Linear(IntermediateSize, config.HiddenSize, config, rng, dtype));
    }

    /// <summary>Hidden units (columns of the gate and up projections, rows of down_proj's input).</summary>
    public int IntermediateSize { get; }

    /// <summary>Factor on the hidden activation (1: none, the dense model).</summary>
    public double Scale { get; }

    public Linear GateProj { get; }

    public Linear UpProj { get; }

    public Linear DownProj { get; }

    /// <summary>x (B, T, C) -> y (B, T, C).</summary>
    public Tensor Forward(Tensor x)
    {
        using var hidden = Hidden(x);
        return DownProj.Forward(hidden);
    }

    /// <summary>The hidden activations Scale · silu(gate_proj(x)) · up_proj(x): x (B, T, C) -> (B, T, intermediate).</summary>
    public Tensor Hidden(Tensor x)
    {
        using var gate = GateProj.Forward(x);
        using var activated = Ops.Silu(gate);
        using var up = UpProj.Forward(x);
        // Scale 1 adds no op, so the dense model computes exactly what it did before scaling existed.
        if (Scale == 1.0) return Ops.Mul(activated, up);
        using var product = Ops.Mul(activated, up);
        return Ops.Scale(product, Scale);
    }
}
