using Sdp.Engine;
using Sdp.Engine.Memory;

namespace Sdp.Models;

/// <summary>
/// A multilayer perceptron with ReLU between layers: the built-in demo model. Parameters use
/// PyTorch nn.Linear's default initialisation, U(-1/√in, 1/√in) for weights and biases, and are named
/// like a PyTorch nn.Sequential of Linear layers ("0.weight", "0.bias", "2.weight", ...).
/// </summary>
public sealed class Mlp : IDisposable
{
    private readonly List<(Tensor Weight, Tensor Bias)> _layers = [];

    public Mlp(int[] widths, Rng rng, DType dtype = DType.Float32)
    {
        if (widths.Length < 2) throw new ArgumentException($"an MLP needs at least an input and an output width, got [{string.Join(", ", widths)}]");
        using var _ = MemoryAccount.Use(MemoryCategory.Parameters);
        for (int i = 0; i + 1 < widths.Length; i++)
        {
            double bound = 1.0 / Math.Sqrt(widths[i]);
            var w = Tensor.Uniform(new Shape(widths[i + 1], widths[i]), rng, -bound, bound, dtype);
            var b = Tensor.Uniform(new Shape(widths[i + 1]), rng, -bound, bound, dtype);
            (w.Name, b.Name) = ($"{2 * i}.weight", $"{2 * i}.bias");
            w.RequiresGrad = b.RequiresGrad = true;
            _layers.Add((w, b));
        }
        Parameters = [.. _layers.SelectMany(l => new[] { l.Weight, l.Bias })];
    }

    public IReadOnlyList<Tensor> Parameters { get; }

    public long ParameterCount => Parameters.Sum(p => p.Numel);

    /// <summary>x (N, in) -> logits (N, out).</summary>
    public Tensor Forward(Tensor x)
    {
        var h = x;
        for (int i = 0; i < _layers.Count; i++)
        {
            var next = Ops.Linear(h, _layers[i].Weight, _layers[i].Bias);
            if (i + 1 < _layers.Count)
            {
                var activated = Ops.Relu(next);
                next.Dispose();
                next = activated;
            }
            if (h != x) h.Dispose();
            h = next;
        }
        return h;
    }

    public void Dispose()
    {
        foreach (var p in Parameters)
        {
            p.ZeroGrad();
            p.Dispose();
        }
    }
}
