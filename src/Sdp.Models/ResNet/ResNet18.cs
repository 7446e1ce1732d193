using Sdp.Engine;
using Sdp.Engine.Nn;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Training;

namespace Sdp.Models.ResNet;

/// <summary>
/// ResNet-18 for 32x32 images (the CIFAR variant): torchvision's resnet18 with the stem changed to a
/// 3x3 stride-1 conv and no max-pool. Stem conv1-bn1-relu; four stages (layer1..layer4) of two
/// <see cref="BasicBlock"/>s with Width·{1, 2, 4, 8} channels and strides 1, 2, 2, 2; global average
/// pool; fc. Parameter and buffer names are torchvision's, so state dicts map one to one.
/// Init as torchvision: convs N(0, 2 / fan_out), BN weight 1 and bias 0, fc nn.Linear's default.
/// At Width 64 with 10 classes: 11,173,962 parameters. SDP cuts its forward-masked subnetworks from it by the
/// units it declares (<see cref="DeclareUnits"/>).
/// </summary>
public sealed class ResNet18 : Module, IModuleConfig
{
    private readonly List<ResNetStage> _stages = [];
    private readonly List<BasicBlock> _blocks = [];

    public ResNet18(ResNetConfig config, Rng rng, DType dtype = DType.Float32)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(rng);
        config.Validate();
        if (!dtype.IsFloatingPoint()) throw new ArgumentException($"ResNet18: dtype must be float32 or float64, got {dtype.Name()}", nameof(dtype));
        (Config, DType) = (config, dtype);

        Conv1 = RegisterModule("conv1", ResNetInit.Conv(config.InChannels, config.Width, 3, 1, rng, dtype));
        Bn1 = RegisterModule("bn1", new BatchNorm2d(config.Width, dtype: dtype));
        int inChannels = config.Width;
        for (int s = 0; s < 4; s++)
        {
            int outChannels = config.StageChannels(s);
            var stage = RegisterModule($"layer{s + 1}", new ResNetStage(inChannels, outChannels, ResNetConfig.BlockStride(s, 0), 2, rng, dtype));
            _stages.Add(stage);
            _blocks.AddRange(stage.Blocks);
            inChannels = outChannels;
        }
        Fc = RegisterModule("fc", new Linear(config.Features, config.NumClasses, bias: true, rng, dtype));
    }

    public ResNetConfig Config { get; }

    /// <summary>The configuration stored in checkpoints.</summary>
    public string ConfigJson => Config.ToJson();

    public DType DType { get; }

    public Conv2d Conv1 { get; }

    public BatchNorm2d Bn1 { get; }

    /// <summary>layer1..layer4.</summary>
    public IReadOnlyList<ResNetStage> Stages => _stages;

    /// <summary>All eight blocks in forward order (layer1.0, layer1.1, ..., layer4.1).</summary>
    public IReadOnlyList<BasicBlock> Blocks => _blocks;

    public Linear Fc { get; }

    /// <summary>
    /// SDP's units (method reference §3). Neuron level: each BasicBlock's internal channels (conv1's filters with
    /// bn1's channels and conv2's input channels); the stem, bn2, shortcuts and fc are shared. Block level: the
    /// BasicBlocks' residual branches; a dropped block runs its projection shortcut, which every worker keeps, and
    /// with <paramref name="keepDownsampleBlocks"/> the downsampling blocks are shared, not units.
    /// </summary>
    public IEnumerable<UnitDeclaration> DeclareUnits(SubnetLevel level, bool keepDownsampleBlocks = false)
    {
        foreach (var block in Blocks)
        {
            if (level == SubnetLevel.Neuron) yield return Units.Hidden(block.Conv1, block.Conv2, block.Bn1);
            else if (!(keepDownsampleBlocks && block.Downsample is not null)) yield return Units.Block(block).Keeping(block.Downsample);
        }
    }

    /// <summary>
    /// x (N, InChannels, H, W) -> logits (N, NumClasses). Blocks for which <paramref name="skip"/> is
    /// true run <see cref="BasicBlock.Skip"/> (residual branch dropped) instead of their full forward.
    /// Intermediates are disposed as soon as they are consumed; the tape keeps what backward needs.
    /// </summary>
    public Tensor Forward(Tensor x, Func<BasicBlock, bool>? skip = null)
    {
        ArgumentNullException.ThrowIfNull(x);
        if (x.Rank != 4 || x.Shape[1] != Config.InChannels)
            throw new ArgumentException($"ResNet18: input must be (N, {Config.InChannels}, H, W), got {x.Shape} {x.DType.Name()}", nameof(x));
        if (x.DType != DType)
            throw new ArgumentException($"ResNet18: input {x.Shape} is {x.DType.Name()} but the model is {DType.Name()}", nameof(x));

        Tensor h;
        using (var stem = Conv1.Forward(x))
        using (var normed = Bn1.Forward(stem))
        {
            h = Ops.Relu(normed);
        }
        foreach (var stage in _stages)
        {
            var next = stage.Forward(h, skip);
            if (!ReferenceEquals(next, h)) h.Dispose();
            h = next;
        }
        using (h)
        using (var pooled = Ops.AdaptiveAvgPool2d(h, 1, 1))
        using (var flat = Ops.Reshape(pooled, x.Shape[0], Config.Features))
        {
            return Fc.Forward(flat);
        }
    }

    /// <summary>Mean cross-entropy of the logits against class indices. x (N, C, H, W), labels (N) int32/int64 -> loss ().</summary>
    public Tensor Loss(Tensor x, Tensor labels, Func<BasicBlock, bool>? skip = null)
    {
        using var logits = Forward(x, skip);
        return Ops.CrossEntropy(logits, labels);
    }
}
