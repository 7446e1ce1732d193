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
    private readonly Conv2d? _conv1;
    private readonly BatchNorm2d? _bn1;
    private readonly Conv2d? _conv2;
    private readonly BatchNorm2d? _bn2;

    public BasicBlock(int inChannels, int outChannels, int stride, Rng rng, DType dtype = DType.Float32)
        : this(inChannels, outChannels, stride, rng, dtype, outChannels, 1.0)
    {
    }

    /// <summary>
    /// A forward-masked block (see <see cref="ResNetSubnetShape"/>): <paramref name="internalWidth"/>
    /// internal channels (conv1 (c, in, 3, 3), bn1 (c), conv2 (out, c, 3, 3)) whose activation
    /// relu(bn1(conv1(x))) is multiplied by <paramref name="scale"/>. Width 0 with
    /// <paramref name="branch"/>: a neuron-level block holding none of its channels; conv1, bn1 and conv2
    /// are not allocated and the branch is bn2 of zeros (bn2 is shared at neuron level, and bn2(0) is not
    /// zero). <paramref name="branch"/> false: no residual branch at all (conv1, bn1, conv2, bn2 are not
    /// allocated) and <see cref="Forward"/> runs <see cref="Skip"/>.
    /// </summary>
    public BasicBlock(int inChannels, int outChannels, int stride, Rng rng, DType dtype, int internalWidth, double scale, bool branch = true)
    {
        if (inChannels < 1 || outChannels < 1) throw new ArgumentOutOfRangeException(nameof(inChannels), $"BasicBlock: channels must be >= 1, got in {inChannels}, out {outChannels}");
        if (stride < 1) throw new ArgumentOutOfRangeException(nameof(stride), stride, $"BasicBlock: stride must be >= 1, got {stride}");
        if (internalWidth < 0 || internalWidth > outChannels)
            throw new ArgumentOutOfRangeException(nameof(internalWidth), internalWidth, $"BasicBlock: internal width must be in [0, {outChannels}], got {internalWidth}");
        if (!(double.IsFinite(scale) && scale > 0)) throw new ArgumentOutOfRangeException(nameof(scale), scale, $"BasicBlock: scale must be a positive finite number, got {scale}");
        (InChannels, OutChannels, Stride) = (inChannels, outChannels, stride);
        (InternalWidth, Scale) = branch ? (internalWidth, scale) : (0, 1.0);
        if (branch && internalWidth > 0)
        {
            _conv1 = RegisterModule("conv1", ResNetInit.Conv(inChannels, internalWidth, 3, stride, rng, dtype));
            _bn1 = RegisterModule("bn1", new BatchNorm2d(internalWidth, dtype: dtype));
            _conv2 = RegisterModule("conv2", ResNetInit.Conv(internalWidth, outChannels, 3, 1, rng, dtype));
        }
        if (branch) _bn2 = RegisterModule("bn2", new BatchNorm2d(outChannels, dtype: dtype));
        if (stride != 1 || inChannels != outChannels) Downsample = RegisterModule("downsample", new Projection(inChannels, outChannels, stride, rng, dtype));
    }

    public int InChannels { get; }

    public int OutChannels { get; }

    public int Stride { get; }

    /// <summary>Channels between conv1 and conv2: OutChannels for the dense block, 0 when none are held or the branch is absent.</summary>
    public int InternalWidth { get; }

    /// <summary>Factor on the internal activation (1: none, the dense block).</summary>
    public double Scale { get; }

    /// <summary>Whether the residual branch exists (always, except in a forward-masked subnetwork).</summary>
    public bool HasBranch => _bn2 is not null;

    /// <summary>
    /// Factor s on the residual branch's output, y = relu(s·<see cref="Residual"/>(x) + shortcut(x)): 1 by default;
    /// the stochastic-depth evaluation rules set it (the branch's coverage at test time, or its inverse in training).
    /// </summary>
    public double BranchScale
    {
        get => _branchScale;
        set => _branchScale = double.IsFinite(value) && value > 0 ? value
            : throw new ArgumentOutOfRangeException(nameof(value), value, $"BasicBlock: branch scale must be a positive finite number, got {value}");
    }

    private double _branchScale = 1.0;

    /// <summary>The first 3x3 conv; throws when it is not allocated (<see cref="InternalWidth"/> 0).</summary>
    public Conv2d Conv1 => _conv1 ?? throw Absent("conv1");

    /// <summary>The first BN; throws when it is not allocated (<see cref="InternalWidth"/> 0).</summary>
    public BatchNorm2d Bn1 => _bn1 ?? throw Absent("bn1");

    /// <summary>The second 3x3 conv; throws when it is not allocated (<see cref="InternalWidth"/> 0).</summary>
    public Conv2d Conv2 => _conv2 ?? throw Absent("conv2");

    /// <summary>The second BN; throws when the residual branch is absent.</summary>
    public BatchNorm2d Bn2 => _bn2 ?? throw Absent("bn2");

    /// <summary>The projection shortcut, or null when the shortcut is the identity.</summary>
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

    /// <summary>The residual branch bn2(conv2(Scale·relu(bn1(conv1(x))))). x (N, in, H, W) -> (N, out, OH, OW).</summary>
    public Tensor Residual(Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        if (_conv1 is null)
        {
            // No internal channel is held: conv2's output is zero, but bn2 of it still contributes (its bias, in training).
            int oh = (x.Shape[2] - 1) / Stride + 1, ow = (x.Shape[3] - 1) / Stride + 1;
            using var zeros = Tensor.Zeros(new Shape(x.Shape[0], OutChannels, oh, ow), x.DType, x.Backend);
            return Bn2.Forward(zeros);
        }
        using var a = Conv1.Forward(x);       // (N, c, OH, OW)
        using var b = Bn1.Forward(a);
        using var c = Ops.Relu(b);
        // Scale 1 adds no op, so the dense block computes exactly what it did before scaling existed.
        using var scaled = Scale == 1.0 ? null : Ops.Scale(c, Scale);
        using var d = Conv2.Forward(scaled ?? c);
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

    private static InvalidOperationException Absent(string name)
        => new($"BasicBlock: {name} is not part of this forward-masked block (its residual branch or all its internal channels were dropped)");
}
