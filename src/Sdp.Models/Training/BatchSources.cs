using Sdp.Engine;
using Sdp.Models.Data;

namespace Sdp.Models.Training;

/// <summary>Next-token batches (inputs, targets int32 (B, T)) from shards or the synthetic source.</summary>
public sealed class TokenBatches(ITokenBatchSource source) : IBatchSource
{
    public ITokenBatchSource Source { get; } = source;

    public DataLoaderState State { get => Source.State; set => Source.State = value; }

    public (Tensor Inputs, Tensor Targets) NextBatch() => Source.NextBatch();
}

/// <summary>Image batches (x float32 (B, C, H, W), labels int32 (B)).</summary>
public sealed class ImageBatches(ImageLoader loader) : IBatchSource
{
    public ImageLoader Loader { get; } = loader;

    public DataLoaderState State { get => Loader.State; set => Loader.State = value; }

    public (Tensor Inputs, Tensor Targets) NextBatch() => Loader.NextBatch();
}
