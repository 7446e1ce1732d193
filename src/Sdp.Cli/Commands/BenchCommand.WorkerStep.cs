using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Sdp.Engine;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;

namespace Sdp.Cli.Commands;

/// <summary>
/// `sdp bench step`: one worker's training step (forward, backward, AdamW update) timed alone, for DP and for every
/// SDP variant (neuron/block level × forward/backward masking) at several coverages, on LLaMA `tiny` or ResNet-18.
/// Workers of an in-process run are threads sharing the cores, so their step times say little about one worker's
/// work; here worker 0 of a W-worker plan runs by itself on all the threads, without the gradient sync (which is a
/// memory copy in one process). Each row gives the worker's share of the parameters (its held fraction d) beside
/// its time as a fraction of DP's: forward masking should approach d, backward masking keeps the dense forward.
/// </summary>
public static partial class BenchCommand
{
    private static Command WorkerStepCommand()
    {
        var model = new Option<string>("--model") { Description = "llama (tiny) or resnet18", DefaultValueFactory = _ => "llama" };
        model.AcceptOnlyFromAmong(RunSetup.Models);
        var config = new Option<string?>("--config") { Description = "Model config (default: tiny for llama, {\"width\":16} for resnet18)" };
        var workers = new Option<int>("--workers") { Description = "Workers W of the plan whose worker 0 is timed", DefaultValueFactory = _ => 4 };
        var coverages = new Option<double[]>("--coverages") { Description = "Coverages C (C·W whole)", AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => [0.75, 0.5, 0.25] };
        var batch = new Option<int>("--batch") { Description = "Per-worker batch", DefaultValueFactory = _ => 8 };
        var seq = new Option<int>("--seq") { Description = "Tokens per sequence (llama)", DefaultValueFactory = _ => 64 };
        var samples = new Option<int>("--samples") { Description = "Timed steps per row (median kept), after 2 warm-up steps", DefaultValueFactory = _ => 5 };
        var cmd = new Command("step", "One worker's training step timed alone: DP against N-SDP and B-SDP, forward and backward masking, at several coverages")
        {
            model, config, workers, coverages, batch, seq, samples,
        };
        cmd.SetAction(p =>
        {
            string m = p.GetValue(model)!;
            int w = Check.Positive(p.GetValue(workers), "--workers");
            var cs = p.GetValue(coverages)!;
            if (cs.Length == 0) throw new UsageException("--coverages: give at least one coverage");
            foreach (double c in cs) Check.Coverage(w, c);
            WorkerSteps(Console.Out, m, p.GetValue(config) ?? (m == "llama" ? "tiny" : "{\"width\":16}"), w, cs, Check.Positive(p.GetValue(batch), "--batch"),
                Check.Positive(p.GetValue(seq), "--seq"), Check.Positive(p.GetValue(samples), "--samples"));
            return 0;
        });
        return cmd;
    }

    private static void WorkerSteps(TextWriter output, string model, string config, int workers, double[] coverages, int batch, int seq, int samples)
    {
        var inv = CultureInfo.InvariantCulture;
        var (data, _, description) = RunSetup.BuildData(model, "synthetic", batch, seq, shuffle: false, seed: 0, train: true);
        output.WriteLine($"{model} ({config}) on {description}; batch {batch}{(model == "llama" ? $" x {seq} tokens" : "")}, AdamW; worker 0 of W = {workers} timed alone on {Sdp.Kernels.Cpu.Gemm.MaxThreads} thread(s), median of {samples} steps after 2 warm-up");
        output.WriteLine($"{"variant",-22}{"C",6}{"held d",9}{"ms",10}{"time / DP",12}");
        double dp = double.NaN;
        foreach (var (level, masking, coverage) in Variants(coverages))
        {
            var subnetwork = RunSetup.BuildSubnetworkModel(model, config, 0, 3, 10, level ?? SubnetLevel.Block, new SubnetOptions(), null, "--config");
            double held = 1;
            WorkerLayout? layout = null;
            if (level is not null)
            {
                var plan = SubnetworkPlan.Create(subnetwork.Units, workers, coverage, 0);
                layout = new WorkerLayout(subnetwork.Units, plan, 0);
                held = plan.HeldParams(0) / (double)plan.TotalParams;
            }
            double ms = TimeWorkerStep(subnetwork, layout, masking, data, samples);
            if (level is null) dp = ms;
            string name = level is null ? "dp" : $"{SubnetworkPlan.LevelName(level.Value)}, {(masking == Masking.Forward ? "forward" : "backward")}";
            output.WriteLine(string.Create(inv, $"{name,-22}{coverage,6:0.##}{held,9:P1}{ms,10:F1}{ms / dp,12:P1}"));
        }
    }

    private static IEnumerable<(SubnetLevel? Level, Masking Masking, double Coverage)> Variants(double[] coverages)
    {
        yield return (null, Masking.Forward, 1);
        foreach (var level in new[] { SubnetLevel.Neuron, SubnetLevel.Block })
            foreach (var masking in new[] { Masking.Forward, Masking.Backward })
                foreach (double c in coverages)
                    yield return (level, masking, c);
    }

    /// <summary>Median ms of worker 0's step: its subnetwork (forward masking) or the dense model training its held slices (backward), or the dense model (DP, no layout).</summary>
    private static double TimeWorkerStep(SubnetworkModel subnetwork, WorkerLayout? layout, Masking masking, IBatchSource data, int samples)
    {
        var account = new MemoryAccount("bench worker");
        using var active = account.Activate();
        bool forward = layout is not null && masking == Masking.Forward;
        ITrainable model;
        using (MemoryAccount.Use(MemoryCategory.Parameters)) model = subnetwork.Build(forward ? layout!.HeldUnits : null);
        using var owned = model;
        IReadOnlyList<Tensor> trained = layout is not null && !forward
            ? SubnetworkTensors.ApplyBackwardMasking(model.Module, layout)
            : [.. model.Module.Parameters().Where(t => t.RequiresGrad)];
        using var optimizer = new AdamW(trained, 1e-4);
        var ms = new double[samples];
        for (int s = -2; s < samples; s++)
        {
            var clock = Stopwatch.StartNew();
            using (TensorScope.Begin())
            {
                var (inputs, targets) = data.NextBatch();
                var loss = model.Loss(inputs, targets);
                loss.Item();
                loss.Backward();
            }
            optimizer.Step();
            optimizer.ZeroGrad();
            if (s >= 0) ms[s] = clock.Elapsed.TotalMilliseconds;
        }
        Array.Sort(ms);
        return ms[samples / 2];
    }
}
