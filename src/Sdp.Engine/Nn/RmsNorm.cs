namespace Sdp.Engine.Nn;

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
