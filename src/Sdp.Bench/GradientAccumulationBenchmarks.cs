using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using Sdp.Engine;
using Sdp.Engine.Backends.Cpu;
using Sdp.Kernels.Cpu;
using Sdp.Measure;

namespace Sdp.Bench;

/// <summary>
/// Masked gradient accumulation against the memory bandwidth. Both kernels are memory-bound, so each is measured against
/// a parallel copy (the baseline) that reads and writes as many bytes as the kernel does at least; Bandwidth = copy time /
/// kernel time is the fraction of the copy's bandwidth the kernel reaches.
/// <list type="bullet">
/// <item>holder-mean: <see cref="MaskedGemm.MaskedAverage"/>, the holder-masked mean of W = 4 workers' full n x n
/// gradients, each worker holding a random fraction d of the rows: reads every worker's held rows, writes the result.</item>
/// <item>index-add: the CPU backend's IndexAdd, a compact gradient of the held rows (round(d·n) x n) added into the held
/// rows of a full n x n gradient (what index_select's backward and the assembly of the dense model run; the CPU twin of
/// kernels.cu's sdp_slice_copy_f32 +=): reads the compact rows and the target rows, writes the target rows.</item>
/// </list>
/// </summary>
[Config(typeof(AccumulationConfig))]
public unsafe class GradientAccumulationBenchmarks
{
    /// <summary>Workers whose gradients holder-mean combines.</summary>
    public const int Workers = 4;

    private readonly List<nint> _buffers = [];
    private nint[] _grads = [];
    private int[][] _held = [];
    private float* _dst;
    private Tensor? _compact, _full, _indices;
    private float* _copyFrom, _copyTo;
    private long _copyBytes;

    [Params(2048)]
    public int N { get; set; } = 2048;

    [Params(1.0, 0.75, 0.5, 0.25, 0.125)]
    public double Density { get; set; } = 1.0;

    [Params("holder-mean", "index-add")]
    public string Kernel { get; set; } = "holder-mean";

    /// <summary>Bytes the kernel reads and writes at the least; the baseline copy moves the same (half read, half written).</summary>
    public long BytesMoved { get; private set; }

    [GlobalSetup]
    public void Setup()
    {
        BaselineReport.Print(nameof(GradientAccumulationBenchmarks), $"parallel memory copy of the kernel's bytes, {Gemm.MaxThreads} threads");
        var rng = new Random(7);
        long nn = (long)N * N;
        int units = Math.Max(1, (int)Math.Round(Density * N));
        if (Kernel == "holder-mean")
        {
            _grads = [.. Enumerable.Range(0, Workers).Select(_ => (nint)Filled(nn, rng))];
            // Each worker holds its own random rows (a sliding-window plan would too, at this density).
            _held = [.. Enumerable.Range(0, Workers).Select(w => MaskedGemmBench.HeldUnits(N, Density).Select(u => (u + w * 97) % N).Order().ToArray())];
            _dst = Filled(nn, rng);
            BytesMoved = sizeof(float) * (_held.Sum(h => (long)h.Length * N) + nn);
        }
        else if (Kernel == "index-add")
        {
            var cpu = CpuBackend.Instance;
            _compact = Tensor.FromArray(RandomValues((long)units * N, rng), new Shape(units, N), cpu);
            _full = Tensor.FromArray(RandomValues(nn, rng), new Shape(N, N), cpu);
            _indices = Tensor.FromArray(MaskedGemmBench.HeldUnits(N, Density), new Shape(units), cpu);
            BytesMoved = 3L * sizeof(float) * units * N;
        }
        else
        {
            throw new ArgumentException($"unknown kernel '{Kernel}': holder-mean or index-add");
        }
        _copyBytes = BytesMoved / 2;
        _copyFrom = Filled(_copyBytes / sizeof(float), rng);
        _copyTo = Filled(_copyBytes / sizeof(float), rng);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (nint b in _buffers) NativeMemory.AlignedFree((void*)b);
        _buffers.Clear();
        _compact?.Dispose();
        _full?.Dispose();
        _indices?.Dispose();
        (_compact, _full, _indices) = (null, null, null);
    }

    /// <summary>The same bytes as the kernel, copied in one contiguous chunk per thread.</summary>
    [Benchmark(Baseline = true)]
    public void MemoryCopy()
    {
        int threads = Gemm.MaxThreads;
        long chunk = (_copyBytes + threads - 1) / threads;
        nint from = (nint)_copyFrom, to = (nint)_copyTo;
        long total = _copyBytes;
        Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
        {
            long start = t * chunk, length = Math.Min(chunk, total - start);
            if (length > 0) Buffer.MemoryCopy((byte*)from + start, (byte*)to + start, length, length);
        });
    }

    [Benchmark]
    public void Accumulate()
    {
        if (Kernel == "holder-mean") MaskedGemm.MaskedAverage(_grads, _held, N, N, unitsAreColumns: false, _dst);
        else CpuBackend.Instance.IndexAdd(_compact!, 0, _indices!, _full!);
    }

    private float* Filled(long count, Random rng)
    {
        var p = (float*)NativeMemory.AlignedAlloc((nuint)(count * sizeof(float)), 64);
        _buffers.Add((nint)p);
        for (long i = 0; i < count; i++) p[i] = (float)(rng.NextDouble() * 2 - 1);
        return p;
    }

    private static float[] RandomValues(long count, Random rng)
    {
        var values = new float[count];
        for (long i = 0; i < count; i++) values[i] = (float)(rng.NextDouble() * 2 - 1);
        return values;
    }

    private sealed class AccumulationConfig : ManualConfig
    {
        public AccumulationConfig()
        {
            AddColumn(new BandwidthFractionColumn());
            AddColumn(new BaselineColumn(() => $"parallel memory copy of the same bytes, {Gemm.MaxThreads} threads"));
        }
    }
}
