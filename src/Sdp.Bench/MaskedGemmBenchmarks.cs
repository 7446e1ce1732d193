using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using Sdp.Kernels.Cpu;
using Sdp.Measure;

namespace Sdp.Bench;

/// <summary>
/// The masked GEMMs SDP training runs (`sdp bench masked`'s kernels, <see cref="MaskedGemmBench"/>): the forward gathers
/// (fwd-rows: Y[:, idx] = X·W[idx,:]ᵀ; fwd-cols: Y = X'·W[:, idx]ᵀ) and the compact weight gradients of backward masking
/// (dW-rows-c, dW-cols-c), on n x n operands with a random held-unit set of density d, against Sdp's dense SGEMM of the
/// full shape (the baseline: X·Wᵀ, or dW += dYᵀ·X). Ratio/d is time / (d · dense time): 1 when the time is exactly
/// proportional to the held units.
/// </summary>
[Config(typeof(MaskedConfig))]
public unsafe class MaskedGemmBenchmarks
{
    private GemmQuickBench.SquareMatrices? _mats;
    private Action? _dense, _masked;

    [Params(1024)]
    public int N { get; set; } = 1024;

    [Params(1.0, 0.75, 0.5, 0.25, 0.125)]
    public double Density { get; set; } = 1.0;

    [Params("fwd-rows", "fwd-cols", "dW-rows-c", "dW-cols-c")]
    public string Kernel { get; set; } = "fwd-rows";

    /// <summary>Both the masked kernel and the dense baseline use every core Sdp's GEMM uses.</summary>
    [ParamsSource(nameof(ThreadCounts))]
    public int Threads { get; set; } = Gemm.MaxThreads;

    public static IEnumerable<int> ThreadCounts => [Gemm.MaxThreads];

    [GlobalSetup]
    public void Setup()
    {
        BaselineReport.Print(nameof(MaskedGemmBenchmarks), BaselineReport.SdpDenseBaseline(Threads));
        _mats = new GemmQuickBench.SquareMatrices(N);
        _dense = MaskedGemmBench.DenseCall(Kernel, _mats, Threads);
        _masked = MaskedGemmBench.MaskedCall(Kernel, _mats, MaskedGemmBench.HeldUnits(N, Density), Threads);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _mats?.Dispose();
        _mats = null;
    }

    [Benchmark(Baseline = true)]
    public void DenseSgemm() => _dense!();

    [Benchmark]
    public void Masked() => _masked!();

    private sealed class MaskedConfig : ManualConfig
    {
        public MaskedConfig()
        {
            AddColumn(new DensityRatioColumn());
            AddColumn(new BaselineColumn(() => BaselineReport.SdpDenseBaseline(Gemm.MaxThreads)));
        }
    }
}
