using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>Inputs, transfers, launch sizes and comparisons shared by the kernels.cu tests.</summary>
internal static class DeviceTestData
{
    /// <summary>n values uniform in [-1, 1).</summary>
    public static float[] RandomFloats(Random rng, long n)
    {
        var x = new float[n];
        for (long i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }

    /// <summary>A sorted random subset of [0, n) of about density·n elements (at least one).</summary>
    public static int[] HeldIndices(Random rng, int n, double density)
    {
        int k = Math.Max(1, (int)Math.Round(density * n));
        return [.. Enumerable.Range(0, n).OrderBy(_ => rng.Next()).Take(k).Order()];
    }

    public static DeviceBuffer Upload<T>(CudaContext ctx, T[] values) where T : unmanaged
    {
        var b = DeviceBuffer.Allocate<T>(ctx, values.Length);
        b.CopyFrom<T>(values);
        return b;
    }

    /// <summary>A float buffer filled with NaN, so a kernel that skips an output element is caught.</summary>
    public static DeviceBuffer Poisoned(CudaContext ctx, long floats)
    {
        var b = DeviceBuffer.Allocate(ctx, floats * sizeof(float));
        b.PoisonNaN();
        return b;
    }

    /// <summary>Grid size along one dimension of a §1 GEMM (128-wide output tiles).</summary>
    public static uint Tiles(int n) => (uint)((n + 127) / 128);

    /// <summary>Grid of the 1-D grid-stride kernels (blocks of 256).</summary>
    public static uint Blocks1D(long n) => (uint)Math.Clamp((n + 255) / 256, 1, 65535);

    /// <summary>|actual − expected| ≤ atol + rtol·|expected| element for element (NaN never passes).</summary>
    public static void AssertClose(float[] expected, float[] actual, double rtol, double atol, string what, string expectedName = "expected", string actualName = "got")
    {
        Assert.That(actual, Has.Length.EqualTo(expected.Length), what);
        for (int i = 0; i < expected.Length; i++)
        {
            double tol = atol + rtol * Math.Abs(expected[i]);
            if (!(Math.Abs(actual[i] - expected[i]) <= tol))
                Assert.Fail($"{what}: element {i}: {expectedName} {expected[i]:R}, {actualName} {actual[i]:R} (tolerance {tol:G3})");
        }
    }
}
