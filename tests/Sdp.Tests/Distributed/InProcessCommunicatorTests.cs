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
            c.World.AllReduceSum(buf);
            results[r] = buf.ToArray<float>();
        });
        var expected = FixedOrderSum(Enumerable.Range(0, w), r => RandomFloats(r, N));
        for (int r = 0; r < w; r++) Assert.That(results[r], Is.EqualTo(expected).AsCollection, $"rank {r}");
    }

    [Test]
    public void CreateGroup_gives_members_their_group_and_non_members_null([Values(1, 2, 3, 4)] int w)
    {
        // Every rank creates every non-empty subset of the world (bit r of the mask: rank r), in mask order,
        // then each group all-reduces and broadcasts from its highest member. Results are bitwise the
        // fixed-order sum, which is what the per-call groups computed.
        int masks = (1 << w) - 1;
        int[] Members(int mask) => [.. Enumerable.Range(0, w).Where(r => (mask >> r & 1) == 1)];
        float[] Values(int mask, int r) => RandomFloats(100 * mask + r, N).Select((v, i) => v * MathF.Pow(10, (r * 3 + i) % 9 - 4)).ToArray();
        var comms = InProcessCommunicator.Create(w);
        var sums = new uint[w][][];
        var broadcasts = new float[w][][];
        var shapes = new (int[] Ranks, int Position)?[w][];
        RunAll(comms, (r, c) =>
        {
            var groups = Enumerable.Range(1, masks).Select(m => c.CreateGroup([.. Members(m).Reverse()])).ToArray();
            shapes[r] = [.. groups.Select(g => g is null ? ((int[], int)?)null : ([.. g.Ranks], g.Position))];
            sums[r] = new uint[masks][];
            broadcasts[r] = new float[masks][];
            for (int m = 1; m <= masks; m++)
            {
                if (groups[m - 1] is not { } g) continue;
                using var buf = Tensor.FromArray(Values(m, r), new Shape(N));
                g.AllReduceSum(buf);
                sums[r][m - 1] = buf.ToArray<float>().Select(BitConverter.SingleToUInt32Bits).ToArray();
                using var b2 = Tensor.FromArray(RandomFloats(r, 3), new Shape(3));
                g.Broadcast(b2, g.Ranks[^1]);
                broadcasts[r][m - 1] = b2.ToArray<float>();
            }
            c.Barrier(); // a collective over every rank also checks that all ranks made the same CreateGroup calls
        });
        Assert.Multiple(() =>
        {
            for (int r = 0; r < w; r++)
            {
                Assert.That(comms[r].Stats.GroupsCreated, Is.EqualTo(1 + (1 << (w - 1))), $"rank {r}: the world and the subsets containing it");
                for (int m = 1; m <= masks; m++)
                {
                    var members = Members(m);
                    if (!members.Contains(r))
                    {
                        Assert.That(shapes[r][m - 1], Is.Null, $"rank {r} is not in {string.Join(",", members)}");
                        continue;
                    }
                    Assert.That(shapes[r][m - 1]!.Value.Ranks, Is.EqualTo(members).AsCollection, $"rank {r}, mask {m}: ranks ascending");
                    Assert.That(shapes[r][m - 1]!.Value.Position, Is.EqualTo(Array.IndexOf(members, r)), $"rank {r}, mask {m}: position");
                    var expected = FixedOrderSum(members, x => Values(m, x)).Select(BitConverter.SingleToUInt32Bits).ToArray();
                    Assert.That(sums[r][m - 1], Is.EqualTo(expected).AsCollection, $"rank {r}, mask {m}: sum");
                    Assert.That(broadcasts[r][m - 1], Is.EqualTo(RandomFloats(members[^1], 3)).AsCollection, $"rank {r}, mask {m}: broadcast");
                }
            }
        });
    }

    [Test]
    public void Mismatched_CreateGroup_lists_fail_on_every_rank_naming_both_lists_without_waiting()
    {
        // Ranks 0 and 1 create [0, 1] while rank 2 creates [1, 2]: whichever rank notices throws, and the
        // abort releases the members already waiting in their group instead of leaving them to the timeout.
        var comms = InProcessCommunicator.Create(3, TimeSpan.FromMinutes(10));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var errors = RunRanks(comms, (r, c) =>
        {
            var group = c.CreateGroup(r < 2 ? [0, 1] : [1, 2]);
            using var buf = Tensor.Zeros(new Shape(4));
            group?.AllReduceSum(buf);
            c.Barrier();
        });
        Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromMinutes(1)));
        for (int r = 0; r < 3; r++)
        {
            Assert.That(errors[r], Is.InstanceOf<InvalidOperationException>().Or.InstanceOf<OperationCanceledException>(), $"rank {r}");
            Assert.That(errors[r]!.Message, Does.Contain("CreateGroup call 1").And.Contain("[0, 1]").And.Contain("[1, 2]").And.Contain("same order"), $"rank {r}");
        }
        Assert.That(errors.Count(e => e is InvalidOperationException), Is.GreaterThanOrEqualTo(1), "the rank that noticed");
    }

    [Test]
    public void A_rank_that_skips_a_CreateGroup_is_caught_at_the_next_collective_over_all_ranks()
    {
        // Rank 2 is no member of [0, 1], but it must still take part in making it (ncclCommSplit would hang).
        var comms = InProcessCommunicator.Create(3, TimeSpan.FromMinutes(10));
        var errors = RunRanks(comms, (r, c) =>
        {
            if (r < 2) c.CreateGroup([0, 1]);
            c.Barrier();
        });
        for (int r = 0; r < 3; r++)
        {
            Assert.That(errors[r], Is.InstanceOf<InvalidOperationException>(), $"rank {r}");
            Assert.That(errors[r]!.Message, Does.Contain("Barrier over ranks [0, 1, 2]").And.Contain("rank 0: 1, rank 1: 1, rank 2: 0").And.Contain("CreateGroup"), $"rank {r}");
        }
    }

    [Test]
    public void A_member_that_never_comes_makes_the_others_of_its_group_time_out()
    {
        var comms = InProcessCommunicator.Create(3, TimeSpan.FromMilliseconds(200));
        var errors = RunRanks(comms, (r, c) =>
        {
            var group = c.CreateGroup([2, 0]);
            using var buf = Tensor.Zeros(new Shape(4));
            if (r == 0) group!.AllReduceSum(buf);
        });
        Assert.That(errors[1], Is.Null);
        Assert.That(errors[2], Is.Null);
        Assert.That(errors[0], Is.InstanceOf<TimeoutException>());
        Assert.That(errors[0]!.Message, Does.Contain("AllReduceSum over ranks [0, 2]").And.Contain("[2] never joined"));
    }

    [Test]
    public void Abort_releases_a_rank_waiting_in_a_group_it_is_not_shared_with()
    {
        // Rank 0 waits for rank 1 in [0, 1]; rank 2, outside that group, fails and aborts the world.
        var comms = InProcessCommunicator.Create(3, TimeSpan.FromMinutes(10));
        var pair = comms[0].CreateGroup([0, 1])!;
        comms[1].CreateGroup([0, 1]);
        Assert.That(comms[2].CreateGroup([0, 1]), Is.Null);
        using var buffer = Tensor.Zeros(new Shape(3));
        var waiting = Task.Run(() => pair.AllReduceSum(buffer));
        Thread.Sleep(50);
        comms[2].Abort("worker 2 failed: out of memory");
        var pending = Assert.Throws<OperationCanceledException>(() => waiting.GetAwaiter().GetResult());
        Assert.That(pending!.Message, Does.Contain("AllReduceSum over ranks [0, 1]").And.Contain("rank 2 aborted the group: worker 2 failed: out of memory"));
        Assert.Throws<OperationCanceledException>(() => pair.Broadcast(buffer, 1));
    }

    [Test]
    public void A_disposed_group_refuses_collectives_and_the_world_outlives_disposal()
    {
        var comm = InProcessCommunicator.Create(1)[0];
        var group = comm.CreateGroup([0])!;
        using var buf = Tensor.Ones(new Shape(2));
        group.AllReduceSum(buf);
        group.Dispose();
        Assert.Throws<ObjectDisposedException>(() => group.AllReduceSum(buf));
        comm.World.Dispose();
        comm.World.AllReduceSum(buf);
        Assert.That(buf.ToArray<float>(), Is.EqualTo(new float[] { 1, 1 }).AsCollection);
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
            var even = c.CreateGroup([0, 2]);
            var odd = c.CreateGroup([3, 1]);
            var triple = c.CreateGroup([2, 0, 1]);
            using var buf = Tensor.FromArray(RandomFloats(r, N), new Shape(3, 5));
            (r % 2 == 0 ? even : odd)!.AllReduceSum(buf);
            first[r] = buf.ToArray<float>();
            using var b2 = Tensor.FromArray(RandomFloats(10 + r, N), new Shape(15));
            triple?.AllReduceSum(b2);
            second[r] = b2.ToArray<float>();
            Assert.That(triple is null, Is.EqualTo(r == 3), $"rank {r} gets the triple exactly when it is a member");
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
                c.World.AllReduceSum(buf);
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
            var evens = c.CreateGroup([.. Enumerable.Range(0, w).Where(x => x % 2 == 0)]);
            using var buf = Tensor.FromDoubles([r, r + 0.5, -r], new Shape(3), DType.Float64);
            c.World.Broadcast(buf, root);
            world[r] = buf.ToDoubles();
            using var b2 = Tensor.FromDoubles([10 * r], new Shape(1), DType.Float64);
            evens?.Broadcast(b2, 0);
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
            var pair = c.CreateGroup([0, 1]);
            using var buf = Tensor.Zeros(new Shape(10, 100));
            c.World.AllReduceSum(buf);
            pair?.AllReduceSum(buf);
            c.World.Broadcast(buf, 1);
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
        Assert.That(comms[1].Stats.GroupsCreated, Is.EqualTo(2), "the world and the pair");
        Assert.That(comms[2].Stats.GroupsCreated, Is.EqualTo(1), "the world only");
        var copy = comms[1].Stats.Clone();
        comms[1].Stats.Reset();
        Assert.That(comms[1].Stats.BytesSent, Is.EqualTo(0));
        Assert.That(comms[1].Stats.Collectives, Is.EqualTo(0));
        Assert.That(comms[1].Stats.GroupsCreated, Is.EqualTo(2), "the groups still exist");
        Assert.That(copy.BytesSent, Is.EqualTo(14000), "a clone keeps its counts");
    }

    [Test]
    public void Bad_groups_and_roots_are_rejected_immediately()
    {
        var comms = InProcessCommunicator.Create(3);
        using var buf = Tensor.Zeros(new Shape(2));
        var empty = Assert.Throws<ArgumentException>(() => comms[0].CreateGroup([]));
        Assert.That(empty!.Message, Does.Contain("CreateGroup").And.Contain("empty"));
        var dup = Assert.Throws<ArgumentException>(() => comms[0].CreateGroup([0, 0, 1]));
        Assert.That(dup!.Message, Does.Contain("CreateGroup").And.Contain("[0, 0, 1]").And.Contain("twice"));
        var range = Assert.Throws<ArgumentOutOfRangeException>(() => comms[0].CreateGroup([0, 3]));
        Assert.That(range!.Message, Does.Contain("CreateGroup").And.Contain("rank 3"));
        var root = Assert.Throws<ArgumentException>(() => comms[0].CreateGroup([1, 0])!.Broadcast(buf, 2));
        Assert.That(root!.Message, Does.Contain("Broadcast").And.Contain("root 2").And.Contain("[0, 1]"));
        var worldRoot = Assert.Throws<ArgumentException>(() => comms[0].World.Broadcast(buf, 3));
        Assert.That(worldRoot!.Message, Does.Contain("root 3"));
        Assert.That(comms[0].CreateGroup([1, 2]), Is.Null, "rank 0 is not a member");
        Assert.That(comms[0].Stats.GroupsCreated, Is.EqualTo(2), "the world and [0, 1]; rejected lists and [1, 2] make none");
    }

    [Test]
    public void Mismatched_shapes_are_reported_with_both_shapes_on_every_rank()
    {
        var comms = InProcessCommunicator.Create(2, TimeSpan.FromSeconds(5));
        var errors = RunRanks(comms, (r, c) =>
        {
            using var buf = Tensor.Zeros(r == 0 ? new Shape(2, 3) : new Shape(3, 2));
            c.CreateGroup([0, 1])!.AllReduceSum(buf);
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
            if (r == 0) c.World.AllReduceSum(buf);
            else c.World.Broadcast(buf, 1);
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
            if (r != 2) c.World.AllReduceSum(buf);
        });
        Assert.That(errors[2], Is.Null);
        for (int r = 0; r < 2; r++)
        {
            Assert.That(errors[r], Is.InstanceOf<TimeoutException>(), $"rank {r}");
            Assert.That(errors[r]!.Message, Does.Contain("AllReduceSum over ranks [0, 1, 2]").And.Contain("[2] never joined"), $"rank {r}");
        }
    }
}
