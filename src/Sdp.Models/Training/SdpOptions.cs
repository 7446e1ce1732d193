using Sdp.Engine.Subnetworks;

namespace Sdp.Models.Training;

/// <summary>Standard data parallelism, or subnetwork data parallelism, on the same machinery.</summary>
public enum ParallelMode
{
    /// <summary>Every worker holds the whole model; gradients are averaged over all W workers (DDP).</summary>
    Dp,

    /// <summary>Every worker holds its subnetwork; each unit's gradient is averaged over its holders.</summary>
    Sdp,
}

/// <summary>How an SDP run's length relates to the DP run it is compared with (method reference §2.7, A17).</summary>
public enum ScheduleMatch
{
    /// <summary>Same steps and learning-rate schedule as DP.</summary>
    SameSteps,

    /// <summary>Steps ÷ C (rounded), with the learning-rate schedule stretched by the same factor.</summary>
    FlopMatched,
}

/// <summary>The distributed part of a training run: W simulated workers and, for SDP, their subnetworks.</summary>
public sealed record SdpOptions
{
    public int Workers { get; init; } = 1;

    public ParallelMode Mode { get; init; } = ParallelMode.Dp;

    public SubnetLevel Level { get; init; } = SubnetLevel.Block;

    public Masking Masking { get; init; } = Masking.Forward;

    /// <summary>C: the fraction of each group's units every worker holds (k = C·W holders per unit).</summary>
    public double Coverage { get; init; } = 1.0;

    /// <summary>Seed of the subnetwork plan (A2: the plan is a pure function of it, W, C and the model).</summary>
    public ulong PlanSeed { get; init; }

    /// <summary>Cap on one gradient-sync or refresh buffer.</summary>
    public long BucketBytes { get; init; } = 25L << 20;

    /// <summary>How long a worker waits for the others at a collective before failing.</summary>
    public TimeSpan CollectiveTimeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>
    /// How the run is evaluated (<see cref="Training.EvalRule"/>); null: <see cref="EvaluationRules.DefaultFor"/> the
    /// variant. Rule (b), <see cref="EvalRule.InverseScale"/>, also changes training.
    /// </summary>
    public EvalRule? EvalRule { get; init; }

    /// <summary>
    /// Steps to run for a DP-equivalent <paramref name="steps"/> (A17): unchanged, or steps ÷ C rounded to the
    /// nearest whole step (at least one, unless there are none).
    /// </summary>
    public static long MatchedSteps(long steps, double coverage, ScheduleMatch match)
        => match == ScheduleMatch.SameSteps || steps == 0 ? steps : Math.Max(1, (long)Math.Round(steps / coverage));
}
