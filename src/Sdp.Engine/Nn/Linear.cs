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

/// <summary>Row lookup in a (V, C) table: torch.nn.Embedding, initialised N(0, 1) unless overridden.</summary>
public sealed class Embedding : Module
{
    public Embedding(int count, int dim, Rng rng, double std = 1.0, DType dtype = DType.Float32)
    {
        Weight = RegisterParameter("weight", Init.Normal(NewParameterTensor(new Shape(count, dim), dtype), rng, std));
    }

    public Tensor Weight { get; }

    /// <summary>ids (...) int -> y (..., C).</summary>
    public Tensor Forward(Tensor ids) => Ops.Embedding(Weight, ids);
}

/// <summary>RMSNorm with a learned scale initialised to ones (LlamaRMSNorm).</summary>
public sealed class RmsNorm : Module
{
    public RmsNorm(int dim, double eps, DType dtype = DType.Float32)
    {
        Eps = eps;
        Weight = RegisterParameter("weight", Init.Constant(NewParameterTensor(new Shape(dim), dtype), 1));
    }

    public double Eps { get; }

    public Tensor Weight { get; }

    /// <summary>x (..., C) -> y (..., C).</summary>
    public Tensor Forward(Tensor x) => Ops.RmsNorm(x, Weight, Eps);
}
