using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using Sdp.Kernels.Cpu;
using Sdp.Measure;

namespace Sdp.Bench;

/// <summary>
/// Square row-major SGEMM (C = A·B): Sdp against OpenBLAS (the baseline), as `sdp bench gemm` measures it. OpenBLAS runs
/// the CPU's best core unless `--openblas-core as-set` keeps a weaker one that OPENBLAS_CORETYPE forces (see <see cref="Program"/>).
/// </summary>
[MemoryDiagnoser]
[Config(typeof(SgemmConfig))]
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
        BaselineReport.Print(nameof(SgemmBenchmarks), BaselineReport.OpenBlasBaseline(Threads), openBlas: true);
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

    private sealed class SgemmConfig : ManualConfig
    {
        // The threads are the Threads parameter's column.
        public SgemmConfig() => AddColumn(new BaselineColumn(() => BaselineReport.OpenBlasBaseline()));
    }
}
