using System.Globalization;
using BenchmarkDotNet.Running;
using Sdp.Bench;
using Sdp.Kernels.Cpu;
using Sdp.Measure;

// `Sdp.Bench gemm [--sizes 512,1024,2048] [--threads 1,2] [--seconds 0.6]`: quick Sdp-vs-OpenBLAS table.
// Anything else goes to BenchmarkDotNet (e.g. `--filter *Sgemm*`).
if (args.Length > 0 && args[0] == "gemm")
{
    int[]? sizes = null, threads = null;
    double seconds = 0.6;
    for (int i = 1; i < args.Length; i++)
    {
        string value = i + 1 < args.Length ? args[i + 1] : throw new ArgumentException($"missing value for {args[i]}");
        switch (args[i])
        {
            case "--sizes":
                sizes = ParseList(value);
                break;
            case "--threads":
                threads = ParseList(value);
                break;
            case "--seconds":
                seconds = double.Parse(value, CultureInfo.InvariantCulture);
                break;
            case "--mc":
                Gemm.TuneMC = int.Parse(value, CultureInfo.InvariantCulture);
                break;
            case "--kc":
                Gemm.TuneKC = int.Parse(value, CultureInfo.InvariantCulture);
                break;
            case "--nc":
                Gemm.TuneNC = int.Parse(value, CultureInfo.InvariantCulture);
                break;
            default:
                throw new ArgumentException($"unknown option {args[i]}");
        }

        i++;
    }

    GemmQuickBench.Run(Console.Out, sizes, threads, seconds);
    return 0;
}

BenchmarkSwitcher.FromAssembly(typeof(SgemmBenchmarks).Assembly).Run(args);
return 0;

static int[] ParseList(string s) => [.. s.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(x => int.Parse(x, CultureInfo.InvariantCulture))];
