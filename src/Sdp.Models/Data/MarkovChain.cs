using Sdp.Engine;

namespace Sdp.Models.Data;

/// <summary>
/// A seeded random Markov chain over a vocabulary of V tokens, used as synthetic language-model data with
/// a known loss floor. Token i has K successors: (i+1) mod V, (i+2) mod V and K-2 other distinct tokens
/// drawn at random, with transition probabilities drawn from a symmetric Dirichlet(α). The ring steps make
/// the chain irreducible (every token reaches every other) and aperiodic (it has cycles of lengths V and
/// V-1, whose gcd is 1), so it has a unique stationary distribution π and its entropy rate
/// H = Σ_i π_i H(P_i) is the best average next-token loss any model can reach (in nats). With the default
/// K = 4 and α = 1, H is about 1.08 nats per token (the expected entropy of a flat Dirichlet draw is
/// ψ(Kα+1) - ψ(α+1) = 1/2 + 1/3 + 1/4), and a model only has to learn a sparse bigram table.
/// </summary>
public sealed class MarkovChain
{
    public const int DefaultVocab = 4096;
    public const int DefaultSuccessors = 4;

    private readonly int[] _next;          // (V, K) successor tokens
    private readonly double[] _prob;       // (V, K) transition probabilities
    private readonly double[] _cumulative; // (V, K) running sums, last = 1
    private readonly double[] _stationary;
    private readonly double[] _stationaryCumulative;

    public MarkovChain(int vocab = DefaultVocab, int successors = DefaultSuccessors, double concentration = 1.0, ulong seed = 0)
    {
        if (vocab < 3 || vocab > 65536)
            throw new ArgumentException($"Markov chain: vocabulary size must be in 3..65536 (tokens are stored as uint16), got {vocab}");
        if (successors < 2 || successors > vocab)
            throw new ArgumentException($"Markov chain: successors per token must be in 2..{vocab} (the vocabulary size), got {successors}");
        if (!(concentration > 0) || double.IsInfinity(concentration))
            throw new ArgumentException($"Markov chain: Dirichlet concentration must be a positive finite number, got {concentration}");
        (Vocab, SuccessorCount, Concentration, Seed) = (vocab, successors, concentration, seed);

        int k = successors;
        _next = new int[vocab * k];
        _prob = new double[vocab * k];
        _cumulative = new double[vocab * k];
        var rng = new Rng(SeedMix.Mix(seed, 0x4D61726B6F76UL));
        var chosen = new HashSet<int>();
        for (int i = 0; i < vocab; i++)
        {
            chosen.Clear();
            var next = _next.AsSpan(i * k, k);
            next[0] = (i + 1) % vocab;
            next[1] = (i + 2) % vocab;
            chosen.Add(next[0]);
            chosen.Add(next[1]);
            for (int j = 2; j < k; j++)
            {
                int candidate;
                do candidate = rng.NextInt(vocab); while (!chosen.Add(candidate));
                next[j] = candidate;
            }
            var p = _prob.AsSpan(i * k, k);
            double sum = 0;
            for (int j = 0; j < k; j++) sum += p[j] = SampleGamma(rng, concentration);
            if (sum == 0) { p.Fill(1); sum = k; } // tiny α can underflow every draw
            double acc = 0;
            for (int j = 0; j < k; j++)
            {
                p[j] /= sum;
                acc += p[j];
                _cumulative[i * k + j] = acc;
            }
            _cumulative[i * k + k - 1] = 1.0;
        }

        (_stationary, StationaryIterations) = SolveStationary();
        _stationaryCumulative = new double[vocab];
        double c = 0, h = 0;
        for (int i = 0; i < vocab; i++)
        {
            c += _stationary[i];
            _stationaryCumulative[i] = c;
            double hi = 0;
            foreach (var pij in _prob.AsSpan(i * k, k))
            {
                if (pij > 0) hi -= pij * Math.Log(pij);
            }
            h += _stationary[i] * hi;
        }
        _stationaryCumulative[vocab - 1] = 1.0;
        EntropyRate = h;
    }

    public int Vocab { get; }

    public int SuccessorCount { get; }

    public double Concentration { get; }

    public ulong Seed { get; }

    /// <summary>H = Σ_i π_i H(P_i) in nats per token: the loss floor for next-token prediction.</summary>
    public double EntropyRate { get; }

    /// <summary>Power iterations it took π to converge (L1 change below 1e-12).</summary>
    public int StationaryIterations { get; }

    /// <summary>The stationary distribution π (π P = π, Σ π = 1).</summary>
    public ReadOnlySpan<double> Stationary => _stationary;

    public ReadOnlySpan<int> Successors(int token) => _next.AsSpan(CheckToken(token) * SuccessorCount, SuccessorCount);

    public ReadOnlySpan<double> Probabilities(int token) => _prob.AsSpan(CheckToken(token) * SuccessorCount, SuccessorCount);

    /// <summary>P(next = <paramref name="to"/> | current = <paramref name="from"/>).</summary>
    public double Probability(int from, int to)
    {
        var next = Successors(from);
        for (int j = 0; j < next.Length; j++)
        {
            if (next[j] == to) return _prob[from * SuccessorCount + j];
        }
        return 0;
    }

    /// <summary>Fills <paramref name="tokens"/> with a run of the chain whose first token is drawn from π.</summary>
    public void Generate(Rng rng, Span<int> tokens)
    {
        if (tokens.IsEmpty) return;
        int x = SampleStationary(rng);
        tokens[0] = x;
        for (int t = 1; t < tokens.Length; t++) tokens[t] = x = Step(rng, x);
    }

    /// <summary>One transition from token <paramref name="current"/>.</summary>
    public int Step(Rng rng, int current)
    {
        double u = rng.NextDouble();
        int k = SuccessorCount, row = current * k;
        for (int j = 0; j < k - 1; j++)
        {
            if (u < _cumulative[row + j]) return _next[row + j];
        }
        return _next[row + k - 1];
    }

    public int SampleStationary(Rng rng)
    {
        double u = rng.NextDouble();
        int i = Array.BinarySearch(_stationaryCumulative, u);
        i = i >= 0 ? i + 1 : ~i; // first index whose running sum exceeds u
        return Math.Min(i, Vocab - 1);
    }

    /// <summary>Writes a run of <paramref name="count"/> tokens (first drawn from π) as an llm.c token shard.</summary>
    public void WriteShard(string path, long count, ulong streamSeed)
    {
        if (count < 1) throw new ArgumentException($"Markov chain: token count for shard '{path}' must be at least 1, got {count}");
        var rng = new Rng(streamSeed);
        int x = -1;
        TokenShardWriter.WriteChunks(path, count, (_, chunk) =>
        {
            for (int t = 0; t < chunk.Length; t++)
            {
                x = x < 0 ? SampleStationary(rng) : Step(rng, x);
                chunk[t] = (ushort)x;
            }
        });
    }

    private int CheckToken(int token)
    {
        if ((uint)token >= (uint)Vocab) throw new ArgumentOutOfRangeException(nameof(token), $"Markov chain: token {token} is outside the vocabulary 0..{Vocab - 1}");
        return token;
    }

    private (double[] Pi, int Iterations) SolveStationary()
    {
        const double tolerance = 1e-12;
        const int maxIterations = 1_000_000;
        int v = Vocab, k = SuccessorCount;
        var pi = new double[v];
        var next = new double[v];
        Array.Fill(pi, 1.0 / v);
        for (int it = 1; it <= maxIterations; it++)
        {
            Array.Clear(next);
            for (int i = 0; i < v; i++)
            {
                double mass = pi[i];
                int row = i * k;
                for (int j = 0; j < k; j++) next[_next[row + j]] += mass * _prob[row + j];
            }
            double sum = 0;
            foreach (var x in next) sum += x;
            double change = 0;
            for (int i = 0; i < v; i++)
            {
                next[i] /= sum;
                change += Math.Abs(next[i] - pi[i]);
            }
            (pi, next) = (next, pi);
            if (change < tolerance) return (pi, it);
        }
        throw new InvalidOperationException($"Markov chain: stationary distribution did not converge to {tolerance} in {maxIterations} power iterations (V={Vocab}, K={SuccessorCount}, α={Concentration}, seed {Seed})");
    }

    /// <summary>Gamma(α, 1) by Marsaglia and Tsang's method (α &lt; 1 via the U^(1/α) boost).</summary>
    private static double SampleGamma(Rng rng, double alpha)
    {
        if (alpha == 1.0) return -Math.Log(1.0 - rng.NextDouble());
        if (alpha < 1.0) return SampleGamma(rng, alpha + 1.0) * Math.Pow(1.0 - rng.NextDouble(), 1.0 / alpha);
        double d = alpha - 1.0 / 3.0, c = 1.0 / Math.Sqrt(9.0 * d);
        while (true)
        {
            double x, v;
            do
            {
                x = rng.NextNormal();
                v = 1.0 + c * x;
            } while (v <= 0);
            v = v * v * v;
            double u = 1.0 - rng.NextDouble();
            if (Math.Log(u) < 0.5 * x * x + d - d * v + d * Math.Log(v)) return d * v;
        }
    }
}

/// <summary>
/// Batches from a <see cref="MarkovChain"/> with the same (inputs, targets) API, State and worker striding
/// as <see cref="TokenLoader"/>: combined batch k is a fresh run of W*B*T+1 tokens drawn from
/// (stream seed, k) and started from π, cut into W*B overlapping rows of T+1 tokens; worker w takes rows
/// w, w+W, ... There are no shards or epochs (State is (0, 0, k)), and any batch can be produced without
/// the ones before it, so resuming is exact.
/// </summary>
public sealed class MarkovTokenSource : ITokenBatchSource
{
    private readonly int[] _stream;
    private long _batch;

    /// <summary>A source over a new default chain (V = 4096, K = 4, α = 1) built from <paramref name="seed"/>.</summary>
    public MarkovTokenSource(int batch, int seq, int worker = 0, int workers = 1, ulong seed = 0)
        : this(new MarkovChain(seed: seed), batch, seq, worker, workers, streamSeed: seed)
    {
    }

    /// <summary>A source over an existing chain: use different stream seeds for training and validation.</summary>
    public MarkovTokenSource(MarkovChain chain, int batch, int seq, int worker = 0, int workers = 1, ulong streamSeed = 0)
    {
        ArgumentNullException.ThrowIfNull(chain);
        LoaderArgs.BatchSeqWorkers("Markov token source", batch, seq, worker, workers);
        (Chain, Batch, Seq, Worker, Workers, StreamSeed) = (chain, batch, seq, worker, workers, streamSeed);
        _stream = new int[checked(batch * workers * seq + 1)];
    }

    public MarkovChain Chain { get; }

    public int Batch { get; }

    public int Seq { get; }

    public int Worker { get; }

    public int Workers { get; }

    public ulong StreamSeed { get; }

    /// <summary>The loss floor, nats per token.</summary>
    public double EntropyRate => Chain.EntropyRate;

    public DataLoaderState State
    {
        get => new(0, 0, _batch);
        set
        {
            ArgumentNullException.ThrowIfNull(value);
            if (value.Epoch != 0 || value.Shard != 0 || value.Batch < 0)
                throw new ArgumentException($"Markov token source state: expected epoch 0, shard 0 and a non-negative batch, got {value}");
            _batch = value.Batch;
        }
    }

    public (Tensor Inputs, Tensor Targets) NextBatch() => LoaderArgs.TokenTensors(this);

    public void NextBatch(Span<int> inputs, Span<int> targets)
    {
        LoaderArgs.Buffers("Markov token source", Batch, Seq, inputs, targets);
        // Only the stream up to this worker's last row is needed.
        int lastRow = Worker + (Batch - 1) * Workers;
        var stream = _stream.AsSpan(0, (lastRow + 1) * Seq + 1);
        Chain.Generate(new Rng(SeedMix.Mix(StreamSeed, (ulong)_batch, 0x53747265616DUL)), stream);
        for (int j = 0; j < Batch; j++)
        {
            int start = (Worker + j * Workers) * Seq;
            stream.Slice(start, Seq).CopyTo(inputs.Slice(j * Seq, Seq));
            stream.Slice(start + 1, Seq).CopyTo(targets.Slice(j * Seq, Seq));
        }
        _batch++;
    }
}
