using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Checkpoints;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;

namespace Sdp.Cli.Commands;

/// <summary>`sdp train --workers W --mode dp|sdp ...`: W simulated workers in this process (method reference §2.5).</summary>
public static partial class TrainCommand
{
    /// <summary>The distributed options of `sdp train`.</summary>
    public sealed record DistributedOptions(
        int Workers, ParallelMode Mode, SubnetLevel Level, Masking Masking, double Coverage, ScheduleMatch ScheduleMatch,
        SubnetOptions Subnet, ulong PlanSeed, int BucketMb, int BnRecalibrate)
    {
        /// <summary>Plain single-worker training, which takes the ordinary trainer (with resume and full-state saves).</summary>
        public bool IsSingleWorkerDp => Workers == 1 && Mode == ParallelMode.Dp;

        /// <summary>Total and warm-up steps after --schedule-match (DP runs at coverage 1, so they are unchanged).</summary>
        public (long Steps, int Warmup) Matched(int steps, int warmup)
            => (SdpOptions.MatchedSteps(steps, Coverage, ScheduleMatch), (int)SdpOptions.MatchedSteps(warmup, Coverage, ScheduleMatch));
    }

    /// <summary>The command-line options behind <see cref="DistributedOptions"/>.</summary>
    private sealed class DistributedArguments
    {
        private readonly Option<int> _workers = new("--workers") { Description = "Simulated data-parallel workers W (threads of this process); --batch is per worker", DefaultValueFactory = _ => 1 };
        private readonly Option<string> _mode = new("--mode") { Description = "dp (standard data parallelism) or sdp (subnetwork data parallelism)", DefaultValueFactory = _ => "dp" };
        private readonly Option<string> _subnet = new("--subnet") { Description = "sdp: neuron (MLP units / conv channels) or block (decoder layers / residual blocks)", DefaultValueFactory = _ => "block" };
        private readonly Option<string> _masking = new("--masking") { Description = "sdp: forward (workers run only their subnetwork) or backward (dense forward, held gradients only)", DefaultValueFactory = _ => "forward" };
        private readonly Option<double> _coverage = new("--coverage") { Description = "sdp: coverage C, each unit held by C·W workers", DefaultValueFactory = _ => 0.5 };
        private readonly Option<string> _scheduleMatch = new("--schedule-match") { Description = "sdp: same-steps, or flop-matched (steps ÷ C, learning-rate schedule stretched)", DefaultValueFactory = _ => "same-steps" };
        private readonly Option<string> _neuronScale = new("--neuron-scale") { Description = "sdp forward masking, neuron level: none or inverse-coverage (hidden activations × n/c)", DefaultValueFactory = _ => "none" };
        private readonly Option<bool> _maskHeads = new("--mask-heads") { Description = "sdp neuron level, llama: also mask attention heads (by key/value group)" };
        private readonly Option<bool> _splitSublayers = new("--split-sublayers") { Description = "sdp block level, llama: attention and MLP sub-blocks are separate units" };
        private readonly Option<bool> _keepDownsample = new("--keep-downsample-blocks") { Description = "sdp block level, resnet18: never drop downsampling blocks" };
        private readonly Option<ulong?> _planSeed = new("--plan-seed") { Description = "Seed of the subnetwork plan (default: --seed)" };
        private readonly Option<int> _bucketMb = new("--bucket-mb") { Description = "Cap on one gradient-sync buffer, MiB", DefaultValueFactory = _ => 25 };
        private readonly Option<int> _bnRecalibrate = new("--bn-recalibrate") { Description = "Before evaluation, re-estimate BatchNorm statistics of the dense model on this many training batches (0 = off)", DefaultValueFactory = _ => 0 };

        public static DistributedArguments Create()
        {
            var a = new DistributedArguments();
            a._mode.AcceptOnlyFromAmong("dp", "sdp");
            a._subnet.AcceptOnlyFromAmong("neuron", "block");
            a._masking.AcceptOnlyFromAmong("forward", "backward");
            a._scheduleMatch.AcceptOnlyFromAmong("same-steps", "flop-matched");
            a._neuronScale.AcceptOnlyFromAmong("none", "inverse-coverage");
            return a;
        }

        public void AddTo(Command cmd)
        {
            foreach (var o in new Option[] { _workers, _mode, _subnet, _masking, _coverage, _scheduleMatch, _neuronScale, _maskHeads, _splitSublayers, _keepDownsample, _planSeed, _bucketMb, _bnRecalibrate })
                cmd.Options.Add(o);
        }

        public DistributedOptions Parse(ParseResult p)
        {
            int workers = Check.Positive(p.GetValue(_workers), "--workers");
            var mode = p.GetValue(_mode) == "sdp" ? ParallelMode.Sdp : ParallelMode.Dp;
            double coverage = p.GetValue(_coverage);
            if (mode == ParallelMode.Sdp)
            {
                Check.Coverage(workers, coverage);
            }
            var subnet = new SubnetOptions
            {
                MaskHeads = p.GetValue(_maskHeads),
                SplitSublayers = p.GetValue(_splitSublayers),
                Downsample = p.GetValue(_keepDownsample) ? DownsampleBlocks.AlwaysKeep : DownsampleBlocks.DropBranchKeepShortcut,
                NeuronScale = p.GetValue(_neuronScale) == "inverse-coverage" ? NeuronScale.InverseCoverage : NeuronScale.None,
            };
            ulong planSeed = p.GetValue(_planSeed) ?? p.GetValue<ulong>("--seed");
            return new DistributedOptions(workers, mode, SubnetworkPlan.ParseLevel(p.GetValue(_subnet)!),
                p.GetValue(_masking) == "backward" ? Masking.Backward : Masking.Forward, mode == ParallelMode.Dp ? 1.0 : coverage,
                p.GetValue(_scheduleMatch) == "flop-matched" ? ScheduleMatch.FlopMatched : ScheduleMatch.SameSteps,
                subnet, planSeed, Check.Positive(p.GetValue(_bucketMb), "--bucket-mb"), Check.AtLeast(p.GetValue(_bnRecalibrate), 0, "--bn-recalibrate"));
        }
    }

    private static void ValidateDistributed(Options o, DistributedOptions d)
    {
        if (o.Resume is not null && !File.Exists(Path.Combine(o.Resume, SdpCheckpoint.StateFileName)))
            throw new UsageException($"--resume: '{o.Resume}' has no {SdpCheckpoint.StateFileName}; it was not saved by a multi-worker run (--save DIR with --workers or --mode sdp)");
        var (steps, warmup) = d.Matched(o.Steps, o.Warmup);
        if (o.Schedule == "cosine" && warmup >= steps) throw new UsageException($"--warmup ({o.Warmup}) must be smaller than --steps ({o.Steps}) with --schedule cosine");
    }

    /// <summary>Trains with the <see cref="Trainer"/>: W workers, DP or SDP, reporting per-worker memory and communication.</summary>
    public static int RunDistributed(Options o, TextWriter output, bool plain)
    {
        var d = o.Distributed!;
        var (probe, floor, dataDescription) = RunSetup.BuildData(o.Model, o.Data, o.Batch, o.Seq, o.Shuffle, o.Seed, train: true, 0, d.Workers);
        var (eval, _, _) = RunSetup.BuildData(o.Model, o.EvalData ?? o.Data, o.Batch, o.Seq, shuffle: false, o.Seed, train: false);
        var (channels, classes) = ImageShape(probe);
        string? config = o.Resume is null ? o.Config : RunSetup.ConfigFromCheckpoint(o.Resume);
        var subnetworkModel = RunSetup.BuildSubnetworkModel(o.Model, config, o.Seed, channels, classes, d.Level, d.Subnet, o.InitFrom);
        int? vocab = RunSetup.VocabSize(o.Model, config);
        eval = RunSetup.CheckTokenIds(eval, vocab, o.EvalData is null ? "--data" : "--eval-data", o.EvalData ?? o.Data);
        var (steps, warmup) = d.Matched(o.Steps, o.Warmup);
        ILrSchedule schedule = o.Schedule == "cosine" ? new WarmupCosineSchedule(o.Lr, warmup, steps, o.Lr * 0.1) : new ConstantSchedule(o.Lr);
        var sdp = new SdpOptions
        {
            Workers = d.Workers, Mode = d.Mode, Level = d.Level, Masking = d.Masking, Coverage = d.Coverage, PlanSeed = d.PlanSeed,
            BucketBytes = (long)d.BucketMb << 20, BnRecalibrationBatches = d.BnRecalibrate,
        };
        Optimizer MakeOptimizer(IReadOnlyList<Tensor> parameters) => o.Optimizer == "sgd"
            ? new Sgd(parameters, o.Lr, momentum: o.Momentum, weightDecay: o.WeightDecay)
            : new AdamW(parameters, o.Lr, weightDecay: o.WeightDecay);
        IBatchSource TrainData(int worker)
        {
            var source = worker == 0 ? probe : RunSetup.BuildData(o.Model, o.Data, o.Batch, o.Seq, o.Shuffle, o.Seed, train: true, worker, d.Workers).Source;
            return RunSetup.CheckTokenIds(source, vocab, "--data", o.Data);
        }
        var options = new TrainerOptions { Steps = steps, Schedule = schedule, Clip = o.Clip, EvalEvery = o.EvalEvery, EvalBatches = o.EvalBatches, SavePath = o.Save, SaveEvery = o.SaveEvery };
        Trainer trainer;
        try
        {
            trainer = new Trainer(subnetworkModel, sdp, MakeOptimizer, TrainData, options, eval);
        }
        catch (ArgumentException e)
        {
            // Options are checked one by one before this; what remains is a combination the model cannot
            // be cut into (e.g. a worker left without any unit of a group), which is still the user's input.
            throw new UsageException(CliRunner.MessageOf(e));
        }
        using (trainer)
        {
            if (o.Resume is not null)
            {
                try
                {
                    trainer.Resume(o.Resume);
                }
                catch (ArgumentException e)
                {
                    throw new UsageException($"--resume: {CliRunner.MessageOf(e)}");
                }
                output.WriteLine($"resumed from {o.Resume} at step {trainer.Step}");
            }
            var inv = CultureInfo.InvariantCulture;
            string variant = d.Mode == ParallelMode.Dp ? "dp" : $"sdp, {SubnetworkPlan.LevelName(d.Level)} level, {(d.Masking == Masking.Forward ? "forward" : "backward")} masking, C = {d.Coverage.ToString("0.###", inv)}";
            output.WriteLine($"sdp train: {o.Model} on {dataDescription}");
            output.WriteLine($"  {d.Workers} workers ({variant}), batch {o.Batch} per worker{(o.Model == "llama" ? $" x {o.Seq} tokens" : "")}, {steps} steps{(steps != o.Steps ? $" (flop-matched: {o.Steps} ÷ C)" : "")}, seed {o.Seed}");
            output.WriteLine($"  {o.Optimizer}, lr {o.Lr} {o.Schedule} (warm-up {warmup}), clip {o.Clip}");
            if (trainer.Plan is { } plan)
            {
                output.WriteLine(string.Create(inv, $"  plan: {plan.DistinctHolderGroups} holder sets, {(plan.IsConnected ? "connected" : "DISCONNECTED")}, algebraic connectivity {plan.AlgebraicConnectivity:0.####} (normalised {plan.NormalizedAlgebraicConnectivity:0.####})"));
                for (int w = 0; w < d.Workers; w++)
                    output.WriteLine(string.Create(inv, $"    worker {w}: {plan.HeldParams(w):N0} of {plan.TotalParams:N0} parameters ({100.0 * plan.HeldParams(w) / plan.TotalParams:0.0}%)"));
            }
            var (collectives, bytes) = trainer.GradientSyncCost(0);
            output.WriteLine(string.Create(inv, $"  gradient sync (worker 0): {collectives} collectives, {MemorySnapshot.FormatBytes((long)bytes)} sent per step"));
            if (floor is { } f) output.WriteLine($"  loss floor (entropy rate of the source): {f:F4} nats/token");

            using var metricsFile = o.Metrics is null ? null : new MetricsWriter(new FileInfo(o.Metrics));
            var progress = new TrainProgress(output, plain, steps, trainer.Step);
            long firstStep = trainer.Step;
            var recent = new Queue<double>();
            double items = 0;
            EvalMetrics? lastEval = null;
            StepMetrics? last = null;
            trainer.StepCompleted += m =>
            {
                last = m;
                recent.Enqueue(m.Loss);
                if (recent.Count > 20) recent.Dequeue();
                items += m.ItemsPerSecond * m.StepMs / 1000;
                metricsFile?.Write(DistributedStepRecord(m));
                progress.Report(m);
            };
            trainer.Evaluated += e =>
            {
                lastEval = e;
                metricsFile?.Write(EvalRecord(e));
                progress.Note(e.Accuracy is { } a
                    ? $"eval step {e.Step} (assembled dense model): loss {e.MeanLoss:F4}, accuracy {a:P2} on {e.Count} images"
                    : $"eval step {e.Step} (assembled dense model): loss {e.MeanLoss:F4}, perplexity {e.Perplexity:F3} on {e.Count:N0} tokens");
            };
            trainer.Saved += path => progress.Note($"saved the assembled dense model to {path} at step {trainer.Step}");

            var clock = Stopwatch.StartNew();
            progress.Run(trainer.Run);
            clock.Stop();
            metricsFile?.Commit();

            double trainLoss = recent.Count == 0 ? double.NaN : recent.Average();
            output.WriteLine();
            output.WriteLine("summary");
            output.WriteLine($"  train loss       {trainLoss:F4} (mean over workers, last {recent.Count} steps)");
            if (lastEval is { } le) output.WriteLine($"  eval loss        {le.MeanLoss:F4}" + (le.Accuracy is { } acc ? $", accuracy {acc:P2}" : $", perplexity {le.Perplexity:F3}") + " (assembled dense model)");
            if (floor is { } fl) output.WriteLine($"  entropy floor    {fl:F4}; gap {(lastEval?.MeanLoss ?? trainLoss) - fl:F4} nats/token");
            output.WriteLine($"  throughput       {items / Math.Max(1e-9, clock.Elapsed.TotalSeconds):N0} {trainer.WorkerModel(0).ItemUnit}/s over all workers, {trainer.Step - firstStep} steps ({clock.Elapsed.TotalSeconds:F1} s)");
            if (last is not null)
                output.WriteLine(string.Create(inv, $"  communication    {last.MaxCollectives} collectives per step (max worker), {MemorySnapshot.FormatBytes((long)last.Workers.Max(w => w.BytesSent))} sent per step (max worker)"));
            output.WriteLine("  peak memory per worker");
            var categories = Enum.GetValues<MemoryCategory>();
            output.WriteLine("    worker " + string.Concat(categories.Select(c => $"{c,16}")) + $"{"total",16}");
            for (int w = 0; w < d.Workers; w++)
            {
                var snap = trainer.WorkerAccount(w).Snapshot();
                output.WriteLine($"    {w,-6} " + string.Concat(categories.Select(c => $"{MemorySnapshot.FormatBytes(snap.PeakBytes(c)),16}")) + $"{MemorySnapshot.FormatBytes(snap.PeakTotal),16}");
            }
            output.WriteLine($"  GEMM packing buffers (per process, all threads): {MemorySnapshot.FormatBytes(Sdp.Kernels.Cpu.Gemm.WorkspaceBytes)}");
        }
        return 0;
    }

    private static JsonObject DistributedStepRecord(StepMetrics m)
    {
        var workers = new JsonArray();
        foreach (var w in m.Workers)
        {
            workers.Add(new JsonObject
            {
                ["worker"] = w.Worker, ["loss"] = w.Loss, ["memory"] = MemoryJson(w.Memory),
                ["comm"] = new JsonObject { ["bytes_sent"] = w.BytesSent, ["collectives"] = w.Collectives },
            });
        }
        return new JsonObject
        {
            ["step"] = m.Step, ["loss"] = m.Loss, ["lr"] = m.LearningRate, ["grad_norm"] = m.GradNorm, ["step_ms"] = m.StepMs,
            [$"{m.ItemUnit}_per_s"] = m.ItemsPerSecond, ["workers"] = workers,
        };
    }
}
