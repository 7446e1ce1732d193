using System.CommandLine;
using System.Globalization;

namespace Sdp.Cli.Commands;

/// <summary>`sdp experiment`: the paper's claims reproduced at CPU scale, each by one command.</summary>
public static partial class ExperimentCommand
{
    public static Command Create() => new("experiment", "Experiments that check the paper's claims at CPU scale, each reproduced by one command") { QualityCommand() };

    private static Command QualityCommand()
    {
        var output = new Option<string>("--out") { Description = $"Directory to write {QualityMarkdown}, its PNGs and CSVs, and the runs' metrics ({RunsFolder}/) into", Required = true };
        var data = new Option<string>("--data") { Description = "ResNet-18's images: 'synthetic' (the shapes set) or a CIFAR-10 or MNIST directory", DefaultValueFactory = _ => "synthetic" };
        var models = new Option<string[]>("--models") { Description = "Models to run: llama (tiny, synthetic Markov source) and/or resnet18 (width 16)", AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => [.. RunSetup.Models] };
        models.AcceptOnlyFromAmong(RunSetup.Models);
        var seeds = new Option<int>("--seeds") { Description = "Seeds per run (0, 1, ...)", DefaultValueFactory = _ => 2 };
        var steps = new Option<int?>("--steps") { Description = "DP steps of every model (default: llama 64, resnet18 60; flop-matched SDP runs steps ÷ C)" };
        var quick = new Option<bool>("--quick") { Description = "Tiny models, a few steps, one seed, sampled evaluations: checks the pipeline in seconds; the numbers mean nothing" };
        var cmd = new Command("quality", "DP against N-SDP and B-SDP (forward and backward masking, C = 0.5, W = 4), same-steps and flop-matched, on LLaMA tiny and ResNet-18: " +
                                         $"loss and accuracy curves, gradient alignment with DP, and {QualityMarkdown} with the method reference's A21–A23 as observed")
        {
            output, data, models, seeds, steps, quick,
        };
        cmd.SetAction(p =>
        {
            string dir = p.GetValue(output)!;
            if (File.Exists(dir)) throw new UsageException($"--out: '{dir}' is a file; give a directory");
            string d = p.GetValue(data)!;
            if (d != "synthetic" && !Directory.Exists(d)) throw new UsageException($"--data: '{d}' is not 'synthetic' nor a directory of CIFAR-10 or MNIST files");
            var chosen = p.GetValue(models)!;
            if (chosen.Length == 0) throw new UsageException("--models: name at least one of " + string.Join(", ", RunSetup.Models));
            int seedCount = Check.Positive(p.GetValue(seeds), "--seeds");
            int? dpSteps = p.GetValue(steps) is { } s ? Check.Positive(s, "--steps") : null;
            var settings = QualitySettings.For(p.GetValue(quick), d, [.. RunSetup.Models.Where(chosen.Contains)], seedCount, dpSteps);
            Directory.CreateDirectory(dir);
            return Quality(dir, settings, CommandLine(p.Tokens.Select(t => t.Value)), Console.Out);
        });
        return cmd;
    }

    /// <summary>The command as typed (the parsed tokens: `sdp experiment quality ...`), quoted where a token has spaces, for the report's first line.</summary>
    private static string CommandLine(IEnumerable<string> tokens)
        => "sdp " + string.Join(' ', tokens.Select(t => t.Contains(' ', StringComparison.Ordinal) ? $"'{t}'" : t));

    private static string Invariant(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
