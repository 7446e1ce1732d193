using System.Globalization;

namespace Sdp.Models.ResNet;

/// <summary>
/// The shape of a forward-masked ResNet-18 subnetwork (method reference §2.4, §3), per BasicBlock in
/// forward order (layer1.0, layer1.1, …, layer4.1; 8 entries); a null array means "dense". Block b keeps
/// <see cref="InternalWidths"/>[b] internal channels (conv1 (c, in, 3, 3), bn1 (c), conv2 (out, c, 3, 3))
/// and multiplies relu(bn1(conv1(x))) by <see cref="Scale"/>[b]; width 0 (a neuron-level worker holding
/// none of the block's channels) keeps only bn2, applied to conv2's all-zero output. A block whose
/// <see cref="BranchPresent"/>[b] is false has no conv1/bn1/conv2/bn2 and runs
/// <see cref="BasicBlock.Skip"/>: its projection shortcut, if it has one, stays.
/// </summary>
public sealed record ResNetSubnetShape(int[]? InternalWidths = null, bool[]? BranchPresent = null, double[]? Scale = null)
{
    /// <summary>BasicBlocks of ResNet-18.</summary>
    public const int BlockCount = 8;

    /// <summary>Internal channels of block <paramref name="block"/> (0 when its residual branch is absent); <paramref name="outChannels"/> when dense.</summary>
    public int InternalWidth(int block, int outChannels)
    {
        if (!HasBranch(block)) return 0;
        return InternalWidths?[block] ?? outChannels;
    }

    /// <summary>Whether block <paramref name="block"/> keeps its residual branch.</summary>
    public bool HasBranch(int block) => BranchPresent?[block] ?? true;

    /// <summary>The factor on block <paramref name="block"/>'s internal activation (1 when unscaled).</summary>
    public double ScaleOf(int block) => Scale?[block] ?? 1.0;

    /// <summary>Throws <see cref="ArgumentException"/> naming the field and block when the shape does not fit <paramref name="config"/>.</summary>
    public void Validate(ResNetConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        CheckLength(InternalWidths?.Length, nameof(InternalWidths));
        CheckLength(BranchPresent?.Length, nameof(BranchPresent));
        CheckLength(Scale?.Length, nameof(Scale));
        for (int b = 0; b < BlockCount; b++)
        {
            int outC = config.StageChannels(b / 2);
            if (InternalWidths is not null && (InternalWidths[b] < 0 || InternalWidths[b] > outC))
                throw new ArgumentException($"ResNetSubnetShape: InternalWidths[{Str(b)}] (layer{Str(b / 2 + 1)}.{Str(b % 2)}) = {Str(InternalWidths[b])} must be in [0, {Str(outC)}]");
            if (Scale is not null && !(double.IsFinite(Scale[b]) && Scale[b] > 0))
                throw new ArgumentException($"ResNetSubnetShape: Scale[{Str(b)}] = {Scale[b].ToString(CultureInfo.InvariantCulture)} must be a positive finite number");
        }

        static void CheckLength(int? length, string field)
        {
            if (length is { } len && len != BlockCount)
                throw new ArgumentException($"ResNetSubnetShape: {field} has {Str(len)} entries, expected one per BasicBlock ({Str(BlockCount)})");
        }
    }

    private static string Str(int i) => i.ToString(CultureInfo.InvariantCulture);
}
