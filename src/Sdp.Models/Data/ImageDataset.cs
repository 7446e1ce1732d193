namespace Sdp.Models.Data;

/// <summary>
/// An in-memory image classification set: N images of C x H x W bytes (CHW, row-major), one label each,
/// plus the per-channel mean and standard deviation (of pixel/255) used to normalise them, and the
/// augmentation its training recipe uses (<see cref="Augmentation"/>).
/// </summary>
public sealed class ImageDataset
{
    private readonly byte[] _pixels;
    private readonly byte[] _labels;
    private readonly double[] _mean;
    private readonly double[] _std;

    public ImageDataset(string name, byte[] pixels, byte[] labels, int channels, int height, int width, int classes, double[] mean, double[] std, ImageAugmentation augmentation = ImageAugmentation.None)
    {
        ArgumentNullException.ThrowIfNull(pixels);
        ArgumentNullException.ThrowIfNull(labels);
        if (channels < 1 || height < 1 || width < 1)
            throw new ArgumentException($"image dataset '{name}': image shape {channels}x{height}x{width} must be positive");
        if (classes < 1 || classes > 256)
            throw new ArgumentException($"image dataset '{name}': class count must be in 1..256, got {classes}");
        long imageSize = (long)channels * height * width;
        if (pixels.LongLength != labels.LongLength * imageSize)
            throw new ArgumentException($"image dataset '{name}': {pixels.LongLength} pixel bytes do not hold {labels.Length} images of {channels}x{height}x{width} = {imageSize} bytes");
        if (mean.Length != channels || std.Length != channels)
            throw new ArgumentException($"image dataset '{name}': need one mean and one std per channel ({channels}), got {mean.Length} and {std.Length}");
        for (int c = 0; c < channels; c++)
        {
            if (!(std[c] > 0)) throw new ArgumentException($"image dataset '{name}': std of channel {c} must be positive, got {std[c]}");
        }
        for (int i = 0; i < labels.Length; i++)
        {
            if (labels[i] >= classes) throw new ArgumentException($"image dataset '{name}': label {labels[i]} of image {i} is not below the class count {classes}");
        }
        (Name, _pixels, _labels, Channels, Height, Width, Classes, _mean, _std, Augmentation) = (name, pixels, labels, channels, height, width, classes, (double[])mean.Clone(), (double[])std.Clone(), augmentation);
    }

    /// <summary>Where the data came from (a path or a generator description), for messages.</summary>
    public string Name { get; }

    public int Count => _labels.Length;

    public int Channels { get; }

    public int Height { get; }

    public int Width { get; }

    public int Classes { get; }

    public int ImageSize => Channels * Height * Width;

    /// <summary>What the set's training recipe does to an image (CIFAR-10: crop and flip; MNIST: nothing).</summary>
    public ImageAugmentation Augmentation { get; }

    /// <summary>All pixels, (N, C, H, W) bytes.</summary>
    public ReadOnlySpan<byte> Pixels => _pixels;

    public ReadOnlySpan<byte> Labels => _labels;

    /// <summary>Per-channel mean of pixel/255 used for normalisation.</summary>
    public ReadOnlySpan<double> Mean => _mean;

    /// <summary>Per-channel standard deviation of pixel/255 used for normalisation.</summary>
    public ReadOnlySpan<double> Std => _std;

    /// <summary>Image i, (C, H, W) bytes.</summary>
    public ReadOnlySpan<byte> Image(int index)
    {
        if ((uint)index >= (uint)Count) throw new ArgumentOutOfRangeException(nameof(index), $"image dataset '{Name}': image {index} is out of range for {Count} images");
        return _pixels.AsSpan(index * ImageSize, ImageSize);
    }

    public int Label(int index)
    {
        if ((uint)index >= (uint)Count) throw new ArgumentOutOfRangeException(nameof(index), $"image dataset '{Name}': image {index} is out of range for {Count} images");
        return _labels[index];
    }

    /// <summary>The same images with other normalisation constants.</summary>
    public ImageDataset WithNormalization(double[] mean, double[] std) => new(Name, _pixels, _labels, Channels, Height, Width, Classes, mean, std, Augmentation);

    /// <summary>The same images with another training augmentation.</summary>
    public ImageDataset WithAugmentation(ImageAugmentation augmentation) => new(Name, _pixels, _labels, Channels, Height, Width, Classes, _mean, _std, augmentation);

    /// <summary>Per-channel mean and std of pixel/255 over the whole set (population std).</summary>
    public static (double[] Mean, double[] Std) ComputeStatistics(ReadOnlySpan<byte> pixels, int channels, int height, int width)
    {
        int plane = height * width, image = channels * plane;
        var sum = new double[channels];
        var sumSq = new double[channels];
        long n = pixels.Length / image;
        for (long i = 0; i < n; i++)
        {
            for (int c = 0; c < channels; c++)
            {
                long s = 0, s2 = 0;
                foreach (byte p in pixels.Slice((int)(i * image + c * plane), plane))
                {
                    s += p;
                    s2 += p * p;
                }
                sum[c] += s;
                sumSq[c] += s2;
            }
        }
        var mean = new double[channels];
        var std = new double[channels];
        double count = (double)n * plane;
        for (int c = 0; c < channels; c++)
        {
            double m = sum[c] / count / 255.0;
            double m2 = sumSq[c] / count / (255.0 * 255.0);
            mean[c] = m;
            std[c] = Math.Sqrt(Math.Max(m2 - m * m, 1e-12));
        }
        return (mean, std);
    }
}
