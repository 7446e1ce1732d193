namespace Sdp.Engine.Nn;

/// <summary>y = x·Wᵀ + b with W (out, in): torch.nn.Linear, same names and default initialisation.</summary>
public sealed class Linear : Module
{
    public Linear(int inFeatures, int outFeatures, bool bias, Rng rng, DType dtype = DType.Float32)
    {
        double bound = 1.0 / Math.Sqrt(inFeatures);
        Weight = RegisterParameter("weight", Init.Uniform(NewParameterTensor(new Shape(outFeatures, inFeatures), dtype), rng, bound));
        if (bias) Bias = RegisterParameter("bias", Init.Uniform(NewParameterTensor(new Shape(outFeatures), dtype), rng, bound));
    }

    public Tensor Weight { get; }

    public Tensor? Bias { get; }

    /// <summary>x (..., in) -> y (..., out).</summary>
    public Tensor Forward(Tensor x) => Ops.Linear(x, Weight, Bias);
}
