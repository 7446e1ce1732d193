namespace Sdp.Engine.Backends.Cpu;

/// <summary>Splits index ranges across cores, staying on the calling thread when the work is small
/// enough that handing it out would cost more than doing it.</summary>
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
        Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = MaxThreads }, c =>
        {
            long start = count * c / chunks;
            long end = count * (c + 1) / chunks;
            body(start, end);
        });
    }
}
