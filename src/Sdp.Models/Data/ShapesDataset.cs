using Sdp.Engine;

namespace Sdp.Models.Data;

/// <summary>
/// A procedurally drawn image classification set (the built-in default, no download): 10 classes of
/// 3 x S x S images (S = 32 by default), each one shape on a random dark background with Gaussian pixel
/// noise. The class decides the shape (disc, ring, square, square outline, triangle, plus, cross,
/// horizontal stripes, vertical stripes, diamond; plus/cross and the two stripe classes differ only in
/// orientation) and loosely the colour (a class hue jittered by ±0.12 of the colour wheel, so neighbouring
/// classes overlap and colour alone cannot separate them). Position, size, rotation (±0.3 rad), colour
/// and noise are drawn per image from (seed, index), so the set is deterministic and can be generated
/// in parallel. Image i has label i mod 10 (balanced); loaders shuffle. Trained without augmentation: position,
/// size, rotation, colour and noise already vary from image to image.
/// </summary>
public static class ShapesDataset
{
    public const int Classes = 10;

    public static IReadOnlyList<string> ClassNames { get; } = ["disc", "ring", "square", "square outline", "triangle", "plus", "cross", "horizontal stripes", "vertical stripes", "diamond"];

    /// <summary>Draws <paramref name="count"/> images; normalisation constants are the set's own per-channel mean/std.</summary>
    public static ImageDataset Create(int count, ulong seed = 0, int size = 32, double noise = 0.1)
    {
        if (count < 1) throw new ArgumentException($"shapes dataset: image count must be at least 1, got {count}");
        if (size < 8) throw new ArgumentException($"shapes dataset: image size must be at least 8 pixels, got {size}");
        if (!(noise >= 0) || double.IsInfinity(noise)) throw new ArgumentException($"shapes dataset: noise must be a non-negative finite std, got {noise}");
        int imageSize = 3 * size * size;
        if ((long)count * imageSize > Array.MaxLength) throw new ArgumentException($"shapes dataset: {count} images of 3x{size}x{size} are too many to hold in memory");
        var pixels = new byte[count * imageSize];
        var labels = new byte[count];
        Parallel.For(0, count, i =>
        {
            labels[i] = (byte)(i % Classes);
            Draw(pixels.AsSpan(i * imageSize, imageSize), i % Classes, size, noise, new Rng(SeedMix.Mix(seed, (ulong)i, 5)));
        });
        var (mean, std) = ImageDataset.ComputeStatistics(pixels, 3, size, size);
        return new ImageDataset($"shapes(count {count}, seed {seed}, size {size}, noise {noise})", pixels, labels, 3, size, size, Classes, mean, std, ImageAugmentation.None);
    }

    private static void Draw(Span<byte> image, int label, int size, double noise, Rng rng)
    {
        Span<double> bg = [0.45 * rng.NextDouble(), 0.45 * rng.NextDouble(), 0.45 * rng.NextDouble()];
        double hue = label / (double)Classes + 0.12 * (2 * rng.NextDouble() - 1);
        Span<double> fg = stackalloc double[3];
        HsvToRgb(hue - Math.Floor(hue), 0.55 + 0.45 * rng.NextDouble(), 0.65 + 0.35 * rng.NextDouble(), fg);
        double unit = size / 32.0;
        double cx = size / 2.0 + 5 * unit * (2 * rng.NextDouble() - 1);
        double cy = size / 2.0 + 5 * unit * (2 * rng.NextDouble() - 1);
        double scale = size * (0.22 + 0.12 * rng.NextDouble());
        double angle = 0.3 * (2 * rng.NextDouble() - 1);
        double cos = Math.Cos(angle), sin = Math.Sin(angle);
        double stripe = 2.5 * unit;
        int plane = size * size;
        for (int y = 0; y < size; y++)
        {
            for (int x = 0; x < size; x++)
            {
                double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
                double u = cos * dx + sin * dy, v = -sin * dx + cos * dy;
                bool inside = Inside(label, u / scale, v / scale, u, v, scale, stripe);
                for (int c = 0; c < 3; c++)
                {
                    double value = (inside ? fg[c] : bg[c]) + noise * rng.NextNormal();
                    image[c * plane + y * size + x] = (byte)Math.Round(255 * Math.Clamp(value, 0, 1));
                }
            }
        }
    }

    /// <summary>Whether the point (a, b) in shape units (pixel offsets u, v) lies on the class's shape; b grows downwards.</summary>
    private static bool Inside(int label, double a, double b, double u, double v, double scale, double stripe)
    {
        double r = Math.Sqrt(a * a + b * b);
        double box = Math.Max(Math.Abs(a), Math.Abs(b));
        switch (label)
        {
            case 0: return r <= 1;
            case 1: return r is >= 0.6 and <= 1;
            case 2: return box <= 0.85;
            case 3: return box is >= 0.55 and <= 0.85;
            case 4: return b is >= -0.8 and <= 0.8 && Math.Abs(a) <= 0.9 * (b + 0.8) / 1.6;
            case 5: return Plus(a, b);
            case 6: return Plus((a + b) / Math.Sqrt(2), (b - a) / Math.Sqrt(2));
            case 7: return box <= 0.9 && ((int)Math.Floor((v + scale) / stripe) & 1) == 0;
            case 8: return box <= 0.9 && ((int)Math.Floor((u + scale) / stripe) & 1) == 0;
            default: return Math.Abs(a) + Math.Abs(b) <= 1;
        }
    }

    private static bool Plus(double a, double b) => (Math.Abs(a) <= 0.22 && Math.Abs(b) <= 0.95) || (Math.Abs(b) <= 0.22 && Math.Abs(a) <= 0.95);

    private static void HsvToRgb(double h, double s, double v, Span<double> rgb)
    {
        double sector = h * 6;
        int i = (int)Math.Floor(sector) % 6;
        double f = sector - Math.Floor(sector);
        double p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
        (rgb[0], rgb[1], rgb[2]) = i switch
        {
            0 => (v, t, p),
            1 => (q, v, p),
            2 => (p, v, t),
            3 => (p, q, v),
            4 => (t, p, v),
            _ => (v, p, q),
        };
    }
}
