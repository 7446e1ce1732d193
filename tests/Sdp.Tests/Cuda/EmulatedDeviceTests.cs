using System.Diagnostics;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// The emulated CUDA device (native/cudaemu) through Sdp's own driver/NVRTC bindings: small kernels
/// compiled from CUDA source, launched, and checked against a CPU reference with every output poisoned
/// with NaN first; then planted bugs the emulator must report instead of computing garbage.
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable] // one emulated device; its launches are serialized anyway
public unsafe class EmulatedDeviceTests
{
    private readonly CudaImplementation _impl;

    public EmulatedDeviceTests(CudaImplementation implementation) => _impl = implementation;

    // NVRTC-style source: extern "C" kernels, no host headers, dynamic shared memory in the one fixed form.
    private const string Source = """
        extern "C" __global__ void vector_add(const float* a, const float* b, float* c, int n)
        {
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i < n) c[i] = a[i] + b[i];
        }

        // x (n) -> partial (gridDim.x): one sum per block of 256 threads, tree-reduced in shared memory.
        extern "C" __global__ void block_sum(const float* x, float* partial, int n)
        {
            __shared__ float s[256];
            int t = threadIdx.x;
            int i = blockIdx.x * blockDim.x + t;
            s[t] = i < n ? x[i] : 0.0f;
            __syncthreads();
            for (int k = blockDim.x / 2; k > 0; k >>= 1)
            {
                if (t < k) s[t] += s[t + k];
                __syncthreads();
            }
            if (t == 0) partial[blockIdx.x] = s[0];
        }

        // x (n) -> partial (n / 32): one sum per warp, by shuffles only.
        extern "C" __global__ void warp_sum(const float* x, float* partial, int n)
        {
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            float v = i < n ? x[i] : 0.0f;
            for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
            unsigned ballot = __ballot_sync(0xffffffffu, i < n);
            if ((threadIdx.x & 31) == 0 && ballot != 0u) partial[i / 32] = v;
        }

        // x (n) -> y (n): each block reverses its slice through dynamic shared memory.
        extern "C" __global__ void reverse_blocks(const float* x, float* y)
        {
            extern __shared__ __align__(16) unsigned char dyn_smem[];
            float* s = (float*)dyn_smem;
            int t = threadIdx.x, base = blockIdx.x * blockDim.x;
            s[t] = x[base + t];
            __syncthreads();
            y[base + t] = s[blockDim.x - 1 - t];
        }

        // x (n) -> total (1), count (1): float and int atomics across blocks.
        extern "C" __global__ void atomic_total(const float* x, float* total, int* count, int n)
        {
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i < n)
            {
                atomicAdd(total, x[i]);
                if (x[i] > 0.0f) atomicAdd(count, 1);
            }
        }

        // ---- planted bugs ----
        extern "C" __global__ void write_without_bounds_check(float* y, int n)
        {
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            y[i] = 1.0f; // no `if (i < n)`
        }

        // Reads a neighbour's shared slot without __syncthreads between the write and the read.
        extern "C" __global__ void shift_missing_sync(const float* x, float* y)
        {
            __shared__ float s[128];
            int t = threadIdx.x;
            s[t] = x[t];
            y[t] = s[(t + 1) % blockDim.x];
        }

        extern "C" __global__ void return_before_sync(float* y)
        {
            if (threadIdx.x >= 16) return;
            __syncthreads();
            y[threadIdx.x] = 1.0f;
        }

        extern "C" __global__ void divergent_full_mask_shuffle(float* y)
        {
            float v = (float)threadIdx.x;
            if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
            y[threadIdx.x] = v;
        }
        """;

    private CudaContext _ctx = null!;
    private CudaModule _module = null!;

    [OneTimeSetUp]
    public void SetUp()
    {
        CudaApi api = CudaDevices.Load(_impl);
        _ctx = CudaContext.Open(api);
        _module = CudaModule.Compile(_ctx, Source, "emulated_device_tests.cu");
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        _module?.Dispose();
        _ctx?.Dispose();
    }

    private static float[] Random(int n, int seed) => DeviceTestData.RandomFloats(new Random(seed), n);

    private DeviceBuffer Upload(float[] x) => DeviceTestData.Upload(_ctx, x);

    private DeviceBuffer Poisoned(int n) => DeviceTestData.Poisoned(_ctx, n);

    private static void AssertClose(float[] expected, float[] actual, float atol, float rtol) => DeviceTestData.AssertClose(expected, actual, rtol, atol, "result");

    [Test]
    public void Device_ReportsItselfAndItsMemory()
    {
        CudaDevices.RequireEmulated(_impl, "the emulated device's name and exact memory accounting");
        Assert.That(_ctx.Api.Implementation, Is.EqualTo(CudaImplementation.Emulated));
        Assert.That(_ctx.Name, Does.Contain("emulated"));
        Assert.That(_ctx.Attribute(CUdeviceAttribute.WarpSize), Is.EqualTo(32));
        Assert.That(_ctx.Attribute(CUdeviceAttribute.MaxSharedMemoryPerBlockOptin), Is.GreaterThan(48 * 1024));
        var (free0, total) = _ctx.MemoryInfo();
        using (var b = DeviceBuffer.Allocate(_ctx, 1 << 20))
        {
            var (free1, _) = _ctx.MemoryInfo();
            Assert.That(free0 - free1, Is.EqualTo(1 << 20));
        }
        Assert.That(_ctx.MemoryInfo().Free, Is.EqualTo(free0));
        Assert.That(total, Is.GreaterThan(0));
    }

    [Test]
    public void VectorAdd_MatchesCpu()
    {
        const int n = 1000; // not a multiple of the block size: the bounds check matters
        float[] a = Random(n, 1), b = Random(n, 2);
        using var da = Upload(a);
        using var db = Upload(b);
        using var dc = Poisoned(n);
        _module.Function("vector_add").Launch((n + 255) / 256, 256, 0, null, da.Pointer, db.Pointer, dc.Pointer, n);
        AssertClose(a.Zip(b, (x, y) => x + y).ToArray(), dc.ToArray<float>(), 0f, 0f);
    }

    [Test]
    public void BlockReduction_WithSyncthreads_MatchesCpu()
    {
        const int n = 3000, blocks = (n + 255) / 256;
        float[] x = Random(n, 3);
        using var dx = Upload(x);
        using var dp = Poisoned(blocks);
        _module.Function("block_sum").Launch(blocks, 256, 0, null, dx.Pointer, dp.Pointer, n);
        var expected = new float[blocks];
        for (int i = 0; i < n; i++) expected[i / 256] += x[i];
        AssertClose(expected, dp.ToArray<float>(), 1e-5f, 1e-5f);
    }

    [Test]
    public void WarpShuffleReduction_MatchesCpu()
    {
        const int n = 96 * 8; // 8 blocks of 96 threads = 3 warps each
        float[] x = Random(n, 4);
        using var dx = Upload(x);
        using var dp = Poisoned(n / 32);
        _module.Function("warp_sum").Launch(8, 96, 0, null, dx.Pointer, dp.Pointer, n);
        var expected = new float[n / 32];
        for (int i = 0; i < n; i++) expected[i / 32] += x[i];
        AssertClose(expected, dp.ToArray<float>(), 1e-5f, 1e-5f);
    }

    [Test]
    public void DynamicSharedMemory_ReversesEachBlock_AndAbove48KiBNeedsOptIn()
    {
        const int threads = 128, blocks = 5, n = threads * blocks;
        float[] x = Random(n, 5);
        using var dx = Upload(x);
        using var dy = Poisoned(n);
        CudaFunction f = _module.Function("reverse_blocks");
        f.Launch(blocks, threads, threads * sizeof(float), null, dx.Pointer, dy.Pointer);
        var expected = new float[n];
        for (int b = 0; b < blocks; b++)
            for (int t = 0; t < threads; t++) expected[b * threads + t] = x[b * threads + threads - 1 - t];
        AssertClose(expected, dy.ToArray<float>(), 0f, 0f);

        var e = Assert.Throws<CudaException>(() => f.Launch(1, threads, 64 * 1024, null, dx.Pointer, dy.Pointer))!;
        Assert.That(e.Result, Is.EqualTo(CUresult.InvalidValue));
        f.SetMaxDynamicSharedMemory(64 * 1024);
        f.Launch(1, threads, 64 * 1024, null, dx.Pointer, dy.Pointer);
    }

    [Test]
    public void AtomicAdd_FloatAndInt_MatchCpu()
    {
        const int n = 2000;
        float[] x = Random(n, 6);
        using var dx = Upload(x);
        using var total = Poisoned(1);
        using var count = DeviceBuffer.Allocate<int>(_ctx, 1);
        total.Fill32(0);
        count.Fill32(0);
        _module.Function("atomic_total").Launch((n + 127) / 128, 128, 0, null, dx.Pointer, total.Pointer, count.Pointer, n);
        double expected = x.Sum(v => (double)v);
        Assert.That(total.ToArray<float>()[0], Is.EqualTo(expected).Within(1e-3));
        Assert.That(count.ToArray<int>()[0], Is.EqualTo(x.Count(v => v > 0)));
    }

    [Test]
    public void Events_TimeALaunch()
    {
        using var dx = Upload(Random(256, 7));
        using var dp = Poisoned(1);
        using var stream = CudaStream.Create(_ctx);
        using var start = CudaEvent.Create(_ctx);
        using var end = CudaEvent.Create(_ctx);
        start.Record(stream);
        _module.Function("block_sum").Launch(1, 256, 0, stream, dx.Pointer, dp.Pointer, 256);
        end.Record(stream);
        end.Synchronize();
        Assert.That(end.ElapsedSince(start), Is.GreaterThanOrEqualTo(0f));
    }

    // ---- planted bugs ----

    [Test]
    public void OutOfBoundsWrite_IsIllegalAddress_NamingKernelBlockAndThread_AndTheProcessSurvives()
    {
        CudaDevices.RequireEmulated(_impl, "planted bug: guard pages (an illegal address ruins a real context)");
        const int n = 1000; // 4 blocks of 256 write 1024 elements: threads 232..255 of block 3 overrun
        using var y = Poisoned(n);
        var e = Assert.Throws<CudaException>(() =>
            _module.Function("write_without_bounds_check").Launch(4, 256, 0, null, y.Pointer, n))!;
        Assert.That(e.Result, Is.EqualTo(CUresult.IllegalAddress));
        Assert.That(e.Message, Does.Contain("CUDA_ERROR_ILLEGAL_ADDRESS"));
        Assert.That(e.Message, Does.Contain("write_without_bounds_check"));
        Assert.That(e.Message, Does.Contain("block (3,0,0)"));
        Assert.That(e.Message, Does.Contain("thread (232,0,0)"));
        Assert.That(e.Message, Does.Contain("past the end of the 4000-byte allocation"));

        // The device and the .NET runtime (whose own SIGSEGV handling we chain to) both still work.
        float[] a = Random(256, 8);
        using var da = Upload(a);
        using var dc = Poisoned(256);
        _module.Function("vector_add").Launch(1, 256, 0, null, da.Pointer, da.Pointer, dc.Pointer, 256);
        AssertClose(a.Select(v => 2 * v).ToArray(), dc.ToArray<float>(), 0f, 0f);
        object? nothing = null;
        Assert.Throws<NullReferenceException>(() => nothing!.GetHashCode());
    }

    [Test]
    public void MissingSyncthreads_ReadsPoisonedSharedMemory()
    {
        CudaDevices.RequireEmulated(_impl, "planted bug: NaN-poisoned shared memory");
        const int threads = 128;
        using var x = Upload(Random(threads, 9));
        using var y = Poisoned(threads);
        _module.Function("shift_missing_sync").Launch(1, threads, 0, null, x.Pointer, y.Pointer);
        // Threads run in order until a barrier, so each read of a later thread's slot sees the NaN poison.
        Assert.That(y.ToArray<float>().Count(float.IsNaN), Is.GreaterThan(threads / 2));
    }

    [Test]
    public void ReturnBeforeSyncthreads_IsLaunchFailed_WithAMessage()
    {
        CudaDevices.RequireEmulated(_impl, "planted bug: barrier misuse report (a real GPU may hang or not notice)");
        using var y = Poisoned(64);
        var e = Assert.Throws<CudaException>(() => _module.Function("return_before_sync").Launch(1, 64, 0, null, y.Pointer))!;
        Assert.That(e.Result, Is.EqualTo(CUresult.LaunchFailed));
        Assert.That(e.Message, Does.Contain("__syncthreads reached by 16 of 64 threads"));
    }

    [Test]
    public void DivergentFullMaskShuffle_IsADeadlockReport()
    {
        CudaDevices.RequireEmulated(_impl, "planted bug: deadlock report");
        using var y = Poisoned(32);
        var e = Assert.Throws<CudaException>(() => _module.Function("divergent_full_mask_shuffle").Launch(1, 32, 0, null, y.Pointer))!;
        Assert.That(e.Result, Is.EqualTo(CUresult.LaunchFailed));
        Assert.That(e.Message, Does.Contain("deadlock"));
        Assert.That(e.Message, Does.Contain("lanes 0-15 wait in __shfl_xor_sync"));
        Assert.That(e.Message, Does.Contain("lanes 16-31 have exited"));
    }

    [Test]
    public void HostPointerArgument_IsInvalidValue()
    {
        CudaDevices.RequireEmulated(_impl, "the emulator's device-pointer check (a real GPU faults)");
        float[] host = new float[4];
        fixed (float* p = host)
        {
            var hostPointer = new CUdeviceptr((ulong)p);
            var e = Assert.Throws<CudaException>(() =>
                _module.Function("write_without_bounds_check").Launch(1, 4, 0, null, hostPointer, 4))!;
            Assert.That(e.Result, Is.EqualTo(CUresult.InvalidValue));
            Assert.That(e.Message, Does.Contain("not device memory"));
        }
    }

    // ---- NVRTC ----

    [Test]
    public void Nvrtc_SecondCompileOfTheSameSource_HitsTheCache()
    {
        CudaDevices.RequireEmulated(_impl, "the emulated NVRTC's module cache");
        // A source no earlier run has compiled, so the first compile is a miss.
        string source = $"// {Guid.NewGuid()}\nextern \"C\" __global__ void fill(float* y, float v) {{ y[threadIdx.x] = v; }}\n";
        var sw = Stopwatch.StartNew();
        using var first = NvrtcProgram.Create(_ctx.Api, source, "cache_test.cu");
        first.Compile();
        double missMs = sw.Elapsed.TotalMilliseconds;
        sw.Restart();
        using var second = NvrtcProgram.Create(_ctx.Api, source, "cache_test.cu");
        second.Compile();
        double hitMs = sw.Elapsed.TotalMilliseconds;

        string token = System.Text.Encoding.UTF8.GetString(first.GetPtx()).TrimEnd('\0');
        Assert.That(second.GetPtx(), Is.EqualTo(first.GetPtx()), "both compiles name the same cached module");
        Assert.That(first.Log, Does.Contain("compiled 1 kernel"));
        Assert.That(second.Log, Does.Contain("cache hit"));
        Assert.That(hitMs, Is.LessThan(missMs));

        using (var module = CudaModule.Load(_ctx, second.GetPtx()))
        using (var y = Poisoned(8))
        {
            module.Function("fill").Launch(1, 8, 0, null, y.Pointer, 2.5f);
            Assert.That(y.ToArray<float>(), Is.All.EqualTo(2.5f));
        }
        File.Delete(token["CUDAEMU-MODULE:".Length..]); // leave no file behind for a source nobody will compile again
    }

    [Test]
    public void Nvrtc_CompileError_CarriesTheCompilerLog()
    {
        const string broken = "extern \"C\" __global__ void broken(float* y) { y[threadIdx.x] = undeclared_name; }\n";
        using var program = NvrtcProgram.Create(_ctx.Api, broken, "broken.cu");
        var e = Assert.Throws<NvrtcException>(() => program.Compile())!;
        Assert.That(e.Result, Is.EqualTo(NvrtcResult.Compilation));
        Assert.That(e.Log, Does.Contain("undeclared_name"));
        Assert.That(e.Message, Does.Contain("broken.cu"));
    }

    [Test]
    public void UnknownKernelName_IsNotFound_ListingTheKernels()
    {
        CudaDevices.RequireEmulated(_impl, "the emulator lists the module's kernels");
        var e = Assert.Throws<CudaException>(() => _module.Function("no_such_kernel"))!;
        Assert.That(e.Result, Is.EqualTo(CUresult.NotFound));
        Assert.That(e.Message, Does.Contain("vector_add"));
    }
}
