using Sdp.Engine;
using Sdp.Engine.Autograd;

namespace Sdp.Tests.Support;

/// <summary>
/// Float64 finite-difference gradient check. The function's output is projected to a scalar with
/// fixed random weights (so every output element's gradient path is exercised), then the analytic
/// gradient from backward is compared with central differences for every input element, or, with
/// <c>maxElements</c>, for a seeded random subset of each input's elements that always holds its first and last.
/// </summary>
public static class GradCheck
{
    /// <summary>Checks d f / d inputs. Inputs must be float64 leaves; those with RequiresGrad are checked.</summary>
    public static void Check(Func<Tensor[], Tensor> f, Tensor[] inputs, double eps = 1e-6, double atol = 1e-7, double rtol = 1e-5, int seed = 1234, int? maxElements = null)
    {
        foreach (var x in inputs)
        {
            if (x.DType != DType.Float64) throw new ArgumentException($"gradcheck needs float64 inputs, got {x}");
        }

        using var scope = TensorScope.Begin();
        var rng = new Rng((ulong)seed);
        Tensor probe = f(inputs);
        var weights = Tensor.Randn(probe.Shape, rng, dtype: DType.Float64, backend: probe.Backend);
        double Objective()
        {
            using (GradMode.Disable())
            using (TensorScope.Begin())
            {
                var y = f(inputs);
                return Ops.Sum(Ops.Mul(y, weights)).Item();
            }
        }

        foreach (var x in inputs) x.ZeroGrad();
        Tape.Current.Clear();
        var loss = Ops.Sum(Ops.Mul(f(inputs), weights));
        loss.Backward();
        Assert.That(Tape.Current.Count, Is.Zero, "backward must consume the tape");

        for (int which = 0; which < inputs.Length; which++)
        {
            var x = inputs[which];
            if (!x.RequiresGrad) continue;
            Assert.That(x.Grad, Is.Not.Null, $"input {which} {x.Shape} got no gradient");
            var analytic = x.Grad!.ToArray<double>();
            var values = x.ToArray<double>();
            var failures = new List<string>();
            double worst = 0;
            foreach (int i in ElementsToCheck(values.Length, maxElements, rng))
            {
                double orig = values[i];
                values[i] = orig + eps;
                x.Backend.Upload<double>(values, x);
                double plus = Objective();
                values[i] = orig - eps;
                x.Backend.Upload<double>(values, x);
                double minus = Objective();
                values[i] = orig;
                x.Backend.Upload<double>(values, x);
                double numeric = (plus - minus) / (2 * eps);
                double err = Math.Abs(numeric - analytic[i]);
                worst = Math.Max(worst, err);
                if (double.IsNaN(analytic[i]) || err > atol + rtol * Math.Abs(numeric))
                {
                    if (failures.Count < 5) failures.Add($"[{i}] analytic {analytic[i]:G9} numeric {numeric:G9}");
                }
            }
            Assert.That(failures, Is.Empty, $"gradient of input {which} {x.Shape} differs from finite differences (max abs err {worst:G3}): {string.Join("; ", failures)}");
            x.ZeroGrad();
        }
    }

    /// <summary>Every index below <paramref name="length"/>, or at most <paramref name="maxElements"/> of them: the first, the last and seeded random ones between.</summary>
    private static IEnumerable<int> ElementsToCheck(int length, int? maxElements, Rng rng)
    {
        if (maxElements is not { } max || length <= max) return Enumerable.Range(0, length);
        var chosen = new SortedSet<int> { 0, length - 1 };
        while (chosen.Count < max) chosen.Add(rng.NextInt(length));
        return chosen;
    }

    /// <summary>
    /// What a whole-model check on <paramref name="backend"/> samples: everything, except on the emulated CUDA
    /// device, where each finite difference is two forward passes run thread by thread on the CPU (a ResNet
    /// check of every element took 40 s there). The CPU run of the same test checks every element; the emulated
    /// run checks the device's gradients against finite differences on a sample.
    /// </summary>
    public static int? SampleFor(Sdp.Engine.Backends.IBackend backend) => backend is Sdp.Engine.Backends.Cuda.CudaBackend { IsEmulated: true } ? 24 : null;

    /// <summary>A float64 leaf that requires grad, filled with standard normals.</summary>
    public static Tensor Input(Rng rng, params int[] shape)
    {
        var t = Tensor.Randn(new Shape(shape), rng, dtype: DType.Float64);
        t.RequiresGrad = true;
        return t;
    }

    /// <summary>A float64 leaf with values in [low, high), for ops with a restricted domain (log, sqrt).</summary>
    public static Tensor Positive(Rng rng, double low, double high, params int[] shape)
    {
        var t = Tensor.Uniform(new Shape(shape), rng, low, high, DType.Float64);
        t.RequiresGrad = true;
        return t;
    }
}
