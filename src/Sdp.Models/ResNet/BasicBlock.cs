using Sdp.Engine;
using Sdp.Engine.Nn;

namespace Sdp.Models.ResNet;

/// <summary>
/// torchvision's BasicBlock: y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), with 3x3 convs
/// (conv1 carries the stride) and a projection shortcut (1x1 conv with the stride, then BN) when the
/// stride is not 1 or the channel count changes; otherwise the shortcut is the identity.
/// Names: conv1, bn1, conv2, bn2 and downsample.0 (conv), downsample.1 (BN).
/// <para>
/// The pieces are public so callers can change the block: <see cref="Residual"/> is the branch before
/// the sum, <see cref="Shortcut"/> the other side, <see cref="Skip"/> the block's output when its
/// residual branch is dropped.
/// </para>
/// </summary>
public sealed class BasicBlock : Module
{
    public BasicBlock(int inChannels, int outChannels, int stride, Rng rng, DType dtype = DType.Float32)
    {
        if (inChannels < 1 || outChannels < 1) throw new ArgumentOutOfRangeException(nameof(inChannels), $"BasicBlock: channels must be >= 1, got in {inChannels}, out {outChannels}");
        if (stride < 1) throw new ArgumentOutOfRangeException(nameof(stride), stride, $"BasicBlock: stride must be >= 1, got {stride}");
        (InChannels, OutChannels, Stride) = (inChannels, outChannels, stride);
        Conv1 = RegisterModule("conv1", ResNetInit.Conv(inChannels, outChannels, 3, stride, rng, dtype));
        Bn1 = RegisterModule("bn1", new BatchNorm2d(outChannels, dtype: dtype));
        Conv2 = RegisterModule("conv2", ResNetInit.Conv(outChannels, outChannels, 3, 1, rng, dtype));
        Bn2 = RegisterModule("bn2", new BatchNorm2d(outChannels, dtype: dtype));
        if (stride != 1 || inChannels != outChannels) Downsample = RegisterModule("downsample", new Projection(inChannels, outChannels, stride, rng, dtype));
    }

    public int InChannels { get; }

    public int OutChannels { get; }

    public int Stride { get; }

    /// <summary>Internal channels (conv1's filters) the block holds: OutChannels when dense, fewer under SDP's neuron units, 0 when none or the branch is dropped.</summary>
    public int InternalWidth => Conv1.IsDropped ? 0 : Conv1.Weight.Shape[0];

    /// <summary>Whether the residual branch runs (false when SDP dropped the block: only its shortcut runs).</summary>
    public bool HasBranch => !IsDropped;

    public double BranchScale
    {
        get => _branchScale;
        set => _branchScale = double.IsFinite(value) && value > 0 ? value
            : throw new ArgumentOutOfRangeException(nameof(value), value, $"BasicBlock: branch scale must be a positive finite number, got {value}");
    }

    private double _branchScale = 1.0;

    public Conv2d Conv1 { get; }

    public BatchNorm2d Bn1 { get; }

    public Conv2d Conv2 { get; }

    public BatchNorm2d Bn2 { get; }

    public Projection? Downsample { get; }

    /// <summary>
    /// x (N, in, H, W) -> y (N, out, OH, OW), OH = (H - 1) / stride + 1. Without a residual branch this
    /// is <see cref="Skip"/>, which returns <paramref name="x"/> itself for an identity shortcut.
    /// </summary>
    public Tensor Forward(Tensor x)
    {
        if (!HasBranch) return Skip(x);
        using var residual = Residual(x);
        // Scale 1 adds no op, so an unscaled block computes exactly what it did before branch scaling existed.
        using var scaled = BranchScale == 1.0 ? null : Ops.Scale(residual, BranchScale);
        using var projected = Downsample?.Forward(x);
        using var sum = Ops.Add(scaled ?? residual, projected ?? x);
        return Ops.Relu(sum);
    }

    /// <summary>The residual branch bn2(conv2(relu(bn1(conv1(x))))). x (N, in, H, W) -> (N, out, OH, OW).</summary>
    public Tensor Residual(Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        if (Conv1.IsDropped)
        {
            // No internal channel is held: conv2's output is zero, but bn2 of it still contributes (its bias, in training).
            int oh = (x.Shape[2] - 1) / Stride + 1, ow = (x.Shape[3] - 1) / Stride + 1;
            using var zeros = Tensor.Zeros(new Shape(x.Shape[0], OutChannels, oh, ow), x.DType, x.Backend);
            return Bn2.Forward(zeros);
        }
        using var a = Conv1.Forward(x);         // (N, c, OH, OW)
        using var b = Bn1.Forward(a);
        using var c = Ops.Relu(b);
        using var d = Conv2.Forward(c);         // scales c by n / c first under inverse-coverage scaling
        return Bn2.Forward(d);
    }

    /// <summary>
    /// The shortcut: the projection's output (a new tensor), or <paramref name="x"/> itself for an
    /// identity shortcut (the caller keeps owning it). x (N, in, H, W) -> (N, out, OH, OW).
    /// </summary>
    public Tensor Shortcut(Tensor x) => Downsample?.Forward(x) ?? x;

    /// <summary>
    /// The block with its residual branch dropped: relu(shortcut(x)). A projection block still
    /// projects (so the shapes match the next block); an identity block returns <paramref name="x"/>
    /// itself, since block inputs are ReLU outputs already (the caller keeps owning it).
    /// x (N, in, H, W) -> (N, out, OH, OW).
    /// </summary>
    public Tensor Skip(Tensor x)
    {
        if (Downsample is null) return x;
        using var projected = Downsample.Forward(x);
        return Ops.Relu(projected);
    }
}
