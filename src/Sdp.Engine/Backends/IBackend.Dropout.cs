namespace Sdp.Engine.Backends;

public partial interface IBackend
{
    /// <summary>
    /// Inverted dropout with a counter-based mask that every backend reproduces bit for bit. For the
    /// flat element index i (0-based, row-major), h(i) is SplitMix64's (i+1)-th output from state
    /// <paramref name="seed"/>:
    /// <code>
    /// z = seed + (i + 1) · 0x9E3779B97F4A7C15            (mod 2⁶⁴)
    /// z = (z ^ (z >> 30)) · 0xBF58476D1CE4E5B9
    /// z = (z ^ (z >> 27)) · 0x94D049BB133111EB
    /// h = z ^ (z >> 31)
    /// </code>
    /// Element i is dropped iff (h >> 11) &lt; ceil(p · 2⁵³) (an integer compare, so uniform in [0, 1)
    /// below p, identical on every device). mask[i] = dropped ? 0 : 1/(1-p) (0 when p = 1), in x's
    /// dtype; y = x ⊙ mask. x, mask, y same shape; 0 &lt;= p &lt;= 1.
    /// </summary>
    void Dropout(Tensor x, double p, ulong seed, Tensor mask, Tensor y);

    /// <summary>dx += dy ⊙ mask.</summary>
    void DropoutBackward(Tensor dy, Tensor mask, Tensor dx);
}
