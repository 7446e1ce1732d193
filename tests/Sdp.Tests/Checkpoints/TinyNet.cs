using Sdp.Engine;
using Sdp.Engine.Nn;

namespace Sdp.Tests.Checkpoints;

/// <summary>
/// A small model for checkpoint tests: two Linear layers under "layers.0" / "layers.1", a norm-like
/// scale parameter, a float buffer used in the forward pass and an int64 buffer. Names:
/// gain, layers.0.weight, layers.0.bias, layers.1.weight, layers.1.bias (parameters); input_scale, seen (buffers).
/// </summary>
internal sealed class TinyNet : Module
{
    public TinyNet(Rng rng, DType dtype = DType.Float32, int inputs = 4, int hidden = 8, int outputs = 3)
    {
        var layers = RegisterModule("layers", new Sequence());
        First = layers.Add(new Linear(inputs, hidden, true, rng, dtype));
        Second = layers.Add(new Linear(hidden, outputs, true, rng, dtype));
        Gain = RegisterParameter("gain", Init.Uniform(NewParameterTensor(new Shape(outputs), dtype), rng, 1));
        InputScale = RegisterBuffer("input_scale", Init.Uniform(NewParameterTensor(new Shape(inputs), dtype), rng, 1));
        Seen = RegisterBuffer("seen", NewParameterTensor(new Shape(2), DType.Int64));
        Seen.Backend.Upload<long>([rng.NextInt64(1000), 1L << 40], Seen);
    }

    public Linear First { get; }

    public Linear Second { get; }

    public Tensor Gain { get; }

    public Tensor InputScale { get; }

    public Tensor Seen { get; }

    /// <summary>x (N, in) -> y (N, out).</summary>
    public Tensor Forward(Tensor x) => Second.Forward(Ops.Tanh(First.Forward(x * InputScale))) * Gain;

    /// <summary>Children named "0", "1", ... like torch.nn.Sequential / ModuleList.</summary>
    internal sealed class Sequence : Module
    {
        private int _count;

        public T Add<T>(T module) where T : Module => RegisterModule((_count++).ToString(System.Globalization.CultureInfo.InvariantCulture), module);
    }
}
