namespace Sdp.Models.Data;

/// <summary>What a training stream does to each image before normalisation; evaluation streams never augment.</summary>
public enum ImageAugmentation
{
    /// <summary>The image as stored (MNIST: a mirrored digit is another digit, or none).</summary>
    None,

    /// <summary>Pad-4 random crop, then a random horizontal flip: the CIFAR recipe (<see cref="ImageAugment.CropFlip"/>).</summary>
    CropFlip,
}

/// <summary>
/// The standard CIFAR augmentation on raw (C, H, W) bytes: pad each side with <c>pad</c> zero pixels, take
/// an H x W crop, then optionally mirror left-right (the order of torchvision's RandomCrop(padding=4)
/// followed by RandomHorizontalFlip, both before normalisation, so padding is black).
/// </summary>
public static class ImageAugment
{
    public const int DefaultPad = 4;

    /// <summary>The command-line and metadata names: "none", "crop-flip".</summary>
    public static string NameOf(ImageAugmentation augmentation) => augmentation switch
    {
        ImageAugmentation.None => "none",
        ImageAugmentation.CropFlip => "crop-flip",
        _ => throw new ArgumentOutOfRangeException(nameof(augmentation), augmentation, "image augmentation: unknown kind"),
    };

    /// <summary>The augmentation <see cref="NameOf"/> calls <paramref name="name"/>.</summary>
    public static ImageAugmentation Parse(string name)
    {
        foreach (var a in Enum.GetValues<ImageAugmentation>())
        {
            if (NameOf(a) == name) return a;
        }
        throw new ArgumentException($"image augmentation: '{name}' is not one of {string.Join(", ", Enum.GetValues<ImageAugmentation>().Select(NameOf))}");
    }

    /// <summary>
    /// dst(c, y, x) = src(c, y + dy, x' + dx) with x' = W-1-x when flipping (else x), and 0 where that falls
    /// outside the image. (dx, dy) is the crop's offset from the unpadded origin, each in [-pad, pad].
    /// </summary>
    public static void CropFlip(ReadOnlySpan<byte> src, Span<byte> dst, int channels, int height, int width, int dx, int dy, bool flip)
    {
        int size = channels * height * width;
        if (src.Length != size || dst.Length != size)
            throw new ArgumentException($"image augment: source and destination must hold {channels}x{height}x{width} = {size} bytes, got {src.Length} and {dst.Length}");
        for (int c = 0; c < channels; c++)
        {
            int plane = c * height * width;
            for (int y = 0; y < height; y++)
            {
                var row = dst.Slice(plane + y * width, width);
                int sy = y + dy;
                if (sy < 0 || sy >= height)
                {
                    row.Clear();
                    continue;
                }
                var srcRow = src.Slice(plane + sy * width, width);
                for (int x = 0; x < width; x++)
                {
                    int sx = (flip ? width - 1 - x : x) + dx;
                    row[x] = (uint)sx < (uint)width ? srcRow[sx] : (byte)0;
                }
            }
        }
    }

    /// <summary>dst = (src/255 - mean[c]) / std[c] per channel, (C, H, W) bytes to float32.</summary>
    public static void Normalize(ReadOnlySpan<byte> src, Span<float> dst, int channels, ReadOnlySpan<double> mean, ReadOnlySpan<double> std)
    {
        if (src.Length != dst.Length || src.Length % channels != 0 || mean.Length != channels || std.Length != channels)
            throw new ArgumentException($"image normalise: need equal-length source and destination divisible by {channels} channels and one mean/std per channel, got {src.Length}, {dst.Length}, {mean.Length}, {std.Length}");
        int plane = src.Length / channels;
        for (int c = 0; c < channels; c++)
        {
            float scale = (float)(1.0 / (255.0 * std[c]));
            float shift = (float)(-mean[c] / std[c]);
            var s = src.Slice(c * plane, plane);
            var d = dst.Slice(c * plane, plane);
            for (int i = 0; i < plane; i++) d[i] = s[i] * scale + shift;
        }
    }
}
