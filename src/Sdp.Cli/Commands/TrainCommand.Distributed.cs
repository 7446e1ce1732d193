using System.CommandLine;
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
        SubnetOptions Subnet, ulong PlanSeed, int BucketMb, int BnRecalibrate, int BnRecalibrateBatch)
    {
        /// <summary>One worker in DP mode: plain single-process training (which also resumes the single-worker training state of earlier Sdp versions).</summary>
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
        private readonly Option<int> _bnRecalibrate = new("--bn-recalibrate") { Description = "Before evaluation, re-estimate BatchNorm statistics of the dense model on this many training batches, a cumulative average as torch's update_bn (0 = off)", DefaultValueFactory = _ => 0 };
        private readonly Option<int> _bnRecalibrateBatch = new("--bn-recalibrate-batch") { Description = "Images per BatchNorm recalibration batch (independent of --batch)", DefaultValueFactory = _ => 64 };

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
            foreach (var o in new Option[] { _workers, _mode, _subnet, _masking, _coverage, _scheduleMatch, _neuronScale, _maskHeads, _splitSublayers, _keepDownsample, _planSeed, _bucketMb, _bnRecalibrate, _bnRecalibrateBatch })
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
                subnet, planSeed, Check.Positive(p.GetValue(_bucketMb), "--bucket-mb"), Check.AtLeast(p.GetValue(_bnRecalibrate), 0, "--bn-recalibrate"),
                Check.Positive(p.GetValue(_bnRecalibrateBatch), "--bn-recalibrate-batch"));
        }
    }
}
