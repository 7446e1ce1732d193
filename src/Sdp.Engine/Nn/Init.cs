
namespace Sdp.Engine.Nn;

/// <summary>
/// Parameter initialisers. Values are drawn on the host from an <see cref="Rng"/> in row-major order,
/// so a seed gives the same weights on every backend.
/// </summary>
public static class Init
{
    /// <summary>U(-bound, bound): PyTorch's nn.Linear/nn.Conv2d default uses bound = 1/√fan_in.</summary>
    public static Tensor Uniform(Tensor t, Rng rng, double bound) => Upload(t, i => (2 * rng.NextDouble() - 1) * bound);

    /// <summary>N(0, std²).</summary>
    public static Tensor Normal(Tensor t, Rng rng, double std) => Upload(t, _ => rng.NextNormal() * std);

    public static Tensor Constant(Tensor t, double value)
    {
        t.Backend.Fill(t, value);
        return t;
    }

    private static Tensor Upload(Tensor t, Func<long, double> value)
    {
        // A meta tensor holds no values: nothing is drawn (a model of billions of parameters builds at no cost).
        if (t.Device.Kind == DeviceKind.Meta) return t;
        var values = new double[t.Numel];
        for (long i = 0; i < values.Length; i++) values[i] = value(i);
        if (t.DType == DType.Float64) t.Backend.Upload<double>(values, t);
        else t.Backend.Upload<float>(Array.ConvertAll(values, v => (float)v), t);
        return t;
    }
}
