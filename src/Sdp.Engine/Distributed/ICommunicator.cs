namespace Sdp.Engine.Distributed;

/// <summary>
/// One rank's endpoint of a group of <see cref="WorldSize"/> workers. Collectives are blocking and must be
/// called by every rank of the group, in the same order, with equally shaped buffers of the same dtype.
/// Groups are sets of ranks (order in the list does not matter); reductions always add the ranks'
/// buffers in ascending rank order, so results are bitwise identical on all ranks and across runs.
/// </summary>
public interface ICommunicator
{
    int Rank { get; }

    int WorldSize { get; }

    /// <summary>buffer ← Σ_{r ∈ group, ascending} buffer_r, in place, in the buffer's dtype. The group
    /// must contain this rank.</summary>
    void AllReduceSum(Tensor buffer, IReadOnlyList<int> group);

    /// <summary>buffer ← buffer_root on every rank of the group (all ranks when null).</summary>
    void Broadcast(Tensor buffer, int root, IReadOnlyList<int>? group = null);

    /// <summary>Blocks until every rank of the world has reached the barrier.</summary>
    void Barrier();

    /// <summary>
    /// Makes every pending and later collective of the world fail at once with <paramref name="reason"/>:
    /// a rank that failed calls it so the others do not wait out the timeout (NCCL: ncclCommAbort).
    /// </summary>
    void Abort(string reason);

    /// <summary>What this rank has sent since the last <see cref="CommStats.Reset"/>.</summary>
    CommStats Stats { get; }
}

/// <summary>
/// Communication counters of one rank. Byte model (method reference §5): a ring all-reduce of B bytes
/// among n ranks sends 2(n−1)/n · B bytes per rank (0 when n = 1); a broadcast of B bytes sends B bytes
/// from the root and nothing from the other ranks; a barrier sends nothing.
/// </summary>
public sealed class CommStats
{
    /// <summary>Bytes sent by this rank under the ring model (fractional: it is a model, not a count).</summary>
    public double BytesSent { get; private set; }

    public int AllReduces { get; private set; }

    public int Broadcasts { get; private set; }

    public int Barriers { get; private set; }

    /// <summary>All-reduces plus broadcasts (barriers move no data and are not counted).</summary>
    public int Collectives => AllReduces + Broadcasts;

    /// <summary>Per-rank bytes a ring all-reduce of <paramref name="bytes"/> among <paramref name="groupSize"/> ranks sends.</summary>
    public static double RingAllReduceBytes(long bytes, int groupSize)
        => groupSize <= 1 ? 0 : 2.0 * (groupSize - 1) / groupSize * bytes;

    internal void AddAllReduce(long bytes, int groupSize)
    {
        AllReduces++;
        BytesSent += RingAllReduceBytes(bytes, groupSize);
    }

    internal void AddBroadcast(long bytes, bool isRoot)
    {
        Broadcasts++;
        if (isRoot) BytesSent += bytes;
    }

    internal void AddBarrier() => Barriers++;

    public void Reset()
    {
        BytesSent = 0;
        AllReduces = Broadcasts = Barriers = 0;
    }

    public CommStats Clone() => new() { BytesSent = BytesSent, AllReduces = AllReduces, Broadcasts = Broadcasts, Barriers = Barriers };

    public override string ToString() => $"{Collectives} collectives ({AllReduces} all-reduce, {Broadcasts} broadcast), {BytesSent:F0} bytes sent, {Barriers} barriers";
}
