namespace Sdp.Engine.Nn;

/// <summary>y = x·Wᵀ + b with W (out, in): torch.nn.Linear, same names and default initialisation.</summary>
public sealed class Linear : WeightedLayer
{
    public Linear(int inFeatures, int outFeatures, bool bias, Rng rng, DType dtype = DType.Float32)
    {
        double bound = 1.0 / Math.Sqrt(inFeatures);
        Weight = RegisterParameter("weight", Init.Uniform(NewParameterTensor(new Shape(outFeatures, inFeatures), dtype), rng, bound));
        if (bias) Bias = RegisterParameter("bias", Init.Uniform(NewParameterTensor(new Shape(outFeatures), dtype), rng, bound));
    }

    public int InFeatures => Weight.Shape[1];

    public int OutFeatures => Weight.Shape[0];

    /// <summary>x (..., in) -> y (..., out).</summary>
    public Tensor Forward(Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        Positions = x.Rank == 0 || InFeatures == 0 ? 1 : x.Numel / InFeatures;
        using var scaled = ScaledInput(x);
        return Ops.Linear(scaled ?? x, Weight, Bias);
    }
}
