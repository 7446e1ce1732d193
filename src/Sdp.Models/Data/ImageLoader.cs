using Sdp.Engine;

namespace Sdp.Models.Data;

/// <summary>
/// Batches of normalised images: x float32 (B, C, H, W), y int32 (B).
///
/// Each epoch visits the images in a fixed order (shuffled from (seed, epoch) when <c>shuffle</c>, else
/// dataset order); combined batch k is positions [k*W*B, (k+1)*W*B) of that order and worker w takes
/// positions w, w+W, ... of it, so W workers together see what one loader with batch W*B sees. The tail
/// that does not fill a combined batch is dropped (it comes back in other epochs when shuffling), unless
/// <c>dropLast</c> is false: then (one worker only) the epoch ends with a smaller batch of the rest, so an
/// epoch is every image exactly once, as a test split is evaluated.
/// Augmentation (<see cref="ImageAugmentation.CropFlip"/>: pad-4 random crop and random horizontal flip) is
/// drawn per (seed, epoch, position), so it does not depend on the worker count and resumes exactly from
/// <see cref="State"/>.
/// </summary>
public sealed class ImageLoader
{
    private readonly bool _shuffle;
    private readonly ulong _seed;
    private readonly int _perBatch;
    private readonly byte[] _scratch;
    private long _epoch;
    private long _batch;
    private long _orderEpoch = -1;
    private int[] _order = [];

    public ImageLoader(ImageDataset dataset, int batch, bool shuffle = true, ImageAugmentation augmentation = ImageAugmentation.None, ulong seed = 0, int worker = 0, int workers = 1, int pad = ImageAugment.DefaultPad, bool dropLast = true)
    {
        ArgumentNullException.ThrowIfNull(dataset);
        if (batch < 1) throw new ArgumentException($"image loader: batch size must be at least 1, got {batch}");
        LoaderArgs.Workers("image loader", worker, workers);
        if (pad < 0) throw new ArgumentException($"image loader: crop padding must be non-negative, got {pad}");
        _perBatch = checked(batch * workers);
        if (!dropLast && workers > 1) throw new ArgumentException($"image loader: keeping the last, smaller batch of an epoch (dropLast false) needs one worker, got {workers}");
        if (dropLast && dataset.Count < _perBatch)
        {
            string need = workers == 1 ? $"{batch}" : $"W*B = {workers}*{batch} = {_perBatch}";
            throw new ArgumentException($"image loader: dataset '{dataset.Name}' has {dataset.Count} images, fewer than one batch ({need})");
        }
        (Dataset, Batch, Worker, Workers, Pad, _shuffle, Augmentation, _seed, DropLast) = (dataset, batch, worker, workers, pad, shuffle, augmentation, seed, dropLast);
        _scratch = new byte[dataset.ImageSize];
    }

    public ImageDataset Dataset { get; }

    public int Batch { get; }

    public int Worker { get; }

    public int Workers { get; }

    public int Pad { get; }

    public ImageAugmentation Augmentation { get; }

    /// <summary>Whether the images after an epoch's last full batch are dropped (else they are its last batch).</summary>
    public bool DropLast { get; }

    /// <summary>Combined batches per epoch (the same for every worker).</summary>
    public long BatchesPerEpoch => DropLast ? Dataset.Count / _perBatch : (Dataset.Count + _perBatch - 1) / _perBatch;

    /// <summary>Images in the next batch: <see cref="Batch"/>, or the rest of the epoch in its last batch when keeping it.</summary>
    public int NextBatchSize => (int)Math.Min(Batch, Dataset.Count - _batch * _perBatch);

    public long Epoch => _epoch;

    public DataLoaderState State
    {
        get => new(_epoch, 0, _batch);
        set
        {
            ArgumentNullException.ThrowIfNull(value);
            if (value.Epoch < 0 || value.Shard != 0 || value.Batch < 0 || value.Batch > BatchesPerEpoch)
                throw new ArgumentException($"image loader state: expected a non-negative epoch, shard 0 and batch 0..{BatchesPerEpoch}, got {value}");
            (_epoch, _batch) = (value.Epoch, value.Batch);
            Normalize();
        }
    }

    public void Reset() => State = DataLoaderState.Start;

    /// <summary>x (B, C, H, W) float32, y (B) int32, with B = <see cref="NextBatchSize"/>.</summary>
    public (Tensor X, Tensor Y) NextBatch()
    {
        int images = NextBatchSize;
        var x = new float[images * Dataset.ImageSize];
        var y = new int[images];
        NextBatch(x, y);
        return (Tensor.FromArray(x, new Shape(images, Dataset.Channels, Dataset.Height, Dataset.Width)), Tensor.FromArray(y, new Shape(images)));
    }

    /// <summary>The next batch into buffers of <see cref="NextBatchSize"/> images and labels.</summary>
    public void NextBatch(Span<float> x, Span<int> y)
    {
        int size = Dataset.ImageSize, images = NextBatchSize;
        if (x.Length != images * size || y.Length != images)
            throw new ArgumentException($"image loader: buffers must hold {images} images of {size} values and {images} labels, got {x.Length} and {y.Length}");
        var order = Order(_epoch);
        for (int j = 0; j < images; j++)
        {
            long position = _batch * _perBatch + Worker + (long)j * Workers;
            int index = order[position];
            ReadOnlySpan<byte> image = Dataset.Image(index);
            if (Augmentation == ImageAugmentation.CropFlip)
            {
                var rng = new Rng(SeedMix.Mix(_seed, (ulong)_epoch, 3, (ulong)position));
                int dx = rng.NextInt(2 * Pad + 1) - Pad;
                int dy = rng.NextInt(2 * Pad + 1) - Pad;
                bool flip = (rng.NextUInt64() >> 63) != 0;
                ImageAugment.CropFlip(image, _scratch, Dataset.Channels, Dataset.Height, Dataset.Width, dx, dy, flip);
                image = _scratch;
            }
            ImageAugment.Normalize(image, x.Slice(j * size, size), Dataset.Channels, Dataset.Mean, Dataset.Std);
            y[j] = Dataset.Label(index);
        }
        _batch++;
        Normalize();
    }

    private void Normalize()
    {
        if (_batch >= BatchesPerEpoch)
        {
            _batch = 0;
            _epoch++;
        }
    }

    private int[] Order(long epoch)
    {
        if (_orderEpoch != epoch)
        {
            var order = new int[Dataset.Count];
            for (int i = 0; i < order.Length; i++) order[i] = i;
            if (_shuffle) new Rng(SeedMix.Mix(_seed, (ulong)epoch, 4)).Shuffle<int>(order);
            (_order, _orderEpoch) = (order, epoch);
        }
        return _order;
    }
}
