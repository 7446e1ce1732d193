using System.CommandLine;
using System.Globalization;
using System.Security.Cryptography;
using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Backends.Cuda;
using Sdp.Engine.Distributed;
using Sdp.Kernels.Cuda;
using Sdp.Kernels.Mpi;

namespace Sdp.Cli.Commands;

/// <summary>
/// `sdp comm-check` (hidden): the multi-process check of <see cref="MpiCommunicator"/> (<c>--transport mpi</c>,
/// the default) and of <see cref="NcclCommunicator.CreateForProcess"/> (<c>--transport nccl</c>: each rank opens
/// CUDA device <see cref="NcclCommunicator.DeviceForLocalRank"/> as <c>SDP_CUDA</c> chooses, the emulated one
/// without a GPU, uploads its inputs there and downloads the results to hash them), run by the tests under
/// <c>mpirun -np W</c>. Every rank creates the world and one group per non-empty proper subset of the ranks (all
/// up front, every rank calling CreateGroup for every group), then, on every group it belongs to, all-reduces
/// rank-seeded inputs of each dtype (<see cref="Input"/>, which the test regenerates to compute the in-process
/// sums) and broadcasts from every member; then a barrier. Each rank writes its results to
/// <c>DIR/rank-R.txt</c> (one file per rank, so mpirun's merged output cannot interleave them): SHA-256 of the
/// raw bits of every result, and its <see cref="CommStats"/>. <c>--fail mismatch</c> makes rank 0 ask for a
/// different group than the others; <c>--fail abort</c> makes <c>--abort-rank</c> abort while the others wait
/// in a barrier, <c>--fail abort-collective</c> while they wait in a world all-reduce; <c>--fail hang</c> (nccl)
/// makes it sleep while the others wait in the all-reduce until the emulated NCCL's <c>--timeout</c>;
/// <c>--fail mismatch-count</c> makes it all-reduce a buffer of another length than the others.
/// </summary>
public static class CommCheckCommand
{
    /// <summary>Element counts of the all-reduce inputs: one not divisible by the group sizes, one smaller than most groups.</summary>
    public static readonly int[] AllReduceSizes = [1001, 2];

    /// <summary>Element count of the broadcast buffers.</summary>
    public const int BroadcastSize = 37;

    public static readonly DType[] DTypes = [DType.Float32, DType.Float64, DType.Int32, DType.Int64];

    public static Command Create()
    {
        var output = new Option<string>("--out") { Description = "Directory for rank-R.txt", Required = true };
        var seed = new Option<int>("--seed") { Description = "Seed of the inputs", DefaultValueFactory = _ => 1 };
        var fail = new Option<string>("--fail") { Description = "none, mismatch, mismatch-count, abort, abort-collective or hang", DefaultValueFactory = _ => "none" };
        var abortRank = new Option<int>("--abort-rank") { Description = "The rank that aborts with --fail abort", DefaultValueFactory = _ => 1 };
        var segment = new Option<int>("--segment") { Description = "MpiCommunicator's segment size in elements", DefaultValueFactory = _ => MpiCommunicator.DefaultSegmentElements };
        var transport = new Option<string>("--transport") { Description = "mpi (MpiCommunicator on the CPU) or nccl (NcclCommunicator, one CUDA device per process)", DefaultValueFactory = _ => "mpi" };
        var timeout = new Option<int>("--timeout") { Description = "With --transport nccl: the emulated NCCL's collective timeout in seconds", DefaultValueFactory = _ => 30 };
        var grouped = new Option<bool>("--grouped") { Description = "With --transport nccl: each group's all-reduces in one ncclGroupStart/ncclGroupEnd" };
        var cmd = new Command("comm-check", "Check MpiCommunicator or NcclCommunicator under mpirun (tests)") { output, seed, fail, abortRank, segment, transport, timeout, grouped };
        cmd.Hidden = true;
        cmd.SetAction(p => Run(p.GetValue(output)!, p.GetValue(seed), p.GetValue(fail)!, p.GetValue(abortRank), p.GetValue(segment), p.GetValue(transport)!,
            p.GetValue(timeout), p.GetValue(grouped)));
        return cmd;
    }

    /// <summary>The groups the check makes, by index: 0 is the world, then every non-empty proper subset of [0, W) by bit mask.</summary>
    public static IReadOnlyList<int[]> Groups(int worldSize)
    {
        var groups = new List<int[]> { Enumerable.Range(0, worldSize).ToArray() };
        for (int mask = 1; mask < (1 << worldSize) - 1; mask++)
            groups.Add([.. Enumerable.Range(0, worldSize).Where(r => (mask & (1 << r)) != 0)]);
        return groups;
    }

    /// <summary>
    /// Rank <paramref name="rank"/>'s input for group <paramref name="group"/>: floats of magnitudes 1e-3 to 1e3
    /// and both signs (so the order of the additions shows in the bits), integers over the full range (so sums wrap).
    /// </summary>
    public static Tensor Input(int seed, int rank, int group, DType dtype, int numel)
    {
        // Deterministic across processes (HashCode.Combine is seeded per process).
        long mix = seed;
        foreach (int part in (int[])[rank, group, (int)dtype, numel]) mix = unchecked(mix * 1_000_003 + part);
        var rng = new Random((int)(mix & int.MaxValue));
        var shape = new Shape(numel);
        double Float() => (rng.NextDouble() * 2 - 1) * Math.Pow(10, rng.Next(-3, 4));
        return dtype switch
        {
            DType.Float32 => Tensor.FromArray(Enumerable.Range(0, numel).Select(_ => (float)Float()).ToArray(), shape, CpuBackend.Instance),
            DType.Float64 => Tensor.FromArray(Enumerable.Range(0, numel).Select(_ => Float()).ToArray(), shape, CpuBackend.Instance),
            DType.Int32 => Tensor.FromArray(Enumerable.Range(0, numel).Select(_ => rng.Next(int.MinValue, int.MaxValue)).ToArray(), shape, CpuBackend.Instance),
            _ => Tensor.FromArray(Enumerable.Range(0, numel).Select(_ => rng.NextInt64(long.MinValue, long.MaxValue)).ToArray(), shape, CpuBackend.Instance),
        };
    }

    /// <summary>SHA-256 (hex) of a tensor's raw bytes (downloaded first when it lives on a device).</summary>
    public static unsafe string Hash(Tensor t)
    {
        if (t.Storage is not CpuStorage)
        {
            using var host = t.To(CpuBackend.Instance);
            return Hash(host);
        }
        var cpu = (CpuStorage)t.Storage;
        return Convert.ToHexString(SHA256.HashData(new ReadOnlySpan<byte>(cpu.Pointer + t.ByteOffset, checked((int)t.ByteLength))));
    }

    private static int Run(string dir, int seed, string fail, int abortRank, int segment, string transport, int timeoutSeconds, bool grouped)
    {
        if (fail is not ("none" or "mismatch" or "mismatch-count" or "abort" or "abort-collective" or "hang"))
            throw new UsageException($"--fail: expected none, mismatch, mismatch-count, abort, abort-collective or hang, got '{fail}'");
        if (grouped && transport != "nccl") throw new UsageException("--grouped needs --transport nccl (ncclGroupStart/ncclGroupEnd)");
        if (fail == "hang" && transport != "nccl") throw new UsageException("--fail hang needs --transport nccl (the emulated NCCL's timeout ends the wait)");
        if (segment < 1) throw new UsageException($"--segment: expected a positive element count, got {segment}");
        if (timeoutSeconds < 1) throw new UsageException($"--timeout: expected a positive number of seconds, got {timeoutSeconds}");
        switch (transport)
        {
            case "mpi":
            {
                using var comm = MpiCommunicator.Create(segment);
                return Check(comm, $"thread {comm.ThreadLevel}", CpuBackend.Instance, dir, seed, fail, abortRank);
            }
            case "nccl":
                return RunNccl(dir, seed, fail, abortRank, TimeSpan.FromSeconds(timeoutSeconds), grouped);
            default:
                throw new UsageException($"--transport: expected mpi or nccl, got '{transport}'");
        }
    }

    /// <summary>
    /// The check on <see cref="NcclCommunicator.CreateForProcess"/>, bootstrapped over MPI_COMM_WORLD. A failure
    /// before the communicator exists (no device, ncclCommInitRank) ends the job with MPI_Abort naming the rank,
    /// so that no rank waits for it.
    /// </summary>
    private static int RunNccl(string dir, int seed, string fail, int abortRank, TimeSpan timeout, bool grouped)
    {
        bool ownsMpi = !Mpi.IsInitialized;
        if (Mpi.Init(MpiThreadLevel.Multiple) < MpiThreadLevel.Serialized)
            throw new InvalidOperationException("comm-check: MPI provides less than MPI_THREAD_SERIALIZED");
        MpiComm world = Mpi.World;
        CudaBackend? backend = null;
        NcclCommunicator? comm = null;
        try
        {
            var api = Cuda.Load();
            int count;
            unsafe { api.Check(api.cuDeviceGetCount(&count)); }
            backend = CudaBackend.Open(NcclCommunicator.DeviceForLocalRank(count), api);
            comm = NcclCommunicator.CreateForProcess(backend, world, timeout);
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"sdp: rank {world.Rank} of {world.Size} aborted the job: comm-check could not set up NCCL: {e.Message}");
            Console.Error.Flush();
            Mpi.Abort(1);
        }
        try
        {
            return Check(comm!, $"nccl {(backend!.IsEmulated ? "emulated" : "real")}", backend, dir, seed, fail, abortRank,
                grouped ? (group, buffers) => comm!.AllReduceSum([.. buffers.Select(b => (group, b))]) : null);
        }
        finally
        {
            comm?.Dispose();
            backend?.Dispose();
            if (ownsMpi) Mpi.Shutdown();
        }
    }

    /// <summary>The check itself, on any communicator whose buffers live on <paramref name="device"/>; with
    /// <paramref name="grouped"/>, each group's all-reduces go through it in one call.</summary>
    private static int Check(ICommunicator comm, string header, IBackend device, string dir, int seed, string fail, int abortRank,
        Action<ICommGroup, IReadOnlyList<Tensor>>? grouped = null)
    {
        int rank = comm.Rank, w = comm.WorldSize;
        Directory.CreateDirectory(dir);
        var lines = new List<string> { $"rank {rank} size {w} {header}" };
        // Inputs are made on the CPU (the same bits the test regenerates) and moved to the device.
        Tensor OnDevice(Tensor host)
        {
            if (ReferenceEquals(device, host.Backend)) return host;
            using (host) return host.To(device);
        }
        try
        {
            if (fail == "mismatch")
            {
                if (w < 3) throw new UsageException("--fail mismatch needs at least 3 ranks");
                comm.CreateGroup(rank == 0 ? [0, 1] : [0, w - 1]);
                throw new InvalidOperationException("CreateGroup accepted disagreeing lists");
            }
            if (fail == "abort")
            {
                comm.Barrier();
                if (rank == abortRank) comm.Abort($"comm-check: deliberate abort by rank {rank}");
                comm.Barrier(); // never completes: the aborting rank does not come
                throw new InvalidOperationException("the barrier returned although a rank aborted");
            }
            if (fail == "mismatch-count")
            {
                // Rank --abort-rank all-reduces a shorter buffer than the others: NCCL does not promise to notice;
                // the emulated NCCL must fail every rank naming the difference instead of hanging.
                using var t = OnDevice(Input(seed, rank, 0, DType.Float32, rank == abortRank ? AllReduceSizes[1] : AllReduceSizes[0]));
                comm.World.AllReduceSum(t);
                throw new InvalidOperationException("an all-reduce of different counts returned");
            }
            if (fail is "abort-collective" or "hang")
            {
                // The others wait inside a world all-reduce (and the barrier after it, where NCCL runs asynchronously):
                // MPI_Abort must end them there too, and a hung rank must be caught by the NCCL timeout.
                comm.Barrier();
                if (rank == abortRank)
                {
                    if (fail == "hang") Thread.Sleep(TimeSpan.FromMinutes(5));
                    else comm.Abort($"comm-check: deliberate abort by rank {rank}");
                }
                using var t = OnDevice(Input(seed, rank, 0, DType.Float32, AllReduceSizes[0]));
                comm.World.AllReduceSum(t);
                comm.Barrier();
                throw new InvalidOperationException($"the all-reduce returned although rank {abortRank} {(fail == "hang" ? "hangs" : "aborted")}");
            }

            var specs = Groups(w);
            var groups = new ICommGroup?[specs.Count];
            groups[0] = comm.World;
            for (int g = 1; g < specs.Count; g++) groups[g] = comm.CreateGroup(specs[g]);
            for (int g = 0; g < specs.Count; g++)
            {
                var group = groups[g];
                if (group is null) continue;
                string members = string.Join(",", group.Ranks);
                var cases = DTypes.SelectMany(dtype => AllReduceSizes.Select(numel => (DType: dtype, Numel: numel))).ToArray();
                if (grouped is not null)
                {
                    // Every case of the group in one grouped call: the same results, the same lines.
                    var buffers = cases.Select(c => OnDevice(Input(seed, rank, g, c.DType, c.Numel))).ToArray();
                    grouped(group, buffers);
                    for (int i = 0; i < cases.Length; i++) lines.Add($"allreduce {g} {members} {cases[i].DType.Name()} {cases[i].Numel} {Hash(buffers[i])}");
                    foreach (var b in buffers) b.Dispose();
                }
                else
                {
                    foreach (var (dtype, numel) in cases)
                    {
                        using var t = OnDevice(Input(seed, rank, g, dtype, numel));
                        group.AllReduceSum(t);
                        lines.Add($"allreduce {g} {members} {dtype.Name()} {numel} {Hash(t)}");
                    }
                }
                foreach (int root in group.Ranks)
                {
                    using var t = OnDevice(Input(seed, rank, g, DType.Float32, BroadcastSize));
                    group.Broadcast(t, root);
                    lines.Add($"broadcast {g} {members} {root} {Hash(t)}");
                }
            }
            comm.Barrier();
            var s = comm.Stats;
            lines.Add(string.Create(CultureInfo.InvariantCulture, $"stats {s.BytesSent:R} {s.AllReduces} {s.Broadcasts} {s.Barriers} {s.GroupsCreated}"));
            foreach (var group in groups.Skip(1)) group?.Dispose();
            File.WriteAllLines(Path.Combine(dir, $"rank-{rank}.txt"), lines);
            Console.WriteLine($"comm-check: rank {rank} of {w} ok ({lines.Count - 2} results)");
            return 0;
        }
        catch (CollectiveMismatchException e)
        {
            // Thrown alike on every rank: report it and shut MPI down cleanly (MPI_Finalize as the communicator goes).
            Console.Error.WriteLine($"sdp: rank {rank}: {e.Message}");
            return 3;
        }
        catch (Exception e) when (e is not UsageException)
        {
            comm.Abort(e.Message);
            return 1;
        }
    }
}
