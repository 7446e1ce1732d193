using Sdp.Kernels.Mpi.Native;

namespace Sdp.Kernels.Mpi;

/// <summary>
/// One MPI communicator (MPI_COMM_WORLD, or one made by <see cref="Split"/>) with checked, blocking calls.
/// Buffers are host pointers; counts are elements of the given <see cref="MpiDataType"/> and, as in MPI's C
/// API, at most <see cref="int.MaxValue"/>. Communicators from <see cref="Split"/> are freed by
/// <see cref="Dispose"/> (MPI_Comm_free), the world never.
/// </summary>
public sealed unsafe class MpiComm : IDisposable
{
    private readonly bool _owned;
    private nint _handle;

    internal MpiComm(nint handle, bool owned, string name)
    {
        _handle = handle;
        _owned = owned;
        Name = name;
        var api = Mpi.Native;
        int rank, size;
        Mpi.Check(api.MPI_Comm_rank(handle, &rank), $"MPI_Comm_rank({name})");
        Mpi.Check(api.MPI_Comm_size(handle, &size), $"MPI_Comm_size({name})");
        Rank = rank;
        Size = size;
    }

    /// <summary>For messages: MPI_COMM_WORLD, or the split it came from.</summary>
    public string Name { get; }

    /// <summary>This process's rank in the communicator.</summary>
    public int Rank { get; }

    /// <summary>The number of processes in the communicator.</summary>
    public int Size { get; }

    /// <summary>The raw MPI_Comm.</summary>
    public nint Handle
    {
        get
        {
            ObjectDisposedException.ThrowIf(_handle == 0, this);
            return _handle;
        }
    }

    /// <summary>
    /// MPI_Comm_split (collective over this communicator): the processes passing the same non-null
    /// <paramref name="color"/> form a communicator, ranked by <paramref name="key"/>; a process passing null
    /// (MPI_UNDEFINED) gets null.
    /// </summary>
    public MpiComm? Split(int? color, int key, string name)
    {
        var api = Mpi.Native;
        nint created;
        Mpi.Check(api.MPI_Comm_split(Handle, color ?? MpiNative.MPI_UNDEFINED, key, &created), $"MPI_Comm_split({Name} → {name})");
        if (created == 0 || created == api.CommNull)
        {
            if (color is not null) throw new MpiException("MPI_Comm_split", 0, $"MPI_Comm_split({Name} → {name}) returned MPI_COMM_NULL for color {color}");
            return null;
        }
        return new MpiComm(created, owned: true, name);
    }

    public void Barrier() => Mpi.Check(Mpi.Native.MPI_Barrier(Handle), $"MPI_Barrier({Name})");

    /// <summary>MPI_Bcast of <paramref name="count"/> elements from <paramref name="root"/> (a rank of this communicator).</summary>
    public void Bcast(void* buffer, int count, MpiDataType type, int root)
        => Mpi.Check(Mpi.Native.MPI_Bcast(buffer, count, Mpi.Handle(type), root, Handle), $"MPI_Bcast({Name}, {count} × {type}, root {root})");

    /// <summary>MPI_Allgather: <paramref name="count"/> elements from every rank into <paramref name="recv"/>, rank r's at r·count.</summary>
    public void Allgather(void* send, void* recv, int count, MpiDataType type)
    {
        nint t = Mpi.Handle(type);
        Mpi.Check(Mpi.Native.MPI_Allgather(send, count, t, recv, count, t, Handle), $"MPI_Allgather({Name}, {count} × {type})");
    }

    /// <summary>MPI_Allgatherv: rank r's <paramref name="sendCount"/> elements land at <paramref name="displacements"/>[r] in <paramref name="recv"/>.</summary>
    public void Allgatherv(void* send, int sendCount, void* recv, ReadOnlySpan<int> recvCounts, ReadOnlySpan<int> displacements, MpiDataType type)
    {
        CheckLengths("MPI_Allgatherv", recvCounts.Length, displacements.Length);
        nint t = Mpi.Handle(type);
        fixed (int* counts = recvCounts)
        fixed (int* displs = displacements)
            Mpi.Check(Mpi.Native.MPI_Allgatherv(send, sendCount, t, recv, counts, displs, t, Handle), $"MPI_Allgatherv({Name}, {sendCount} × {type})");
    }

    /// <summary>MPI_Alltoallv: this rank sends sendCounts[r] elements from sendDispls[r] to rank r and receives recvCounts[r] from rank r at recvDispls[r].</summary>
    public void Alltoallv(void* send, ReadOnlySpan<int> sendCounts, ReadOnlySpan<int> sendDispls, void* recv, ReadOnlySpan<int> recvCounts, ReadOnlySpan<int> recvDispls, MpiDataType type)
    {
        CheckLengths("MPI_Alltoallv", sendCounts.Length, sendDispls.Length);
        CheckLengths("MPI_Alltoallv", recvCounts.Length, recvDispls.Length);
        nint t = Mpi.Handle(type);
        fixed (int* sc = sendCounts)
        fixed (int* sd = sendDispls)
        fixed (int* rc = recvCounts)
        fixed (int* rd = recvDispls)
            Mpi.Check(Mpi.Native.MPI_Alltoallv(send, sc, sd, t, recv, rc, rd, t, Handle), $"MPI_Alltoallv({Name}, {type})");
    }

    private void CheckLengths(string call, int counts, int displacements)
    {
        if (counts != Size || displacements != Size)
            throw new ArgumentException($"{call}({Name}): {counts} counts and {displacements} displacements for {Size} ranks");
    }

    /// <summary>MPI_Comm_free for a split communicator (not after MPI_Finalize, when MPI has freed everything).</summary>
    public void Dispose()
    {
        if (!_owned || _handle == 0) return;
        nint handle = _handle;
        _handle = 0;
        if (Mpi.IsFinalized) return;
        Mpi.Check(Mpi.Native.MPI_Comm_free(&handle), $"MPI_Comm_free({Name})");
    }

    public override string ToString() => $"{Name} (rank {Rank} of {Size})";
}
