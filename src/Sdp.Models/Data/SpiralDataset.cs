using Sdp.Engine;

namespace Sdp.Models.Data;

/// <summary>
/// K interleaved noisy 2-D spirals, one class each: a procedurally drawn classification set that needs
/// no download and is not linearly separable, so a model must learn something to beat chance (1/K).
/// </summary>
public sealed class SpiralDataset
{
    public SpiralDataset(int classes, int pointsPerClass, double noise, ulong seed)
    {
        if (classes < 2) throw new ArgumentException($"spiral dataset: need at least 2 classes, got {classes}");
        if (pointsPerClass < 1) throw new ArgumentException($"spiral dataset: need at least 1 point per class, got {pointsPerClass}");
        Classes = classes;
        var rng = new Rng(seed);
        int n = classes * pointsPerClass;
        Features = new float[n * 2];
        Labels = new int[n];
        for (int c = 0; c < classes; c++)
        {
            for (int i = 0; i < pointsPerClass; i++)
            {
                int row = c * pointsPerClass + i;
                double r = (double)(i + 1) / pointsPerClass;
                double theta = 4.0 * r + 2 * Math.PI * c / classes + noise * rng.NextNormal();
                Features[2 * row] = (float)(r * Math.Sin(theta));
                Features[2 * row + 1] = (float)(r * Math.Cos(theta));
                Labels[row] = c;
            }
        }
    }

    public int Classes { get; }

    public int Count => Labels.Length;

    /// <summary>(Count, 2) row-major.</summary>
    public float[] Features { get; }

    public int[] Labels { get; }

    /// <summary>A batch of rows drawn with replacement: x (B, 2) float32, y (B) int32.</summary>
    public (Tensor X, Tensor Y) Sample(int batch, Rng rng)
    {
        var x = new float[batch * 2];
        var y = new int[batch];
        for (int i = 0; i < batch; i++)
        {
            int row = rng.NextInt(Count);
            x[2 * i] = Features[2 * row];
            x[2 * i + 1] = Features[2 * row + 1];
            y[i] = Labels[row];
        }
        return (Tensor.FromArray(x, new Shape(batch, 2)), Tensor.FromArray(y, new Shape(batch)));
    }

    /// <summary>Every row: x (Count, 2), y (Count).</summary>
    public (Tensor X, Tensor Y) All() => (Tensor.FromArray(Features, new Shape(Count, 2)), Tensor.FromArray(Labels, new Shape(Count)));
}
