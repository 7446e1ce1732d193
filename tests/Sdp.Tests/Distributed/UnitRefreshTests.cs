using Sdp.Engine;
using Sdp.Engine.Distributed;
using Sdp.Engine.Memory;
using static Sdp.Tests.Distributed.CommTestSupport;

namespace Sdp.Tests.Distributed;

public class UnitRefreshTests
{
    [Test]
    public void Every_unit_takes_its_lowest_holders_values_and_a_refresh_allocates_nothing()
    {
        // W = 3: rows of a (6, 2) tensor in units of two, held by {0, 1}, {1, 2}, {0, 2}; a shared (2) tensor.
        // Worker r starts with values 10·r + i. Each unit is broadcast from its lowest holder (0, 1, 0) and
        // overwrites it where it is not held; holders keep their own values (in training, holders agree), and
        // the shared tensor, held by everyone, is left alone. Staging: the largest bucket, 4 floats.
        int[][] holders = [[1, 0], [2, 1], [0, 2]];
        var comms = InProcessCommunicator.Create(3);
        var accounts = Enumerable.Range(0, 3).Select(r => new MemoryAccount($"w{r}")).ToArray();
        var sliced = new float[3][];
        var shared = new float[3][];
        var received = new long[3];
        RunAll(comms, (r, c) =>
        {
            using var units = Tensor.FromArray(Enumerable.Range(0, 12).Select(i => 10f * r + i).ToArray(), new Shape(6, 2));
            using var everyone = Tensor.FromArray([10f * r, 10f * r + 1], new Shape(2));
            using (accounts[r].Activate())
            {
                using (var refresh = new UnitRefresh([new SyncParameter(units, 0, holders), new SyncParameter(everyone)], c))
                {
                    Assert.That(refresh.Buckets.Select(b => b.Holders), Is.EqualTo(new[] { new[] { 0, 1 }, [0, 2], [1, 2] }).AsCollection, "canonical order");
                    Assert.That(refresh.StagingBytes, Is.EqualTo(16));
                    Assert.That(accounts[r].CurrentBytes(MemoryCategory.EngineBuffers), Is.EqualTo(16), $"worker {r}: staging is charged at construction");
                    accounts[r].ResetPeaks();
                    received[r] = refresh.Refresh().ElementsSynchronized;
                    Assert.That(accounts[r].PeakTotal, Is.EqualTo(16), $"worker {r}: a refresh allocates nothing");
                }
                Assert.That(accounts[r].CurrentTotal, Is.Zero, $"worker {r}: disposal frees the staging");
            }
            sliced[r] = units.ToArray<float>();
            shared[r] = everyone.ToArray<float>();
        });
        for (int r = 0; r < 3; r++)
        {
            float[] expected = [.. Enumerable.Range(0, 12).Select(i => 10f * (holders[i / 4].Contains(r) ? r : holders[i / 4].Min()) + i)];
            Assert.That(sliced[r], Is.EqualTo(expected).AsCollection, $"worker {r}");
            Assert.That(shared[r], Is.EqualTo(new[] { 10f * r, 10f * r + 1 }).AsCollection, $"worker {r}: shared tensors are not refreshed");
            Assert.That(received[r], Is.EqualTo(4), $"worker {r} lacks one unit of 4 elements");
        }
    }
}
