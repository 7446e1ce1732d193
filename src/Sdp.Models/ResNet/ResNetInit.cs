using Sdp.Engine;
using Sdp.Engine.Nn;

namespace Sdp.Models.ResNet;

internal static class ResNetInit
{
    /// <summary>
    /// A bias-free square conv with padding k/2 and torchvision's ResNet init:
    /// kaiming_normal_(mode='fan_out', nonlinearity='relu'), i.e. N(0, 2 / (out·k·k)).
    /// </summary>
    public static Conv2d Conv(int inChannels, int outChannels, int kernel, int stride, Rng rng, DType dtype)
    {
        // Conv2d fills its weight with the default uniform init; draw that from a throwaway generator
        // so the model's generator feeds only the Kaiming draws.
        var conv = new Conv2d(inChannels, outChannels, kernel, stride, kernel / 2, bias: false, new Rng(0), dtype);
        Init.Normal(conv.Weight, rng, Math.Sqrt(2.0 / ((double)outChannels * kernel * kernel)));
        return conv;
    }
}
