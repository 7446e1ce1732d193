using Sdp.Engine.Backends.Cuda;
using Sdp.Kernels.Cuda;
using Sdp.Kernels.Mpi;

namespace Sdp.Engine.Distributed;

/// <summary>
/// NCCL communicators for workers on CUDA devices, in two forms. Either way rank r's buffers live on its own
/// backend and its collectives (ncclAllReduce, ncclBroadcast) are queued on that backend's stream, so they are
/// ordered with the worker's kernels and need no host wait. NCCL reduces in its own order (ring or tree), so sums
/// may differ from <see cref="InProcessCommunicator"/>'s ascending-rank order in the last bits (the emulated
/// device adds in ascending rank order in both forms).
/// <list type="bullet">
/// <item><b>In-process</b> (<see cref="Create"/>): one process drives W devices, one thread per rank. The world
/// is one ncclCommInitAll; each group of <see cref="CreateGroup"/> is a further ncclCommInitAll over its
/// members' devices, made by the first member to ask, from its own thread (one process owns every rank, so no
/// rendezvous is needed), and checked against what every other rank asks for at the same call. Workers that
/// share a device cannot be NCCL ranks of one communicator; they use the in-process communicator.</item>
/// <item><b>One process per rank</b> (<see cref="CreateForProcess"/>, NCCL's "one device per process" pattern,
/// under mpirun or srun): rank 0 makes the ncclUniqueId and MPI_Bcast ships it over the bootstrap communicator,
/// then every process joins the world with ncclCommInitRank. Each <see cref="CreateGroup"/> is one
/// ncclCommSplit of the world (members color 0, the others NCCL_SPLIT_NOCOLOR, key = world rank), preceded by
/// an all-gather of every rank's list over MPI (<see cref="GroupAgreement"/>), so ranks that disagree all fail
/// alike. <see cref="Barrier"/> waits for this rank's stream, checks ncclCommGetAsyncError, then MPI_Barrier;
/// a failed collective or an asynchronous error aborts this rank's communicators (ncclCommAbort), as NCCL
/// requires before anything else; <see cref="Abort"/> ends the whole job (MPI_Abort). Each process uses GPU
/// <see cref="DeviceForLocalRank"/>. On the emulated device the communicators travel over MPI between the
/// processes (its cross-process mode), which is how CI runs this form without a GPU.</item>
/// </list>
/// Collectives run on the compute stream itself rather than on a communication stream that waits on an event of
/// it: every caller (the gradient buckets of HolderGroupedSync included) uses the result right after the
/// collective, on the compute stream, so a second stream would need a wait back at once and overlap nothing, and
/// the driver table has no cuStreamWaitEvent (the emulated device runs every launch to completion, so it could
/// not check that ordering either).
/// </summary>
public sealed class NcclCommunicator : ICommunicator, IDisposable
{
    private readonly Shared? _shared;
    private readonly ProcessWorld? _process;
    private readonly CudaBackend _backend;
    private readonly List<Group> _groups = [];
    private int _groupCalls;

    private NcclCommunicator(Shared world, int rank, NcclComm comm)
    {
        _shared = world;
        Rank = rank;
        WorldSize = world.Backends.Count;
        _backend = world.Backends[rank];
        World = new Group(this, comm, [.. Enumerable.Range(0, WorldSize)], isWorld: true);
        Stats.AddGroup();
    }

    private NcclCommunicator(ProcessWorld world, CudaBackend backend)
    {
        _process = world;
        Rank = world.Bootstrap.Rank;
        WorldSize = world.Bootstrap.Size;
        _backend = backend;
        World = new Group(this, world.WorldComm, [.. Enumerable.Range(0, WorldSize)], isWorld: true);
        Stats.AddGroup();
    }

    public int Rank { get; }

    public int WorldSize { get; }

    public ICommGroup World { get; }

    public CommStats Stats { get; } = new();

    /// <summary>Whether this is the one-process-per-rank form (<see cref="CreateForProcess"/>).</summary>
    public bool IsMultiProcess => _process is not null;

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

    /// <summary>
    /// This process's rank of a world of processes (<paramref name="bootstrap"/>.Rank of .Size), on
    /// <paramref name="backend"/>'s device: rank 0 makes the ncclUniqueId, MPI_Bcast over
    /// <paramref name="bootstrap"/> ships it, and every rank joins with ncclCommInitRank (collective: every
    /// process of <paramref name="bootstrap"/> calls this at the same point). MPI must be initialised (the caller
    /// owns it; disposing the communicator leaves MPI alone). <paramref name="timeout"/> bounds a collective's
    /// wait on the emulated device; real NCCL waits until the communicator is aborted (the trainer's watchdog).
    /// </summary>
    public static unsafe NcclCommunicator CreateForProcess(CudaBackend backend, MpiComm bootstrap, TimeSpan? timeout = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(bootstrap);
        NcclApi nccl = backend.Context.Api.Nccl;
        if (timeout is { } t) nccl.TrySetEmulatorTimeout(t);

        // The id travels with a success flag, so that a failure of ncclGetUniqueId on rank 0 fails every rank
        // at once instead of leaving the others in ncclCommInitRank with no id.
        const int idBytes = 128;
        byte* message = stackalloc byte[1 + idBytes];
        new Span<byte>(message, 1 + idBytes).Clear();
        NcclException? failure = null;
        if (bootstrap.Rank == 0)
        {
            try
            {
                NcclUniqueId made = NcclComm.NewUniqueId(nccl);
                ((ReadOnlySpan<byte>)made).CopyTo(new Span<byte>(message + 1, idBytes));
                message[0] = 1;
            }
            catch (NcclException e)
            {
                failure = e;
            }
        }
        bootstrap.Bcast(message, 1 + idBytes, MpiDataType.Byte, root: 0);
        if (message[0] == 0)
        {
            if (failure is not null) throw failure;
            throw new InvalidOperationException($"NcclCommunicator: rank 0 of {bootstrap.Size} could not make the NCCL unique id (its ncclGetUniqueId failed; see rank 0's error)");
        }
        NcclUniqueId id = default;
        new ReadOnlySpan<byte>(message + 1, idBytes).CopyTo(id);

        NcclComm comm = NcclComm.InitRank(backend.Context, bootstrap.Size, id, bootstrap.Rank);
        if (comm.Rank != bootstrap.Rank || comm.Count != bootstrap.Size)
        {
            comm.Abort();
            throw new InvalidOperationException($"NcclCommunicator: ncclCommInitRank made rank {comm.Rank} of {comm.Count} for process {bootstrap.Rank} of {bootstrap.Size}");
        }
        return new NcclCommunicator(new ProcessWorld(bootstrap, comm), backend);
    }

    /// <summary>
    /// The CUDA device a process of a multi-process job uses: its node-local rank (<see cref="Mpi.LocalRank"/>,
    /// from mpirun, srun or MPICH) modulo the node's <paramref name="deviceCount"/>; 0 without a launcher.
    /// </summary>
    public static int DeviceForLocalRank(int deviceCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(deviceCount, 1);
        return (Mpi.LocalRank() ?? 0) % deviceCount;
    }

    public ICommGroup? CreateGroup(IReadOnlyList<int> ranks)
    {
        int[] sorted = InProcessCommunicator.SortedMembers(ranks, WorldSize);
        int call = ++_groupCalls;
        NcclComm? comm = _process is { } process ? process.Split(Rank, call, sorted) : _shared!.Join(Rank, call, sorted);
        if (comm is null) return null;
        Stats.AddGroup();
        var group = new Group(this, comm, sorted, isWorld: false);
        _groups.Add(group);
        return group;
    }

    /// <summary>
    /// In-process: an all-reduce of one int over the world, then a wait for this rank's stream. One process per
    /// rank: a wait for this rank's stream, ncclCommGetAsyncError of every communicator, then MPI_Barrier.
    /// </summary>
    public void Barrier()
    {
        if (_process is { } process)
        {
            process.ThrowIfAborted("Barrier");
            _backend.Synchronize();
            process.CheckAsyncErrors();
            process.Bootstrap.Barrier();
        }
        else
        {
            ((Group)World).AllReduceTokens();
            _backend.Synchronize();
        }
        Stats.AddBarrier();
    }

    /// <summary>
    /// In-process: fails every pending and later collective of the world (ncclCommAbort). One process per rank:
    /// prints the reason naming this rank (as <see cref="MpiCommunicator.Abort(string)"/> does), aborts this rank's
    /// communicators, then MPI_Abort ends every process of the job. Does not return in that form.
    /// </summary>
    public void Abort(string reason)
    {
        if (_process is { } process)
        {
            Console.Out.Flush();
            Console.Error.WriteLine($"sdp: rank {Rank} of {WorldSize} aborted the job: {reason}");
            Console.Error.Flush();
            process.AbortCommunicators(reason);
            Mpi.Abort(1);
            return;
        }
        _shared!.Abort($"rank {Rank} aborted the group: {reason}");
    }

    /// <summary>
    /// All-reduces each buffer on its group (groups of this communicator), posted inside one
    /// ncclGroupStart/ncclGroupEnd so NCCL launches them together (a step's gradient buckets); each buffer is
    /// summed on its own, as if all-reduced alone.
    /// </summary>
    public void AllReduceSum(IReadOnlyList<(ICommGroup Group, Tensor Buffer)> buffers)
    {
        ArgumentNullException.ThrowIfNull(buffers);
        var posts = new List<(Group Group, Tensor Buffer)>(buffers.Count);
        foreach (var (group, buffer) in buffers)
        {
            if (group is not Group mine || !ReferenceEquals(mine.Owner, this))
                throw new ArgumentException($"AllReduceSum: {group} is not a group of {this}");
            mine.CheckBuffer("AllReduceSum", buffer);
            posts.Add((mine, buffer));
        }
        var called = posts.Where(p => p.Group.CallsNccl).ToList();
        if (called.Count > 0)
            Collective("AllReduceSum (grouped)", () => NcclComm.Group(_backend.Context.Api.Nccl, () =>
            {
                foreach (var (group, buffer) in called) group.PostAllReduce(buffer);
            }));
        foreach (var (group, buffer) in posts) Stats.AddAllReduce(buffer.ByteLength, group.Ranks.Count);
    }

    public override string ToString() => $"NCCL rank {Rank} of {WorldSize}{(IsMultiProcess ? " (one process per rank)" : "")}";

    private void ThrowIfAborted(string what)
    {
        if (_process is { } process) process.ThrowIfAborted(what);
        else _shared!.ThrowIfAborted(what);
    }

    /// <summary>Runs one NCCL call; in the multi-process form a failure first aborts this rank's communicators
    /// (NCCL's rule after an error: the communicator is unusable, and ranks waiting on it must be released).</summary>
    private void Collective(string what, Action call)
    {
        try
        {
            call();
        }
        catch (NcclException e) when (_process is not null)
        {
            _process.AbortCommunicators($"{what} failed on rank {Rank}: {e.Message}");
            throw;
        }
    }

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

        /// <summary>
        /// A one-rank group skips NCCL in the in-process form; the multi-process form always calls it, so a job of
        /// one process (the GPU check's one-rank NCCL group) still runs NCCL's path.
        /// </summary>
        public bool CallsNccl => ranks.Length > 1 || owner.IsMultiProcess;

        public NcclCommunicator Owner => owner;

        public void AllReduceSum(Tensor buffer)
        {
            CheckBuffer("AllReduceSum", buffer);
            if (CallsNccl) owner.Collective("AllReduceSum", () => PostAllReduce(buffer));
            owner.Stats.AddAllReduce(buffer.ByteLength, ranks.Length);
        }

        /// <summary>ncclAllReduce (sum, in place) of the buffer on the backend's stream.</summary>
        public void PostAllReduce(Tensor buffer) => comm.AllReduceSum(owner._backend.Ptr(buffer), buffer.Numel, TypeOf(buffer), owner._backend.Stream);

        public void CheckBuffer(string op, Tensor buffer)
        {
            ArgumentNullException.ThrowIfNull(buffer);
            Check(op, buffer);
        }

        public void Broadcast(Tensor buffer, int root)
        {
            ArgumentNullException.ThrowIfNull(buffer);
            int rootPosition = Array.BinarySearch(ranks, root);
            if (rootPosition < 0) throw new ArgumentException($"Broadcast: root {root} is not in group {InProcessCommunicator.Format(ranks)}");
            Check("Broadcast", buffer);
            if (CallsNccl)
                owner.Collective("Broadcast", () => comm.Broadcast(owner._backend.Ptr(buffer), buffer.Numel, TypeOf(buffer), rootPosition, owner._backend.Stream));
            owner.Stats.AddBroadcast(buffer.ByteLength, root == owner.Rank);
        }

        /// <summary>The barrier's collective: a one-int all-reduce on a buffer kept for it.</summary>
        public void AllReduceTokens()
        {
            owner.ThrowIfAborted("Barrier");
            _token ??= Tensor.Zeros(new Shape(1), DType.Int32, owner._backend);
            if (ranks.Length > 1) comm.AllReduceSum(owner._backend.Ptr(_token), 1, NcclDataType.Int32, owner._backend.Stream);
        }

        private void Check(string op, Tensor buffer)
        {
            ObjectDisposedException.ThrowIf(_released, this);
            owner.ThrowIfAborted($"{op} over ranks {InProcessCommunicator.Format(ranks)}");
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
    /// <summary>
    /// The multi-process form's state on this rank: the MPI communicator that bootstrapped it, the world's NCCL
    /// communicator, every communicator split from it (to abort them all), and the abort state.
    /// </summary>
    private sealed class ProcessWorld(MpiComm bootstrap, NcclComm worldComm)
    {
        private readonly List<NcclComm> _all = [worldComm];
        private string? _aborted;

        public MpiComm Bootstrap { get; } = bootstrap;

        public NcclComm WorldComm { get; } = worldComm;

        /// <summary>
        /// Rank <paramref name="rank"/>'s <paramref name="call"/>-th CreateGroup: the lists agree on every rank
        /// (<see cref="GroupAgreement"/>), then one ncclCommSplit of the world (collective over it) gives the
        /// members their communicator, ordered by world rank, and the others null.
        /// </summary>
        public NcclComm? Split(int rank, int call, int[] sorted)
        {
            ThrowIfAborted("CreateGroup");
            GroupAgreement.Check(Bootstrap, call, sorted);
            int position = Array.BinarySearch(sorted, rank);
            const int NoColor = -1; // NCCL_SPLIT_NOCOLOR (nccl.h)
            NcclComm? child;
            try
            {
                child = WorldComm.Split(position >= 0 ? 0 : NoColor, key: rank);
            }
            catch (NcclException e)
            {
                AbortCommunicators($"CreateGroup call {call} failed on rank {rank}: {e.Message}");
                throw;
            }
            if (child is not null) _all.Add(child);
            bool right = position >= 0 ? child is not null && child.Count == sorted.Length && child.Rank == position : child is null;
            if (!right)
                throw new InvalidOperationException($"CreateGroup call {call}: ncclCommSplit gave rank {rank} {(child is null ? "no communicator" : $"rank {child.Rank} of {child.Count}")} for group {InProcessCommunicator.Format(sorted)}");
            return child;
        }

        /// <summary>ncclCommGetAsyncError of every live communicator; an error aborts them all and throws naming it.</summary>
        public void CheckAsyncErrors()
        {
            foreach (var comm in _all)
            {
                if (comm.IsClosed) continue;
                NcclResult error = comm.AsyncError;
                if (error == NcclResult.Success) continue;
                string what = $"ncclCommGetAsyncError: rank {comm.Rank} of a {comm.Count}-rank NCCL communicator reports {error}";
                AbortCommunicators(what);
                throw new NcclException(error, "ncclCommGetAsyncError", what);
            }
        }

        /// <summary>ncclCommAbort on every communicator of this rank (once); later collectives fail with the reason.</summary>
        public void AbortCommunicators(string reason)
        {
            if (_aborted is not null) return;
            _aborted = reason;
            foreach (var comm in _all) comm.Abort();
        }

        public void ThrowIfAborted(string what)
        {
            if (_aborted is not null) throw new OperationCanceledException($"{what}: {_aborted}");
        }
    }
}
