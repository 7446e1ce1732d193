using System.CommandLine;
using System.Globalization;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;

namespace Sdp.Cli.Commands;

/// <summary>
/// `sdp bench step`: one worker's training step (forward, backward, AdamW update) timed alone
/// (<see cref="IsolatedWorkerStep"/>), for DP and for every SDP variant (neuron/block level × forward/backward
/// masking) at several coverages, on LLaMA `tiny` or ResNet-18. Each row gives the worker's share of the parameters
/// (its held fraction d) beside its time as a fraction of DP's: forward masking should approach d, backward masking
/// keeps the dense forward.
/// </summary>
public static partial class BenchCommand
{
    private static Command WorkerStepCommand()
    {
        var run = new StepRunOptions(defaultModel: "llama", resnetConfig: "{\"width\":16}", defaultBatch: 8, defaultSeq: 64);
        var workers = new Option<int>("--workers") { Description = "Workers W of the plan whose worker 0 is timed", DefaultValueFactory = _ => 4 };
        var coverages = new Option<double[]>("--coverages") { Description = "Coverages C (C·W whole)", AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => [0.75, 0.5, 0.25] };
        var samples = new Option<int>("--samples") { Description = "Timed steps per row (median kept), after 2 warm-up steps", DefaultValueFactory = _ => 5 };
        var cmd = new Command("step", "One worker's training step timed alone: DP against N-SDP and B-SDP, forward and backward masking, at several coverages")
        {
            run.Model, run.Config, run.Batch, run.Seq, workers, coverages, samples,
        };
        cmd.SetAction(p =>
        {
            var (m, modelConfig, batch, seq) = run.Read(p);
            int w = Check.Positive(p.GetValue(workers), "--workers");
            var cs = p.GetValue(coverages)!;
            if (cs.Length == 0) throw new UsageException("--coverages: give at least one coverage");
            foreach (double c in cs) Check.Coverage(w, c);
            WorkerSteps(Console.Out, m, modelConfig, w, cs, batch, seq, Check.Positive(p.GetValue(samples), "--samples"));
            return 0;
        });
        return cmd;
    }

    /// <summary>The --model, --config, --batch and --seq options of the one-worker step benchmarks, with each command's defaults.</summary>
    private sealed class StepRunOptions(string defaultModel, string resnetConfig, int defaultBatch, int defaultSeq)
    {
        public Option<string> Model { get; } = ModelOption(defaultModel);

        public Option<string?> Config { get; } = new("--config") { Description = $"Model config (default: tiny for llama, {resnetConfig} for resnet18)" };

        public Option<int> Batch { get; } = new("--batch") { Description = "Per-worker batch", DefaultValueFactory = _ => defaultBatch };

        public Option<int> Seq { get; } = new("--seq") { Description = "Tokens per sequence (llama)", DefaultValueFactory = _ => defaultSeq };

        private static Option<string> ModelOption(string defaultModel)
        {
            var model = new Option<string>("--model") { Description = "llama (tiny) or resnet18", DefaultValueFactory = _ => defaultModel };
            model.AcceptOnlyFromAmong(RunSetup.Models);
            return model;
        }

        public (string Model, string Config, int Batch, int Seq) Read(ParseResult p)
        {
            string model = p.GetValue(Model)!;
            return (model, p.GetValue(Config) ?? (model == "llama" ? "tiny" : resnetConfig),
                Check.Positive(p.GetValue(Batch), "--batch"), Check.Positive(p.GetValue(Seq), "--seq"));
        }
    }

    /// <summary>The middle element of a copy of <paramref name="xs"/> sorted (the upper middle for an even count).</summary>
    private static double Median(double[] xs)
    {
        var sorted = (double[])xs.Clone();
        Array.Sort(sorted);
        return sorted[sorted.Length / 2];
    }

    private static void WorkerSteps(TextWriter output, string model, string config, int workers, double[] coverages, int batch, int seq, int samples)
    {
        var inv = CultureInfo.InvariantCulture;
        var (data, _, description) = RunSetup.BuildData(model, "synthetic", batch, seq, shuffle: false, seed: 0, train: true);
        output.WriteLine($"{model} ({config}) on {description}; batch {batch}{(model == "llama" ? $" x {seq} tokens" : "")}, AdamW; worker 0 of W = {workers} timed alone on {Sdp.Kernels.Cpu.Gemm.MaxThreads} thread(s), median of {samples} steps after 3 warm-up, the variants' steps taken in turn");
        output.WriteLine("time / DP = the two medians' ratio; paired = the median (min-max) of each round's ratio to that round's DP step, which a passing load hits alike");
        output.WriteLine($"{"variant",-22}{"C",6}{"held d",9}{"ms",10}{"time / DP",12}{"paired",24}");
        // Every variant is built first and their steps are timed in turn (variant 1, 2, ..., 1, 2, ...), so that JIT tiering
        // and other processes' load fall on all of them alike instead of on whichever ran first or last.
        var variants = StepVariant.All(coverages).ToList();
        var steps = new List<IsolatedWorkerStep>();
        try
        {
            foreach (var variant in variants)
            {
                var subnetwork = RunSetup.BuildSubnetworkModel(model, config, 0, 3, 10, variant.Level ?? SubnetLevel.Block, new SubnetOptions(), null, "--config");
                steps.Add(IsolatedWorkerStep.Create(subnetwork, variant, workers, data));
            }
            for (int s = 0; s < 3; s++)
                foreach (var step in steps) step.Run();
            var ms = steps.Select(_ => new double[samples]).ToArray();
            for (int s = 0; s < samples; s++)
            {
                for (int v = 0; v < steps.Count; v++)
                {
                    long start = System.Diagnostics.Stopwatch.GetTimestamp();
                    steps[v].Run();
                    ms[v][s] = System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                }
            }
            int dpIndex = variants.FindIndex(v => v.IsDp);
            double dp = Median(ms[dpIndex]);
            for (int v = 0; v < steps.Count; v++)
            {
                var paired = ms[v].Select((t, round) => t / ms[dpIndex][round]).ToArray();
                double median = Median(ms[v]), pairedMedian = Median(paired);
                string pairedText = string.Create(inv, $"{pairedMedian:P1} ({paired.Min():P0}-{paired.Max():P0})");
                output.WriteLine(string.Create(inv, $"{variants[v].Name,-22}{variants[v].Coverage,6:0.##}{steps[v].HeldFraction,9:P1}{median,10:F1}{median / dp,12:P1}{pairedText,24}"));
            }
        }
        finally
        {
            foreach (var step in steps) step.Dispose();
        }
    }
}
