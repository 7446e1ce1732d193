using System.CommandLine;
using System.Globalization;
using Sdp.Measure;
using Sdp.Models.Llama;

namespace Sdp.Cli.Commands;

/// <summary>`sdp bench gemm`: quick GEMM benchmark, ours against OpenBLAS in the same run (on the CPU's best OpenBLAS core); `sdp bench masked`: masked GEMMs against dense.</summary>
public static partial class BenchCommand
{
    public static Command Create()
    {
        var sizes = new Option<int[]>("--sizes") { Description = "Square sizes n (C = A·B, n x n)", AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => [.. GemmQuickBench.DefaultSizes] };
        var threads = new Option<int[]>("--threads") { Description = "Thread counts", AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => [.. GemmQuickBench.DefaultThreadCounts] };
        var seconds = new Option<double>("--seconds") { Description = "Target seconds of timing per cell", DefaultValueFactory = _ => 0.6 };
        var gemmSamples = new Option<int>("--samples") { Description = "Timed samples per library per cell, interleaved (medians and the median paired ratio kept)", DefaultValueFactory = _ => 5 };
        var openblasCore = new Option<string>("--openblas-core")
        {
            Description = $"OpenBLAS core of the baseline when {OpenBlasCoreCheck.CoreTypeVariable} forces a weaker one than this CPU supports: " +
                          $"{CoreBest} (run the baseline in a child process on the best core) or {CoreAsSet} (keep the forced core)",
            DefaultValueFactory = _ => CoreBest,
        };
        openblasCore.AcceptOnlyFromAmong(CoreBest, CoreAsSet);
        var gemm = new Command("gemm", "Sdp SGEMM against OpenBLAS sgemm: GFLOP/s and ratio (needs libopenblas0-pthread)") { sizes, threads, seconds, gemmSamples, openblasCore };
        gemm.SetAction(p =>
        {
            var n = p.GetValue(sizes)!;
            var t = p.GetValue(threads)!;
            double s = p.GetValue(seconds);
            int samples = p.GetValue(gemmSamples);
            if (samples < 1) throw new UsageException($"--samples must be at least 1, got {samples}");
            if (n.Length == 0 || n.Any(v => v <= 0)) throw new UsageException("--sizes must be positive integers");
            if (t.Length == 0 || t.Any(v => v <= 0)) throw new UsageException("--threads must be positive integers");
            if (!(s > 0)) throw new UsageException($"--seconds must be positive, got {s}");
            if (!OpenBlas.IsAvailable) throw new UsageException("OpenBLAS was not found; install it with `apt-get install libopenblas0-pthread` (looked in: " + string.Join(", ", OpenBlas.CandidatePaths) + ")");
            var check = OpenBlasCoreCheck.Current();
            if (check.ForcesWeaker)
            {
                Console.WriteLine($"warning: {check.Describe()}; a baseline on that core would flatter Sdp.");
                if (p.GetValue(openblasCore) == CoreBest)
                {
                    Console.WriteLine($"         the baseline runs in a child process with {OpenBlasCoreCheck.CoreTypeVariable}={check.BestCore} and {OpenBlasCoreCheck.L2SizeVariable} unset " +
                                      $"(--openblas-core {CoreAsSet} keeps {check.Forced})");
                    string[] child =
                    [
                        "bench", "gemm", "--sizes", .. n.Select(v => v.ToString(CultureInfo.InvariantCulture)), "--threads", .. t.Select(v => v.ToString(CultureInfo.InvariantCulture)),
                        "--seconds", s.ToString("R", CultureInfo.InvariantCulture), "--samples", samples.ToString(CultureInfo.InvariantCulture), "--openblas-core", CoreAsSet,
                    ];
                    int code = RunWithOpenBlasCore(check.BestCore!, child, Console.Out, Console.Error);
                    if (code != 0)
                        Console.Error.WriteLine($"sdp: the baseline's child process ({OpenBlasCoreCheck.CoreTypeVariable}={check.BestCore}) exited with code {code}; --openblas-core {CoreAsSet} measures against {check.Forced} instead");
                    return code;
                }
                Console.WriteLine($"         measuring against {check.Forced} as asked (--openblas-core {CoreAsSet})");
            }
            GemmQuickBench.Run(Console.Out, n, t, s, samples);
            return 0;
        });
        var mSizes = new Option<int[]>("--sizes") { Description = "Square sizes n (tokens = in = out = n)", AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => [.. MaskedGemmBench.DefaultSizes] };
        var mDens = new Option<double[]>("--densities") { Description = "Held-unit densities d in (0, 1]", AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => [.. MaskedGemmBench.DefaultDensities] };
        var mSamples = new Option<int>("--samples") { Description = "Timed samples per cell (median kept)", DefaultValueFactory = _ => 5 };
        var mThreads = new Option<int>("--threads") { Description = "Threads (0 = all)", DefaultValueFactory = _ => 0 };
        var mKernels = new Option<string[]>("--kernels") { Description = "Kernels: " + string.Join(", ", MaskedGemmBench.Kernels), AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => [.. MaskedGemmBench.Kernels] };
        var masked = new Command("masked", "Masked SGEMMs (gather in packing) against dense SGEMM: time_masked / (d · time_dense)") { mSizes, mDens, mSamples, mThreads, mKernels };
        masked.SetAction(p =>
        {
            var n = p.GetValue(mSizes)!;
            var d = p.GetValue(mDens)!;
            if (n.Length == 0 || n.Any(v => v <= 0)) throw new UsageException("--sizes must be positive integers");
            if (d.Length == 0 || d.Any(v => !(v > 0 && v <= 1))) throw new UsageException("--densities must be in (0, 1]");
            if (p.GetValue(mSamples) < 1) throw new UsageException("--samples must be >= 1");
            if (p.GetValue(mThreads) < 0) throw new UsageException("--threads must be >= 0");
            var ks = p.GetValue(mKernels)!;
            if (ks.Length == 0 || ks.Any(k => !MaskedGemmBench.Kernels.Contains(k))) throw new UsageException("--kernels must be among: " + string.Join(", ", MaskedGemmBench.Kernels));
            MaskedGemmBench.Run(Console.Out, n, d, p.GetValue(mSamples), p.GetValue(mThreads), ks);
            return 0;
        });
        var kDevice = new Option<string>("--device") { Description = "cuda or cuda:K (the emulated device where there is no GPU)", DefaultValueFactory = _ => "cuda" };
        var kSizes = new Option<int[]?>("--sizes") { Description = $"Square sizes n (default {string.Join(" ", CudaKernelBench.DefaultSizes)} on a GPU, {string.Join(" ", CudaKernelBench.EmulatedSizes)} on the emulated device)", AllowMultipleArgumentsPerToken = true };
        var kDens = new Option<double[]>("--densities") { Description = "Held-unit densities d in (0, 1]", AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => [.. CudaKernelBench.DefaultDensities] };
        var kSamples = new Option<int>("--samples") { Description = "Timed samples per cell (median kept)", DefaultValueFactory = _ => 7 };
        var kStep = new Option<string?>("--step") { Description = "Also time LLaMA training steps of this preset and report the model-FLOP utilisation (default 130m on a GPU, none on the emulated device; 'none' skips)" };
        var kStepBatch = new Option<int>("--step-batch") { Description = "Sequences per timed step", DefaultValueFactory = _ => 8 };
        var kStepSeq = new Option<int>("--step-seq") { Description = "Tokens per sequence of the timed step", DefaultValueFactory = _ => 512 };
        var kernels = new Command("kernels", "kernels.cu's SDP kernels on a CUDA device against cuBLAS Sgemm (masked matmuls) and device-to-device copy (masked accumulation); a LLaMA step's MFU")
            { kDevice, kSizes, kDens, kSamples, kStep, kStepBatch, kStepSeq };
        kernels.SetAction(p =>
        {
            var d = p.GetValue(kDens)!;
            if (d.Length == 0 || d.Any(v => !(v > 0 && v <= 1))) throw new UsageException("--densities must be in (0, 1]");
            if (p.GetValue(kSamples) < 1) throw new UsageException("--samples must be >= 1");
            string spec = p.GetValue(kDevice)!.Trim().ToLowerInvariant();
            if (spec == "cpu") throw new UsageException("--device: the kernel benchmark runs kernels.cu on a CUDA device; give cuda or cuda:K (`sdp bench gemm` and `sdp bench masked` measure the CPU)");
            using var devices = DeviceSelection.Open(spec, workers: 1);
            var cuda = (Sdp.Engine.Backends.Cuda.CudaBackend)devices.Worker(0);
            if (devices.Banner is not null) Console.WriteLine(devices.Banner);
            var n = p.GetValue(kSizes) ?? (cuda.IsEmulated ? CudaKernelBench.EmulatedSizes : CudaKernelBench.DefaultSizes);
            if (n.Length == 0 || n.Any(v => v <= 0)) throw new UsageException("--sizes must be positive integers");
            string step = p.GetValue(kStep) ?? (cuda.IsEmulated ? "none" : "130m");
            if (step != "none" && !LlamaConfig.PresetNames.Contains(step)) throw new UsageException($"--step: expected none or a LLaMA preset ({string.Join(", ", LlamaConfig.PresetNames)}), got '{step}'");
            int stepBatch = Check.Positive(p.GetValue(kStepBatch), "--step-batch"), stepSeq = Check.Positive(p.GetValue(kStepSeq), "--step-seq");
            CudaKernelBench.Run(Console.Out, cuda.Context, n, d, p.GetValue(kSamples));
            if (step != "none") StepMfu(Console.Out, cuda, step, stepBatch, stepSeq, Math.Max(1, Math.Min(p.GetValue(kSamples), 5)));
            return 0;
        });
        return new Command("bench", "Benchmarks") { gemm, masked, kernels, ConvCommand(), AllocCommand(), WorkerStepCommand(), CompareCommand() };
    }
}
