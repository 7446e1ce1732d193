using System.CommandLine;
using Sdp.Cli.Commands;
using Sdp.Engine;
using Sdp.Engine.Backends.Cpu;

namespace Sdp.Cli;

/// <summary>The `sdp` command tree, callable in-process (tests and embedding programs use <see cref="Run"/>).</summary>
public static class SdpCli
{
    public static int Run(string[] args)
    {
        // The composition root: the CPU is the device of every command unless a command opens another
        // (`sdp train --device`); nothing below the CLI assumes one.
        DeviceScope.SetProcessDefault(CpuBackend.Instance);
        var verbose = new Option<bool>("--verbose") { Description = "Print stack traces for errors", Recursive = true };
        var root = new RootCommand("Sdp: Subnetwork Data Parallelism training engine")
        {
            TrainCommand.Create(),
            EvalCommand.Create(),
            TokenizeCommand.Create(),
            BenchCommand.Create(),
            DoctorCommand.Create(),
            PlanCommand.Create(),
            MemoryCommand.Create(),
            PlotCommand.Create(),
            ExperimentCommand.Create(),
            LaunchCommand.Create(),
            CommCheckCommand.Create(),
        };
        root.Options.Add(verbose);
        return CliRunner.Run(root, verbose, args);
    }
}
