using System.Globalization;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Exporters.Json;
using BenchmarkDotNet.Running;
using Sdp.Kernels.Cpu;
using Sdp.Measure;

namespace Sdp.Bench;

/// <summary>
/// `Sdp.Bench gemm [--sizes 512,1024,2048] [--threads 1,2] [--seconds 0.6]`: the quick Sdp-vs-OpenBLAS table. Anything
/// else goes to BenchmarkDotNet (`--filter '*Masked*'`, `--job dry`, `--list flat`), whose reports are exported as
/// GitHub Markdown, CSV and JSON into BenchmarkDotNet.Artifacts/results. The suites: <see cref="SgemmBenchmarks"/>,
/// <see cref="MaskedGemmBenchmarks"/>, <see cref="GradientAccumulationBenchmarks"/>, <see cref="WorkerStepBenchmarks"/>.
/// </summary>
public static class Program
{
    /// <summary>--openblas-core as-set: keep the core OPENBLAS_CORETYPE forces, even a weaker one than the CPU supports.</summary>
    public const string CoreAsSet = "as-set";

    /// <summary>Every suite's reports: GitHub Markdown for reading, CSV and JSON for tools (the default configuration exports the first two and HTML already).</summary>
    public static IConfig Config { get; } = DefaultConfig.Instance.AddExporter(JsonExporter.Full);

    public static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "gemm") return QuickGemm(args);
        return RunSuites(args);
    }

    /// <summary>
    /// The honest-baseline rule of `sdp bench gemm`: OpenBLAS reads OPENBLAS_CORETYPE once, when it loads, and a forced
    /// core weaker than the CPU supports would flatter Sdp. BenchmarkDotNet runs each benchmark in a child process that
    /// inherits this process's environment, and nothing here has loaded OpenBLAS yet, so the variable is set to the
    /// CPU's best core (and OPENBLAS_L2_SIZE, tuned for the forced core, removed) before any suite runs, with a warning;
    /// `--openblas-core as-set` keeps the forced core.
    /// </summary>
    private static int RunSuites(string[] args)
    {
        int at = Array.IndexOf(args, "--openblas-core");
        bool asSet = at >= 0 && at + 1 < args.Length && args[at + 1] == CoreAsSet;
        if (at >= 0)
        {
            if (at + 1 >= args.Length || (args[at + 1] != CoreAsSet && args[at + 1] != "best"))
            {
                Console.Error.WriteLine($"--openblas-core: expected best or {CoreAsSet}");
                return 2;
            }
            args = [.. args[..at], .. args[(at + 2)..]];
        }
        var check = OpenBlasCoreCheck.Current();
        if (check.ForcesWeaker)
        {
            Console.WriteLine($"warning: {check.Describe()}; a baseline on that core would flatter Sdp.");
            if (asSet)
            {
                Console.WriteLine($"         measuring against {check.Forced} as asked (--openblas-core {CoreAsSet})");
            }
            else
            {
                Console.WriteLine($"         the benchmarks run with {OpenBlasCoreCheck.CoreTypeVariable}={check.BestCore} and {OpenBlasCoreCheck.L2SizeVariable} unset (--openblas-core {CoreAsSet} keeps {check.Forced})");
                Environment.SetEnvironmentVariable(OpenBlasCoreCheck.CoreTypeVariable, check.BestCore);
                Environment.SetEnvironmentVariable(OpenBlasCoreCheck.L2SizeVariable, null);
            }
        }
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args, Config);
        return 0;
    }

    private static int QuickGemm(string[] args)
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

    private static int[] ParseList(string s) => [.. s.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(x => int.Parse(x, CultureInfo.InvariantCulture))];
}
