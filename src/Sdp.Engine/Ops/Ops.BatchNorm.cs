using Sdp.Engine.Autograd;

namespace Sdp.Engine;

/// <summary>Batch normalisation of NCHW activations, with PyTorch semantics (torch.nn.functional).</summary>
public static partial class Ops
{
    // ---- batchnorm2d ------------------------------------------------------------------------------

    /// <summary>
    /// Batch normalisation over (N, H, W) per channel, as torch.nn.functional.batch_norm.
    /// x (N, C, H, W), weight (C), bias (C), runningMean (C), runningVar (C) -> y (N, C, H, W).
    /// Training: normalises with the batch mean and biased variance and updates the running statistics in
    /// place (running = (1 - momentum)·running + momentum·batch, with the unbiased variance); the update is
    /// not differentiable and is never recorded. Eval: normalises with the running statistics.
    /// </summary>
    public static Tensor BatchNorm2d(Tensor x, Tensor weight, Tensor bias, Tensor runningMean, Tensor runningVar, bool training, double momentum = 0.1, double eps = 1e-5)
    {
        const string op = "batch_norm2d";
        RequireFloat(op, x);
        RequireRank(op, x, 4, "(N, C, H, W)");
        int c = x.Shape[1];
        var perChannel = new Shape(c);
        foreach (var (t, what) in new[] { (weight, "weight"), (bias, "bias"), (runningMean, "running_mean"), (runningVar, "running_var") })
        {
            RequireSame(op, x, t);
            RequireShape(op, t, perChannel, what);
        }
        if (!(eps > 0)) throw new ArgumentOutOfRangeException(nameof(eps), $"batch_norm2d: eps must be > 0, got {eps}");
        if (!(momentum >= 0 && momentum <= 1)) throw new ArgumentOutOfRangeException(nameof(momentum), $"batch_norm2d: momentum must be in [0, 1], got {momentum}");
        long perChannelCount = x.Shape[0] * x.Shape.Product(2, 4);
        if (training && perChannelCount <= 1)
            throw new ArgumentException($"batch_norm2d: training needs more than 1 value per channel, got input {x.Describe()}");
        if (perChannelCount == 0) throw new ArgumentException($"batch_norm2d: input {x.Describe()} is empty");

        var y = EmptyLike(x);
        var mean = Empty(perChannel, x);
        var rstd = Empty(perChannel, x);
        using (mean)
        using (rstd)
        {
            x.Backend.BatchNorm2d(x, weight, bias, runningMean, runningVar, y, mean, rstd, training, momentum, eps);
            return NeedsGrad(x, weight, bias) ? Record(new BatchNorm2dNode(y, x, weight, bias, mean, rstd, training)) : y;
        }
    }

    private sealed class BatchNorm2dNode : TapeNode
    {
        private readonly Tensor? _x;
        private readonly Tensor? _w;
        private readonly Tensor _mean, _rstd;
        private readonly bool _training;

        public BatchNorm2dNode(Tensor y, Tensor x, Tensor w, Tensor b, Tensor mean, Tensor rstd, bool training) : base(y, x, w, b)
        {
            _training = training;
            if (x.RequiresGrad || w.RequiresGrad) _x = Save(x); // x̂ = (x - mean)·rstd
            if (x.RequiresGrad) _w = Save(w);
            _mean = Save(mean);
            _rstd = Save(rstd);
        }

        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var (dx, dw, db, overwrite) = grads.ForWriteTogether(Inputs[0], Inputs[1], Inputs[2]);
            if (dx is null && dw is null && db is null) return;
            dy.Backend.BatchNorm2dBackward(_x, _w, _mean, _rstd, dy, dx, dw, db, _training, overwrite);
        }
    }
}
