using Sdp.Engine;
using Sdp.Engine.Nn;

namespace Sdp.Models.ResNet;

/// <summary>The projection shortcut, torchvision's downsample Sequential: "0" a 1x1 conv with the stride, no bias; "1" BN.</summary>
public sealed class Projection : Module
{
    public Projection(int inChannels, int outChannels, int stride, Rng rng, DType dtype = DType.Float32)
    {
        Conv = RegisterModule("0", ResNetInit.Conv(inChannels, outChannels, 1, stride, rng, dtype));
        Bn = RegisterModule("1", new BatchNorm2d(outChannels, dtype: dtype));
    }

    public Conv2d Conv { get; }

    public BatchNorm2d Bn { get; }

    /// <summary>x (N, in, H, W) -> y (N, out, OH, OW), OH = (H - 1) / stride + 1.</summary>
    public Tensor Forward(Tensor x)
    {
        using var a = Conv.Forward(x);
        return Bn.Forward(a);
    }
}
