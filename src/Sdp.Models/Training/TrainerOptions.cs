using System.Text.Json.Nodes;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Models.Checkpoints;

namespace Sdp.Models.Training;

/// <summary>How long to train and what to do along the way.</summary>
public sealed record TrainerOptions
{
    public required long Steps { get; init; }

    public required ILrSchedule Schedule { get; init; }

    /// <summary>Global gradient-norm clip; 0 or less disables clipping (the norm is still measured).</summary>
    public double Clip { get; init; }

    /// <summary>
    /// Evaluate every K steps (0 = only at the end, when an evaluation source is given). Every periodic
    /// evaluation reads the same <see cref="EvalBatches"/> batches: the evaluation source is rewound to where
    /// it stood when the trainer was built, so losses at different steps (and in resumed runs) are comparable.
    /// </summary>
    public int EvalEvery { get; init; }

    /// <summary>Batches of each periodic evaluation (a fixed sample), and of the final one unless <see cref="FinalEvalBatches"/> says otherwise.</summary>
    public int EvalBatches { get; init; } = 8;

    /// <summary>Batches of the evaluation at the end of the run, from the same start (null: <see cref="EvalBatches"/>); one pass over a test split evaluates all of it.</summary>
    public int? FinalEvalBatches { get; init; }

    /// <summary>
    /// Before each evaluation, re-estimate the dense model's BatchNorm statistics (null: evaluate with them as
    /// they are: in SDP the holder-averaged ones) [I, §2.4 bnRecalib].
    /// </summary>
    public BatchNormRecalibration? BnRecalibration { get; init; }

    /// <summary>Where to save: a directory gets the full training state, a *.safetensors path the model only.</summary>
    public string? SavePath { get; init; }

    /// <summary>Save every K steps as well as at the end (0 = only at the end).</summary>
    public int SaveEvery { get; init; }

    /// <summary>Training-state directories: keep this many checkpoints, the latest as <see cref="SavePath"/> and the ones before it beside it (<see cref="SdpCheckpoint.HistoryPath"/>).</summary>
    public int KeepLast { get; init; } = 1;

    /// <summary>
    /// A worker's memory budget in bytes: a step after which any worker's accounted peak exceeds it stops the run with a
    /// <see cref="MemoryBudgetExceededException"/> holding every worker's account (null: no budget).
    /// </summary>
    public long? MaxMemoryBytes { get; init; }

    /// <summary>
    /// Time every step's phases and every CPU kernel per worker (<see cref="Trainer.Profile"/>): each worker's device
    /// becomes a <see cref="Sdp.Engine.Profiling.ProfilingBackend"/>. CPU workers of a trainer that builds its models only.
    /// </summary>
    public bool Profile { get; init; }

    /// <summary>What a step whose loss or gradient norm is not finite does (on every worker alike).</summary>
    public NonFinitePolicy OnNonFinite { get; init; } = NonFinitePolicy.Abort;

    /// <summary>
    /// Skip the update of a step whose mean loss is this many standard deviations above the mean of the last
    /// <see cref="SpikeWindow"/> losses (the step's own included, as llm.c's outlier detector); 0 = never.
    /// </summary>
    public double SkipSpikes { get; init; }

    /// <summary>Losses the spike detector remembers; it judges no step before its window is full.</summary>
    public int SpikeWindow { get; init; } = 128;

    /// <summary>Where an abort on a non-finite value writes its diagnostic record (JSON); null: no record.</summary>
    public string? DiagnosticsPath { get; init; }

    /// <summary>Opaque options stored with every worker's state in a training-state directory.</summary>
    public JsonObject? RunOptions { get; init; }

    /// <summary>
    /// The run loop: step until <see cref="Steps"/>, evaluating <see cref="EvalBatches"/> batches and saving
    /// every K steps as configured, then evaluating the final batches and saving once more at the end.
    /// </summary>
    internal void RunLoop(Func<long> step, Action trainStep, Action<int>? evaluate, Action<string> save)
    {
        while (step() < Steps)
        {
            trainStep();
            long done = step();
            if (evaluate is not null && EvalEvery > 0 && done % EvalEvery == 0 && done < Steps) evaluate(EvalBatches);
            if (SavePath is not null && SaveEvery > 0 && done % SaveEvery == 0 && done < Steps) save(SavePath);
        }
        evaluate?.Invoke(FinalEvalBatches ?? EvalBatches);
        if (SavePath is not null) save(SavePath);
    }
}

/// <summary>
/// BatchNorm recalibration as torch.optim.swa_utils.update_bn does it: reset the running statistics, then run
/// <see cref="Batches"/> batches of <see cref="Data"/> in training mode with a cumulative average, so each batch
/// weighs 1/N and nothing of the reset is left. <see cref="Data"/> is training data with its own batch size
/// (update_bn's loader, not a worker's stream); every recalibration reads the same batches from where it
/// stood, and leaves it there.
/// </summary>
public sealed record BatchNormRecalibration
{
    public BatchNormRecalibration(IBatchSource data, int batches)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (batches < 1) throw new ArgumentException($"BatchNorm recalibration: batches must be at least 1, got {batches}");
        (Data, Batches) = (data, batches);
    }

    public IBatchSource Data { get; }

    public int Batches { get; }
}

/// <summary>One worker's part of a step.</summary>
public sealed record WorkerStepMetrics(int Worker, double Loss, MemorySnapshot Memory, double BytesSent, int Collectives);

/// <summary>
/// One synchronous step of all workers: the mean loss over workers, the global gradient norm before clipping
/// (each parameter counted once, A14), throughput over all workers, and per worker its loss, memory and
/// communication (with one worker: that worker's loss and memory, and no communication).
/// </summary>
public sealed record StepMetrics(long Step, double Loss, double LearningRate, double GradNorm, double StepMs, double ItemsPerSecond, string ItemUnit, IReadOnlyList<WorkerStepMetrics> Workers)
{
    /// <summary>Why the update of this step was skipped ("non-finite", "spike"), or null when it was applied.</summary>
    public string? Skipped { get; init; }

    /// <summary>Steps skipped so far by this trainer, this one included.</summary>
    public long SkippedSteps { get; init; }

    public double BytesSent => Workers.Sum(w => w.BytesSent);

    public int MaxCollectives => Workers.Max(w => w.Collectives);
}

/// <summary>An evaluation over some batches.</summary>
public sealed record EvalMetrics(long Step, double MeanLoss, long Count, double? Accuracy)
{
    public double Perplexity => Math.Exp(MeanLoss);
}
