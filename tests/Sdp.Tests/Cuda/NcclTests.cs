using Sdp.Engine;
using Sdp.Engine.Distributed;
using Sdp.Kernels.Cuda;
using static Sdp.Tests.Distributed.CommTestSupport;

namespace Sdp.Tests.Cuda;

/// <summary>
/// NCCL on 2–4 emulated devices, one thread driving every rank inside ncclGroupStart/End (as a one-process
/// trainer does): all-reduce sums equal the in-process communicator's fixed-order sums bitwise, broadcasts,
/// holder-set sub-communicators by ncclCommSplit, and the errors that must be errors rather than hangs:
/// a buffer of another device, a count mismatch, a rank that never posts.
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable] // the emulated devices are process-wide
public unsafe class NcclTests
{
    private readonly CudaImplementation _impl;

    public NcclTests(CudaImplementation implementation) => _impl = implementation;

    private const int N = 37;
    private CudaContext[] _ctx = null!;
    private NcclApi _nccl = null!;

    [OneTimeSetUp]
    public void SetUp()
    {
        CudaApi api = CudaDevices.Load(_impl);
        int count;
        api.Check(api.cuDeviceGetCount(&count));
        if (count < 4)
        {
            Assert.Ignore(_impl == CudaImplementation.Emulated
                ? $"the emulator has {count} devices (CUDAEMU_DEVICES); these tests need 4"
                : $"the machine has {count} CUDA device(s); these tests need 4");
        }
        _ctx = [.. Enumerable.Range(0, 4).Select(d => CudaContext.Open(api, d))];
        _nccl = api.Nccl;
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        if (_ctx is null) return;
        foreach (var c in _ctx) c.Dispose();
    }

    private static float[] Values(int seed, int n) => RandomFloats(seed, n).Select((v, i) => v * MathF.Pow(10, (seed * 3 + i) % 9 - 4)).ToArray();

    private DeviceBuffer Upload<T>(int device, T[] x) where T : unmanaged => DeviceTestData.Upload(_ctx[device], x);

    private static void DisposeAll(IEnumerable<IDisposable?> xs)
    {
        foreach (var x in xs) x?.Dispose();
    }

    [Test]
    public void Version_and_ranks_of_InitAll()
    {
        Assert.That(_nccl.Version, Is.GreaterThanOrEqualTo(21000));
        NcclComm[] comms = NcclComm.InitAll(_ctx);
        try
        {
            for (int r = 0; r < 4; r++)
            {
                Assert.That((comms[r].Rank, comms[r].Count, comms[r].Context.Device), Is.EqualTo((r, 4, r)));
                Assert.That(comms[r].AsyncError, Is.EqualTo(NcclResult.Success));
            }
        }
        finally { DisposeAll(comms); }
    }

    [Test]
    public void AllReduceSum_float32_equals_the_in_process_communicator_bitwise([Values(2, 3, 4)] int w)
    {
        // Reference: Sdp's in-process communicator, one thread per rank, fixed ascending-rank order.
        var inProcess = new float[w][];
        RunAll(InProcessCommunicator.Create(w), (r, c) =>
        {
            using var t = Tensor.FromArray(Values(r, N), new Shape(N));
            c.World.AllReduceSum(t);
            inProcess[r] = t.ToArray<float>();
        });

        NcclComm[] comms = NcclComm.InitAll(_ctx[..w]);
        DeviceBuffer[] bufs = [.. Enumerable.Range(0, w).Select(r => Upload(r, Values(r, N)))];
        try
        {
            NcclComm.Group(_nccl, () =>
            {
                for (int r = 0; r < w; r++) comms[r].AllReduceSum(bufs[r], NcclDataType.Float32);
            });
            for (int r = 0; r < w; r++)
                Assert.That(bufs[r].ToArray<float>().Select(BitConverter.SingleToInt32Bits), Is.EqualTo(inProcess[0].Select(BitConverter.SingleToInt32Bits)).AsCollection, $"rank {r}");
        }
        finally { DisposeAll(bufs); DisposeAll(comms); }
    }

    [Test]
    public void AllReduceSum_float64_out_of_place_is_the_fixed_order_sum()
    {
        const int w = 3;
        double[] V(int r) => [.. Values(r + 10, N).Select((v, i) => v * Math.PI + i * 1e-9)];
        var expected = V(0);
        for (int r = 1; r < w; r++)
        {
            var v = V(r);
            for (int i = 0; i < N; i++) expected[i] += v[i];
        }
        NcclComm[] comms = NcclComm.InitAll(_ctx[..w]);
        DeviceBuffer[] send = [.. Enumerable.Range(0, w).Select(r => Upload(r, V(r)))];
        DeviceBuffer[] recv = [.. Enumerable.Range(0, w).Select(r => DeviceBuffer.Allocate<double>(_ctx[r], N))];
        try
        {
            NcclComm.Group(_nccl, () =>
            {
                for (int r = 0; r < w; r++) comms[r].AllReduceSum(send[r], recv[r], N, NcclDataType.Float64);
            });
            for (int r = 0; r < w; r++)
            {
                Assert.That(recv[r].ToArray<double>(), Is.EqualTo(expected).AsCollection, $"rank {r}");
                Assert.That(send[r].ToArray<double>(), Is.EqualTo(V(r)).AsCollection, "send buffers are not written");
            }
        }
        finally { DisposeAll(send); DisposeAll(recv); DisposeAll(comms); }
    }

    [Test]
    public void Broadcast_copies_the_root_to_every_rank([Values(0, 2)] int root)
    {
        const int w = 3;
        NcclComm[] comms = NcclComm.InitAll(_ctx[..w]);
        DeviceBuffer[] bufs = [.. Enumerable.Range(0, w).Select(r => Upload(r, r == root ? Values(7, N) : Enumerable.Repeat(float.NaN, N).ToArray()))];
        try
        {
            NcclComm.Group(_nccl, () =>
            {
                for (int r = 0; r < w; r++) comms[r].Broadcast(bufs[r], NcclDataType.Float32, root);
            });
            for (int r = 0; r < w; r++) Assert.That(bufs[r].ToArray<float>(), Is.EqualTo(Values(7, N)).AsCollection, $"rank {r}");
        }
        finally { DisposeAll(bufs); DisposeAll(comms); }
    }

    [Test]
    public void Split_into_holder_sets_gives_members_a_communicator_and_others_null()
    {
        // Holder set H = {0, 2, 3} of a 4-rank world (color 0), rank 1 holds nothing (NCCL_SPLIT_NOCOLOR);
        // keys reverse the order so the new ranks are 3 -> 0, 2 -> 1, 0 -> 2.
        NcclComm[] world = NcclComm.InitAll(_ctx);
        NcclComm?[] held = NcclComm.SplitAll(world, [0, -1, 0, 0], [30, 0, 20, 10]);
        // Two disjoint pairs {0, 1} and {2, 3} (colors 5 and 9), keys equal: ordered by world rank.
        NcclComm?[] pairs = NcclComm.SplitAll(world, [5, 5, 9, 9], [0, 0, 0, 0]);
        DeviceBuffer[] bufs = [.. Enumerable.Range(0, 4).Select(r => Upload(r, Values(20 + r, N)))];
        DeviceBuffer[] pairBufs = [.. Enumerable.Range(0, 4).Select(r => Upload(r, Values(30 + r, N)))];
        try
        {
            Assert.That(held[1], Is.Null);
            Assert.That(new[] { held[0]!.Rank, held[2]!.Rank, held[3]!.Rank }, Is.EqualTo(new[] { 2, 1, 0 }));
            Assert.That(held[0]!.Count, Is.EqualTo(3));
            Assert.That(pairs.Select(p => (p!.Rank, p.Count)), Is.EqualTo(new[] { (0, 2), (1, 2), (0, 2), (1, 2) }));
            NcclComm.Group(_nccl, () =>
            {
                foreach (int r in new[] { 0, 2, 3 }) held[r]!.AllReduceSum(bufs[r], NcclDataType.Float32);
                for (int r = 0; r < 4; r++) pairs[r]!.AllReduceSum(pairBufs[r], NcclDataType.Float32);
            });
            // ascending order of the new ranks: world 3, then 2, then 0
            float[] a3 = Values(23, N), a2 = Values(22, N), a0 = Values(20, N);
            float[] heldSum = [.. Enumerable.Range(0, N).Select(i => a3[i] + a2[i] + a0[i])];
            foreach (int r in new[] { 0, 2, 3 }) Assert.That(bufs[r].ToArray<float>(), Is.EqualTo(heldSum).AsCollection, $"held rank {r}");
            Assert.That(bufs[1].ToArray<float>(), Is.EqualTo(Values(21, N)).AsCollection, "the non-member's buffer is untouched");
            for (int r = 0; r < 4; r++)
            {
                int lo = r & ~1;
                float[] x = Values(30 + lo, N), y = Values(31 + lo, N);
                Assert.That(pairBufs[r].ToArray<float>(), Is.EqualTo(Enumerable.Range(0, N).Select(i => x[i] + y[i])).AsCollection, $"pair rank {r}");
            }
        }
        finally { DisposeAll(bufs); DisposeAll(pairBufs); DisposeAll(held); DisposeAll(pairs); DisposeAll(world); }
    }

    [Test]
    public void InitRank_rendezvous_on_the_unique_id_one_thread_per_rank()
    {
        const int w = 2;
        NcclUniqueId id = NcclComm.NewUniqueId(_nccl);
        var results = new float[w][];
        var errors = new Exception?[w];
        var threads = Enumerable.Range(0, w).Select(r => new Thread(() =>
        {
            try
            {
                using NcclComm comm = NcclComm.InitRank(_ctx[r], w, id, r);
                Assert.That(comm.Rank, Is.EqualTo(r));
                using DeviceBuffer buf = Upload(r, Values(40 + r, N));
                comm.AllReduceSum(buf, NcclDataType.Float32);  // no group: this thread is one rank
                results[r] = buf.ToArray<float>();
            }
            catch (Exception e) { errors[r] = e; }
        })).ToArray();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) t.Join();
        Assert.That(errors, Is.All.Null);
        float[] x = Values(40, N), y = Values(41, N);
        for (int r = 0; r < w; r++) Assert.That(results[r], Is.EqualTo(Enumerable.Range(0, N).Select(i => x[i] + y[i])).AsCollection);
    }

    [Test]
    public void A_buffer_of_another_device_is_rejected()
    {
        CudaDevices.RequireEmulated(_impl, "the emulator's argument check (real NCCL may not detect it)");
        NcclComm[] comms = NcclComm.InitAll(_ctx[..2]);
        using DeviceBuffer wrong = DeviceBuffer.Allocate<float>(_ctx[1], N);
        try
        {
            var e = Assert.Throws<NcclException>(() => comms[0].AllReduceSum(wrong, NcclDataType.Float32))!;
            Assert.That(e.Result, Is.EqualTo(NcclResult.InvalidArgument));
            Assert.That(e.Message, Does.Contain("ncclAllReduce").And.Contain("device 1").And.Contain("device 0"));
        }
        finally { DisposeAll(comms); }
    }

    [Test]
    public void A_count_mismatch_is_a_clear_error_on_every_rank()
    {
        CudaDevices.RequireEmulated(_impl, "real NCCL hangs on a count mismatch");
        NcclComm[] comms = NcclComm.InitAll(_ctx[..2]);
        DeviceBuffer[] bufs = [.. Enumerable.Range(0, 2).Select(r => DeviceBuffer.Allocate<float>(_ctx[r], N))];
        try
        {
            var e = Assert.Throws<NcclException>(() => NcclComm.Group(_nccl, () =>
            {
                comms[0].AllReduceSum(bufs[0], bufs[0], N, NcclDataType.Float32);
                comms[1].AllReduceSum(bufs[1], bufs[1], N - 1, NcclDataType.Float32);
            }))!;
            Assert.That(e.Result, Is.EqualTo(NcclResult.InvalidUsage));
            Assert.That(e.Message, Does.Contain("ncclGroupEnd").And.Contain("count").And.Contain($"count {N}").And.Contain($"count {N - 1}"));
            Assert.That(comms[0].AsyncError, Is.EqualTo(NcclResult.Success), "a mismatch is reported where it is detected, not left behind");
        }
        finally { DisposeAll(bufs); DisposeAll(comms); }
    }

    [Test]
    public void A_rank_that_never_posts_times_out_with_a_message_and_abort_fails_the_peers()
    {
        CudaDevices.RequireEmulated(_impl, "real NCCL hangs on a rank that never posts");
        if (_nccl.cudaemuNcclSetTimeout == null) Assert.Ignore("needs the emulator's timeout override");
        NcclComm[] comms = NcclComm.InitAll(_ctx[..2]);
        using DeviceBuffer buf = DeviceBuffer.Allocate<float>(_ctx[0], N);
        _nccl.cudaemuNcclSetTimeout(200);
        try
        {
            var e = Assert.Throws<NcclException>(() => NcclComm.Group(_nccl, () => comms[0].AllReduceSum(buf, NcclDataType.Float32)))!;
            Assert.That(e.Message, Does.Contain("timed out").And.Contain("rank(s) 1"));
            Assert.That(comms[0].AsyncError, Is.Not.EqualTo(NcclResult.Success));
            comms[1].Abort();
            e = Assert.Throws<NcclException>(() => comms[0].AllReduceSum(buf, NcclDataType.Float32))!;
            Assert.That(e.Message, Does.Contain("aborted"));
        }
        finally
        {
            _nccl.cudaemuNcclSetTimeout(0);
            DisposeAll(comms);
        }
    }
}
