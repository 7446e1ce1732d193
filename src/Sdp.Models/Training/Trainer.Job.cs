using Sdp.Engine;
using Sdp.Engine.Distributed;
using Sdp.Engine.Memory;
using Sdp.Engine.Nn;
using Sdp.Engine.Subnetworks;

namespace Sdp.Models.Training;

/// <summary>
/// One process's place in a multi-process job (one worker per process, launched by <c>mpirun</c> or <c>srun</c>):
/// <see cref="Processes"/> is the control plane (step metrics, evaluation results, checkpoint barriers, aborting
/// the job), <see cref="Communicator"/> the data plane that carries gradients (MPI for CPU ranks, NCCL for GPU
/// ranks; it may be the same object). Both belong to the caller, who makes them before the trainer and disposes
/// them after it.
/// </summary>
public sealed record JobRank(IProcessGroup Processes, ICommunicator Communicator)
{
    internal JobRank CheckFits(int workers)
    {
        if (Processes.Size != workers || Communicator.WorldSize != workers)
            throw new ArgumentException($"Trainer: the job has {Processes.Size} processes and its communicator {Communicator.WorldSize} ranks, but the run has {workers} workers; run one process per worker");
        if (Communicator.Rank != Processes.Rank)
            throw new ArgumentException($"Trainer: this process is rank {Processes.Rank} of the job but rank {Communicator.Rank} of its communicator");
        return this;
    }
}

/// <summary>
/// What one worker's step produced: its loss, items, the global gradient norm, its communication and its memory; what
/// it decided (the same on every worker) and, when it aborts, the non-finite tensors it found (this process only).
/// </summary>
internal readonly record struct WorkerStepResult(double Loss, long Items, double Norm, double Bytes, int Collectives, MemorySnapshot Memory,
    StepDecision Decision = StepDecision.Update, IReadOnlyList<NonFiniteTensor>? NonFinite = null);

/// <summary>
/// The trainer's multi-process parts. Every process runs the same loop over the same steps, so every collective
/// below is reached by every process in the same order. Values cross processes as float64, which holds every
/// count and byte total exactly (below 2^53), and are combined in rank or batch order, so a job prints the same
/// numbers as the in-process run.
/// </summary>
public sealed partial class Trainer
{
    private readonly JobRank? _job;
    private readonly Watchdog? _watchdog;

    /// <summary>In a job, watches <paramref name="phase"/> until disposed (the outermost phase only); otherwise nothing.</summary>
    private IDisposable? Watch(string phase) => _watchdog?.Watch(phase);

    /// <summary>In a job, every parameter and floating-point buffer of <paramref name="module"/> ← rank 0's.</summary>
    private void BroadcastFromRankZero(Module module)
    {
        if (_job is null) return;
        using var noGrad = Engine.Autograd.GradMode.Disable();
        foreach (var (_, t) in SubnetworkTensors.Named(module)) _job.Communicator.World.Broadcast(t, root: 0);
        module.TensorsReplaced();
    }

    /// <summary>Categories of a <see cref="MemorySnapshot"/>, in the order they travel.</summary>
    private static readonly int Categories = Enum.GetValues<MemoryCategory>().Length;

    /// <summary>Doubles per worker: loss, items, norm, bytes, collectives, current and peak totals, then current and peak per category.</summary>
    private static int StepFields => 7 + 2 * Categories;

    /// <summary>
    /// In a job, each process contributes its worker's entry of <paramref name="results"/> and gets everyone's; in
    /// one process, <paramref name="results"/> already holds every worker's.
    /// </summary>
    private WorkerStepResult[] ExchangeStepResults(WorkerStepResult[] results)
    {
        if (_job is null) return results;
        int rank = _job.Processes.Rank;
        var mine = results[rank];
        var row = new double[StepFields];
        (row[0], row[1], row[2], row[3], row[4], row[5], row[6]) = (mine.Loss, mine.Items, mine.Norm, mine.Bytes, mine.Collectives, mine.Memory.CurrentTotal, mine.Memory.PeakTotal);
        for (int c = 0; c < Categories; c++) (row[7 + c], row[7 + Categories + c]) = (mine.Memory.Current[c], mine.Memory.Peak[c]);
        var all = _job.Processes.AllGather(row);
        var gathered = new WorkerStepResult[results.Length];
        for (int w = 0; w < gathered.Length; w++)
        {
            var r = all.AsSpan(w * StepFields, StepFields);
            var current = new long[Categories];
            var peak = new long[Categories];
            for (int c = 0; c < Categories; c++) (current[c], peak[c]) = ((long)r[7 + c], (long)r[7 + Categories + c]);
            gathered[w] = new WorkerStepResult(r[0], (long)r[1], r[2], r[3], (int)r[4], new MemorySnapshot($"worker {w}", current, peak, (long)r[5], (long)r[6]));
        }
        return gathered;
    }

    /// <summary>Every worker's memory account now (current and peaks), on every process: collective in a job.</summary>
    public IReadOnlyList<MemorySnapshot> WorkerMemory()
    {
        var results = new WorkerStepResult[Options.Workers];
        foreach (var w in _workers) results[w.Rank] = new WorkerStepResult(0, 0, 0, 0, 0, w.Account.Snapshot());
        return [.. ExchangeStepResults(results).Select(r => r.Memory)];
    }

    /// <summary>In a job, batch b's result from rank b mod W, on every process (the others' entries of <paramref name="mine"/> are null).</summary>
    private BatchEvaluation?[] GatherBatchResults(BatchEvaluation?[] mine)
    {
        const int Fields = 4; // loss sum, count, correct, has correct
        var row = new double[mine.Length * Fields];
        for (int b = 0; b < mine.Length; b++)
        {
            if (mine[b] is not { } e) continue;
            (row[b * Fields], row[b * Fields + 1], row[b * Fields + 2], row[b * Fields + 3]) = (e.LossSum, e.Count, e.Correct ?? 0, e.Correct is null ? 0 : 1);
        }
        var all = _job!.Processes.AllGather(row);
        var batches = new BatchEvaluation?[mine.Length];
        for (int b = 0; b < mine.Length; b++)
        {
            int at = (b % Options.Workers * mine.Length + b) * Fields;
            batches[b] = new BatchEvaluation(all[at], (long)all[at + 1], all[at + 3] != 0 ? (long)all[at + 2] : null);
        }
        return batches;
    }
}
