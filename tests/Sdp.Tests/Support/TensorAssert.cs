using Sdp.Engine;

namespace Sdp.Tests.Support;

/// <summary>Elementwise closeness, |a - e| &lt;= atol + rtol·|e|, reporting the first mismatches and the max error.</summary>
public static class TensorAssert
{
    public static void Close(Tensor actual, double[] expected, double atol = 1e-5, double rtol = 1e-5, string? what = null)
        => Close(actual.ToDoubles(), expected, atol, rtol, what ?? actual.ToString());

    public static void Close(double[] actual, double[] expected, double atol = 1e-5, double rtol = 1e-5, string? what = null)
    {
        Assert.That(actual, Has.Length.EqualTo(expected.Length), $"{what}: element count");
        var failures = new List<string>();
        int count = 0;
        double worst = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double err = Math.Abs(actual[i] - expected[i]);
            if (double.IsNaN(err)) err = double.PositiveInfinity;
            worst = Math.Max(worst, err);
            if (err > atol + rtol * Math.Abs(expected[i]))
            {
                count++;
                if (failures.Count < 5) failures.Add($"[{i}] got {actual[i]:G9} expected {expected[i]:G9}");
            }
        }
        Assert.That(count, Is.Zero, $"{what}: {count} of {expected.Length} elements differ (max abs err {worst:G3}): {string.Join("; ", failures)}");
    }
}
