using System.Diagnostics;
using System.Globalization;

namespace Sdp.Tests.Support;

/// <summary>Runs the sdp CLI next to the tests as an MPI job (<c>mpirun -np W sdp …</c>), for the multi-process tests.</summary>
public static class MpiJob
{
    /// <summary>How a job ended: exit code, its merged ranks' output, and how long it took.</summary>
    public sealed record Result(int ExitCode, string Out, string Err, TimeSpan Elapsed)
    {
        public override string ToString() => $"exit {ExitCode} after {Elapsed.TotalSeconds:F1} s\n--- stdout\n{Out}--- stderr\n{Err}";
    }

    /// <summary>mpirun on the PATH, or null (tests that need it call Assert.Ignore then).</summary>
    public static string? FindMpirun() =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, "mpirun")).FirstOrDefault(File.Exists);

    /// <summary>The sdp CLI built next to the tests.</summary>
    public static string Sdp
    {
        get
        {
            string sdp = Path.Combine(AppContext.BaseDirectory, "sdp");
            Assert.That(File.Exists(sdp), Is.True, $"the sdp CLI is not next to the tests ({sdp})");
            return sdp;
        }
    }

    /// <summary>
    /// mpirun -np <paramref name="np"/> sdp args…, killed (and the test failed) after <paramref name="timeout"/>.
    /// </summary>
    public static Result Run(int np, TimeSpan timeout, params string[] args) => RunProcess(FindMpirun()!, Arguments(np, args), timeout);

    /// <summary>
    /// mpirun's arguments for <c>-np <paramref name="np"/> sdp args…</c>, exporting <paramref name="exports"/> (NAME=VALUE,
    /// with -x) to every rank. --oversubscribe: more ranks than the CI machine's 2 cores. --allow-run-as-root only
    /// when running as root (CI does). Shared memory (vader) without its single-copy mechanism, which needs ptrace
    /// rights that containers often withhold; no TCP, so no network interfaces are probed.
    /// </summary>
    public static string[] Arguments(int np, IEnumerable<string> args, params string[] exports)
        => ["-np", np.ToString(CultureInfo.InvariantCulture), "--oversubscribe", .. IsRoot() ? ["--allow-run-as-root"] : Array.Empty<string>(),
            "--mca", "btl", "self,vader", "--mca", "btl_vader_single_copy_mechanism", "none", .. exports.SelectMany(e => (string[])["-x", e]), Sdp, .. args];

    /// <summary>Runs <paramref name="file"/> with <paramref name="args"/> (and <paramref name="environment"/> set), killing its whole process tree (and failing the test) after <paramref name="timeout"/>.</summary>
    public static Result RunProcess(string file, IEnumerable<string> args, TimeSpan timeout, params (string Name, string Value)[] environment)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (string a in args) psi.ArgumentList.Add(a);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        foreach (var (name, value) in environment) psi.Environment[name] = value;

        var clock = Stopwatch.StartNew();
        using var process = Process.Start(psi)!;
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            Assert.Fail($"{Path.GetFileName(file)} {string.Join(' ', args)} did not finish within {timeout.TotalSeconds} s and was killed\n--- stdout\n{stdout.Result}--- stderr\n{stderr.Result}");
        }
        process.WaitForExit();
        return new Result(process.ExitCode, stdout.Result, stderr.Result, clock.Elapsed);
    }

    public static bool IsRoot()
    {
        try
        {
            return File.ReadAllLines("/proc/self/status").Any(l => l.StartsWith("Uid:", StringComparison.Ordinal) && l.Split('\t', StringSplitOptions.RemoveEmptyEntries)[1] == "0");
        }
        catch (IOException)
        {
            return false;
        }
    }
}

/// <summary>
/// A fixture of tests that run MPI jobs: each test gets a fresh scratch directory (<see cref="Dir"/>), removed
/// afterwards, and is ignored, saying why, on a machine without mpirun.
/// </summary>
public abstract class MpiJobFixture
{
    /// <summary>This test's scratch directory.</summary>
    protected string Dir { get; private set; } = "";

    [SetUp]
    public void MakeScratchDirectory()
    {
        if (MpiJob.FindMpirun() is null) Assert.Ignore("mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev; CI installs it)");
        Dir = Path.Combine(Path.GetTempPath(), $"sdp-{GetType().Name}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Dir);
    }

    [TearDown]
    public void RemoveScratchDirectory()
    {
        try
        {
            if (Dir != "") Directory.Delete(Dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
