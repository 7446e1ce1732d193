using Sdp.Engine;
using Sdp.Engine.Backends.Cuda;
using Sdp.Engine.Distributed;
using Sdp.Kernels.Cuda;
using Sdp.Tests.Support;
using static Sdp.Tests.Distributed.CommTestSupport;

namespace Sdp.Tests.Cuda;

/// <summary>
/// The NCCL communicator on 2–4 devices (emulated: CUDAEMU_DEVICES defaults to 4; real: as many GPUs as the
/// test needs, else ignored) against the in-process communicator on the same inputs. NCCL may add in another
/// order than ascending ranks, so sums agree to float32 rounding (relative 1e-6), broadcasts exactly.
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable]
public class NcclCommunicatorTests
{
    private const int N = 37;
    private readonly CudaImplementation _impl;
    private CudaApi _api = null!;
    private readonly List<CudaBackend> _backends = [];

    public NcclCommunicatorTests(CudaImplementation implementation) => _impl = implementation;

    [OneTimeSetUp]
    public void Load() => _api = CudaDevices.Load(_impl);

    [OneTimeTearDown]
    public void Close()
    {
        foreach (var b in _backends) b.Dispose();
    }

    /// <summary>Backends on devices 0..w-1, opened once and shared by the tests.</summary>
    private CudaBackend[] Devices(int w)
    {
        int count;
        unsafe { _api.Check(_api.cuDeviceGetCount(&count)); }
        if (count < w) Assert.Ignore($"{w} ranks need {w} devices; the {_api} has {count}");
        while (_backends.Count < w) _backends.Add(CudaBackend.Open(_backends.Count, _api));
        return [.. _backends.Take(w)];
    }

    private static float[] Values(int mask, int rank) => RandomFloats(100 * mask + rank, N);

    [Test]
    public void Groups_all_reduce_and_broadcast_as_the_in_process_communicator_does([Values(2, 3, 4)] int w)
    {
        int masks = (1 << w) - 1;
        int[] Members(int mask) => [.. Enumerable.Range(0, w).Where(r => (mask >> r & 1) == 1)];

        float[][][] Run(IReadOnlyList<ICommunicator> comms, Func<int, float[], Tensor> upload)
        {
            var results = new float[w][][];
            RunAll(comms, (r, c) =>
            {
                var groups = Enumerable.Range(1, masks).Select(m => c.CreateGroup(Members(m))).ToArray();
                results[r] = new float[2 * masks][];
                for (int m = 1; m <= masks; m++)
                {
                    if (groups[m - 1] is not { } g) continue;
                    using var sum = upload(r, Values(m, r));
                    g.AllReduceSum(sum);
                    results[r][2 * (m - 1)] = sum.ToArray<float>();
                    using var cast = upload(r, Values(-m, r));
                    g.Broadcast(cast, g.Ranks[^1]);
                    results[r][2 * (m - 1) + 1] = cast.ToArray<float>();
                }
                c.Barrier();
            });
            return results;
        }

        var devices = Devices(w);
        var nccl = NcclCommunicator.Create(devices, TimeSpan.FromSeconds(20));
        float[][][] got, expected;
        try
        {
            got = Run(nccl, (r, v) => Tensor.FromArray(v, new Shape(N), devices[r]));
        }
        finally
        {
            foreach (var c in nccl) c.Dispose();
        }
        expected = Run(InProcessCommunicator.Create(w), (r, v) => Tensor.FromArray(v, new Shape(N), Backends.Cpu));

        Assert.Multiple(() =>
        {
            for (int r = 0; r < w; r++)
            {
                Assert.That(nccl[r].Stats.GroupsCreated, Is.EqualTo(1 + (1 << (w - 1))), $"rank {r}: the world and the subsets containing it");
                for (int i = 0; i < 2 * masks; i++)
                {
                    if (expected[r][i] is null)
                    {
                        Assert.That(got[r][i], Is.Null, $"rank {r} is not in group {i / 2 + 1}");
                        continue;
                    }
                    DeviceTestData.AssertClose(expected[r][i], got[r][i], i % 2 == 0 ? 1e-6 : 0, 0, $"rank {r}, group mask {i / 2 + 1}, {(i % 2 == 0 ? "all-reduce" : "broadcast")}");
                }
            }
        });
    }

    [Test]
    public void Creating_different_groups_at_the_same_call_fails_naming_both()
    {
        var devices = Devices(2);
        var comms = NcclCommunicator.Create(devices);
        try
        {
            Assert.That(comms[0].CreateGroup([0, 1]), Is.Not.Null);
            var e = Assert.Throws<InvalidOperationException>(() => comms[1].CreateGroup([1]));
            Assert.That(e!.Message, Does.Contain("rank 1 asked for group [1] but rank 0 asked for [0, 1]"));
            Assert.Throws<OperationCanceledException>(() => comms[0].World.AllReduceSum(Tensor.Zeros(new Shape(1), DType.Float32, devices[0])));
        }
        finally
        {
            foreach (var c in comms) c.Dispose();
        }
    }

    [Test]
    public void Abort_wakes_a_rank_that_waits_in_a_collective()
    {
        var devices = Devices(2);
        var comms = NcclCommunicator.Create(devices, TimeSpan.FromSeconds(60));
        try
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var errors = RunRanks(comms, (r, c) =>
            {
                if (r == 1)
                {
                    Thread.Sleep(300);
                    c.Abort("rank 1 failed its step");
                    return;
                }
                using var buf = Tensor.Zeros(new Shape(4), DType.Float32, devices[0]);
                c.World.AllReduceSum(buf);
                devices[0].Synchronize();
            });
            Assert.That(errors[0], Is.Not.Null, "the waiting rank fails");
            Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(30)), "well before the 60 s timeout");
        }
        finally
        {
            foreach (var c in comms) c.Dispose();
        }
    }

    [Test]
    public void Workers_sharing_a_device_or_a_foreign_buffer_are_refused()
    {
        var devices = Devices(2);
        using var twin = CudaBackend.Open(0, _api);
        var e = Assert.Throws<ArgumentException>(() => NcclCommunicator.Create([devices[0], twin]));
        Assert.That(e!.Message, Does.Contain("share cuda:0").And.Contain("one device per rank"));

        var comms = NcclCommunicator.Create(devices);
        try
        {
            using var onOther = Tensor.Zeros(new Shape(2), DType.Float32, devices[1]);
            var wrong = Assert.Throws<ArgumentException>(() => comms[0].World.AllReduceSum(onOther));
            Assert.That(wrong!.Message, Does.Contain("not on the rank's device"));
        }
        finally
        {
            foreach (var c in comms) c.Dispose();
        }
    }
}
