using BenchmarkDotNet.Attributes;
using Sdp.Kernels.Cpu;
using Sdp.Measure;

namespace Sdp.Bench;

/// <summary>BenchmarkDotNet comparison of square row-major SGEMM (C = A·B): Sdp vs OpenBLAS (baseline).</summary>
[MemoryDiagnoser]
public unsafe class SgemmBenchmarks
{
    private GemmQuickBench.SquareMatrices? _mats;

    [Params(512, 1024, 2048)]
    public int N { get; set; }

    [Params(1, 2)]
    public int Threads { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _mats = new GemmQuickBench.SquareMatrices(N);
        OpenBlas.SetNumThreads(Threads);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _mats?.Dispose();
        _mats = null;
    }

    [Benchmark(Baseline = true)]
    public void OpenBlasSgemm()
    {
        GemmQuickBench.SquareMatrices m = _mats!;
        OpenBlas.Sgemm(false, false, N, N, N, 1f, m.A, N, m.B, N, 0f, m.C, N);
    }

    [Benchmark]
    public void SdpSgemm()
    {
        GemmQuickBench.SquareMatrices m = _mats!;
        Gemm.Sgemm(false, false, N, N, N, 1f, m.A, N, m.B, N, 0f, m.C, N, Threads);
    }
}
