using Sdp.Engine;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Training;

namespace Sdp.Models.Subnetworks;

/// <summary>
/// The <see cref="SubnetworkModel"/>s of the built-in models (method reference §2.4, §3): the dense model built
/// exactly as single-worker training builds it, and the units it declares from its modules
/// (<see cref="LlamaForCausalLM.DeclareUnits"/>, <see cref="ResNet.ResNet18.DeclareUnits"/>).
/// </summary>
public static class SubnetworkModels
{
    /// <summary>LLaMA at <paramref name="level"/>, FLOPs per sequence of max_position_embeddings tokens.</summary>
    public static SubnetworkModel Llama(LlamaConfig config, SubnetLevel level, SubnetOptions options, ulong seed, DType dtype = DType.Float32)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(options);
        config.Validate();
        var sequence = new Shape(1, config.MaxPositionEmbeddings);
        return SubnetworkModel.For(() => new LlamaForCausalLM(config, new Rng(seed), dtype), model => new LlamaTrainable(model),
            model => model.DeclareUnits(level, options.MaskHeads, options.SplitSublayers), options.NeuronScale,
            new SampleShape(sequence, DType.Int64, sequence, DType.Int64));
    }

    /// <summary>ResNet-18 at <paramref name="level"/>, FLOPs per <paramref name="imageSize"/>² image.</summary>
    public static SubnetworkModel ResNet18(ResNetConfig config, SubnetLevel level, SubnetOptions options, ulong seed, DType dtype = DType.Float32, int imageSize = 32)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(options);
        config.Validate();
        if (imageSize < 1) throw new ArgumentOutOfRangeException(nameof(imageSize), imageSize, $"SubnetworkModels.ResNet18: the image size must be positive, got {imageSize}");
        return SubnetworkModel.For(() => new ResNet.ResNet18(config, new Rng(seed), dtype), model => new ResNetTrainable(model),
            model => model.DeclareUnits(level, options.Downsample == DownsampleBlocks.AlwaysKeep), options.NeuronScale,
            new SampleShape(new Shape(1, config.InChannels, imageSize, imageSize), dtype, new Shape(1), DType.Int64));
    }
}
