namespace Sdp.Engine.Nn;

/// <summary>torch.nn.Conv2d (NCHW, square kernel), same names; weights U(±1/√fan_in) unless re-initialised.</summary>
public sealed class Conv2d : Module
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

    /// <summary>W (out, in, k, k); narrower in a forward-masked subnetwork that holds some of its channels.</summary>
    public Tensor Weight { get; }

    public Tensor? Bias { get; }

    /// <summary>A factor on the input before the convolution (1: none, no op); see <see cref="Linear.InputScale"/>.</summary>
    public double InputScale
    {
        get => _inputScale;
        set => _inputScale = double.IsFinite(value) && value > 0 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, $"Conv2d: the input scale must be a positive finite number, got {value}");
    }

    private double _inputScale = 1.0;

    // Output pixels of the last forward (N·OH·OW): every position a filter was applied at.
    private long _pixels = 1;

    /// <summary>x (N, C, H, W) -> y (N, O, OH, OW).</summary>
    public Tensor Forward(Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        using var scaled = InputScale == 1.0 ? null : Ops.Scale(x, InputScale);
        var y = Ops.Conv2d(scaled ?? x, Weight, Bias, Stride, Padding);
        _pixels = y.Shape[1] == 0 ? 1 : y.Numel / y.Shape[1];
        return y;
    }

    protected internal override long FlopsPerElement(string name) => name == "weight" ? 2 * _pixels : 0;
}
