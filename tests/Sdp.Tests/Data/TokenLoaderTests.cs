using System.Text.Json;
using Sdp.Engine;
using Sdp.Models.Data;

namespace Sdp.Tests.Data;

public class TokenLoaderTests
{
    private static (int[] Inputs, int[] Targets) Next(ITokenBatchSource loader)
    {
        var (x, y) = loader.NextBatch();
        using (x)
        using (y)
        {
            Assert.That(x.Shape, Is.EqualTo(new Shape(loader.Batch, loader.Seq)));
            Assert.That(y.Shape, Is.EqualTo(new Shape(loader.Batch, loader.Seq)));
            Assert.That(x.DType, Is.EqualTo(DType.Int32));
            return (x.ToArray<int>(), y.ToArray<int>());
        }
    }

    [Test]
    public void Batches_are_overlapping_windows_advancing_by_B_times_T()
    {
        using var dir = new TempDir();
        // Tokens 100..119 (N = 20), B = 2, T = 4: a batch reads B*T+1 = 9 tokens and advances by 8, so the
        // shard holds floor(19 / 8) = 2 batches (tokens 100..116); 117..119 are never used.
        RawFiles.Shard(dir.File("s.bin"), RawFiles.Range(100, 20));
        using var loader = new TokenLoader(dir.File("s.bin"), batch: 2, seq: 4);
        Assert.That(loader.BatchesPerEpoch, Is.EqualTo(2));
        var (x0, y0) = Next(loader);
        Assert.That(x0, Is.EqualTo(new[] { 100, 101, 102, 103, 104, 105, 106, 107 }));
        Assert.That(y0, Is.EqualTo(new[] { 101, 102, 103, 104, 105, 106, 107, 108 }));
        Assert.That(loader.State, Is.EqualTo(new DataLoaderState(0, 0, 1)));
        var (x1, y1) = Next(loader);
        Assert.That(x1, Is.EqualTo(new[] { 108, 109, 110, 111, 112, 113, 114, 115 }));
        Assert.That(y1, Is.EqualTo(new[] { 109, 110, 111, 112, 113, 114, 115, 116 }));
        Assert.That(loader.State, Is.EqualTo(new DataLoaderState(1, 0, 0)), "one shard: wrapped into epoch 1");
        Assert.That(Next(loader).Inputs, Is.EqualTo(x0));
    }

    [Test]
    public void Shards_follow_in_name_order_and_wrap_counting_epochs()
    {
        using var dir = new TempDir();
        RawFiles.Shard(dir.File("train_001.bin"), RawFiles.Range(1000, 13)); // (13-1)/(2*3) = 2 batches
        RawFiles.Shard(dir.File("train_000.bin"), RawFiles.Range(0, 7));     // exactly one batch: B*T+1 = 7
        RawFiles.Shard(dir.File("val_000.bin"), RawFiles.Range(5000, 7));
        using var loader = new TokenLoader(dir.File("train_*.bin"), batch: 2, seq: 3);
        Assert.That(loader.Files.Select(Path.GetFileName), Is.EqualTo(new[] { "train_000.bin", "train_001.bin" }));
        Assert.That(loader.TokenCounts, Is.EqualTo(new[] { 7L, 13L }));
        var firsts = new List<int>();
        var states = new List<DataLoaderState>();
        for (int i = 0; i < 7; i++)
        {
            var (x, y) = Next(loader);
            firsts.Add(x[0]);
            states.Add(loader.State);
            Assert.That(y[0], Is.EqualTo(x[0] + 1));
        }
        Assert.That(firsts, Is.EqualTo(new[] { 0, 1000, 1006, 0, 1000, 1006, 0 }));
        Assert.That(states[0], Is.EqualTo(new DataLoaderState(0, 1, 0)));
        Assert.That(states[2], Is.EqualTo(new DataLoaderState(1, 0, 0)));
        Assert.That(states[6], Is.EqualTo(new DataLoaderState(2, 1, 0)));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void Workers_together_consume_exactly_the_combined_batch(bool shuffle)
    {
        using var dir = new TempDir();
        RawFiles.Shard(dir.File("d_0.bin"), RawFiles.Range(0, 200));
        RawFiles.Shard(dir.File("d_1.bin"), RawFiles.Range(10_000, 150));
        const int B = 2, T = 5, W = 3;
        using var combined = new TokenLoader(dir.File("d_*.bin"), B * W, T, shuffle: shuffle, seed: 7);
        var workers = Enumerable.Range(0, W).Select(w => new TokenLoader(dir.File("d_*.bin"), B, T, w, W, shuffle, 7)).ToArray();
        try
        {
            // 199/30 = 6 and 149/30 = 4 batches per epoch: 12 steps cover a shard change and an epoch wrap.
            for (int step = 0; step < 12; step++)
            {
                var (cx, cy) = Next(combined);
                var parts = workers.Select(Next).ToArray();
                for (int row = 0; row < B * W; row++)
                {
                    var (w, j) = (row % W, row / W);
                    Assert.That(parts[w].Inputs.AsSpan(j * T, T).ToArray(), Is.EqualTo(cx.AsSpan(row * T, T).ToArray()), $"step {step} row {row}");
                    Assert.That(parts[w].Targets.AsSpan(j * T, T).ToArray(), Is.EqualTo(cy.AsSpan(row * T, T).ToArray()), $"step {step} row {row}");
                }
                Assert.That(workers.Select(l => l.State), Is.All.EqualTo(combined.State));
            }
            Assert.That(combined.Epoch, Is.EqualTo(1));
        }
        finally
        {
            foreach (var l in workers) l.Dispose();
        }
    }

    [Test]
    public void Shuffle_is_deterministic_per_seed_and_epoch_and_covers_every_row_once()
    {
        using var dir = new TempDir();
        RawFiles.Shard(dir.File("a_0.bin"), RawFiles.Range(0, 41));      // (41-1)/4 = 10 row starts
        RawFiles.Shard(dir.File("a_1.bin"), RawFiles.Range(20_000, 41));
        const int B = 2, T = 4; // 5 batches per shard, 10 per epoch, every row start used exactly once
        List<int> Epoch(TokenLoader l) => Enumerable.Range(0, 10).SelectMany(_ => Next(l).Inputs.Where((_, i) => i % T == 0)).ToList();
        using var a = new TokenLoader(dir.File("a_*.bin"), B, T, shuffle: true, seed: 42);
        using var b = new TokenLoader(dir.File("a_*.bin"), B, T, shuffle: true, seed: 42);
        using var c = new TokenLoader(dir.File("a_*.bin"), B, T, shuffle: true, seed: 43);
        using var plain = new TokenLoader(dir.File("a_*.bin"), B, T);
        var a0 = Epoch(a);
        var a1 = Epoch(a);
        Assert.That(Epoch(b), Is.EqualTo(a0), "same seed, same order");
        Assert.That(Epoch(c), Is.Not.EqualTo(a0), "another seed, another order");
        Assert.That(a1, Is.Not.EqualTo(a0), "each epoch reshuffles");
        var expected = Epoch(plain);
        Assert.That(expected, Is.EqualTo(Enumerable.Range(0, 10).Select(r => 4 * r).Concat(Enumerable.Range(0, 10).Select(r => 20_000 + 4 * r))));
        Assert.That(a0, Is.EquivalentTo(expected), "a permutation of the row starts");
        Assert.That(a1, Is.EquivalentTo(expected));
        // Rows of one shard stay together: the first 10 rows of an epoch come from one shard.
        Assert.That(a0.Take(10).Select(t => t >= 20_000).Distinct().Count(), Is.EqualTo(1));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void State_restores_bit_exactly_including_through_json(bool shuffle)
    {
        using var dir = new TempDir();
        RawFiles.Shard(dir.File("s_0.bin"), RawFiles.Range(0, 61));
        RawFiles.Shard(dir.File("s_1.bin"), RawFiles.Range(30_000, 37));
        using var first = new TokenLoader(dir.File("s_*.bin"), 2, 3, shuffle: shuffle, seed: 3);
        for (int i = 0; i < 9; i++) Next(first);
        string json = JsonSerializer.Serialize(first.State);
        var saved = JsonSerializer.Deserialize<DataLoaderState>(json)!;
        Assert.That(saved, Is.EqualTo(first.State));
        Assert.That(DataLoaderState.FromArray(saved.ToArray()), Is.EqualTo(saved));
        var expected = Enumerable.Range(0, 25).Select(_ => Next(first)).ToList();

        using var resumed = new TokenLoader(dir.File("s_*.bin"), 2, 3, shuffle: shuffle, seed: 3) { State = saved };
        var actual = Enumerable.Range(0, 25).Select(_ => Next(resumed)).ToList();
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.That(actual[i].Inputs, Is.EqualTo(expected[i].Inputs), $"batch {i}");
            Assert.That(actual[i].Targets, Is.EqualTo(expected[i].Targets), $"batch {i}");
        }
        resumed.Reset();
        Assert.That(resumed.State, Is.EqualTo(DataLoaderState.Start));
    }

    [Test]
    public void Span_overload_fills_caller_buffers()
    {
        using var dir = new TempDir();
        RawFiles.Shard(dir.File("s.bin"), RawFiles.Range(0, 9));
        using var loader = new TokenLoader(dir.File("s.bin"), 2, 4);
        var x = new int[8];
        var y = new int[8];
        loader.NextBatch(x, y);
        Assert.That(y, Is.EqualTo(new[] { 1, 2, 3, 4, 5, 6, 7, 8 }));
        Assert.That(() => loader.NextBatch(new int[7], new int[8]), Throws.ArgumentException.With.Message.Contains("B*T = 2*4 = 8"));
    }

    [Test]
    public void Bad_inputs_are_rejected_with_clear_messages()
    {
        using var dir = new TempDir();
        RawFiles.Shard(dir.File("ok_0.bin"), RawFiles.Range(0, 100));
        RawFiles.Shard(dir.File("ok_1.bin"), RawFiles.Range(0, 16));
        Assert.That(() => new TokenLoader(dir.File("ok_*.bin"), 4, 4),
            Throws.InstanceOf<InvalidDataException>().With.Message.Contains("ok_1.bin").And.Message.Contains("16 tokens").And.Message.Contains("B*T+1 = 4*4+1 = 17"));
        Assert.That(() => new TokenLoader(dir.File("ok_0.bin"), 4, 5, worker: 1, workers: 5),
            Throws.InstanceOf<InvalidDataException>().With.Message.Contains("ok_0.bin").And.Message.Contains("100 tokens").And.Message.Contains("W*B*T+1 = 5*4*5+1 = 101"));
        Assert.That(() => new TokenLoader(dir.File("missing.bin"), 1, 1), Throws.InstanceOf<FileNotFoundException>().With.Message.Contains("missing.bin"));
        Assert.That(() => new TokenLoader(dir.File("none_*.bin"), 1, 1), Throws.InstanceOf<FileNotFoundException>().With.Message.Contains("none_*.bin"));
        RawFiles.Shard(dir.File("bad.bin"), RawFiles.Range(0, 10), magic: 1);
        Assert.That(() => new TokenLoader(dir.File("bad.bin"), 1, 1), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("bad.bin").And.Message.Contains("magic"));
        Assert.That(() => new TokenLoader(dir.File("ok_0.bin"), 0, 4), Throws.ArgumentException.With.Message.Contains("batch size"));
        Assert.That(() => new TokenLoader(dir.File("ok_0.bin"), 1, 0), Throws.ArgumentException.With.Message.Contains("sequence length"));
        Assert.That(() => new TokenLoader(dir.File("ok_0.bin"), 1, 4, worker: 2, workers: 2), Throws.ArgumentException.With.Message.Contains("worker index 2"));

        using var loader = new TokenLoader(dir.File("ok_0.bin"), 2, 4); // 99/8 = 12 batches
        Assert.That(() => loader.State = new DataLoaderState(0, 1, 0), Throws.ArgumentException.With.Message.Contains("shard position 1"));
        Assert.That(() => loader.State = new DataLoaderState(0, 0, 13), Throws.ArgumentException.With.Message.Contains("batch 13").And.Message.Contains("12 batches"));
        Assert.That(() => loader.State = new DataLoaderState(-1, 0, 0), Throws.ArgumentException.With.Message.Contains("epoch -1"));
        loader.State = new DataLoaderState(0, 0, 12);
        Assert.That(loader.State, Is.EqualTo(new DataLoaderState(1, 0, 0)), "the end of a shard is the start of the next");
    }
}
