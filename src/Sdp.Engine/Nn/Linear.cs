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

    /// <summary>W (out, in); narrower in a forward-masked subnetwork that holds some of its rows or columns.</summary>
    public Tensor Weight { get; }

    public Tensor? Bias { get; }

    public int InFeatures => Weight.Shape[1];

    public int OutFeatures => Weight.Shape[0];

    /// <summary>
    /// A factor on the input before the product (1: none, no op). SDP sets it on the layer that reads a forward-masked
    /// hidden layer holding c of its n units to n / c (inverse-coverage scaling, HeteroFL).
    /// </summary>
    public double InputScale
    {
        get => _inputScale;
        set => _inputScale = double.IsFinite(value) && value > 0 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, $"Linear: the input scale must be a positive finite number, got {value}");
    }

    private double _inputScale = 1.0;

    // Rows of the last input (every position the layer was applied at): what its FLOPs are counted over.
    private long _rows = 1;

    /// <summary>x (..., in) -> y (..., out).</summary>
    public Tensor Forward(Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        _rows = x.Shape.Rank == 0 || InFeatures == 0 ? 1 : x.Numel / InFeatures;
        if (InputScale == 1.0) return Ops.Linear(x, Weight, Bias);
        using var scaled = Ops.Scale(x, InputScale);
        return Ops.Linear(scaled, Weight, Bias);
    }

    protected internal override long FlopsPerElement(string name) => name == "weight" ? 2 * _rows : 0;
}
