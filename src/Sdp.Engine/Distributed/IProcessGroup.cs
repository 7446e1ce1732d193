namespace Sdp.Engine.Distributed;

/// <summary>
/// The processes of a multi-process job as the trainer's control plane sees them (one worker per process, under
/// <c>mpirun</c> or <c>srun</c>): small host-side exchanges of step metrics and evaluation results, barriers around
/// checkpoint writes, and the end of the whole job when one process fails. Gradients never travel here; they go
/// through the job's <see cref="ICommunicator"/> (MPI for CPU ranks, NCCL for GPU ranks). Calls are collective
/// and come from one thread at a time.
/// </summary>
public interface IProcessGroup
{
    /// <summary>This process's rank: the worker it runs.</summary>
    int Rank { get; }

    /// <summary>Processes in the job: the number of workers.</summary>
    int Size { get; }

    /// <summary>Every process's <paramref name="values"/> (the same count on each), concatenated in rank order, on every process.</summary>
    double[] AllGather(ReadOnlySpan<double> values);

    /// <summary>Blocks until every process has reached the barrier.</summary>
    void Barrier();

    /// <summary>Prints <paramref name="reason"/> naming this rank, then ends every process of the job with <paramref name="exitCode"/> (non-zero). Does not return.</summary>
    void Abort(string reason, int exitCode);
}
