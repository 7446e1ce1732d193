namespace Sdp.Engine.Backends;

/// <summary>2-D convolution. All activations are NCHW; semantics follow PyTorch.</summary>
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
    /// otherwise), weight only for dx (may be null otherwise). With <paramref name="overwrite"/> every gradient output
    /// given is overwritten (= instead of +=) and not read: autograd's fresh buffers then need no zero fill.
    /// </summary>
    void Conv2dBackward(Tensor? x, Tensor? weight, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, int stride, int padding, bool overwrite = false);
}
