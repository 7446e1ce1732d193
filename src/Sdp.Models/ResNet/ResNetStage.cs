using Sdp.Engine;
using Sdp.Engine.Nn;

namespace Sdp.Models.ResNet;

/// <summary>One stage (torchvision's layerN): blocks "0", "1", ... applied in order.</summary>
public sealed class ResNetStage : Module
{
    private readonly List<BasicBlock> _blocks = [];

    public ResNetStage(int inChannels, int outChannels, int stride, int blocks, Rng rng, DType dtype = DType.Float32)
    {
        if (blocks < 1) throw new ArgumentOutOfRangeException(nameof(blocks), blocks, $"ResNetStage: needs at least one block, got {blocks}");
        for (int i = 0; i < blocks; i++)
        {
            var block = new BasicBlock(i == 0 ? inChannels : outChannels, outChannels, i == 0 ? stride : 1, rng, dtype);
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
