using Sdp.Engine;
using Sdp.Engine.Distributed;
using Sdp.Engine.Memory;
using static Sdp.Tests.Distributed.CommTestSupport;

namespace Sdp.Tests.Distributed;

public class HolderGroupedSyncTests
{
    /// <summary>A parameter layout: name, shape, axis and per-unit holders (null = shared).</summary>
    private sealed record Spec(string Name, int[] Shape, int Axis, int[][]? Holders);

    /// <summary>
    /// A LLaMA-like layout: shared embedding and norm (scalar too), gate/up (F, D) split by rows, down (D, F)
    /// split by columns with the same neuron holders, a block-level matrix as a single unit, and an up
    /// projection cut into units of two rows.
    /// </summary>
    private static Spec[] Layout(int w, Random rng, bool everyoneHoldsEverything = false)
    {
        int[] Holders()
        {
            if (everyoneHoldsEverything) return Enumerable.Range(0, w).ToArray();
            var set = Enumerable.Range(0, w).Where(_ => rng.Next(2) == 0).ToList();
            if (set.Count == 0) set.Add(rng.Next(w));
            return set.OrderBy(_ => rng.Next()).ToArray(); // any order is accepted
        }
        var neurons = Enumerable.Range(0, 6).Select(_ => Holders()).ToArray();
        return
        [
            new("embed", [5, 4], 0, null),
            new("gate", [6, 4], 0, neurons),
            new("down", [4, 6], 1, neurons),
            new("block", [3, 3], 0, [Holders()]),
            new("up", [6, 3], 0, Enumerable.Range(0, 3).Select(_ => Holders()).ToArray()),
            new("norm", [], 0, null),
        ];
    }

    /// <summary>The holders of every element of a spec, row-major (all workers for a shared one).</summary>
    private static int[][] ElementHolders(Spec s, int w)
    {
        var shape = new Shape(s.Shape);
        var result = new int[shape.Numel][];
        var strides = shape.Strides();
        for (long i = 0; i < shape.Numel; i++)
        {
            if (s.Holders is null) { result[i] = Enumerable.Range(0, w).ToArray(); continue; }
            int idx = (int)(i / strides[s.Axis] % s.Shape[s.Axis]);
            result[i] = s.Holders[idx / (s.Shape[s.Axis] / s.Holders.Length)].OrderBy(x => x).ToArray();
        }
        return result;
    }

    /// <summary>Every unit's holders (every worker lists all units, so all workers pass the same sets).</summary>
    private static IEnumerable<int[]> HolderSets(Spec[] specs) => specs.SelectMany(s => s.Holders ?? []);

    private static float[] InitialGrad(int worker, int p, long n) => RandomFloats(1000 * worker + p, (int)n);

    /// <summary>
    /// Runs one Synchronize on W threads; returns the per-worker gradients afterwards, each worker's result,
    /// its sync (disposed) and its share of the squared norm.
    /// </summary>
    private static (float[][][] Grads, SyncResult[] Results, HolderGroupedSync[] Syncs, double[] NormShares) Run(Spec[] specs, int w, long bucketBytes)
    {
        var comms = InProcessCommunicator.Create(w);
        var grads = new float[w][][];
        var results = new SyncResult[w];
        var syncs = new HolderGroupedSync[w];
        var norms = new double[w];
        RunAll(comms, (r, c) =>
        {
            var ps = new List<Tensor>();
            var sp = new List<SyncParameter>();
            for (int p = 0; p < specs.Length; p++)
            {
                var shape = new Shape(specs[p].Shape);
                var t = Tensor.Zeros(shape);
                t.Name = specs[p].Name;
                t.Grad = Tensor.FromArray(InitialGrad(r, p, shape.Numel), shape);
                ps.Add(t);
                sp.Add(new SyncParameter(t, specs[p].Axis, specs[p].Holders));
            }
            syncs[r] = new HolderGroupedSync(sp, new HolderGroups(c, HolderSets(specs)), bucketBytes);
            results[r] = syncs[r].Synchronize();
            grads[r] = ps.Select(t => t.Grad!.ToArray<float>()).ToArray();
            using (var share = Tensor.Zeros(Shape.Scalar, DType.Float64))
            {
                syncs[r].AddSquaredNormShare(share);
                norms[r] = share.ToDoubles()[0];
            }
            syncs[r].Dispose();
            foreach (var t in ps) { t.Grad!.Dispose(); t.Dispose(); }
        });
        return (grads, results, syncs, norms);
    }

    [Test]
    public void Grouped_all_reduce_equals_the_full_length_masked_reference(
        [Values(1, 2, 3, 4)] int w, [Values(0, 1, 2)] int seed, [Values(25L << 20, 24L)] long bucketBytes)
    {
        var specs = Layout(w, new Random(seed * 10 + w));
        var (grads, _, _, _) = Run(specs, w, bucketBytes);
        // Reference, element by element: held → (Σ_{i ∈ holders, ascending} g_i) / |holders| in float32;
        // unheld → the worker's own initial value, untouched.
        for (int p = 0; p < specs.Length; p++)
        {
            var holders = ElementHolders(specs[p], w);
            var init = Enumerable.Range(0, w).Select(r => InitialGrad(r, p, holders.Length)).ToArray();
            for (int r = 0; r < w; r++)
            {
                var expected = new float[holders.Length];
                for (int i = 0; i < holders.Length; i++)
                {
                    if (!holders[i].Contains(r)) { expected[i] = init[r][i]; continue; }
                    float sum = init[holders[i][0]][i];
                    foreach (var h in holders[i].Skip(1)) sum += init[h][i];
                    expected[i] = sum / holders[i].Length;
                }
                Assert.That(grads[r][p], Is.EqualTo(expected).AsCollection, $"worker {r}, parameter {specs[p].Name}");
            }
        }
    }

    [Test]
    public void One_collective_per_distinct_holder_set_and_bytes_follow_the_ring_model([Values(2, 3, 4)] int w, [Values(0, 1, 2)] int seed)
    {
        var specs = Layout(w, new Random(seed * 10 + w));
        var (_, results, syncs, _) = Run(specs, w, 25L << 20);
        for (int r = 0; r < w; r++)
        {
            // Elements per holder set containing r, counted from the element map.
            var perSet = new Dictionary<string, (int Size, long Elements)>();
            foreach (var s in specs)
                foreach (var h in ElementHolders(s, w).Where(h => h.Contains(r)))
                {
                    var key = string.Join(",", h);
                    perSet[key] = (h.Length, (perSet.TryGetValue(key, out var v) ? v.Elements : 0) + 1);
                }
            var communicated = perSet.Values.Where(v => v.Size > 1).ToArray();
            double bytes = communicated.Sum(v => 2.0 * (v.Size - 1) / v.Size * v.Elements * 4);
            Assert.Multiple(() =>
            {
                Assert.That(results[r].Collectives, Is.EqualTo(communicated.Length), $"worker {r}");
                Assert.That(syncs[r].CollectivesPerStep, Is.EqualTo(communicated.Length), $"worker {r}");
                Assert.That(results[r].BytesSent, Is.EqualTo(bytes).Within(1e-9), $"worker {r}");
                Assert.That(syncs[r].BytesPerStep, Is.EqualTo(bytes).Within(1e-9), $"worker {r}");
                Assert.That(syncs[r].Buckets[0].Holders, Is.EqualTo(Enumerable.Range(0, w).ToArray()).AsCollection, "shared bucket first");
            });
        }
    }

    [Test]
    public void Norm_shares_count_every_synchronised_element_once_over_its_holders([Values(2, 3, 4)] int w, [Values(0, 1)] int seed)
    {
        // Random holder sets of different sizes, and full-size tensors of which a worker holds some units: most
        // parameters take the slice-by-slice path through the staging buffer. Worker r's share is
        // Σ_{i held by r} ĝ_i² / |H_i|, so the shares add up to ‖ĝ‖² with every element counted once.
        var specs = Layout(w, new Random(seed * 10 + w));
        var (grads, _, _, shares) = Run(specs, w, 24);
        double total = 0;
        for (int r = 0; r < w; r++)
        {
            double expected = 0;
            for (int p = 0; p < specs.Length; p++)
            {
                var holders = ElementHolders(specs[p], w);
                for (int i = 0; i < holders.Length; i++)
                {
                    if (!holders[i].Contains(r)) continue;
                    expected += (double)grads[r][p][i] * grads[r][p][i] / holders[i].Length;
                    if (holders[i][0] == r) total += (double)grads[r][p][i] * grads[r][p][i];
                }
            }
            Assert.That(shares[r], Is.EqualTo(expected).Within(1e-12).Percent, $"worker {r}");
        }
        Assert.That(shares.Sum(), Is.EqualTo(total).Within(1e-12).Percent, "‖ĝ‖²");
    }

    [Test]
    public void Buckets_are_split_at_the_cap()
    {
        // W = 2, shared (5, 4) float32 (rows of 16 bytes) and shared (2, 16) (rows of 64 bytes), cap 40 bytes:
        // the first packs 2 + 2 + 1 rows, the second exceeds the cap per row and gets one bucket per row.
        // 5 collectives; bytes = 2·1/2 · (80 + 128) = 208.
        Spec[] specs = [new("a", [5, 4], 0, null), new("b", [2, 16], 0, null)];
        var (grads, results, syncs, _) = Run(specs, 2, 40);
        Assert.Multiple(() =>
        {
            Assert.That(syncs[0].Buckets.Select(b => b.Bytes), Is.EqualTo(new long[] { 32, 32, 16, 64, 64 }).AsCollection);
            Assert.That(results[0].Collectives, Is.EqualTo(5));
            Assert.That(results[1].BytesSent, Is.EqualTo(208));
            Assert.That(grads[0][1], Is.EqualTo(grads[1][1]).AsCollection);
        });
    }

    [Test]
    public void C1_equals_the_plain_all_reduce_mean([Values(1, 2, 3, 4)] int w)
    {
        var specs = Layout(w, new Random(7), everyoneHoldsEverything: true);
        var (grads, results, _, _) = Run(specs, w, 25L << 20);
        Assert.That(results[0].Collectives, Is.EqualTo(w == 1 ? 0 : 1), "everything goes into the shared bucket");
        for (int p = 0; p < specs.Length; p++)
        {
            long n = new Shape(specs[p].Shape).Numel;
            var expected = new float[n];
            for (int i = 0; i < n; i++)
            {
                float sum = 0;
                for (int r = 0; r < w; r++) sum = r == 0 ? InitialGrad(0, p, n)[i] : sum + InitialGrad(r, p, n)[i];
                expected[i] = sum / w;
            }
            for (int r = 0; r < w; r++) Assert.That(grads[r][p], Is.EqualTo(expected).AsCollection, $"worker {r}, {specs[p].Name}");
        }
    }

    [Test]
    public void Units_held_by_one_worker_need_no_communication()
    {
        // W = 2, C = 0.5: a pure partition of the neurons, so only the shared embedding is communicated.
        int[][] part = [[0], [1], [1], [0]];
        Spec[] specs = [new("embed", [3, 2], 0, null), new("gate", [4, 2], 0, part)];
        var (grads, results, _, _) = Run(specs, 2, 25L << 20);
        Assert.That(results[0].Collectives, Is.EqualTo(1));
        Assert.That(results[0].BytesSent, Is.EqualTo(24));
        Assert.That(grads[1][1], Is.EqualTo(InitialGrad(1, 1, 8)).AsCollection);
    }

    [Test]
    public void Staging_is_made_at_construction_and_a_step_allocates_nothing()
    {
        // W = 2: shared float32 (4, 4) = 64 bytes in buckets of at most 40 bytes (32 + 32), and shared
        // float64 (3) = 24 bytes (a bucket of its own dtype). The sync keeps one staging buffer per dtype,
        // as long as its largest bucket (32 and 24 bytes), and the holder count 2 per dtype (4 + 8 bytes):
        // 68 bytes of engine buffers from construction to disposal, none added by a step.
        var comms = InProcessCommunicator.Create(2);
        var accounts = new[] { new MemoryAccount("w0"), new MemoryAccount("w1") };
        var results = new double[2][];
        RunAll(comms, (r, c) =>
        {
            using var a = Tensor.Zeros(new Shape(4, 4));
            using var b = Tensor.Zeros(new Shape(3), DType.Float64);
            a.Grad = Tensor.Full(new Shape(4, 4), r + 1);
            b.Grad = Tensor.FromDoubles([r, 2 * r, 1.0 / 3], new Shape(3), DType.Float64);
            using (accounts[r].Activate())
            {
                using (var sync = new HolderGroupedSync([new SyncParameter(a), new SyncParameter(b)], new HolderGroups(c, []), 40))
                {
                    Assert.That(sync.Buckets.Select(k => (k.DType, k.Bytes)), Is.EqualTo(new[] { (DType.Float32, 32L), (DType.Float32, 32L), (DType.Float64, 24L) }).AsCollection);
                    Assert.That(sync.StagingBytes, Is.EqualTo(32 + 24 + 4 + 8));
                    Assert.That(accounts[r].CurrentBytes(MemoryCategory.EngineBuffers), Is.EqualTo(sync.StagingBytes), $"worker {r}: staging is charged at construction");
                    accounts[r].ResetPeaks();
                    for (int step = 0; step < 2; step++) sync.Synchronize();
                    Assert.That(accounts[r].PeakTotal, Is.EqualTo(sync.StagingBytes), $"worker {r}: steps allocate nothing");
                }
                Assert.That(accounts[r].CurrentTotal, Is.Zero, $"worker {r}: disposal frees the staging");
            }
            results[r] = [.. a.Grad.ToDoubles(), .. b.Grad.ToDoubles()];
            a.Grad.Dispose();
            b.Grad.Dispose();
        });
        for (int r = 0; r < 2; r++)
        {
            // float32 (1 + 2) / 2 = 1.5 (then (1.5 + 1.5) / 2); float64 (0 + 1) / 2, (0 + 2) / 2, (1/3 + 1/3) / 2, twice.
            Assert.That(results[r], Is.EqualTo(Enumerable.Repeat(1.5, 16).Concat([0.5, 1.0, (1.0 / 3 + 1.0 / 3) / 2])).AsCollection);
        }
    }

    [Test]
    public void A_missing_gradient_contributes_zeros_and_receives_nothing()
    {
        // Worker 1 has no gradient for the shared parameter (it was unused this step): worker 0 gets (g_0 + 0) / 2.
        var comms = InProcessCommunicator.Create(2);
        var result = new double[2][];
        RunAll(comms, (r, c) =>
        {
            using var a = Tensor.Zeros(new Shape(3));
            if (r == 0) a.Grad = Tensor.FromDoubles([2, 4, 6], new Shape(3));
            using (var sync = new HolderGroupedSync([new SyncParameter(a)], new HolderGroups(c, []))) sync.Synchronize();
            result[r] = a.Grad?.ToDoubles() ?? [];
            a.Grad?.Dispose();
        });
        Assert.That(result[0], Is.EqualTo(new double[] { 1, 2, 3 }).AsCollection);
        Assert.That(result[1], Is.Empty);
    }

    [Test]
    public void Bad_layouts_are_rejected_naming_the_parameter()
    {
        using var p = Tensor.Zeros(new Shape(6, 4));
        p.Name = "gate";
        var groups = new HolderGroups(InProcessCommunicator.Create(2)[0], []);
        var uneven = Assert.Throws<ArgumentException>(() => new HolderGroupedSync([new SyncParameter(p, 0, [[0], [1], [0], [1]])], groups));
        Assert.That(uneven!.Message, Does.Contain("gate").And.Contain("(6, 4)").And.Contain("4 equal units"));
        var outside = Assert.Throws<ArgumentOutOfRangeException>(() => new HolderGroupedSync([new SyncParameter(p, 1, [[0], [2]])], groups));
        Assert.That(outside!.Message, Does.Contain("gate").And.Contain("worker 2"));
        var empty = Assert.Throws<ArgumentException>(() => new HolderGroupedSync([new SyncParameter(p, 1, [[0], []])], groups));
        Assert.That(empty!.Message, Does.Contain("gate unit 1 has no holders"));
        var axis = Assert.Throws<ArgumentOutOfRangeException>(() => new HolderGroupedSync([new SyncParameter(p, 2, [[0]])], groups));
        Assert.That(axis!.Message, Does.Contain("axis 2"));
        // W = 3: the holder set [0, 2] needs a group that was not created.
        var three = new HolderGroups(InProcessCommunicator.Create(3)[0], [[0, 1]]);
        var missing = Assert.Throws<ArgumentException>(() => new HolderGroupedSync([new SyncParameter(p, 0, [[1, 0], [2, 0]])], three));
        Assert.That(missing!.Message, Does.Contain("worker 0").And.Contain("[0, 2]").And.Contain("HolderGroups"));
    }
}
