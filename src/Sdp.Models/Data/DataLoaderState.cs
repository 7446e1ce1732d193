using Sdp.Engine;

namespace Sdp.Models.Data;

/// <summary>
/// Where a data loader stands, enough to resume it bit-exactly: the epoch (a full pass over the data),
/// the position within that epoch's shard order, and how many batches of that shard were already taken.
/// Image loaders and the synthetic token source have one "shard" (Shard is 0). A plain record, so it
/// serialises with System.Text.Json or as three numbers via <see cref="ToArray"/> / <see cref="FromArray"/>.
/// </summary>
public sealed record DataLoaderState(long Epoch, int Shard, long Batch)
{
    public static DataLoaderState Start { get; } = new(0, 0, 0);

    public long[] ToArray() => [Epoch, Shard, Batch];

    public static DataLoaderState FromArray(ReadOnlySpan<long> values)
    {
        if (values.Length != 3) throw new ArgumentException($"data loader state: expected 3 numbers (epoch, shard, batch), got {values.Length}");
        if (values[1] is < 0 or > int.MaxValue) throw new ArgumentException($"data loader state: shard {values[1]} is out of range");
        return new DataLoaderState(values[0], (int)values[1], values[2]);
    }

    public override string ToString() => $"epoch {Epoch}, shard {Shard}, batch {Batch}";
}

/// <summary>
/// A source of next-token batches: inputs and targets are int32 (Batch, Seq), targets shifted by one
/// token. Implemented by <see cref="TokenLoader"/> (shard files) and <see cref="MarkovTokenSource"/> (synthetic).
/// </summary>
public interface ITokenBatchSource
{
    int Batch { get; }

    int Seq { get; }

    /// <summary>The resumable position; setting it makes the next batch the one that followed when it was read.</summary>
    DataLoaderState State { get; set; }

    /// <summary>inputs (B, T) int32, targets (B, T) int32.</summary>
    (Tensor Inputs, Tensor Targets) NextBatch();

    /// <summary>Fills row-major (B, T) buffers instead of allocating tensors.</summary>
    void NextBatch(Span<int> inputs, Span<int> targets);
}

/// <summary>Deterministic seed derivation: independent streams per (seed, epoch, index, ...).</summary>
internal static class SeedMix
{
    public static ulong Mix(ulong a, ulong b) => Finalize(a ^ Finalize(b + 0x9E3779B97F4A7C15UL));

    public static ulong Mix(ulong a, ulong b, ulong c) => Mix(Mix(a, b), c);

    public static ulong Mix(ulong a, ulong b, ulong c, ulong d) => Mix(Mix(Mix(a, b), c), d);

    private static ulong Finalize(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}

/// <summary>Argument checks shared by the loaders, with messages naming the loader and the value.</summary>
internal static class LoaderArgs
{
    /// <summary>One batch of <paramref name="source"/> as fresh (B, T) int32 tensors: the allocating form of NextBatch.</summary>
    public static (Tensor Inputs, Tensor Targets) TokenTensors(ITokenBatchSource source)
    {
        var inputs = new int[source.Batch * source.Seq];
        var targets = new int[inputs.Length];
        source.NextBatch(inputs, targets);
        var shape = new Shape(source.Batch, source.Seq);
        return (Tensor.FromArray(inputs, shape), Tensor.FromArray(targets, shape));
    }

    public static void BatchSeqWorkers(string who, int batch, int seq, int worker, int workers)
    {
        if (batch < 1) throw new ArgumentException($"{who}: batch size must be at least 1, got {batch}");
        if (seq < 1) throw new ArgumentException($"{who}: sequence length must be at least 1, got {seq}");
        Workers(who, worker, workers);
    }

    public static void Workers(string who, int worker, int workers)
    {
        if (workers < 1) throw new ArgumentException($"{who}: worker count must be at least 1, got {workers}");
        if (worker < 0 || worker >= workers) throw new ArgumentException($"{who}: worker index {worker} is out of range for {workers} workers (expected 0..{workers - 1})");
    }

    public static void Buffers(string who, int batch, int seq, Span<int> inputs, Span<int> targets)
    {
        long n = (long)batch * seq;
        if (inputs.Length != n || targets.Length != n)
            throw new ArgumentException($"{who}: inputs and targets buffers must hold B*T = {batch}*{seq} = {n} values, got {inputs.Length} and {targets.Length}");
    }
}
