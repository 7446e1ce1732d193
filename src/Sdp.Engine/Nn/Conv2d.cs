namespace Sdp.Engine.Nn;

/// <summary>torch.nn.Conv2d (NCHW, square kernel), same names; weights U(±1/√fan_in) unless re-initialised.</summary>
public sealed class Conv2d : WeightedLayer
{
    public Conv2d(int inChannels, int outChannels, int kernel, int stride, int padding, bool bias, Rng rng, DType dtype = DType.Float32)
    {
        (Stride, Padding) = (stride, padding);
        double bound = 1.0 / Math.Sqrt(inChannels * kernel * kernel);
        Weight = RegisterParameter("weight", Init.Uniform(NewParameterTensor(new Shape(outChannels, inChannels, kernel, kernel), dtype), rng, bound));
        if (bias) Bias = RegisterParameter("bias", Init.Uniform(NewParameterTensor(new Shape(outChannels), dtype), rng, bound));
    }

    public int Stride { get; }

    public int Padding { get; }

    /// <summary>x (N, C, H, W) -> y (N, O, OH, OW).</summary>
    public Tensor Forward(Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        using var scaled = ScaledInput(x);
        var y = Ops.Conv2d(scaled ?? x, Weight, Bias, Stride, Padding);
        Positions = y.Shape[1] == 0 ? 1 : y.Numel / y.Shape[1];
        return y;
    }
}
