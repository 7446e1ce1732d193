namespace Sdp.Engine.Backends;

/// <summary>Pooling. All activations are NCHW; semantics follow PyTorch.</summary>
public partial interface IBackend
{
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
