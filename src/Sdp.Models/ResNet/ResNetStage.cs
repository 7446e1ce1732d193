using Sdp.Engine;
using Sdp.Engine.Nn;

namespace Sdp.Models.ResNet;

/// <summary>One stage (torchvision's layerN): blocks "0", "1", ... applied in order.</summary>
public sealed class ResNetStage : Module
{
    private readonly List<BasicBlock> _blocks = [];

    public ResNetStage(int inChannels, int outChannels, int stride, int blocks, Rng rng, DType dtype = DType.Float32)
        : this(inChannels, outChannels, stride, blocks, rng, dtype, null, null)
    {
    }

    /// <summary>
    /// A stage whose block i has <paramref name="internalWidths"/>[i] internal channels, activation factor
    /// <paramref name="scales"/>[i] and a residual branch unless <paramref name="branches"/>[i] is false;
    /// null arrays mean dense, unscaled, present (see the forward-masked <see cref="BasicBlock"/> constructor).
    /// </summary>
    public ResNetStage(int inChannels, int outChannels, int stride, int blocks, Rng rng, DType dtype, int[]? internalWidths, double[]? scales, bool[]? branches = null)
    {
        if (blocks < 1) throw new ArgumentOutOfRangeException(nameof(blocks), blocks, $"ResNetStage: needs at least one block, got {blocks}");
        if (internalWidths is not null && internalWidths.Length != blocks)
            throw new ArgumentException($"ResNetStage: internalWidths has {internalWidths.Length} entries, expected one per block ({blocks})", nameof(internalWidths));
        if (scales is not null && scales.Length != blocks)
            throw new ArgumentException($"ResNetStage: scales has {scales.Length} entries, expected one per block ({blocks})", nameof(scales));
        if (branches is not null && branches.Length != blocks)
            throw new ArgumentException($"ResNetStage: branches has {branches.Length} entries, expected one per block ({blocks})", nameof(branches));
        for (int i = 0; i < blocks; i++)
        {
            var block = new BasicBlock(i == 0 ? inChannels : outChannels, outChannels, i == 0 ? stride : 1, rng, dtype,
                internalWidths?[i] ?? outChannels, scales?[i] ?? 1.0, branches?[i] ?? true);
            _blocks.Add(RegisterModule(i.ToString(System.Globalization.CultureInfo.InvariantCulture), block));
        }
    }

    public IReadOnlyList<BasicBlock> Blocks => _blocks;

    /// <summary>
    /// Runs the blocks in order; a block for which <paramref name="skip"/> is true runs
    /// <see cref="BasicBlock.Skip"/> instead. Returns a new tensor unless every block was an identity skip,
    /// in which case it returns <paramref name="x"/> itself. x (N, in, H, W) -> (N, out, OH, OW).
    /// </summary>
    public Tensor Forward(Tensor x, Func<BasicBlock, bool>? skip = null)
    {
        var h = x;
        foreach (var block in _blocks)
        {
            var next = !block.HasBranch || (skip is not null && skip(block)) ? block.Skip(h) : block.Forward(h);
            if (!ReferenceEquals(h, x) && !ReferenceEquals(next, h)) h.Dispose();
            h = next;
        }
        return h;
    }
}
