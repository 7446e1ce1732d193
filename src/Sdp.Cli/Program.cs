using System.CommandLine;
using Sdp.Cli;
using Sdp.Cli.Commands;

// sdp: the Sdp command line. Every command reports bad input as one line on stderr and exit code 2;
// --verbose adds the stack trace.
var verbose = new Option<bool>("--verbose") { Description = "Print stack traces for errors", Recursive = true };
var root = new RootCommand("Sdp: Subnetwork Data Parallelism training engine")
{
    TrainCommand.Create(),
    BenchCommand.Create(),
    DoctorCommand.Create(),
};
root.Options.Add(verbose);
return CliRunner.Run(root, verbose, args);
