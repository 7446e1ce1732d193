namespace Sdp.Kernels.Cuda;

/// <summary>
/// One rank of an NCCL communicator, on its device's context; Dispose destroys it (ncclCommDestroy) with
/// the context bound, <see cref="Abort"/> aborts it. NCCL's rule holds here too: one thread driving
/// several ranks must put init-by-rank, split and every collective inside <see cref="Group"/>, else it
/// waits for itself (the emulator times out with a message instead of hanging).
/// </summary>
public sealed unsafe class NcclComm : CudaResource
{
    private bool _abort;

    private NcclComm(CudaContext context, nint comm) : base(context)
    {
        SetHandle(comm);
        NcclApi nccl = Nccl;
        int rank, count;
        nccl.Check(nccl.ncclCommUserRank(comm, &rank));
        nccl.Check(nccl.ncclCommCount(comm, &count));
        Rank = rank;
        Count = count;
    }

    public NcclApi Nccl => Api.Nccl;

    /// <summary>This rank within the communicator (ncclCommUserRank).</summary>
    public int Rank { get; }

    /// <summary>The number of ranks (ncclCommCount).</summary>
    public int Count { get; }

    /// <summary>One communicator over <paramref name="contexts"/> (rank r on contexts[r]'s device), made from one thread (ncclCommInitAll).</summary>
    public static NcclComm[] InitAll(IReadOnlyList<CudaContext> contexts)
    {
        ArgumentNullException.ThrowIfNull(contexts);
        if (contexts.Count == 0) throw new ArgumentException("InitAll: no contexts", nameof(contexts));
        NcclApi nccl = contexts[0].Api.Nccl;
        var devices = new int[contexts.Count];
        for (int i = 0; i < devices.Length; i++) devices[i] = contexts[i].Device;
        var raw = new nint[devices.Length];
        contexts[0].Bind();
        fixed (nint* comms = raw)
        fixed (int* devlist = devices)
            nccl.Check(nccl.ncclCommInitAll(comms, devices.Length, devlist));
        var result = new NcclComm[raw.Length];
        for (int i = 0; i < raw.Length; i++) result[i] = new NcclComm(contexts[i], raw[i]);
        return result;
    }

    /// <summary>A fresh id for <see cref="InitRank"/>: made once, by rank 0, and shipped to every rank.</summary>
    public static NcclUniqueId NewUniqueId(NcclApi nccl)
    {
        NcclUniqueId id = default;
        nccl.Check(nccl.ncclGetUniqueId(&id));
        return id;
    }

    /// <summary>Joins rank <paramref name="rank"/> of <paramref name="nranks"/> on <paramref name="context"/>'s device
    /// (ncclCommInitRank); returns when every rank has joined. One thread per rank (or every rank inside a group).</summary>
    public static NcclComm InitRank(CudaContext context, int nranks, NcclUniqueId id, int rank)
    {
        NcclApi nccl = context.Api.Nccl;
        context.Bind();
        nint comm;
        nccl.Check(nccl.ncclCommInitRank(&comm, nranks, id, rank));
        return new NcclComm(context, comm);
    }

    /// <summary>Runs <paramref name="body"/> between ncclGroupStart and ncclGroupEnd: the collectives it posts run at the end,
    /// which lets one thread drive every rank. An error of ncclGroupEnd is thrown unless the body threw.</summary>
    public static void Group(NcclApi nccl, Action body)
    {
        ArgumentNullException.ThrowIfNull(body);
        nccl.Check(nccl.ncclGroupStart());
        bool ok = false;
        try
        {
            body();
            ok = true;
        }
        finally
        {
            NcclResult end = nccl.ncclGroupEnd();
            if (ok) nccl.Check(end, "ncclGroupEnd()");
        }
    }

    /// <summary>recv (count) ← Σ over ranks ascending of send (count), elementwise (ncclAllReduce, ncclSum).</summary>
    public void AllReduceSum(DeviceBuffer send, DeviceBuffer recv, long count, NcclDataType type, CudaStream? stream = null)
    {
        CheckCount(send, count, type);
        CheckCount(recv, count, type);
        nint comm = Bound();
        Nccl.Check(Nccl.ncclAllReduce(send.Pointer, recv.Pointer, (nuint)count, type, NcclRedOp.Sum, comm, stream?.Handle ?? 0));
    }

    /// <summary>In place over the whole buffer.</summary>
    public void AllReduceSum(DeviceBuffer buffer, NcclDataType type, CudaStream? stream = null) =>
        AllReduceSum(buffer, buffer, buffer.Bytes / type.Size(), type, stream);

    /// <summary>recv (count) ← root's send (count) on every rank (ncclBroadcast); send is read on the root only.</summary>
    public void Broadcast(DeviceBuffer send, DeviceBuffer recv, long count, NcclDataType type, int root, CudaStream? stream = null)
    {
        CheckCount(recv, count, type);
        if (Rank == root) CheckCount(send, count, type);
        nint comm = Bound();
        Nccl.Check(Nccl.ncclBroadcast(send.Pointer, recv.Pointer, (nuint)count, type, root, comm, stream?.Handle ?? 0));
    }

    /// <summary>In place over the whole buffer.</summary>
    public void Broadcast(DeviceBuffer buffer, NcclDataType type, int root, CudaStream? stream = null) =>
        Broadcast(buffer, buffer, buffer.Bytes / type.Size(), type, root, stream);

    /// <summary>In-place all-reduce (sum) of <paramref name="count"/> elements at a raw device address, queued on <paramref name="stream"/>.</summary>
    public void AllReduceSum(CUdeviceptr buffer, long count, NcclDataType type, CudaStream stream)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        nint s = stream.Handle;
        nint comm = Bound();
        Nccl.Check(Nccl.ncclAllReduce(buffer, buffer, (nuint)count, type, NcclRedOp.Sum, comm, s), $"ncclAllReduce({count} x {type}, rank {Rank} of {Count})");
    }

    /// <summary>In-place broadcast from <paramref name="root"/> (a rank of this communicator) of <paramref name="count"/> elements at a raw device address.</summary>
    public void Broadcast(CUdeviceptr buffer, long count, NcclDataType type, int root, CudaStream stream)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        nint s = stream.Handle;
        nint comm = Bound();
        Nccl.Check(Nccl.ncclBroadcast(buffer, buffer, (nuint)count, type, root, comm, s), $"ncclBroadcast({count} x {type}, root {root}, rank {Rank} of {Count})");
    }

    /// <summary>ncclCommSplit from one thread per rank: ranks with the same color form a communicator ordered by
    /// (key, rank); color -1 (NCCL_SPLIT_NOCOLOR) gives null. Every rank of this communicator must call it.</summary>
    public NcclComm? Split(int color, int key)
    {
        nint comm = Bound();
        nint child;
        Nccl.Check(Nccl.ncclCommSplit(comm, color, key, &child, null));
        return child == 0 ? null : new NcclComm(Context, child);
    }

    /// <summary>ncclCommSplit of every rank from one thread, inside one group; entry r is rank r's new communicator or null.</summary>
    public static NcclComm?[] SplitAll(IReadOnlyList<NcclComm> comms, IReadOnlyList<int> colors, IReadOnlyList<int> keys)
    {
        ArgumentNullException.ThrowIfNull(comms);
        if (colors.Count != comms.Count || keys.Count != comms.Count) throw new ArgumentException("SplitAll: one color and one key per communicator");
        var raw = new nint[comms.Count];
        NcclApi nccl = comms[0].Nccl;
        fixed (nint* children = raw)
        {
            nint* c = children;
            Group(nccl, () =>
            {
                for (int i = 0; i < comms.Count; i++)
                    nccl.Check(nccl.ncclCommSplit(comms[i].Bound(), colors[i], keys[i], c + i, null));
            });
        }
        var result = new NcclComm?[raw.Length];
        for (int i = 0; i < raw.Length; i++) result[i] = raw[i] == 0 ? null : new NcclComm(comms[i].Context, raw[i]);
        return result;
    }

    /// <summary>ncclCommGetAsyncError: what a failed or timed-out collective left behind.</summary>
    public NcclResult AsyncError
    {
        get
        {
            NcclResult r;
            Nccl.Check(Nccl.ncclCommGetAsyncError(Bound(), &r));
            return r;
        }
    }

    /// <summary>Aborts the communicator (ncclCommAbort) and releases this handle; ranks still waiting on it fail.</summary>
    public void Abort()
    {
        _abort = true;
        Dispose();
    }

    private static void CheckCount(DeviceBuffer buffer, long count, NcclDataType type)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        if (count * type.Size() > buffer.Bytes)
            throw new ArgumentOutOfRangeException(nameof(count), $"{count} elements of {type} do not fit in a {buffer.Bytes}-byte device buffer");
    }

    protected override bool Release(nint value) =>
        (_abort ? Nccl.ncclCommAbort(value) : Nccl.ncclCommDestroy(value)) == NcclResult.Success;
}
