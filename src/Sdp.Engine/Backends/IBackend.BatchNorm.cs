namespace Sdp.Engine.Backends;

/// <summary>Batch normalisation. All activations are NCHW; semantics follow PyTorch.</summary>
public partial interface IBackend
{
    /// <summary>
    /// y (N, C, H, W) = (x - mean)·rstd·weight + bias per channel, writing mean (C) and rstd (C) for backward.
    /// Training: mean and rstd = 1/√(var + eps) come from the batch (biased variance over N·H·W values), and
    /// runningMean/runningVar (C) are updated in place: r = (1 - momentum)·r + momentum·stat, using the
    /// unbiased variance. Eval: mean = runningMean, rstd = 1/√(runningVar + eps); running stats are not touched.
    /// </summary>
    void BatchNorm2d(Tensor x, Tensor weight, Tensor bias, Tensor runningMean, Tensor runningVar, Tensor y, Tensor mean, Tensor rstd, bool training, double momentum, double eps);

    /// <summary>
    /// Gradients of <see cref="BatchNorm2d"/> given dy (N, C, H, W), with x̂ = (x - mean)·rstd and M = N·H·W:
    /// dbias (C) += Σ dy; dweight (C) += Σ dy·x̂; dx += weight·rstd·(dy - Σdy/M - x̂·Σ(dy·x̂)/M) when
    /// training (the gradient through the batch statistics), dx += weight·rstd·dy in eval.
    /// Null gradient outputs are skipped; x may be null when only dbias is wanted, weight when dx is null.
    /// With <paramref name="overwrite"/> every gradient output given is overwritten (= instead of +=) and not read.
    /// </summary>
    void BatchNorm2dBackward(Tensor? x, Tensor? weight, Tensor mean, Tensor rstd, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, bool training, bool overwrite = false);
}
