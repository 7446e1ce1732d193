namespace Sdp.Models.Training;

/// <summary>
/// One simulated worker of an in-process group (W &gt; 1) failed a step: the group was aborted, so the other workers
/// stopped waiting for it, and the step failed for all. The message names the worker ("worker 2: shard 3: truncated
/// batch"); <see cref="Cause"/> (the <see cref="Exception.InnerException"/>) is the worker's own error, which callers
/// classify as if it had been thrown directly (the CLI: bad input is exit code 2, anything else 1).
/// </summary>
public sealed class WorkerFailedException(int worker, Exception cause)
    : Exception($"worker {worker}: {(cause ?? throw new ArgumentNullException(nameof(cause))).Message}", cause)
{
    /// <summary>The rank of the worker that failed.</summary>
    public int Worker { get; } = worker;

    /// <summary>The worker's own error.</summary>
    public Exception Cause => InnerException!;
}
