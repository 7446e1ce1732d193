using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Backends.Cuda;
using Sdp.Engine.Memory;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// The CUDA backend's own machinery, below the ops: transfers, fills and casts against the CPU, peer copies
/// between devices, the caching allocator's accounting (cross-checked with cuMemGetInfo), its out-of-memory
/// report, and the device error flag. The ops themselves run in the shared op, model and SDP fixtures
/// (Support/Backends.cs).
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable]
public class CudaBackendTests
{
    private readonly CudaImplementation _impl;
    private CudaBackend _cuda = null!;

    public CudaBackendTests(CudaImplementation implementation) => _impl = implementation;

    [OneTimeSetUp]
    public void Open() => _cuda = CudaBackend.Open(0, CudaDevices.Load(_impl));

    [OneTimeTearDown]
    public void Close() => _cuda?.Dispose();

    private static IBackend Cpu => CpuBackend.Instance;

    [Test]
    public void Upload_and_download_round_trip_every_dtype()
    {
        double[] d = [1.5, -2.25, 3e300, double.Epsilon];
        long[] l = [long.MinValue, -1, 0, long.MaxValue];
        using var td = Tensor.FromArray(d, new Shape(4), _cuda);
        using var tf = Tensor.FromArray(new[] { 1f, float.NaN, -0f, 7.5f }, new Shape(2, 2), _cuda);
        using var ti = Tensor.FromArray(new[] { int.MinValue, 3, int.MaxValue }, new Shape(3), _cuda);
        using var tl = Tensor.FromArray(l, new Shape(4), _cuda);
        Assert.Multiple(() =>
        {
            Assert.That(td.ToArray<double>(), Is.EqualTo(d));
            Assert.That(BitConverter.SingleToInt32Bits(tf.ToArray<float>()[1]), Is.EqualTo(BitConverter.SingleToInt32Bits(float.NaN)));
            Assert.That(tf.ToArray<float>()[3], Is.EqualTo(7.5f));
            Assert.That(ti.ToArray<int>(), Is.EqualTo(new[] { int.MinValue, 3, int.MaxValue }));
            Assert.That(tl.ToArray<long>(), Is.EqualTo(l));
        });
    }

    [Test]
    public void Fill_and_cast_match_the_cpu([Values(DType.Float32, DType.Float64, DType.Int32, DType.Int64)] DType from,
        [Values(DType.Float32, DType.Float64, DType.Int32, DType.Int64)] DType to)
    {
        var rng = new Random(3 + (int)from * 4 + (int)to);
        double[] values = [.. Enumerable.Range(0, 1001).Select(_ => Math.Round((rng.NextDouble() * 2 - 1) * 1e4, 3))];
        using var cpuSrc = Tensor.FromArray(values, new Shape(values.Length), Cpu);
        using var cpuFrom = Tensor.Empty(cpuSrc.Shape, from, Cpu);
        Cpu.Cast(cpuSrc, cpuFrom);
        using var cpuTo = Tensor.Empty(cpuSrc.Shape, to, Cpu);
        Cpu.Cast(cpuFrom, cpuTo);

        using var gpuFrom = cpuFrom.To(_cuda);
        using var gpuTo = Tensor.Empty(cpuSrc.Shape, to, _cuda);
        _cuda.Fill(gpuTo, double.NaN);
        _cuda.Cast(gpuFrom, gpuTo);
        Assert.That(AsDoubles(gpuTo), Is.EqualTo(AsDoubles(cpuTo)), $"cast {from} -> {to}");

        _cuda.Fill(gpuTo, -3.75);
        Cpu.Fill(cpuTo, -3.75);
        Assert.That(AsDoubles(gpuTo), Is.EqualTo(AsDoubles(cpuTo)), $"fill {to}");
    }

    [Test]
    public void Peer_copies_move_tensors_between_host_and_devices()
    {
        var rng = new Random(5);
        float[] x = [.. Enumerable.Range(0, 777).Select(_ => (float)rng.NextDouble())];
        using var host = Tensor.FromArray(x, new Shape(777), Cpu);
        using var onDevice = Tensor.Empty(host.Shape, DType.Float32, _cuda);
        _cuda.CopyPeer(host, onDevice); // host -> device
        using var back = Tensor.Empty(host.Shape, DType.Float32, Cpu);
        Cpu.CopyPeer(onDevice, back); // device -> host
        Assert.That(back.ToArray<float>(), Is.EqualTo(x));

        int devices;
        unsafe { _cuda.Context.Api.Check(_cuda.Context.Api.cuDeviceGetCount(&devices)); }
        if (devices < 2) Assert.Ignore("one device: the device-to-device peer copy needs two");
        using var second = CudaBackend.Open(1, _cuda.Context.Api);
        using var onSecond = Tensor.Empty(host.Shape, DType.Float32, second);
        second.CopyPeer(onDevice, onSecond);
        Assert.That(onSecond.ToArray<float>(), Is.EqualTo(x));
        Assert.That(onSecond.Device, Is.EqualTo(new Device(DeviceKind.Cuda, 1)));
    }

    [Test]
    public void A_tensor_of_another_backend_is_refused_by_name()
    {
        using var host = Tensor.FromArray(new[] { 1f, 2f }, new Shape(2), Cpu);
        using var dst = Tensor.Empty(host.Shape, DType.Float32, _cuda);
        var e = Assert.Throws<ArgumentException>(() => _cuda.Copy(host, dst));
        Assert.That(e!.Message, Does.Contain("not on cuda:0"));
    }

    [Test]
    public void Allocations_are_charged_to_the_account_and_agree_with_cuMemGetInfo()
    {
        var account = new MemoryAccount("alloc-test");
        _cuda.Synchronize();
        long reserved0 = _cuda.Allocator.ReservedBytes;
        var (free0, _) = _cuda.Context.MemoryInfo();
        long requested = 0;
        var tensors = new List<Tensor>();
        using (account.Activate())
        using (MemoryAccount.Use(MemoryCategory.Activations))
        {
            foreach (int n in new[] { 1, 100, 4096, 300_000, 1 << 21 })
            {
                var t = Tensor.Empty(new Shape(n), DType.Float32, _cuda);
                tensors.Add(t);
                requested += 4L * n;
            }
        }
        Assert.That(account.CurrentBytes(MemoryCategory.Activations), Is.EqualTo(requested), "the account is charged the requested bytes");
        long reservedGrowth = _cuda.Allocator.ReservedBytes - reserved0;
        Assert.That(reservedGrowth, Is.GreaterThanOrEqualTo(requested), "the allocator reserves at least what was asked");
        var (free1, _) = _cuda.Context.MemoryInfo();
        // The driver rounds each allocation to its own granularity (a page on the emulator, up to 2 MiB on a GPU).
        Assert.That(free0 - free1, Is.GreaterThanOrEqualTo(reservedGrowth - _cuda.Allocator.CachedBytes).And.LessThanOrEqualTo(reservedGrowth + tensors.Count * (2L << 20)));

        long misses = _cuda.Allocator.DeviceAllocations;
        foreach (var t in tensors) t.Dispose();
        Assert.That(account.CurrentTotal, Is.Zero, "freeing refunds the account");
        Assert.That(account.PeakBytes(MemoryCategory.Activations), Is.EqualTo(requested));
        using (account.Activate())
        {
            using var again = Tensor.Empty(new Shape(300_000), DType.Float32, _cuda);
            Assert.That(_cuda.Allocator.DeviceAllocations, Is.EqualTo(misses), "a freed block is reused without cuMemAlloc");
        }
        Assert.That(_cuda.Allocator.EmptyCache(), Is.GreaterThan(0));
        var (free2, _) = _cuda.Context.MemoryInfo();
        Assert.That(free2, Is.GreaterThanOrEqualTo(free0 - (4L << 20)), "emptying the cache gives the memory back to the device");
    }

    [Test]
    public void Size_classes_waste_at_most_511_bytes_or_a_quarter()
    {
        Assert.Multiple(() =>
        {
            Assert.That(BlockFreeLists<CUdeviceptr>.SizeClass(1), Is.EqualTo(512));
            Assert.That(BlockFreeLists<CUdeviceptr>.SizeClass(513), Is.EqualTo(1024));
            Assert.That(BlockFreeLists<CUdeviceptr>.SizeClass(1 << 20), Is.EqualTo(1 << 20));
            Assert.That(BlockFreeLists<CUdeviceptr>.SizeClass((1 << 20) + 1), Is.EqualTo((1 << 20) + (1 << 18)));
            Assert.That(BlockFreeLists<CUdeviceptr>.SizeClass(3L << 30), Is.EqualTo(3L << 30));
        });
        for (long b = 1; b < 1L << 34; b = b * 3 / 2 + 7)
            Assert.That(BlockFreeLists<CUdeviceptr>.SizeClass(b), Is.GreaterThanOrEqualTo(b).And.LessThanOrEqualTo(Math.Max(b + 511, b + b / 4 + 1)), $"{b} bytes");
    }

    [Test]
    public void Running_out_of_device_memory_reports_the_worker_memory()
    {
        var (_, total) = _cuda.Context.MemoryInfo();
        var account = new MemoryAccount("worker 3");
        using var _ = account.Activate();
        using var small = Tensor.Empty(new Shape(1000), DType.Float32, _cuda);
        var e = Assert.Throws<CudaOutOfMemoryException>(() => Tensor.Empty(new Shape(64, (int)(total / 256) + 256), DType.Float32, _cuda));
        Assert.That(e!.Message, Does.Contain("CUDA out of memory").And.Contain("worker 3").And.Contain("cuMemAlloc_v2"));
        Assert.That(account.CurrentTotal, Is.EqualTo(4000), "the failed allocation charged nothing");
    }

    [Test]
    public void Diagnostics_name_the_device_and_the_allocator()
    {
        var d = _cuda.Diagnostics;
        Assert.That(d.Description, Does.StartWith("cuda:0"));
        Assert.That(d.Facts.Select(f => f.Name), Does.Contain("allocator").And.Contain("device memory"));
        Assert.That(d.ProcessWorkspaceBytes, Is.GreaterThanOrEqualTo(0));
    }

    private static double[] AsDoubles(Tensor t) => t.DType switch
    {
        DType.Float32 => [.. t.ToArray<float>().Select(v => (double)v)],
        DType.Float64 => t.ToArray<double>(),
        DType.Int32 => [.. t.ToArray<int>().Select(v => (double)v)],
        _ => [.. t.ToArray<long>().Select(v => (double)v)],
    };
}
