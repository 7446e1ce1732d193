using Sdp.Kernels.Cpu;
using Sdp.Measure;

namespace Sdp.Bench;

/// <summary>
/// What each suite's baseline is and where it runs, printed by every suite's GlobalSetup (in the process that runs
/// the benchmark, so it says what that process loaded) and shown in every report's Baseline column.
/// </summary>
public static class BaselineReport
{
    /// <summary>"OpenBLAS 0.3.21 (core Haswell), 2 threads": the loaded build's version and the core it runs (and the threads, when given).</summary>
    public static string OpenBlasBaseline(int? threads = null)
    {
        if (!OpenBlas.IsAvailable) return "OpenBLAS not found";
        string described = $"OpenBLAS {OpenBlas.Config.Version ?? "?"} (core {OpenBlas.CoreName})";
        return threads is { } t ? $"{described}, {Threads(t)}" : described;
    }

    private static string Threads(int t) => $"{t} thread{(t == 1 ? "" : "s")}";

    /// <summary>"Sdp dense SGEMM (kernel), 2 threads": the suites whose baseline is our own dense GEMM of the full shape.</summary>
    public static string SdpDenseBaseline(int threads) => $"Sdp dense SGEMM ({Gemm.KernelName}), {Threads(threads)}";

    /// <summary>Prints the suite's baseline, the machine and, where the baseline is OpenBLAS, what OPENBLAS_CORETYPE does to it.</summary>
    public static void Print(string suite, string baseline, bool openBlas = false)
    {
        Console.WriteLine($"// {suite}: baseline {baseline}");
        Console.WriteLine($"// machine  {MachineInfo.Describe()}");
        if (!openBlas) return;
        Console.WriteLine($"// OpenBLAS {(OpenBlas.IsAvailable ? OpenBlas.Describe() : "not found")}");
        var check = OpenBlasCoreCheck.Current();
        Console.WriteLine($"// OpenBLAS {check.Describe()}");
        if (check.ForcesWeaker) Console.WriteLine($"// WARNING: the OpenBLAS baseline runs a weaker core than this CPU supports (--openblas-core {Program.CoreAsSet}); its ratios flatter Sdp");
    }
}
