namespace Sdp.Engine.Nn;

/// <summary>
/// A layer that multiplies its input by a weight whose axis 0 is its outputs and axis 1 its inputs (Linear, Conv2d):
/// what SDP slices into hidden units. It carries what the two share: the input scale SDP sets under inverse-coverage
/// scaling, and the FLOP count of its weight (2 per element per position it was last applied at).
/// </summary>
public abstract class WeightedLayer : Module
{
    private double _inputScale = 1.0;

    /// <summary>W (out, in, ...); narrower in a forward-masked subnetwork that holds some of its rows or columns.</summary>
    public Tensor Weight { get; private protected init; } = null!;

    public Tensor? Bias { get; private protected init; }

    /// <summary>
    /// A factor on the input before the layer (1: none, no op). SDP sets it on the layer that reads a forward-masked
    /// hidden layer holding c of its n units to n / c (inverse-coverage scaling, HeteroFL).
    /// </summary>
    public double InputScale
    {
        get => _inputScale;
        set => _inputScale = double.IsFinite(value) && value > 0 ? value
            : throw new ArgumentOutOfRangeException(nameof(value), value, $"{GetType().Name}: the input scale must be a positive finite number, got {value}");
    }

    /// <summary>Positions the weight was applied at in the last forward (rows of a linear input, output pixels of a convolution).</summary>
    private protected long Positions { get; set; } = 1;

    /// <summary>x scaled by <see cref="InputScale"/>, or null when the scale is 1 (no op, so an unscaled layer computes exactly what it always did).</summary>
    private protected Tensor? ScaledInput(Tensor x) => InputScale == 1.0 ? null : Ops.Scale(x, InputScale);

    protected internal override long FlopsPerElement(string name) => name == "weight" ? 2 * Positions : 0;
}
