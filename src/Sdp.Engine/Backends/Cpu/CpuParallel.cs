using System.Runtime.ExceptionServices;

namespace Sdp.Engine.Backends.Cpu;

/// <summary>Splits index ranges across cores, staying on the calling thread when the work is small
/// enough that handing it out would cost more than doing it.</summary>
/// <remarks>
/// A call hands its chunks to thread-pool helpers through one small work item rather than Parallel.For, whose
/// per-call task machinery allocated about a kilobyte and cost microseconds on each of the hundreds of kernel calls
/// of a step. The caller works too: chunks are claimed in turn by whoever is free (a helper that starts late finds
/// less to do, and a call can always finish on the caller alone), while the chunk boundaries depend only on the
/// count and the thread setting, so results never depend on which thread ran what.
/// </remarks>
internal static class CpuParallel
{
    public static int MaxThreads { get; set; } = Environment.ProcessorCount;

    /// <summary>Runs body(start, end) over [0, count) in contiguous chunks of at least minChunk items.</summary>
    public static void For(long count, long minChunk, Action<long, long> body)
    {
        if (count <= 0) return;
        long chunks = Math.Min(MaxThreads, Math.Max(1, count / Math.Max(1, minChunk)));
        if (chunks <= 1)
        {
            body(0, count);
            return;
        }
        var job = new Job(body, count, (int)chunks);
        int helpers = (int)Math.Min(chunks, Environment.ProcessorCount) - 1;
        for (int i = 0; i < helpers; i++) ThreadPool.UnsafeQueueUserWorkItem(job, preferLocal: false);
        job.Work();
        job.Wait();
    }

    /// <summary>One call's chunks, claimed in turn by the caller and its helpers.</summary>
    private sealed class Job(Action<long, long> body, long count, int chunks) : IThreadPoolWorkItem
    {
        private int _next = -1, _done;
        private Exception? _error;

        public void Execute() => Work();

        public void Work()
        {
            int c;
            while ((c = Interlocked.Increment(ref _next)) < chunks)
            {
                try
                {
                    body(count * c / chunks, count * (c + 1) / chunks);
                }
                catch (Exception e)
                {
                    Interlocked.CompareExchange(ref _error, e, null);
                }
                finally
                {
                    Interlocked.Increment(ref _done);
                }
            }
        }

        /// <summary>Waits for chunks that helpers claimed and are still running, then rethrows the first failure.</summary>
        public void Wait()
        {
            var spin = default(SpinWait);
            while (Volatile.Read(ref _done) < chunks) spin.SpinOnce(sleep1Threshold: -1);
            if (_error is not null) ExceptionDispatchInfo.Throw(_error);
        }
    }
}
