using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Reflection;

namespace Sdp.Cli.Commands;

/// <summary>
/// `sdp launch --nproc W [--hostfile F] -- train ...`: the torchrun-style convenience over Open MPI's mpirun. It
/// prints the mpirun command it runs, then runs it: W ranks of this same sdp, each given <c>--launcher mpi</c>, so
/// each runs one worker. It adds only what the job needs and says why:
/// <list type="bullet">
/// <item><c>--oversubscribe</c> on one node with more ranks than cores (a laptop or a 2-core CI machine);</item>
/// <item><c>--allow-run-as-root</c> only when running as root (containers), as Open MPI otherwise refuses;</item>
/// <item><c>--mca btl_vader_single_copy_mechanism none</c>: shared-memory transfers through a bounce buffer instead of
/// cross-memory attach, which needs ptrace rights that containers usually withhold (one more copy per message).</item>
/// </list>
/// mpirun's exit code is the command's.
/// </summary>
public static class LaunchCommand
{
    public static Command Create()
    {
        var nproc = new Option<int>("--nproc") { Description = "Processes (workers) to start: mpirun -np", Required = true };
        var hostfile = new Option<string?>("--hostfile") { Description = "Open MPI hostfile for a job over several nodes (one line per node: 'host slots=N'); checkpoints then need a shared file system" };
        var mpirun = new Option<string>("--mpirun") { Description = "The mpirun to use", DefaultValueFactory = _ => "mpirun" };
        var dryRun = new Option<bool>("--dry-run") { Description = "Print the mpirun command without running it" };
        var command = new Argument<string[]>("command") { Description = "After --: the sdp command every rank runs (train ...)", Arity = ArgumentArity.OneOrMore };
        var cmd = new Command("launch", "Run an sdp command as an MPI job of --nproc processes, one worker each (prints the mpirun command it runs)")
        {
            nproc, hostfile, mpirun, dryRun, command,
        };
        cmd.SetAction(p =>
        {
            int n = Check.Positive(p.GetValue(nproc), "--nproc");
            string? hosts = p.GetValue(hostfile);
            if (hosts is not null && !File.Exists(hosts)) throw new UsageException($"--hostfile: '{hosts}' does not exist");
            var args = MpirunArguments(n, hosts, p.GetValue(command)!, Environment.ProcessorCount, IsRoot(), SdpExecutable());
            string launcher = p.GetValue(mpirun)!;
            Console.WriteLine($"sdp launch: {launcher} {string.Join(' ', args.Select(Quote))}");
            Console.Out.Flush();
            return p.GetValue(dryRun) ? 0 : Run(launcher, args);
        });
        return cmd;
    }

    /// <summary>
    /// mpirun's arguments for <paramref name="nproc"/> ranks of <paramref name="sdp"/> (the executable and any
    /// leading arguments, such as dotnet's assembly path) running <paramref name="command"/> with --launcher mpi.
    /// </summary>
    public static IReadOnlyList<string> MpirunArguments(int nproc, string? hostfile, IReadOnlyList<string> command, int cores, bool root, IReadOnlyList<string> sdp)
    {
        if (command.Count == 0 || command[0] != "train")
            throw new UsageException($"launch: expected `-- train ...` after the options, got {(command.Count == 0 ? "nothing" : $"'{command[0]}'")}; only `sdp train` runs as a multi-process job");
        var workers = command.Select((a, i) => (a, i)).FirstOrDefault(t => t.a == "--workers" || t.a.StartsWith("--workers=", StringComparison.Ordinal));
        if (workers.a is not null)
        {
            string value = workers.a.Contains('=') ? workers.a[(workers.a.IndexOf('=') + 1)..] : workers.i + 1 < command.Count ? command[workers.i + 1] : "";
            if (value != nproc.ToString(CultureInfo.InvariantCulture))
                throw new UsageException($"launch: train --workers {value} disagrees with --nproc {nproc}; leave --workers out (the job's size is the worker count)");
        }
        var launcher = command.Select((a, i) => (a, i)).FirstOrDefault(t => t.a == "--launcher" || t.a.StartsWith("--launcher=", StringComparison.Ordinal));
        if (launcher.a is not null)
            throw new UsageException("launch: leave --launcher out of the train command; the launcher adds --launcher mpi");

        var args = new List<string> { "-np", nproc.ToString(CultureInfo.InvariantCulture) };
        if (hostfile is not null) args.AddRange(["--hostfile", hostfile]);
        else if (nproc > cores) args.Add("--oversubscribe");
        if (root) args.Add("--allow-run-as-root");
        args.AddRange(["--mca", "btl_vader_single_copy_mechanism", "none"]);
        args.AddRange(sdp);
        args.Add("train");
        args.AddRange(["--launcher", "mpi"]);
        args.AddRange(command.Skip(1));
        return args;
    }

    /// <summary>This sdp: the apphost, or dotnet and the assembly when run as `dotnet sdp.dll`.</summary>
    private static IReadOnlyList<string> SdpExecutable()
    {
        string process = Environment.ProcessPath ?? throw new InvalidOperationException("sdp launch: cannot tell which executable this process is");
        return Path.GetFileNameWithoutExtension(process) == "dotnet" ? [process, Assembly.GetEntryAssembly()!.Location] : [process];
    }

    private static int Run(string mpirun, IReadOnlyList<string> args)
    {
        var psi = new ProcessStartInfo(mpirun) { UseShellExecute = false };
        foreach (string a in args) psi.ArgumentList.Add(a);
        Process process;
        try
        {
            process = Process.Start(psi)!;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new UsageException($"launch: cannot run '{mpirun}': {e.Message} (install Open MPI: apt-get install openmpi-bin libopenmpi-dev, or pass --mpirun PATH)");
        }
        using (process)
        {
            process.WaitForExit();
            return process.ExitCode;
        }
    }

    private static bool IsRoot() => Environment.UserName == "root" || (OperatingSystem.IsLinux() && File.ReadAllLines("/proc/self/status").Any(l => l.StartsWith("Uid:\t0\t", StringComparison.Ordinal)));

    private static string Quote(string a) => a.Length > 0 && a.All(c => char.IsLetterOrDigit(c) || "-_./:=,@%+".Contains(c)) ? a : $"'{a.Replace("'", "'\\''")}'";
}
