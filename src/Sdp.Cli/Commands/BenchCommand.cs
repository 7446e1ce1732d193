using System.CommandLine;
using Sdp.Bench;

namespace Sdp.Cli.Commands;

/// <summary>`sdp bench gemm`: quick GEMM benchmark, ours against OpenBLAS in the same run.</summary>
public static class BenchCommand
{
    public static Command Create()
    {
        var sizes = new Option<int[]>("--sizes") { Description = "Square sizes n (C = A·B, n x n)", AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => [.. GemmQuickBench.DefaultSizes] };
        var threads = new Option<int[]>("--threads") { Description = "Thread counts", AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => [.. GemmQuickBench.DefaultThreadCounts] };
        var seconds = new Option<double>("--seconds") { Description = "Target seconds of timing per cell", DefaultValueFactory = _ => 0.6 };
        var gemm = new Command("gemm", "Sdp SGEMM against OpenBLAS sgemm: GFLOP/s and ratio (needs libopenblas0-pthread)") { sizes, threads, seconds };
        gemm.SetAction(p =>
        {
            var n = p.GetValue(sizes)!;
            var t = p.GetValue(threads)!;
            if (n.Length == 0 || n.Any(v => v <= 0)) throw new UsageException("--sizes must be positive integers");
            if (t.Length == 0 || t.Any(v => v <= 0)) throw new UsageException("--threads must be positive integers");
            if (!OpenBlas.IsAvailable) throw new UsageException("OpenBLAS was not found; install it with `apt-get install libopenblas0-pthread` (looked in: " + string.Join(", ", OpenBlas.CandidatePaths) + ")");
            GemmQuickBench.Run(Console.Out, n, t, p.GetValue(seconds));
            return 0;
        });
        return new Command("bench", "Benchmarks") { gemm };
    }
}
