namespace Sdp.Engine.Distributed;

/// <summary>
/// One rank's endpoint of a world of <see cref="WorldSize"/> workers. Collectives run on groups
/// (<see cref="ICommGroup"/>): the <see cref="World"/>, made with the communicator, and subgroups made
/// once, up front, by <see cref="CreateGroup"/> (as NCCL and MPI need one communicator per group:
/// ncclCommSplit, MPI_Comm_split). Reductions always add the ranks' buffers in ascending rank order, so
/// results are bitwise identical on all ranks and across runs.
/// </summary>
public interface ICommunicator
{
    int Rank { get; }

    int WorldSize { get; }

    /// <summary>All ranks, created with the communicator; it lives as long as the communicator, so disposing it does nothing.</summary>
    ICommGroup World { get; }

    /// <summary>
    /// Makes the group of <paramref name="ranks"/> (world ranks; order does not matter, repeats are refused).
    /// Collective over the world, like MPI_Comm_split: every rank calls it for every group, in the same order
    /// and with the same ranks, and gets the group when it is a member, null when not. Calls that disagree
    /// fail on the rank that notices, naming both lists, and abort the world so that no rank waits for a
    /// group the others never made. NCCL or MPI implementations block until all ranks have called; the
    /// in-process one does not wait (one thread may set up every worker in turn) and checks the lists as
    /// they arrive, and each rank's count of calls at every collective over all ranks.
    /// </summary>
    ICommGroup? CreateGroup(IReadOnlyList<int> ranks);

    /// <summary>
    /// All-reduces (sums) each buffer on its group, as <see cref="ICommGroup.AllReduceSum"/> would one after another in
    /// the list's order; every group must be this communicator's, and every member must pass its groups' buffers in
    /// the same relative order. NCCL posts them inside one ncclGroupStart/ncclGroupEnd, so a step's gradient
    /// buckets launch together.
    /// </summary>
    void AllReduceSum(IReadOnlyList<(ICommGroup Group, Tensor Buffer)> buffers)
    {
        ArgumentNullException.ThrowIfNull(buffers);
        foreach (var (group, buffer) in buffers) group.AllReduceSum(buffer);
    }

    /// <summary>Blocks until every rank of the world has reached the barrier.</summary>
    void Barrier();

    /// <summary>
    /// Makes every pending and later collective of the world fail at once with <paramref name="reason"/>:
    /// a rank that failed calls it so the others do not wait out the timeout (NCCL: ncclCommAbort).
    /// </summary>
    void Abort(string reason);

    /// <summary>What this rank has sent since the last <see cref="CommStats.Reset"/>, and the groups it has joined.</summary>
    CommStats Stats { get; }
}

/// <summary>
/// A set of ranks that runs collectives together (an NCCL communicator). Collectives are blocking and must
/// be called by every member, in the same order, with equally shaped buffers of the same dtype.
/// </summary>
public interface ICommGroup : IDisposable
{
    /// <summary>The members' world ranks, ascending.</summary>
    IReadOnlyList<int> Ranks { get; }

    /// <summary>This rank's index in <see cref="Ranks"/> (its rank within the group).</summary>
    int Position { get; }

    /// <summary>buffer ← Σ_{r ∈ group, ascending} buffer_r, in place, in the buffer's dtype.</summary>
    void AllReduceSum(Tensor buffer);

    /// <summary>buffer ← buffer_root on every member; <paramref name="root"/> is a world rank, and a member.</summary>
    void Broadcast(Tensor buffer, int root);
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

    /// <summary>Groups this rank is a member of, the world included, since the communicator was made (<see cref="Reset"/> leaves it: the groups still exist).</summary>
    public int GroupsCreated { get; private set; }

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

    internal void AddGroup() => GroupsCreated++;

    /// <summary>Clears the traffic counters.</summary>
    public void Reset()
    {
        BytesSent = 0;
        AllReduces = Broadcasts = Barriers = 0;
    }

    public CommStats Clone() => new() { BytesSent = BytesSent, AllReduces = AllReduces, Broadcasts = Broadcasts, Barriers = Barriers, GroupsCreated = GroupsCreated };

    public override string ToString() => $"{Collectives} collectives ({AllReduces} all-reduce, {Broadcasts} broadcast), {BytesSent:F0} bytes sent, {Barriers} barriers, {GroupsCreated} groups";
}
