namespace Sdp.Engine.Backends;

/// <summary>Convolutional-network layers. All activations are NCHW; semantics follow PyTorch.</summary>
public partial interface IBackend
{
    /// <summary>
    /// y (N, O, OH, OW) = Σ_{c,kh,kw} x (N, C, H, W)[n, c, oh·s - p + kh, ow·s - p + kw] · w (O, C, KH, KW)[o, c, kh, kw]
    /// + bias (O)[o], reading out-of-range input positions as zero. bias may be null. y is overwritten.
    /// </summary>
    void Conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor y, int stride, int padding);

    /// <summary>
    /// Gradients of <see cref="Conv2d"/> given dy (N, O, OH, OW): dx (N, C, H, W) += the transposed
    /// convolution of dy with w; dweight (O, C, KH, KW) += the correlation of dy with x; dbias (O) += Σ dy
    /// over (N, OH, OW). Null gradient outputs are skipped. x is read only for dweight (may be null
    /// otherwise), weight only for dx (may be null otherwise).
    /// </summary>
    void Conv2dBackward(Tensor? x, Tensor? weight, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, int stride, int padding);

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
    /// </summary>
    void BatchNorm2dBackward(Tensor? x, Tensor? weight, Tensor mean, Tensor rstd, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, bool training);

    /// <summary>
    /// y (N, C, OH, OW) = max over the kernel×kernel window at (oh·s - p, ow·s - p) of x (N, C, H, W), padding
    /// read as -inf, NaN propagating. argmax (int32 or int64, y's shape) receives the winner's offset h·W + w
    /// in its plane: the first maximum in row-major scan order.
    /// </summary>
    void MaxPool2d(Tensor x, Tensor y, Tensor argmax, int kernel, int stride, int padding);

    /// <summary>dx (N, C, H, W) += dy (N, C, OH, OW) scattered to the argmax offsets written by <see cref="MaxPool2d"/>.</summary>
    void MaxPool2dBackward(Tensor dy, Tensor argmax, Tensor dx);

    /// <summary>
    /// y (N, C, OH, OW) = mean of x (N, C, H, W) over rows [⌊i·H/OH⌋, ⌈(i+1)·H/OH⌉) and columns
    /// [⌊j·W/OW⌋, ⌈(j+1)·W/OW⌉) for output cell (i, j). Output size comes from y's shape.
    /// </summary>
    void AdaptiveAvgPool2d(Tensor x, Tensor y);

    /// <summary>dx (N, C, H, W) += dy (N, C, OH, OW) / bin size, spread over each cell's bin.</summary>
    void AdaptiveAvgPool2dBackward(Tensor dy, Tensor dx);
}
