using System.Diagnostics;
using Sdp.Measure;

namespace Sdp.Cli.Commands;

/// <summary>
/// The OpenBLAS baseline on the CPU's best core when OPENBLAS_CORETYPE forces a weaker one. OpenBLAS reads the
/// variable once, when the library loads, so the running process cannot change its core: the same `sdp bench gemm`
/// runs again in a child process whose environment names the best core, and its lines are relayed.
/// </summary>
public static partial class BenchCommand
{
    /// <summary>--openblas-core: measure against the best core of this CPU (default) or the core the environment forces.</summary>
    public const string CoreBest = "best";

    public const string CoreAsSet = "as-set";

    /// <summary>
    /// Runs `sdp <paramref name="args"/>` in a child process with OPENBLAS_CORETYPE set to <paramref name="core"/> and
    /// OPENBLAS_L2_SIZE removed (a cache size set for the forced core would mis-tune the best one's blocking), copying
    /// its standard output to <paramref name="output"/> and its standard error to <paramref name="error"/>, line by line
    /// as they come. Returns the child's exit code.
    /// </summary>
    public static int RunWithOpenBlasCore(string core, IReadOnlyList<string> args, TextWriter output, TextWriter error)
    {
        var (fileName, prefix) = SdpExecutable();
        var start = new ProcessStartInfo(fileName)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string a in prefix.Concat(args)) start.ArgumentList.Add(a);
        start.Environment[OpenBlasCoreCheck.CoreTypeVariable] = core;
        start.Environment.Remove(OpenBlasCoreCheck.L2SizeVariable);
        using var child = Process.Start(start) ?? throw new InvalidOperationException($"could not start {fileName}");
        // Both pipes are drained at once: a child blocked on a full stderr pipe would never finish its stdout.
        var errors = Task.Run(() =>
        {
            while (child.StandardError.ReadLine() is { } line) error.WriteLine(line);
        });
        while (child.StandardOutput.ReadLine() is { } line) output.WriteLine(line);
        errors.Wait();
        child.WaitForExit();
        return child.ExitCode;
    }

    /// <summary>
    /// How to start this same sdp: its native launcher beside sdp.dll when there is one (an installed tool, a build
    /// folder, a test folder), else the dotnet host running sdp.dll (the process itself may be a test host).
    /// </summary>
    private static (string FileName, string[] Prefix) SdpExecutable()
    {
        string dll = typeof(SdpCli).Assembly.Location;
        string launcher = Path.Combine(Path.GetDirectoryName(dll)!, OperatingSystem.IsWindows() ? "sdp.exe" : "sdp");
        if (File.Exists(launcher)) return (launcher, []);
        string? host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (string.IsNullOrEmpty(host))
            host = Environment.ProcessPath is { } p && Path.GetFileNameWithoutExtension(p) == "dotnet" ? p : "dotnet";
        return (host, [dll]);
    }
}
