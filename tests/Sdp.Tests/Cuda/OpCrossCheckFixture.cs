using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Backends.Cuda;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// Base of the CUDA backend's per-family cross-checks (*CrossCheckTests): one <see cref="CudaBackend"/> per
/// fixture on the emulated or the real device, and helpers that build the same random input on the CPU backend and
/// on the device, poison device outputs with NaN before a call (an element the kernel skips stays NaN and fails),
/// seed accumulating outputs with the same random non-zero values on both (to test +=), and compare the device's
/// result with the CPU's, exactly or within a tolerance.
/// </summary>
public abstract class OpCrossCheckFixture(CudaImplementation implementation)
{
    protected CudaBackend Cuda { get; private set; } = null!;

    protected static IBackend Cpu => CpuBackend.Instance;

    protected CudaImplementation Implementation => implementation;

    private TensorScope? _scope;

    [OneTimeSetUp]
    public void OpenDevice() => Cuda = CudaBackend.Open(0, CudaDevices.Load(implementation));

    [OneTimeTearDown]
    public void CloseDevice() => Cuda?.Dispose();

    [SetUp]
    public void BeginScope() => _scope = TensorScope.Begin();

    [TearDown]
    public void EndScope()
    {
        _scope?.Dispose();
        _scope = null;
    }

    /// <summary>n values: uniform in [low, high) for float dtypes, integers in [-50, 50) otherwise.</summary>
    protected static double[] Values(Random rng, long n, DType dtype, double low = -1, double high = 1)
    {
        var v = new double[n];
        for (long i = 0; i < n; i++)
            v[i] = dtype is DType.Float32 or DType.Float64 ? low + (high - low) * rng.NextDouble() : rng.Next(-50, 50);
        return v;
    }

    /// <summary>The same values on the CPU and on the device.</summary>
    protected (Tensor Cpu, Tensor Gpu) Pair(double[] values, DType dtype, params int[] shape) =>
        (Tensor.FromDoubles(values, new Shape(shape), dtype, Cpu), Tensor.FromDoubles(values, new Shape(shape), dtype, Cuda));

    /// <summary>A random input (or a seeded accumulating output): the same random values on both.</summary>
    protected (Tensor Cpu, Tensor Gpu) Random(Random rng, DType dtype, params int[] shape) =>
        Pair(Values(rng, new Shape(shape).Numel, dtype), dtype, shape);

    /// <summary>An overwritten output: zeros on the CPU, NaN (int: the NaN cast) on the device.</summary>
    protected (Tensor Cpu, Tensor Gpu) Poisoned(DType dtype, params int[] shape)
    {
        var gpu = Tensor.Empty(new Shape(shape), dtype, Cuda);
        Cuda.Fill(gpu, double.NaN);
        return (Tensor.Zeros(new Shape(shape), dtype, Cpu), gpu);
    }

    /// <summary>The device's result equals the CPU's element for element, bit for bit (NaN matching any NaN).</summary>
    protected static void AssertSame(Tensor cpu, Tensor gpu, string what)
    {
        double[] e = cpu.ToDoubles(), g = gpu.ToDoubles();
        Assert.That(g, Has.Length.EqualTo(e.Length), what);
        for (int i = 0; i < e.Length; i++)
        {
            bool same = double.IsNaN(e[i]) ? double.IsNaN(g[i]) : BitConverter.DoubleToInt64Bits(e[i]) == BitConverter.DoubleToInt64Bits(g[i]);
            if (!same) Assert.Fail($"{what}: element {i}: cpu {e[i]:R}, cuda {g[i]:R}");
        }
    }

    /// <summary>|gpu − cpu| ≤ atol + rtol·|cpu| element for element (NaN never passes).</summary>
    protected static void AssertClose(Tensor cpu, Tensor gpu, double rtol, double atol, string what)
    {
        double[] e = cpu.ToDoubles(), g = gpu.ToDoubles();
        Assert.That(g, Has.Length.EqualTo(e.Length), what);
        for (int i = 0; i < e.Length; i++)
        {
            double tol = atol + rtol * Math.Abs(e[i]);
            if (!(Math.Abs(g[i] - e[i]) <= tol)) Assert.Fail($"{what}: element {i}: cpu {e[i]:R}, cuda {g[i]:R} (tolerance {tol:G3})");
        }
    }

    /// <summary>Relative tolerance of a result computed in the CPU's order with the same formulas but other math libraries (or FMA): float32 1e-5, float64 1e-12.</summary>
    protected static double Rel(DType dtype) => dtype == DType.Float32 ? 1e-5 : 1e-12;

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

    /// <summary>The largest |value| of a tensor: the scale for absolute tolerances of sums with cancellation.</summary>
    protected static double MaxAbs(Tensor t) => t.ToDoubles().Select(Math.Abs).DefaultIfEmpty(0).Max();

    /// <summary>Relative tolerance for a dtype: <paramref name="fp32"/> in float32, <paramref name="fp64"/> in float64.</summary>
    protected static double Tol(DType dtype, double fp32, double fp64 = 1e-12) => dtype == DType.Float32 ? fp32 : fp64;
}
