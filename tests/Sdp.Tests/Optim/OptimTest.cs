using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Engine.Memory;

namespace Sdp.Tests.Optim;

/// <summary>Helpers shared by the optimizer tests.</summary>
internal static class OptimTest
{
    /// <summary>A leaf parameter that requires grad, charged to Parameters (owned by the current scope, if any).</summary>
    public static Tensor Param(double[] values, DType dtype, IBackend backend, params int[] shape)
    {
        using (MemoryAccount.Use(MemoryCategory.Parameters))
        {
            var p = Tensor.FromDoubles(values, shape.Length == 0 ? new Shape(values.Length) : new Shape(shape), dtype, backend);
            p.RequiresGrad = true;
            return p;
        }
    }

    /// <summary>The value a double takes once stored in <paramref name="dtype"/>.</summary>
    public static double Round(double x, DType dtype) => dtype == DType.Float32 ? (float)x : x;

    public static double[] Round(double[] x, DType dtype) => Array.ConvertAll(x, v => Round(v, dtype));

    /// <summary>
    /// Replaces the gradients of <paramref name="ps"/> with <paramref name="grads"/> through real
    /// backward passes: loss = sum(p ⊙ c) has ∂loss/∂p = c exactly. One backward per parameter, so
    /// parameters may have different dtypes. A null entry leaves that parameter without a gradient.
    /// </summary>
    public static void SetGrads(Tensor[] ps, double[]?[] grads)
    {
        foreach (var p in ps) p.ZeroGrad();
        for (int i = 0; i < ps.Length; i++)
        {
            if (grads[i] is not { } g) continue;
            using var scope = TensorScope.Begin();
            var c = Tensor.FromDoubles(g, ps[i].Shape, ps[i].DType, ps[i].Backend);
            Ops.Sum(Ops.Mul(ps[i], c)).Backward();
        }
    }
}
