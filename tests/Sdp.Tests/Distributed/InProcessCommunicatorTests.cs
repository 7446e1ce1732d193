using Sdp.Engine;
using Sdp.Engine.Distributed;
using static Sdp.Tests.Distributed.CommTestSupport;

namespace Sdp.Tests.Distributed;

public class InProcessCommunicatorTests
{
    private const int N = 15; // buffers are (3, 5)

    /// <summary>Reference: ((v_g0 + v_g1) + v_g2) + ... in float32, ranks ascending.</summary>
    private static float[] FixedOrderSum(IEnumerable<int> group, Func<int, float[]> values)
    {
        var ranks = group.OrderBy(r => r).ToArray();
        var acc = (float[])values(ranks[0]).Clone();
        foreach (var r in ranks.Skip(1))
        {
            var v = values(r);
            for (int i = 0; i < acc.Length; i++) acc[i] += v[i];
        }
        return acc;
    }

    [Test]
    public void AllReduceSum_over_the_world_is_the_fixed_order_sum_on_every_rank([Values(1, 2, 3, 4)] int w)
    {
        var comms = InProcessCommunicator.Create(w);
        var results = new float[w][];
        RunAll(comms, (r, c) =>
        {
            using var buf = Tensor.FromArray(RandomFloats(r, N), new Shape(3, 5));
            c.AllReduceSum(buf, Enumerable.Range(0, w).ToArray());
            results[r] = buf.ToArray<float>();
        });
        var expected = FixedOrderSum(Enumerable.Range(0, w), r => RandomFloats(r, N));
        for (int r = 0; r < w; r++) Assert.That(results[r], Is.EqualTo(expected).AsCollection, $"rank {r}");
    }

    [Test]
    public void AllReduceSum_over_subgroups_touches_only_the_group()
    {
        // W = 4: {0, 2} and {3, 1} (unordered list) reduce concurrently, then {0, 1, 2}; rank 3 sits the second one out.
        var comms = InProcessCommunicator.Create(4);
        var first = new float[4][];
        var second = new float[4][];
        RunAll(comms, (r, c) =>
        {
            using var buf = Tensor.FromArray(RandomFloats(r, N), new Shape(3, 5));
            c.AllReduceSum(buf, r % 2 == 0 ? [0, 2] : [3, 1]);
            first[r] = buf.ToArray<float>();
            using var b2 = Tensor.FromArray(RandomFloats(10 + r, N), new Shape(15));
            if (r != 3) c.AllReduceSum(b2, [2, 0, 1]);
            second[r] = b2.ToArray<float>();
        });
        var even = FixedOrderSum([0, 2], r => RandomFloats(r, N));
        var odd = FixedOrderSum([1, 3], r => RandomFloats(r, N));
        var three = FixedOrderSum([0, 1, 2], r => RandomFloats(10 + r, N));
        Assert.Multiple(() =>
        {
            for (int r = 0; r < 4; r++) Assert.That(first[r], Is.EqualTo(r % 2 == 0 ? even : odd).AsCollection, $"rank {r}, pairs");
            for (int r = 0; r < 3; r++) Assert.That(second[r], Is.EqualTo(three).AsCollection, $"rank {r}, triple");
            Assert.That(second[3], Is.EqualTo(RandomFloats(13, N)).AsCollection, "rank 3 was not in the triple");
        });
    }

    [Test]
    public void AllReduceSum_is_bitwise_reproducible_across_runs_and_thread_timings()
    {
        // Values of very different magnitudes make the float32 sum order-sensitive.
        float[] Values(int r) => RandomFloats(r, N).Select((v, i) => v * MathF.Pow(10, (r * 3 + i) % 9 - 4)).ToArray();
        uint[]? reference = null;
        for (int run = 0; run < 6; run++)
        {
            var comms = InProcessCommunicator.Create(4);
            var results = new uint[4][];
            int seed = run;
            RunAll(comms, (r, c) =>
            {
                Thread.Sleep((r * 7 + seed * 3) % 5); // different arrival orders
                using var buf = Tensor.FromArray(Values(r), new Shape(N));
                c.AllReduceSum(buf, [0, 1, 2, 3]);
                results[r] = buf.ToArray<float>().Select(BitConverter.SingleToUInt32Bits).ToArray();
            });
            reference ??= results[0];
            for (int r = 0; r < 4; r++) Assert.That(results[r], Is.EqualTo(reference).AsCollection, $"run {run}, rank {r}");
        }
        var expected = FixedOrderSum([0, 1, 2, 3], Values).Select(BitConverter.SingleToUInt32Bits).ToArray();
        Assert.That(reference, Is.EqualTo(expected).AsCollection);
    }

    [Test]
    public void Broadcast_copies_the_root_buffer_to_the_group([Values(1, 2, 3, 4)] int w)
    {
        var comms = InProcessCommunicator.Create(w);
        var world = new double[w][];
        var sub = new double[w][];
        int root = w - 1;
        RunAll(comms, (r, c) =>
        {
            using var buf = Tensor.FromDoubles([r, r + 0.5, -r], new Shape(3), DType.Float64);
            c.Broadcast(buf, root);
            world[r] = buf.ToDoubles();
            using var b2 = Tensor.FromDoubles([10 * r], new Shape(1), DType.Float64);
            if (r % 2 == 0) c.Broadcast(b2, 0, Enumerable.Range(0, w).Where(x => x % 2 == 0).ToArray());
            sub[r] = b2.ToDoubles();
        });
        Assert.Multiple(() =>
        {
            for (int r = 0; r < w; r++)
            {
                Assert.That(world[r], Is.EqualTo(new double[] { root, root + 0.5, -root }).AsCollection, $"rank {r}");
                Assert.That(sub[r], Is.EqualTo(new double[] { r % 2 == 0 ? 0 : 10 * r }).AsCollection, $"rank {r}, even subgroup");
            }
        });
    }

    [Test]
    public void Barrier_releases_no_rank_before_all_arrive([Values(1, 2, 3, 4)] int w)
    {
        var comms = InProcessCommunicator.Create(w);
        int arrived = 0;
        var seen = new int[w, 5];
        RunAll(comms, (r, c) =>
        {
            for (int round = 0; round < 5; round++)
            {
                Thread.Sleep((r + round) % 3);
                Interlocked.Increment(ref arrived);
                c.Barrier();
                seen[r, round] = Volatile.Read(ref arrived);
                c.Barrier();
            }
        });
        for (int r = 0; r < w; r++)
            for (int round = 0; round < 5; round++)
                Assert.That(seen[r, round], Is.EqualTo(w * (round + 1)), $"rank {r}, round {round}");
        Assert.That(comms[0].Stats.Barriers, Is.EqualTo(10));
        Assert.That(comms[0].Stats.Collectives, Is.EqualTo(0));
    }

    [Test]
    public void Stats_follow_the_ring_model_and_reset()
    {
        // 1000 float32 = 4000 bytes. All-reduce over 4: 2·3/4·4000 = 6000; over {0, 1}: 2·1/2·4000 = 4000;
        // broadcast from root 1: 4000 at the root, 0 elsewhere.
        var comms = InProcessCommunicator.Create(4);
        RunAll(comms, (r, c) =>
        {
            using var buf = Tensor.Zeros(new Shape(10, 100));
            c.AllReduceSum(buf, [0, 1, 2, 3]);
            if (r < 2) c.AllReduceSum(buf, [0, 1]);
            c.Broadcast(buf, 1);
        });
        Assert.Multiple(() =>
        {
            Assert.That(comms[0].Stats.BytesSent, Is.EqualTo(10000));
            Assert.That(comms[1].Stats.BytesSent, Is.EqualTo(14000));
            Assert.That(comms[2].Stats.BytesSent, Is.EqualTo(6000));
            Assert.That(comms[0].Stats.AllReduces, Is.EqualTo(2));
            Assert.That(comms[3].Stats.AllReduces, Is.EqualTo(1));
            Assert.That(comms[3].Stats.Broadcasts, Is.EqualTo(1));
            Assert.That(comms[3].Stats.Collectives, Is.EqualTo(2));
            Assert.That(CommStats.RingAllReduceBytes(4000, 1), Is.EqualTo(0));
        });
        comms[1].Stats.Reset();
        Assert.That(comms[1].Stats.BytesSent, Is.EqualTo(0));
        Assert.That(comms[1].Stats.Collectives, Is.EqualTo(0));
    }

    [Test]
    public void A_rank_outside_its_group_is_rejected_immediately()
    {
        var comms = InProcessCommunicator.Create(3);
        using var buf = Tensor.Zeros(new Shape(2));
        var e = Assert.Throws<ArgumentException>(() => comms[0].AllReduceSum(buf, [1, 2]));
        Assert.That(e!.Message, Does.Contain("AllReduceSum").And.Contain("rank 0").And.Contain("[1, 2]"));
        var dup = Assert.Throws<ArgumentException>(() => comms[0].AllReduceSum(buf, [0, 0, 1]));
        Assert.That(dup!.Message, Does.Contain("twice"));
        var range = Assert.Throws<ArgumentOutOfRangeException>(() => comms[0].Broadcast(buf, 0, [0, 3]));
        Assert.That(range!.Message, Does.Contain("Broadcast").And.Contain("rank 3"));
        var root = Assert.Throws<ArgumentException>(() => comms[0].Broadcast(buf, 2, [0, 1]));
        Assert.That(root!.Message, Does.Contain("root 2"));
    }

    [Test]
    public void Mismatched_shapes_are_reported_with_both_shapes_on_every_rank()
    {
        var comms = InProcessCommunicator.Create(2, TimeSpan.FromSeconds(5));
        var errors = RunRanks(comms, (r, c) =>
        {
            using var buf = Tensor.Zeros(r == 0 ? new Shape(2, 3) : new Shape(3, 2));
            c.AllReduceSum(buf, [0, 1]);
        });
        for (int r = 0; r < 2; r++)
        {
            Assert.That(errors[r], Is.InstanceOf<InvalidOperationException>(), $"rank {r}");
            Assert.That(errors[r]!.Message, Does.Contain("AllReduceSum").And.Contain("(2, 3)").And.Contain("(3, 2)"), $"rank {r}");
        }
        Assert.That(comms[0].Stats.Collectives, Is.EqualTo(0));
    }

    [Test]
    public void Different_collectives_at_the_same_point_are_reported()
    {
        var comms = InProcessCommunicator.Create(2, TimeSpan.FromSeconds(5));
        var errors = RunRanks(comms, (r, c) =>
        {
            using var buf = Tensor.Zeros(new Shape(4));
            if (r == 0) c.AllReduceSum(buf, [0, 1]);
            else c.Broadcast(buf, 1, [0, 1]);
        });
        Assert.That(errors, Has.All.InstanceOf<InvalidOperationException>());
        Assert.That(errors[0]!.Message, Does.Contain("AllReduceSum").And.Contain("Broadcast"));
    }

    [Test]
    public void A_rank_that_never_comes_makes_the_others_time_out_naming_the_collective()
    {
        var comms = InProcessCommunicator.Create(3, TimeSpan.FromMilliseconds(200));
        var errors = RunRanks(comms, (r, c) =>
        {
            using var buf = Tensor.Zeros(new Shape(4));
            if (r != 2) c.AllReduceSum(buf, [0, 1, 2]);
        });
        Assert.That(errors[2], Is.Null);
        for (int r = 0; r < 2; r++)
        {
            Assert.That(errors[r], Is.InstanceOf<TimeoutException>(), $"rank {r}");
            Assert.That(errors[r]!.Message, Does.Contain("AllReduceSum over ranks [0, 1, 2]").And.Contain("[2] never joined"), $"rank {r}");
        }
    }
}
