using Sdp.Engine;

namespace Sdp.Models.Data;

/// <summary>
/// Next-token batches from llm.c token shards, batched as llm.c's dataloader does.
///
/// Layout: with W workers of B rows each, a shard is cut into rows of T+1 tokens where row r starts at
/// token r*T (consecutive rows overlap by one token, so the targets of one row run into the next row's
/// inputs). A combined batch is R = W*B consecutive rows, i.e. B*W*T+1 consecutive tokens, just as
/// llm.c reads B*T+1 tokens and advances by B*T. Worker w takes rows w, w+W, w+2W, ... of each combined
/// batch, so W workers together see exactly what one loader with batch W*B sees. A shard yields
/// floor((N-1) / (R*T)) batches; when fewer than R*T+1 tokens are left the loader moves to the next
/// shard, and after the last one wraps to the first and counts an epoch.
///
/// Shuffling (optional) permutes the shard order per epoch and the row offsets within each shard per
/// epoch, both derived from (seed, epoch) only, so every worker agrees and a saved <see cref="State"/>
/// resumes bit-exactly.
/// </summary>
public sealed class TokenLoader : ITokenBatchSource, IDisposable
{
    private readonly string[] _files;
    private readonly long[] _counts;
    private readonly long[] _batchesPerShard;
    private readonly bool _shuffle;
    private readonly ulong _seed;
    private readonly int _rowsPerBatch;
    private readonly ushort[] _row;

    private long _epoch;
    private int _shardPos;
    private long _batch;

    private long _orderEpoch = -1;
    private int[] _order = [];
    private (long Epoch, int File) _rowsKey = (-1, -1);
    private int[]? _rows;
    private TokenShard? _open;

    public TokenLoader(string pathOrGlob, int batch, int seq, int worker = 0, int workers = 1, bool shuffle = false, ulong seed = 0)
    {
        LoaderArgs.BatchSeqWorkers("token loader", batch, seq, worker, workers);
        (Batch, Seq, Worker, Workers, _shuffle, _seed) = (batch, seq, worker, workers, shuffle, seed);
        _rowsPerBatch = checked(batch * workers);
        _files = TokenShard.ResolvePaths(pathOrGlob);
        _counts = new long[_files.Length];
        _batchesPerShard = new long[_files.Length];
        long need = (long)_rowsPerBatch * seq + 1;
        for (int i = 0; i < _files.Length; i++)
        {
            _counts[i] = TokenShard.ReadTokenCount(_files[i]);
            if (_counts[i] < need)
            {
                string batchDesc = workers == 1 ? $"B*T+1 = {batch}*{seq}+1" : $"W*B*T+1 = {workers}*{batch}*{seq}+1";
                throw new InvalidDataException($"token shard '{_files[i]}': has {_counts[i]} tokens, shorter than one batch, which needs {batchDesc} = {need} tokens");
            }
            _batchesPerShard[i] = (_counts[i] - 1) / seq / _rowsPerBatch;
        }
        _row = new ushort[seq + 1];
    }

    public int Batch { get; }

    public int Seq { get; }

    public int Worker { get; }

    public int Workers { get; }

    /// <summary>The shard files, sorted by name.</summary>
    public IReadOnlyList<string> Files => _files;

    public IReadOnlyList<long> TokenCounts => _counts;

    /// <summary>Combined batches per epoch (the same for every worker).</summary>
    public long BatchesPerEpoch => _batchesPerShard.Sum();

    public long Epoch => _epoch;

    public DataLoaderState State
    {
        get => new(_epoch, _shardPos, _batch);
        set
        {
            ArgumentNullException.ThrowIfNull(value);
            if (value.Epoch < 0) throw new ArgumentException($"token loader state: epoch {value.Epoch} is negative");
            if (value.Shard < 0 || value.Shard >= _files.Length)
                throw new ArgumentException($"token loader state: shard position {value.Shard} is out of range for {_files.Length} shards");
            int file = ShardOrder(value.Epoch)[value.Shard];
            if (value.Batch < 0 || value.Batch > _batchesPerShard[file])
                throw new ArgumentException($"token loader state: batch {value.Batch} is out of range for shard '{_files[file]}', which has {_batchesPerShard[file]} batches");
            (_epoch, _shardPos, _batch) = (value.Epoch, value.Shard, value.Batch);
            Normalize();
        }
    }

    /// <summary>Back to the first batch of epoch 0.</summary>
    public void Reset() => State = DataLoaderState.Start;

    /// <summary>inputs (B, T) int32, targets (B, T) int32.</summary>
    public (Tensor Inputs, Tensor Targets) NextBatch() => LoaderArgs.TokenTensors(this);

    public void NextBatch(Span<int> inputs, Span<int> targets)
    {
        LoaderArgs.Buffers("token loader", Batch, Seq, inputs, targets);
        int file = ShardOrder(_epoch)[_shardPos];
        var shard = OpenShard(file);
        var rows = RowOrder(_epoch, file);
        for (int j = 0; j < Batch; j++)
        {
            long rowIndex = _batch * _rowsPerBatch + Worker + (long)j * Workers;
            long row = rows is null ? rowIndex : rows[rowIndex];
            shard.Read(row * Seq, _row);
            var inRow = inputs.Slice(j * Seq, Seq);
            var tgRow = targets.Slice(j * Seq, Seq);
            for (int t = 0; t < Seq; t++)
            {
                inRow[t] = _row[t];
                tgRow[t] = _row[t + 1];
            }
        }
        _batch++;
        Normalize();
    }

    /// <summary>Moves past exhausted shards (and epochs) so State always names the next batch.</summary>
    private void Normalize()
    {
        while (_batch >= _batchesPerShard[ShardOrder(_epoch)[_shardPos]])
        {
            _batch = 0;
            if (++_shardPos == _files.Length)
            {
                _shardPos = 0;
                _epoch++;
            }
        }
    }

    private int[] ShardOrder(long epoch)
    {
        if (_orderEpoch != epoch)
        {
            var order = Enumerable.Range(0, _files.Length).ToArray();
            if (_shuffle) new Rng(SeedMix.Mix(_seed, (ulong)epoch, 1)).Shuffle<int>(order);
            (_order, _orderEpoch) = (order, epoch);
        }
        return _order;
    }

    /// <summary>The permutation of row starts for a shard in an epoch, or null for the identity.</summary>
    private int[]? RowOrder(long epoch, int file)
    {
        if (!_shuffle) return null;
        if (_rowsKey != (epoch, file))
        {
            long available = (_counts[file] - 1) / Seq;
            // Shuffle over every available row start, then take the first `usable` of them: with more rows
            // than a whole number of batches, the left-over rows differ from epoch to epoch.
            var rows = new int[available];
            for (int i = 0; i < rows.Length; i++) rows[i] = i;
            new Rng(SeedMix.Mix(_seed, (ulong)epoch, 2, (ulong)file)).Shuffle<int>(rows);
            (_rows, _rowsKey) = (rows, (epoch, file));
        }
        return _rows;
    }

    private TokenShard OpenShard(int file)
    {
        if (_open is null || _open.Path != _files[file])
        {
            _open?.Dispose();
            _open = null;
            _open = TokenShard.Open(_files[file]);
            if (_open.TokenCount != _counts[file])
                throw new InvalidDataException($"token shard '{_files[file]}': now has {_open.TokenCount} tokens, but had {_counts[file]} when the loader started (the file changed)");
        }
        return _open;
    }

    public void Dispose()
    {
        _open?.Dispose();
        _open = null;
    }
}
