using Sdp.Engine;
using Sdp.Models.Data;

namespace Sdp.Tests.Data;

public class MarkovTests
{
    private static readonly MarkovChain DefaultChain = new(seed: 1);

    [Test]
    public void Default_chain_is_sparse_ring_connected_and_normalised()
    {
        var chain = DefaultChain;
        Assert.That(chain.Vocab, Is.EqualTo(4096));
        Assert.That(chain.SuccessorCount, Is.EqualTo(4));
        for (int i = 0; i < chain.Vocab; i++)
        {
            var next = chain.Successors(i).ToArray();
            var p = chain.Probabilities(i).ToArray();
            Assert.That(next[0], Is.EqualTo((i + 1) % 4096));
            Assert.That(next[1], Is.EqualTo((i + 2) % 4096));
            Assert.That(next, Is.Unique);
            Assert.That(p, Is.All.GreaterThan(0));
            Assert.That(p.Sum(), Is.EqualTo(1.0).Within(1e-12));
        }
        Assert.That(chain.Probability(5, 6), Is.EqualTo(chain.Probabilities(5)[0]));
        int notSuccessor = Enumerable.Range(0, chain.Vocab).First(j => chain.Successors(5).IndexOf(j) < 0);
        Assert.That(chain.Probability(5, notSuccessor), Is.Zero);
    }

    [Test]
    public void Stationary_distribution_is_a_fixed_point()
    {
        var chain = DefaultChain;
        var pi = chain.Stationary.ToArray();
        Assert.That(pi.Sum(), Is.EqualTo(1.0).Within(1e-12));
        Assert.That(pi, Is.All.GreaterThan(0));
        // Independent check: (π P)_j = Σ_i π_i P(i → j) computed from the public Probability accessor.
        var next = new double[chain.Vocab];
        for (int i = 0; i < chain.Vocab; i++)
        {
            foreach (var j in chain.Successors(i)) next[j] += pi[i] * chain.Probability(i, j);
        }
        double l1 = next.Zip(pi, (a, b) => Math.Abs(a - b)).Sum();
        Assert.That(l1, Is.LessThan(1e-11));
        TestContext.Out.WriteLine($"power iterations: {chain.StationaryIterations}, H = {chain.EntropyRate:F6} nats");
    }

    [Test]
    public void Entropy_rate_is_the_floor_and_matches_an_empirical_estimate()
    {
        var chain = DefaultChain;
        double h = chain.EntropyRate;
        Assert.That(h, Is.InRange(0.5, 1.5), "a loss floor a tiny model can approach");
        // Recompute H = Σ π_i H(P_i) from the public accessors.
        double direct = 0;
        for (int i = 0; i < chain.Vocab; i++)
        {
            double hi = 0;
            foreach (var p in chain.Probabilities(i)) hi -= p * Math.Log(p);
            direct += chain.Stationary[i] * hi;
        }
        Assert.That(h, Is.EqualTo(direct).Within(1e-12));

        // Empirical: along a long run, the mean of -ln P(x_{t+1} | x_t) converges to H (ergodic theorem),
        // and the plug-in conditional entropy from transition counts does too (up to a small negative bias).
        const int n = 1_000_000;
        var tokens = new int[n + 1];
        chain.Generate(new Rng(99), tokens);
        double nll = 0;
        var counts = new Dictionary<long, int>();
        var from = new int[chain.Vocab];
        for (int t = 0; t < n; t++)
        {
            double p = chain.Probability(tokens[t], tokens[t + 1]);
            Assert.That(p, Is.GreaterThan(0), "every step follows an edge of the chain");
            nll -= Math.Log(p);
            long key = (long)tokens[t] * chain.Vocab + tokens[t + 1];
            counts[key] = counts.GetValueOrDefault(key) + 1;
            from[tokens[t]]++;
        }
        nll /= n;
        double plugIn = 0;
        foreach (var (key, c) in counts) plugIn -= c / (double)n * Math.Log(c / (double)from[(int)(key / chain.Vocab)]);
        TestContext.Out.WriteLine($"H = {h:F5}, mean NLL = {nll:F5}, plug-in = {plugIn:F5}");
        Assert.That(nll, Is.EqualTo(h).Within(0.01));
        Assert.That(plugIn, Is.EqualTo(h).Within(0.02));
        // Empirical token frequencies follow π.
        var freq = new double[chain.Vocab];
        foreach (var t in tokens) freq[t] += 1.0 / tokens.Length;
        double tv = 0.5 * freq.Zip(chain.Stationary.ToArray(), (a, b) => Math.Abs(a - b)).Sum();
        Assert.That(tv, Is.LessThan(0.05));
    }

    [Test]
    public void Chain_is_deterministic_from_its_seed()
    {
        var a = new MarkovChain(vocab: 64, seed: 5);
        var b = new MarkovChain(vocab: 64, seed: 5);
        var c = new MarkovChain(vocab: 64, seed: 6);
        Assert.That(a.EntropyRate, Is.EqualTo(b.EntropyRate));
        Assert.That(a.Probabilities(10).ToArray(), Is.EqualTo(b.Probabilities(10).ToArray()));
        Assert.That(a.EntropyRate, Is.Not.EqualTo(c.EntropyRate));
        // A peaked Dirichlet (small α) gives a lower floor than a flat one (large α tends to log K).
        Assert.That(new MarkovChain(vocab: 64, concentration: 0.1, seed: 5).EntropyRate, Is.LessThan(new MarkovChain(vocab: 64, concentration: 50, seed: 5).EntropyRate));
        Assert.That(new MarkovChain(vocab: 64, concentration: 1e4, seed: 5).EntropyRate, Is.EqualTo(Math.Log(4)).Within(1e-3));
    }

    [Test]
    public void Source_batches_are_chain_runs_with_loader_semantics()
    {
        var chain = new MarkovChain(vocab: 97, successors: 3, seed: 11);
        var source = new MarkovTokenSource(chain, batch: 3, seq: 8, streamSeed: 2);
        var (x, y) = source.NextBatch();
        var xs = x.ToArray<int>();
        var ys = y.ToArray<int>();
        Assert.That(x.Shape, Is.EqualTo(new Shape(3, 8)));
        for (int r = 0; r < 3; r++)
        {
            for (int t = 0; t < 8; t++)
            {
                Assert.That(chain.Probability(xs[r * 8 + t], ys[r * 8 + t]), Is.GreaterThan(0));
                if (t + 1 < 8) Assert.That(ys[r * 8 + t], Is.EqualTo(xs[r * 8 + t + 1]));
            }
            if (r + 1 < 3) Assert.That(ys[r * 8 + 7], Is.EqualTo(xs[(r + 1) * 8]), "rows are consecutive windows of one run");
        }
        Assert.That(source.State, Is.EqualTo(new DataLoaderState(0, 0, 1)));
        var second = source.NextBatch().Inputs.ToArray<int>();
        Assert.That(second, Is.Not.EqualTo(xs));
        source.State = DataLoaderState.Start;
        Assert.That(source.NextBatch().Inputs.ToArray<int>(), Is.EqualTo(xs), "batches depend only on (stream seed, index)");
        source.State = new DataLoaderState(0, 0, 1);
        Assert.That(source.NextBatch().Inputs.ToArray<int>(), Is.EqualTo(second));
        Assert.That(() => source.State = new DataLoaderState(1, 0, 0), Throws.ArgumentException.With.Message.Contains("epoch 0"));
    }

    [Test]
    public void Source_workers_together_consume_the_combined_batch()
    {
        var chain = new MarkovChain(vocab: 50, seed: 3);
        const int B = 2, T = 4, W = 3;
        var combined = new MarkovTokenSource(chain, B * W, T, streamSeed: 9);
        var workers = Enumerable.Range(0, W).Select(w => new MarkovTokenSource(chain, B, T, w, W, streamSeed: 9)).ToArray();
        for (int step = 0; step < 3; step++)
        {
            var cx = combined.NextBatch().Inputs.ToArray<int>();
            var parts = workers.Select(s => s.NextBatch().Inputs.ToArray<int>()).ToArray();
            for (int row = 0; row < B * W; row++)
            {
                Assert.That(parts[row % W].AsSpan(row / W * T, T).ToArray(), Is.EqualTo(cx.AsSpan(row * T, T).ToArray()), $"step {step} row {row}");
            }
        }
    }

    [Test]
    public void Chain_writes_a_shard_the_token_loader_reads()
    {
        using var dir = new TempDir();
        var chain = new MarkovChain(vocab: 300, seed: 4);
        chain.WriteShard(dir.File("markov_000.bin"), 200_000, streamSeed: 1);
        var tokens = TokenShard.ReadAll(dir.File("markov_000.bin"));
        Assert.That(tokens, Has.Length.EqualTo(200_000));
        for (int t = 0; t + 1 < tokens.Length; t++)
        {
            if (chain.Probability(tokens[t], tokens[t + 1]) == 0) Assert.Fail($"token {t}: {tokens[t]} -> {tokens[t + 1]} is not an edge of the chain");
        }
        using var loader = new TokenLoader(dir.File("markov_*.bin"), 4, 16);
        var (x, y) = loader.NextBatch();
        Assert.That(x.ToArray<int>().Take(3).Select(v => (ushort)v), Is.EqualTo(tokens.Take(3)));
        Assert.That(y.ToArray<int>()[0], Is.EqualTo(tokens[1]));
        Assert.That(() => chain.WriteShard(dir.File("x.bin"), 0, 1), Throws.ArgumentException.With.Message.Contains("x.bin"));
    }

    [Test]
    public void Bad_chain_arguments_are_rejected()
    {
        Assert.That(() => new MarkovChain(vocab: 2), Throws.ArgumentException.With.Message.Contains("vocabulary size").And.Message.Contains("got 2"));
        Assert.That(() => new MarkovChain(vocab: 70_000), Throws.ArgumentException.With.Message.Contains("uint16"));
        Assert.That(() => new MarkovChain(vocab: 10, successors: 1), Throws.ArgumentException.With.Message.Contains("successors"));
        Assert.That(() => new MarkovChain(vocab: 10, successors: 11), Throws.ArgumentException.With.Message.Contains("2..10"));
        Assert.That(() => new MarkovChain(vocab: 10, concentration: 0), Throws.ArgumentException.With.Message.Contains("concentration"));
        Assert.That(() => new MarkovTokenSource(DefaultChain, 2, 4, worker: 3, workers: 2), Throws.ArgumentException.With.Message.Contains("worker index 3"));
        Assert.That(() => DefaultChain.Successors(4096), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("token 4096"));
    }
}
