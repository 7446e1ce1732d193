using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using Sdp.Engine.Backends.Cpu;
using Sdp.Kernels.Mpi;

namespace Sdp.Engine.Distributed;

/// <summary>
/// One process's rank of a world of processes joined by MPI (Open MPI, through <see cref="Mpi"/>): run the
/// program under <c>mpirun -np W</c> and make one per process with <see cref="Create"/>. The world is
/// MPI_COMM_WORLD; each <see cref="CreateGroup"/> is one MPI_Comm_split over the world (color 1 for the members,
/// MPI_UNDEFINED for the others), preceded by an all-gather of every rank's list, so ranks that disagree all fail
/// with the same message naming both lists instead of splitting into mismatched communicators.
///
/// <para><b>Ordered reduction.</b> MPI_Allreduce promises neither the order of the additions nor that every rank
/// gets the same bits, but check A13 (holders bit-identical) needs both, and the in-process simulation adds the
/// ranks' buffers in ascending rank order. <see cref="ICommGroup.AllReduceSum"/> is therefore a reduce-scatter
/// plus all-gather built from data movement only: the buffer is cut into n near-equal chunks, chunk q owned by
/// group position q; an MPI_Alltoallv hands every owner all n copies of its chunk, which it adds in ascending
/// rank order (((b₀ + b₁) + b₂) + …, in the buffer's dtype, exactly <see cref="InProcessCommunicator"/>'s
/// sum); an MPI_Allgatherv returns the summed chunks to everyone. No MPI reduction operator touches the values,
/// so the result is the same bits on every rank and equal to the in-process sum. Each rank sends
/// 2(n−1)/n · B bytes (the ring model that <see cref="CommStats"/> counts, and the bandwidth optimum) and needs
/// one chunk-set of scratch, where gathering every rank's whole buffer would send (n−1) · B and hold n · B.
/// Buffers are processed in segments of at most <see cref="SegmentElements"/> elements, which bounds the scratch
/// and keeps MPI's int counts in range.</para>
///
/// <para>Tensors on the CPU backend are read and written in place through their <see cref="CpuStorage"/>
/// pointer; tensors on any other device are staged through host memory (Download, collective, Upload). Device
/// buffers between GPUs belong to NCCL (issue 10's NcclCommunicator).</para>
///
/// <para>Collectives must be called from one thread at a time (MPI_THREAD_SERIALIZED is required; MPI_THREAD_MULTIPLE
/// is requested). <see cref="Abort(string)"/> is MPI_Abort: it prints the reason naming the rank and ends every process of
/// the job with a non-zero code.</para>
/// </summary>
public sealed unsafe class MpiCommunicator : ICommunicator, IProcessGroup, IDisposable
{
    /// <summary>The default of <see cref="SegmentElements"/>: 16 Mi elements.</summary>
    public const int DefaultSegmentElements = 1 << 24;

    private readonly MpiComm _world;
    private readonly bool _ownsMpi;
    private readonly List<Group> _groups = [];
    private int _groupCalls;
    private bool _disposed;

    private MpiCommunicator(MpiComm world, MpiThreadLevel threadLevel, bool ownsMpi, int segmentElements)
    {
        _world = world;
        SegmentElements = segmentElements;
        _ownsMpi = ownsMpi;
        ThreadLevel = threadLevel;
        Rank = world.Rank;
        WorldSize = world.Size;
        World = new Group(this, world, [.. Enumerable.Range(0, WorldSize)], isWorld: true);
        Stats.AddGroup();
    }

    /// <summary>
    /// Initialises MPI in this process (MPI_Init_thread asking for MPI_THREAD_MULTIPLE) unless already done, and
    /// returns this process's rank of MPI_COMM_WORLD. Throws when Open MPI is missing or provides less than
    /// MPI_THREAD_SERIALIZED. Disposing it frees its groups and, when it initialised MPI, calls MPI_Finalize.
    /// <paramref name="segmentElements"/> (default <see cref="DefaultSegmentElements"/>) sets
    /// <see cref="SegmentElements"/>; every rank must pass the same.
    /// </summary>
    public static MpiCommunicator Create(int segmentElements = DefaultSegmentElements)
    {
        if (segmentElements < 1) throw new ArgumentOutOfRangeException(nameof(segmentElements), $"MpiCommunicator: segment size must be at least 1 element, got {segmentElements}");
        bool wasInitialized = Mpi.IsInitialized;
        var level = Mpi.Init(MpiThreadLevel.Multiple);
        if (level < MpiThreadLevel.Serialized)
            throw new InvalidOperationException($"MpiCommunicator: MPI provides thread level {level}; Sdp needs at least MPI_THREAD_SERIALIZED (its collectives may run on any one thread at a time)");
        return new MpiCommunicator(Mpi.World, level, ownsMpi: !wasInitialized, segmentElements);
    }

    public int Rank { get; }

    public int WorldSize { get; }

    public ICommGroup World { get; }

    public CommStats Stats { get; } = new();

    int IProcessGroup.Size => WorldSize;

    /// <summary>MPI_Allgather of doubles over the world (control-plane traffic: not counted in <see cref="Stats"/>).</summary>
    public double[] AllGather(ReadOnlySpan<double> values)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var all = new double[values.Length * WorldSize];
        fixed (double* send = values)
        fixed (double* receive = all)
            _world.Allgather(send, receive, values.Length, MpiDataType.Float64);
        return all;
    }

    /// <summary>
    /// Elements per reduce-scatter/all-gather round and per MPI_Bcast: bounds the all-reduce's scratch (one
    /// segment) and keeps MPI's int counts in range.
    /// </summary>
    public int SegmentElements { get; }

    /// <summary>The thread support MPI_Init_thread provided (asked: MPI_THREAD_MULTIPLE).</summary>
    public MpiThreadLevel ThreadLevel { get; }

    public ICommGroup? CreateGroup(IReadOnlyList<int> ranks)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        int[] sorted = InProcessCommunicator.SortedMembers(ranks, WorldSize);
        int call = ++_groupCalls;
        GroupAgreement.Check(_world, call, sorted);
        bool member = Array.BinarySearch(sorted, Rank) >= 0;
        var comm = _world.Split(member ? 1 : null, key: Rank, $"group {InProcessCommunicator.Format(sorted)}");
        if (!member) return null;
        if (comm is null || comm.Size != sorted.Length || comm.Rank != Array.BinarySearch(sorted, Rank))
            throw new InvalidOperationException($"CreateGroup call {call}: MPI_Comm_split gave rank {Rank} {(comm is null ? "no communicator" : $"rank {comm.Rank} of {comm.Size}")} for group {InProcessCommunicator.Format(sorted)}");
        Stats.AddGroup();
        var group = new Group(this, comm, sorted, isWorld: false);
        _groups.Add(group);
        return group;
    }

    public void Barrier()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _world.Barrier();
        Stats.AddBarrier();
    }

    /// <summary>Prints the reason to stderr naming this rank, then MPI_Abort(MPI_COMM_WORLD, 1): every process of the job ends. Does not return.</summary>
    public void Abort(string reason) => Abort(reason, 1);

    /// <summary>Prints the reason to stderr naming this rank, then MPI_Abort(MPI_COMM_WORLD, <paramref name="exitCode"/>). Does not return.</summary>
    public void Abort(string reason, int exitCode)
    {
        Console.Out.Flush();
        Console.Error.WriteLine($"sdp: rank {Rank} of {WorldSize} aborted the job: {reason}");
        Console.Error.Flush();
        Mpi.Abort(exitCode);
    }

    /// <summary>Frees the groups (MPI_Comm_free) and, when <see cref="Create"/> initialised MPI, calls MPI_Finalize (collective).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var g in _groups) g.Dispose();
        if (_ownsMpi) Mpi.Shutdown();
    }

    public override string ToString() => $"MPI rank {Rank} of {WorldSize}";

    private static MpiDataType TypeOf(DType dtype) => dtype switch
    {
        DType.Float32 => MpiDataType.Float32,
        DType.Float64 => MpiDataType.Float64,
        DType.Int32 => MpiDataType.Int32,
        DType.Int64 => MpiDataType.Int64,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "MpiCommunicator: unsupported dtype"),
    };

    /// <summary>One rank's handle on an MPI communicator over <paramref name="ranks"/> (world ranks, ascending; MPI rank = position).</summary>
    private sealed class Group(MpiCommunicator owner, MpiComm comm, int[] ranks, bool isWorld) : ICommGroup
    {
        private bool _disposed;

        public IReadOnlyList<int> Ranks => ranks;

        public int Position { get; } = Array.BinarySearch(ranks, owner.Rank);

        public void AllReduceSum(Tensor buffer)
        {
            ArgumentNullException.ThrowIfNull(buffer);
            Check();
            if (ranks.Length > 1)
            {
                using var host = HostView.Of(buffer);
                switch (buffer.DType)
                {
                    case DType.Float32: OrderedAllReduce<float>(host.Pointer, buffer.Numel); break;
                    case DType.Float64: OrderedAllReduce<double>(host.Pointer, buffer.Numel); break;
                    case DType.Int32: OrderedAllReduce<int>(host.Pointer, buffer.Numel); break;
                    default: OrderedAllReduce<long>(host.Pointer, buffer.Numel); break;
                }
                host.WriteBack();
            }
            owner.Stats.AddAllReduce(buffer.ByteLength, ranks.Length);
        }

        public void Broadcast(Tensor buffer, int root)
        {
            ArgumentNullException.ThrowIfNull(buffer);
            int rootPosition = Array.BinarySearch(ranks, root);
            if (rootPosition < 0) throw new ArgumentException($"Broadcast: root {root} is not in group {InProcessCommunicator.Format(ranks)}");
            Check();
            if (ranks.Length > 1)
            {
                using var host = HostView.Of(buffer, readFirst: root == owner.Rank);
                int size = buffer.DType.ElementSize();
                var type = TypeOf(buffer.DType);
                for (long start = 0; start < buffer.Numel; start += owner.SegmentElements)
                {
                    int count = (int)Math.Min(owner.SegmentElements, buffer.Numel - start);
                    comm.Bcast(host.Pointer + start * size, count, type, rootPosition);
                }
                host.WriteBack();
            }
            owner.Stats.AddBroadcast(buffer.ByteLength, root == owner.Rank);
        }

        /// <summary>The ordered reduce-scatter + all-gather of the class summary, segment by segment.</summary>
        private void OrderedAllReduce<T>(byte* data, long numel) where T : unmanaged, INumber<T>
        {
            int n = ranks.Length, p = Position;
            var type = TypeOf(DTypeExtensions.Of<T>());
            var starts = new int[n];
            var lengths = new int[n];
            var recvCounts = new int[n];
            var recvDispls = new int[n];
            int maxChunk = (int)((Math.Min(numel, owner.SegmentElements) + n - 1) / n);
            T* scratch = (T*)NativeMemory.Alloc((nuint)Math.Max(1, (long)maxChunk * n), (nuint)sizeof(T));
            try
            {
                for (long segment = 0; segment < numel; segment += owner.SegmentElements)
                {
                    int m = (int)Math.Min(owner.SegmentElements, numel - segment);
                    T* seg = (T*)data + segment;
                    for (int q = 0; q < n; q++)
                    {
                        starts[q] = (int)((long)q * m / n);
                        lengths[q] = (int)((long)(q + 1) * m / n) - starts[q];
                    }
                    int mine = lengths[p];
                    for (int q = 0; q < n; q++)
                    {
                        recvCounts[q] = mine;
                        recvDispls[q] = q * mine;
                    }
                    // Reduce-scatter: owner p receives every rank's copy of chunk p, rank q's at q·mine.
                    comm.Alltoallv(seg, lengths, starts, scratch, recvCounts, recvDispls, type);
                    // Ascending rank order, in T: acc = ((c₀ + c₁) + c₂) + …
                    var acc = new Span<T>(scratch, mine);
                    for (int q = 1; q < n; q++)
                        TensorPrimitives.Add(acc, new ReadOnlySpan<T>(scratch + (long)q * mine, mine), acc);
                    // All-gather: every rank gets every owner's summed chunk in place.
                    comm.Allgatherv(scratch, mine, seg, lengths, starts, type);
                }
            }
            finally
            {
                NativeMemory.Free(scratch);
            }
        }

        private void Check() => ObjectDisposedException.ThrowIf(_disposed || owner._disposed, this);

        /// <summary>Subgroups end with their Dispose (MPI_Comm_free); the world lives as long as MPI.</summary>
        public void Dispose()
        {
            if (isWorld || _disposed) return;
            _disposed = true;
            comm.Dispose();
        }

        public override string ToString() => $"MPI group {InProcessCommunicator.Format(ranks)} on rank {owner.Rank}";
    }

    /// <summary>
    /// A tensor's elements as host memory: its own memory for a CPU tensor; otherwise a host copy (downloaded
    /// when <c>readFirst</c>) that <see cref="WriteBack"/> uploads to the device.
    /// </summary>
    private readonly struct HostView : IDisposable
    {
        private readonly Tensor _tensor;
        private readonly bool _staged;

        private HostView(Tensor tensor, byte* pointer, bool staged)
        {
            _tensor = tensor;
            Pointer = pointer;
            _staged = staged;
        }

        public byte* Pointer { get; }

        public static HostView Of(Tensor t, bool readFirst = true)
        {
            if (t.Storage is CpuStorage cpu) return new HostView(t, cpu.Pointer + t.ByteOffset, staged: false);
            byte* host = (byte*)NativeMemory.Alloc((nuint)Math.Max(1, t.ByteLength));
            if (readFirst)
            {
                int n = checked((int)t.Numel);
                switch (t.DType)
                {
                    case DType.Float32: t.Backend.Download(t, new Span<float>(host, n)); break;
                    case DType.Float64: t.Backend.Download(t, new Span<double>(host, n)); break;
                    case DType.Int32: t.Backend.Download(t, new Span<int>(host, n)); break;
                    default: t.Backend.Download(t, new Span<long>(host, n)); break;
                }
            }
            return new HostView(t, host, staged: true);
        }

        public void WriteBack()
        {
            if (!_staged) return;
            int n = checked((int)_tensor.Numel);
            switch (_tensor.DType)
            {
                case DType.Float32: _tensor.Backend.Upload(new ReadOnlySpan<float>(Pointer, n), _tensor); break;
                case DType.Float64: _tensor.Backend.Upload(new ReadOnlySpan<double>(Pointer, n), _tensor); break;
                case DType.Int32: _tensor.Backend.Upload(new ReadOnlySpan<int>(Pointer, n), _tensor); break;
                default: _tensor.Backend.Upload(new ReadOnlySpan<long>(Pointer, n), _tensor); break;
            }
        }

        public void Dispose()
        {
            if (_staged) NativeMemory.Free(Pointer);
        }
    }
}
