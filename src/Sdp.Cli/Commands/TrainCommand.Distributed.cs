using System.CommandLine;
using Sdp.Engine;
using Sdp.Engine.Backends.Cuda;
using Sdp.Engine.Distributed;
using Sdp.Kernels.Mpi;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;

namespace Sdp.Cli.Commands;

/// <summary>The options of `sdp train --workers W --mode dp|sdp ...`: W simulated workers in this process (method reference §2.5).</summary>
public static partial class TrainCommand
{
    /// <summary>The distributed options of `sdp train`.</summary>
    public sealed record DistributedOptions(
        int Workers, ParallelMode Mode, SubnetLevel Level, Masking Masking, double Coverage, ScheduleMatch ScheduleMatch,
        SubnetOptions Subnet, ulong PlanSeed, int BucketMb, int BnRecalibrate, int BnRecalibrateBatch, Launcher Launcher = Launcher.None, double CommTimeoutSeconds = DefaultCommTimeoutSeconds,
        EvalRule EvalRule = EvalRule.Dense)
    {
        /// <summary>One worker in DP mode: plain single-process training (which also resumes the single-worker training state of earlier Sdp versions).</summary>
        public bool IsSingleWorkerDp => Workers == 1 && Mode == ParallelMode.Dp;

        /// <summary>Total and warm-up steps after --schedule-match (DP runs at coverage 1, so they are unchanged).</summary>
        public (long Steps, int Warmup) Matched(int steps, int warmup)
            => (SdpOptions.MatchedSteps(steps, Coverage, ScheduleMatch), (int)SdpOptions.MatchedSteps(warmup, Coverage, ScheduleMatch));
    }

    /// <summary>BatchNorm recalibration batches when the evaluation rule recalibrates and --bn-recalibrate does not say how many.</summary>
    public const int DefaultRecalibrationBatches = 16;

    /// <summary>What an evaluation of <paramref name="trainer"/> scores, for its lines: the assembled model under its rule, or the ensemble.</summary>
    private static string EvaluatedModel(Trainer trainer)
    {
        var rule = trainer.EvaluationRule;
        if (rule.HasFlag(EvalRule.Ensemble))
            return $"ensemble of the {trainer.Options.Workers} subnetworks{(rule.HasFlag(EvalRule.Recalibrate) ? ", BatchNorm recalibrated" : "")}";
        string model = trainer.Plan is null ? "" : "assembled dense model";
        string how = rule == EvalRule.Dense ? "" : $"eval rule {EvaluationRules.Name(rule)}";
        return string.Join(", ", new[] { model, how }.Where(p => p.Length > 0));
    }

    /// <summary>How the workers of a run are started.</summary>
    public enum Launcher
    {
        /// <summary>Every worker is a thread of this process.</summary>
        None,

        /// <summary>This process is one rank of an MPI job (mpirun, srun): it runs the worker of its rank.</summary>
        Mpi,
    }

    /// <summary>The default of --comm-timeout: the in-process communicator's wait, and a job's longest phase.</summary>
    public const double DefaultCommTimeoutSeconds = 300;

    /// <summary>
    /// One rank of an MPI job (`mpirun -np W sdp train --launcher mpi ...`, or srun): this process runs worker
    /// = its rank on its own device (CPU, or GPU local rank mod the node's GPU count), gradients travel by MPI
    /// between CPU ranks (<see cref="MpiCommunicator"/>) and by NCCL between GPU ranks
    /// (<see cref="NcclCommunicator.CreateForProcess"/>, its unique id broadcast over MPI), and rank 0 alone prints, writes the metrics and the dense model and sdp.json of a checkpoint.
    /// Any failure after MPI is up ends the whole job (MPI_Abort) with a message naming the rank, so no rank waits
    /// for a peer that has gone: exit code 2 for bad input, 1 otherwise.
    /// </summary>
    private static int RunMpiRank(Options o, TextWriter output)
    {
        MpiCommunicator mpi;
        try
        {
            mpi = MpiCommunicator.Create();
        }
        catch (Exception e) when (e is DllNotFoundException or MpiException or InvalidOperationException)
        {
            throw new UsageException($"--launcher mpi: {e.Message}");
        }
        using (mpi)
        {
            try
            {
                if (o.Distributed.Workers != mpi.WorldSize)
                    throw new UsageException($"--workers ({o.Distributed.Workers}) must equal the job's {mpi.WorldSize} processes (mpirun -np {mpi.WorldSize}), or be left out");
                using var devices = DeviceSelection.Open(o.Device, 1, localRank: Mpi.LocalRank() ?? 0);
                bool leader = mpi.Rank == 0;
                var rankOutput = leader ? output : TextWriter.Null;
                if (devices.Banner is not null) rankOutput.WriteLine(devices.Banner);
                // GPU ranks exchange gradients through NCCL, bootstrapped over MPI; CPU ranks through MPI itself.
                using var nccl = devices.Host is CudaBackend cuda ? NcclCommunicator.CreateForProcess(cuda, Mpi.World, TimeSpan.FromSeconds(o.Distributed.CommTimeoutSeconds)) : null;
                using var host = DeviceScope.Use(devices.Host);
                // Plain progress lines: mpirun forwards every rank's output, which a live progress bar would garble.
                return Run(leader ? o : o with { Metrics = null }, devices, rankOutput, plain: true, new JobRank(mpi, (ICommunicator?)nccl ?? mpi));
            }
            catch (Exception e)
            {
                mpi.Abort(CliRunner.MessageOf(e), CliRunner.IsBadInput(e) ? CliRunner.UsageError : 1);
                throw; // MPI_Abort does not return
            }
        }
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
        private readonly Option<int> _bnRecalibrate = new("--bn-recalibrate") { Description = "Before evaluation, re-estimate BatchNorm statistics of the dense model on this many training batches, a cumulative average as torch's update_bn (0 = off)", DefaultValueFactory = _ => 0 };
        private readonly Option<int> _bnRecalibrateBatch = new("--bn-recalibrate-batch") { Description = "Images per BatchNorm recalibration batch (independent of --batch)", DefaultValueFactory = _ => 64 };
        private readonly Option<string> _launcher = new("--launcher") { Description = "none (workers are threads of this process) or mpi (this process is one rank of `mpirun -np W` or `srun -n W`, running worker = its rank; see `sdp launch`)", DefaultValueFactory = _ => "none" };
        private readonly Option<string> _evalRule = new("--eval-rule")
        {
            Description = "How the run is evaluated: auto (block-level forward-masked SDP: scale+recalibrate, or scale without BatchNorm; otherwise dense), dense, " +
                "or parts joined by '+': scale (test time: residual branches × their coverage), inverse-scale (training: branches × 1/coverage on their holders), " +
                "recalibrate (BatchNorm statistics re-estimated, --bn-recalibrate batches, default 16), ensemble (the mean of the W subnetworks' logits)",
            DefaultValueFactory = _ => "auto",
        };
        private readonly Option<double> _commTimeout = new("--comm-timeout") { Description = "Seconds a worker waits for the others at a collective; under --launcher mpi, the longest a step, evaluation or save may take before the job is aborted", DefaultValueFactory = _ => DefaultCommTimeoutSeconds };

        public static DistributedArguments Create()
        {
            var a = new DistributedArguments();
            a._mode.AcceptOnlyFromAmong("dp", "sdp");
            a._subnet.AcceptOnlyFromAmong("neuron", "block");
            a._masking.AcceptOnlyFromAmong("forward", "backward");
            a._scheduleMatch.AcceptOnlyFromAmong("same-steps", "flop-matched");
            a._neuronScale.AcceptOnlyFromAmong("none", "inverse-coverage");
            a._launcher.AcceptOnlyFromAmong("none", "mpi");
            return a;
        }

        public void AddTo(Command cmd)
        {
            foreach (var o in new Option[] { _workers, _mode, _subnet, _masking, _coverage, _scheduleMatch, _neuronScale, _maskHeads, _splitSublayers, _keepDownsample, _planSeed, _bucketMb, _bnRecalibrate, _bnRecalibrateBatch, _launcher, _commTimeout, _evalRule })
                cmd.Options.Add(o);
        }

        public DistributedOptions Parse(ParseResult p)
        {
            int workers = Check.Positive(p.GetValue(_workers), "--workers");
            var launcher = p.GetValue(_launcher) == "mpi" ? Launcher.Mpi : Launcher.None;
            // Under mpirun the job's size is the worker count; check the coverage against it, not the default of 1.
            if (launcher == Launcher.Mpi && p.GetResult(_workers) is not { Implicit: false }) workers = Mpi.JobSize() ?? workers;
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
            var level = SubnetworkPlan.ParseLevel(p.GetValue(_subnet)!);
            var masking = p.GetValue(_masking) == "backward" ? Masking.Backward : Masking.Forward;
            int recalibrate = Check.AtLeast(p.GetValue(_bnRecalibrate), 0, "--bn-recalibrate");
            int recalibrationBatch = Check.Positive(p.GetValue(_bnRecalibrateBatch), "--bn-recalibrate-batch");
            var rule = EvalRuleOf(p, mode, level, masking, recalibrate, launcher);
            if (rule.HasFlag(EvalRule.Recalibrate) && recalibrate == 0) recalibrate = DefaultRecalibrationBatches;
            return new DistributedOptions(workers, mode, level, masking, mode == ParallelMode.Dp ? 1.0 : coverage,
                p.GetValue(_scheduleMatch) == "flop-matched" ? ScheduleMatch.FlopMatched : ScheduleMatch.SameSteps,
                subnet, planSeed, Check.Positive(p.GetValue(_bucketMb), "--bucket-mb"), recalibrate,
                recalibrationBatch, launcher, Check.PositiveReal(p.GetValue(_commTimeout), "--comm-timeout"), rule);
        }

        /// <summary>
        /// --eval-rule: auto resolves to the variant's default (<see cref="EvaluationRules.DefaultFor"/>); --bn-recalibrate N
        /// adds recalibration to auto, and contradicts a named rule that leaves it out. Every rule is checked against the run.
        /// </summary>
        private EvalRule EvalRuleOf(ParseResult p, ParallelMode mode, SubnetLevel level, Masking masking, int recalibrate, Launcher launcher)
        {
            string text = p.GetValue(_evalRule)!;
            string model = p.GetValue<string>("--model") ?? "";
            bool batchNorm = model == "resnet18";
            EvalRule rule;
            if (text == "auto")
            {
                rule = EvaluationRules.DefaultFor(mode, level, masking, batchNorm);
                if (recalibrate > 0)
                {
                    if (!batchNorm) throw new UsageException($"--bn-recalibrate re-estimates BatchNorm statistics, and {model} has no BatchNorm; drop it");
                    rule |= EvalRule.Recalibrate;
                }
            }
            else
            {
                try
                {
                    rule = EvaluationRules.Parse(text);
                }
                catch (FormatException e)
                {
                    throw new UsageException($"--eval-rule '{text}': {e.Message}");
                }
                if (recalibrate > 0 && !rule.HasFlag(EvalRule.Recalibrate))
                    throw new UsageException($"--bn-recalibrate {recalibrate} asks for BatchNorm recalibration, but --eval-rule {text} leaves it out; add +recalibrate to the rule or drop --bn-recalibrate");
            }
            if (EvaluationRules.Check(rule, mode, level, masking, batchNorm, residualBranches: true, logits: true, multiProcess: launcher == Launcher.Mpi) is { } why)
                throw new UsageException($"--eval-rule {why}");
            return rule;
        }
    }
}
