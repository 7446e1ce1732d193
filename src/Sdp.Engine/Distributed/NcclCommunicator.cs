using Sdp.Engine.Backends.Cuda;
using Sdp.Kernels.Cuda;

namespace Sdp.Engine.Distributed;

/// <summary>
/// Communicators for W workers in one process, each on its own CUDA device, through NCCL: rank r's buffers
/// live on backends[r] and its collectives are queued on that backend's stream (ncclAllReduce, ncclBroadcast),
/// so they are ordered with the worker's kernels and need no host wait. The world is one ncclCommInitAll;
/// each group of <see cref="CreateGroup"/> is a further ncclCommInitAll over its members' devices, made by the
/// first member to ask, from its own thread (one process owns every rank, so no rendezvous is needed), and
/// checked against what every other rank asks for at the same call. NCCL reduces in its own order (ring or
/// tree), so sums may differ from <see cref="InProcessCommunicator"/>'s ascending-rank order in the last bits.
/// Workers that share a device cannot be NCCL ranks of one communicator; they use the in-process communicator.
/// The multi-process form (one process per GPU, ids shipped over MPI) is a later step.
/// </summary>
public sealed class NcclCommunicator : ICommunicator, IDisposable
{
    private readonly Shared _world;
    private readonly CudaBackend _backend;
    private readonly List<Group> _groups = [];
    private int _groupCalls;

    private NcclCommunicator(Shared world, int rank, NcclComm comm)
    {
        _world = world;
        Rank = rank;
        _backend = world.Backends[rank];
        World = new Group(this, comm, [.. Enumerable.Range(0, world.Backends.Count)], isWorld: true);
        Stats.AddGroup();
    }

    public int Rank { get; }

    public int WorldSize => _world.Backends.Count;

    public ICommGroup World { get; }

    public CommStats Stats { get; } = new();

    /// <summary>
    /// One communicator per backend (rank r on backends[r]); the devices must be distinct and of one CUDA
    /// implementation. <paramref name="timeout"/> bounds a collective's wait on the emulated device (real NCCL
    /// waits until the communicator is aborted).
    /// </summary>
    public static NcclCommunicator[] Create(IReadOnlyList<CudaBackend> backends, TimeSpan? timeout = null)
    {
        ArgumentNullException.ThrowIfNull(backends);
        if (backends.Count == 0) throw new ArgumentException("NcclCommunicator: no devices");
        string? why = WhyNot(backends);
        if (why is not null) throw new ArgumentException($"NcclCommunicator: {why}");
        var api = backends[0].Context.Api;
        if (timeout is { } t) api.Nccl.TrySetEmulatorTimeout(t);
        var world = new Shared(backends);
        NcclComm[] comms = world.Track(NcclComm.InitAll([.. backends.Select(b => b.Context)]));
        var result = new NcclCommunicator[backends.Count];
        for (int r = 0; r < result.Length; r++) result[r] = new NcclCommunicator(world, r, comms[r]);
        return result;
    }

    /// <summary>Why <paramref name="backends"/> cannot form one NCCL world (null when they can).</summary>
    public static string? WhyNot(IReadOnlyList<CudaBackend> backends)
    {
        var api = backends[0].Context.Api;
        if (backends.Any(b => b.Context.Api != api)) return "the workers' devices mix CUDA implementations (real and emulated)";
        var shared = backends.GroupBy(b => b.Device).FirstOrDefault(g => g.Count() > 1);
        return shared is null ? null : $"{shared.Count()} workers share {shared.Key}; NCCL needs one device per rank";
    }

    public ICommGroup? CreateGroup(IReadOnlyList<int> ranks)
    {
        int[] sorted = InProcessCommunicator.SortedMembers(ranks, WorldSize);
        NcclComm? comm = _world.Join(Rank, ++_groupCalls, sorted);
        if (comm is null) return null;
        Stats.AddGroup();
        var group = new Group(this, comm, sorted, isWorld: false);
        _groups.Add(group);
        return group;
    }

    /// <summary>An all-reduce of one int over the world, then a wait for this rank's stream.</summary>
    public void Barrier()
    {
        ((Group)World).AllReduceTokens();
        _backend.Synchronize();
        Stats.AddBarrier();
    }

    public void Abort(string reason) => _world.Abort($"rank {Rank} aborted the group: {reason}");

    public void Dispose()
    {
        foreach (var g in _groups) g.Dispose();
        ((Group)World).Release();
    }

    /// <summary>One rank's handle on an NCCL communicator over <paramref name="ranks"/> (world ranks, ascending).</summary>
    private sealed class Group(NcclCommunicator owner, NcclComm comm, int[] ranks, bool isWorld) : ICommGroup
    {
        private bool _released;
        private Tensor? _token;

        public IReadOnlyList<int> Ranks => ranks;

        public int Position { get; } = Array.BinarySearch(ranks, owner.Rank);

        public void AllReduceSum(Tensor buffer)
        {
            ArgumentNullException.ThrowIfNull(buffer);
            Check("AllReduceSum", buffer);
            if (ranks.Length > 1) comm.AllReduceSum(owner._backend.Ptr(buffer), buffer.Numel, TypeOf(buffer), owner._backend.Stream);
            owner.Stats.AddAllReduce(buffer.ByteLength, ranks.Length);
        }

        public void Broadcast(Tensor buffer, int root)
        {
            ArgumentNullException.ThrowIfNull(buffer);
            int rootPosition = Array.BinarySearch(ranks, root);
            if (rootPosition < 0) throw new ArgumentException($"Broadcast: root {root} is not in group {InProcessCommunicator.Format(ranks)}");
            Check("Broadcast", buffer);
            if (ranks.Length > 1) comm.Broadcast(owner._backend.Ptr(buffer), buffer.Numel, TypeOf(buffer), rootPosition, owner._backend.Stream);
            owner.Stats.AddBroadcast(buffer.ByteLength, root == owner.Rank);
        }

        /// <summary>The barrier's collective: a one-int all-reduce on a buffer kept for it.</summary>
        public void AllReduceTokens()
        {
            owner._world.ThrowIfAborted("Barrier");
            _token ??= Tensor.Zeros(new Shape(1), DType.Int32, owner._backend);
            if (ranks.Length > 1) comm.AllReduceSum(owner._backend.Ptr(_token), 1, NcclDataType.Int32, owner._backend.Stream);
        }

        private void Check(string op, Tensor buffer)
        {
            ObjectDisposedException.ThrowIf(_released, this);
            owner._world.ThrowIfAborted($"{op} over ranks {InProcessCommunicator.Format(ranks)}");
            if (!ReferenceEquals(buffer.Backend, owner._backend))
                throw new ArgumentException($"{op}: rank {owner.Rank}'s buffer {buffer} lives on {buffer.Backend}, not on the rank's device {owner._backend}");
        }

        private static NcclDataType TypeOf(Tensor t) => t.DType switch
        {
            DType.Float32 => NcclDataType.Float32,
            DType.Float64 => NcclDataType.Float64,
            DType.Int32 => NcclDataType.Int32,
            _ => NcclDataType.Int64,
        };

        /// <summary>Subgroups end with their Dispose; the world lives as long as the communicator.</summary>
        public void Dispose()
        {
            if (!isWorld) Release();
        }

        public void Release()
        {
            if (_released) return;
            _released = true;
            _token?.Dispose();
            comm.Dispose(); // after an abort the handle is already released

        }

        public override string ToString() => $"NCCL group {InProcessCommunicator.Format(ranks)} on rank {owner.Rank}";
    }

    /// <summary>What the ranks of one world share: their devices, the groups made so far, and the abort state.</summary>
    private sealed class Shared(IReadOnlyList<CudaBackend> backends)
    {
        private readonly Lock _gate = new();
        private readonly List<(int[] Ranks, int By, NcclComm[] Comms)> _groups = [];
        private string? _aborted;

        public IReadOnlyList<CudaBackend> Backends { get; } = backends;

        /// <summary>Rank <paramref name="rank"/>'s <paramref name="call"/>-th CreateGroup: its communicator, or null when not a member.</summary>
        public NcclComm? Join(int rank, int call, int[] ranks)
        {
            lock (_gate)
            {
                ThrowIfAborted("CreateGroup");
                if (call > _groups.Count)
                {
                    var comms = Track(NcclComm.InitAll([.. ranks.Select(r => Backends[r].Context)]));
                    _groups.Add((ranks, rank, comms));
                }
                var (first, by, made) = _groups[call - 1];
                if (!first.AsSpan().SequenceEqual(ranks))
                {
                    string error = $"CreateGroup call {call}: rank {rank} asked for group {InProcessCommunicator.Format(ranks)} but rank {by} asked for {InProcessCommunicator.Format(first)}; every rank must create the same groups in the same order";
                    _aborted ??= error;
                    throw new InvalidOperationException(error);
                }
                int position = Array.BinarySearch(ranks, rank);
                return position < 0 ? null : made[position];
            }
        }

        private readonly List<NcclComm> _all = [];

        public NcclComm[] Track(NcclComm[] comms)
        {
            lock (_gate) _all.AddRange(comms);
            return comms;
        }

        /// <summary>Fails every pending and later collective: ncclCommAbort wakes the ranks that wait in one.</summary>
        public void Abort(string reason)
        {
            List<NcclComm> comms;
            lock (_gate)
            {
                if (_aborted is not null) return;
                _aborted = reason;
                comms = [.. _all];
            }
            foreach (var c in comms) c.Abort();
        }

        public void ThrowIfAborted(string what)
        {
            lock (_gate)
            {
                if (_aborted is not null) throw new OperationCanceledException($"{what}: {_aborted}");
            }
        }
    }
}
