using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Backends.Cuda;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// Base of the op-family cross-checks: a CUDA backend of the fixture's implementation (opened once per fixture),
/// the CPU backend as the reference, and the inputs both receive. Device outputs are poisoned with NaN before the
/// call, so an element a kernel skips is caught; accumulating outputs are seeded with the same random non-zero
/// values on both backends, so the += contract is checked.
/// </summary>
public abstract class DeviceOpCrossCheck(CudaImplementation implementation)
{
    protected CudaBackend Cuda { get; private set; } = null!;

    protected static IBackend Cpu => CpuBackend.Instance;

    protected CudaImplementation Implementation { get; } = implementation;

    [OneTimeSetUp]
    public void OpenDevice() => Cuda = CudaBackend.Open(0, CudaDevices.Load(Implementation));

    [OneTimeTearDown]
    public void CloseDevice() => Cuda?.Dispose();

    /// <summary>A CPU tensor of normal values (times <paramref name="std"/>).</summary>
    protected static Tensor Random(Rng rng, DType dtype, int[] shape, double std = 1.0) => Tensor.Randn(new Shape(shape), rng, std, dtype, Cpu);

    /// <summary>An index tensor (int32 or int64) on the CPU.</summary>
    protected static Tensor Indices(long[] values, bool int64, params int[] shape) => int64
        ? Tensor.FromArray(values, new Shape(shape), Cpu)
        : Tensor.FromArray(Array.ConvertAll(values, v => (int)v), new Shape(shape), Cpu);

    /// <summary>An output on the device, filled with NaN.</summary>
    protected Tensor Poisoned(Shape shape, DType dtype)
    {
        var t = Tensor.Empty(shape, dtype, Cuda);
        Cuda.Fill(t, double.NaN);
        return t;
    }

    /// <summary>An output on the CPU for the reference, filled with NaN too (a reference that skips an element fails the comparison).</summary>
    protected static Tensor CpuOutput(Shape shape, DType dtype)
    {
        var t = Tensor.Empty(shape, dtype, Cpu);
        Cpu.Fill(t, double.NaN);
        return t;
    }

    /// <summary>The same random accumulator on both backends (for the += contract).</summary>
    protected (Tensor Cpu, Tensor Device) Seeded(Rng rng, DType dtype, params int[] shape)
    {
        var cpu = Random(rng, dtype, shape);
        return (cpu, cpu.To(Cuda));
    }

    /// <summary>
    /// |device − cpu| ≤ rtol·|cpu| + atol element for element, NaN never passing (unless the CPU value is NaN too,
    /// which no reference here produces), reporting the first mismatches.
    /// </summary>
    protected static void AssertClose(Tensor device, Tensor cpu, double rtol, double atol, string what)
    {
        double[] got = device.ToDoubles(), want = cpu.ToDoubles();
        Assert.That(got, Has.Length.EqualTo(want.Length), $"{what}: element count");
        var failures = new List<string>();
        int bad = 0;
        for (int i = 0; i < want.Length; i++)
        {
            if (double.IsNaN(want[i])) Assert.Fail($"{what}: the CPU reference has NaN at {i}");
            double tol = rtol * Math.Abs(want[i]) + atol;
            if (Math.Abs(got[i] - want[i]) <= tol) continue;
            bad++;
            if (failures.Count < 5) failures.Add($"[{i}] device {got[i]:R} cpu {want[i]:R} (tolerance {tol:G3})");
        }
        Assert.That(bad, Is.Zero, $"{what}: {bad} of {want.Length} elements differ: {string.Join("; ", failures)}");
    }

    /// <summary>Bit-for-bit equality (for ops whose every element is one fixed sequence of IEEE operations on both).</summary>
    protected static void AssertIdentical(Tensor device, Tensor cpu, string what)
    {
        double[] got = device.ToDoubles(), want = cpu.ToDoubles();
        Assert.That(got, Has.Length.EqualTo(want.Length), $"{what}: element count");
        for (int i = 0; i < want.Length; i++)
        {
            if (BitConverter.DoubleToInt64Bits(got[i]) != BitConverter.DoubleToInt64Bits(want[i]))
                Assert.Fail($"{what}: element {i}: device {got[i]:R}, cpu {want[i]:R}");
        }
    }

    /// <summary>The largest |value| of a tensor: the scale for absolute tolerances of sums with cancellation.</summary>
    protected static double MaxAbs(Tensor t) => t.ToDoubles().Select(Math.Abs).DefaultIfEmpty(0).Max();

    /// <summary>Relative tolerance for a dtype: <paramref name="fp32"/> in float32, <paramref name="fp64"/> in float64.</summary>
    protected static double Tol(DType dtype, double fp32, double fp64 = 1e-12) => dtype == DType.Float32 ? fp32 : fp64;
}
