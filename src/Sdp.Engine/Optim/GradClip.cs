using Sdp.Engine.Backends;

namespace Sdp.Engine.Optim;

/// <summary>Gradient clipping.</summary>
public static class GradClip
{
    /// <summary>
    /// Scales all gradients together so that their global L2 norm is at most <paramref name="maxNorm"/>,
    /// as torch.nn.utils.clip_grad_norm_ does, and returns the norm before clipping.
    /// <para>The norm is sqrt(Σ over parameters with a Grad of Σ grad²), accumulated in float64 via the
    /// backend's AddSumOfSquares on the gradients' device whatever their dtype, and read back once;
    /// parameters whose Grad is null are skipped.
    /// When norm &gt; maxNorm every gradient is multiplied in place by maxNorm / (norm + 1e-6), PyTorch's
    /// factor; otherwise the gradients are left untouched. (PyTorch also applies its factor when
    /// maxNorm - 1e-6 &lt; norm &lt;= maxNorm, scaling by less than 1e-6/maxNorm relative; skipping that
    /// makes clipping idempotent: clipping already clipped gradients changes nothing.)</para>
    /// <para>A non-finite norm (an inf or NaN somewhere in the gradients) is returned as is and the
    /// gradients are left untouched, so the caller can detect it and skip the step.</para>
    /// </summary>
    public static double ClipGlobalNorm(IEnumerable<Tensor> parameters, double maxNorm)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (!(maxNorm > 0) || double.IsNaN(maxNorm)) throw new ArgumentOutOfRangeException(nameof(maxNorm), maxNorm, "ClipGlobalNorm: maxNorm must be > 0");
        var grads = parameters.Select(p => p?.Grad).OfType<Tensor>().ToList();
        if (grads.Count == 0) return 0;
        double norm;
        using (Memory.MemoryAccount.Use(Memory.MemoryCategory.Workspace))
        using (var total = Tensor.Zeros(Shape.Scalar, DType.Float64, grads[0].Backend))
        {
            foreach (var g in grads) g.Backend.AddSumOfSquares(g, 1, total);
            norm = Math.Sqrt(total.Item());
        }
        ScaleGradients(grads, norm, maxNorm);
        return norm;
    }

    /// <summary>
    /// The clipping half of <see cref="ClipGlobalNorm"/> for a norm measured elsewhere (e.g. summed over
    /// the workers of a distributed run): when the finite <paramref name="norm"/> exceeds
    /// <paramref name="maxNorm"/>, every parameter's gradient is scaled by maxNorm / (norm + 1e-6).
    /// </summary>
    public static void ScaleToNorm(IEnumerable<Tensor> parameters, double norm, double maxNorm)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (!(maxNorm > 0) || double.IsNaN(maxNorm)) throw new ArgumentOutOfRangeException(nameof(maxNorm), maxNorm, "ScaleToNorm: maxNorm must be > 0");
        ScaleGradients(parameters.Select(p => p?.Grad).OfType<Tensor>(), norm, maxNorm);
    }

    private static void ScaleGradients(IEnumerable<Tensor> grads, double norm, double maxNorm)
    {
        if (!double.IsFinite(norm) || norm <= maxNorm) return;
        double factor = maxNorm / (norm + 1e-6);
        foreach (var g in grads) g.Backend.Unary(UnaryOp.Scale, g, g, factor);
    }
}
