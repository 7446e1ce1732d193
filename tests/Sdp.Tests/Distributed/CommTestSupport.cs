using Sdp.Engine.Distributed;

namespace Sdp.Tests.Distributed;

internal static class CommTestSupport
{
    /// <summary>Runs body(rank, comm) on W threads, one per rank; returns each rank's exception (null if none).</summary>
    public static Exception?[] RunRanks(IReadOnlyList<ICommunicator> comms, Action<int, ICommunicator> body)
    {
        var errors = new Exception?[comms.Count];
        var threads = new Thread[comms.Count];
        for (int r = 0; r < comms.Count; r++)
        {
            int rank = r;
            threads[r] = new Thread(() =>
            {
                try { body(rank, comms[rank]); }
                catch (Exception e) { errors[rank] = e; }
            });
            threads[r].Start();
        }
        foreach (var t in threads) t.Join();
        return errors;
    }

    /// <summary>Like <see cref="RunRanks"/>, but rethrows the first rank's exception.</summary>
    public static void RunAll(IReadOnlyList<ICommunicator> comms, Action<int, ICommunicator> body)
    {
        var errors = RunRanks(comms, body);
        for (int r = 0; r < errors.Length; r++)
            if (errors[r] is not null) throw new InvalidOperationException($"rank {r} failed: {errors[r]!.Message}", errors[r]);
    }

    public static float[] RandomFloats(int seed, int n)
    {
        var rng = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) * (1 + i % 7);
        return a;
    }
}
