using System.Text;
using Microsoft.ML.Tokenizers;
using Parquet;
using Parquet.Schema;
using Sdp.Models.Data;

namespace Sdp.Tests.Data;

public class ShardTokenizerTests
{
    private static List<int> Eot(string text) => [50256, .. ShardTokenizer.Encode(text)];

    private static List<int> ReadShards(IEnumerable<string> paths) => [.. paths.SelectMany(p => TokenShard.ReadAll(p).Select(t => (int)t))];

    [Test]
    public void Gpt2_ids_are_the_known_ones_and_round_trip()
    {
        Assert.That(ShardTokenizer.Encode("Hello world"), Is.EqualTo(new[] { 15496, 995 }));
        string text = "The  quick brown fox's jumps\n\n\n — 123 ünïcødé 😀 end.  \n\ttabs";
        Assert.That(ShardTokenizer.Decode(ShardTokenizer.Encode(text)), Is.EqualTo(text));
        // Without end-of-text markers in the text, the ordinary encoder agrees with the stock GPT-2 tokenizer.
        Assert.That(ShardTokenizer.Encode(text), Is.EqualTo(TiktokenTokenizer.CreateForModel("gpt2").EncodeToIds(text)));
        Assert.That(ShardTokenizer.Decode([50256, 15496, 995]), Is.EqualTo("<|endoftext|>Hello world"));
        // Like tiktoken's encode_ordinary: a literal end-of-text marker in a document is plain text.
        var literal = ShardTokenizer.Encode("a<|endoftext|>b");
        Assert.That(literal, Does.Not.Contain(50256));
        Assert.That(ShardTokenizer.Decode(literal), Is.EqualTo("a<|endoftext|>b"));
    }

    [Test]
    public void Text_files_become_one_document_each_split_into_numbered_shards()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("a.txt"), "First document.\nWith two lines.");
        File.WriteAllText(dir.File("b.txt"), "Second one, ünïcødé.");
        var expected = Eot("First document.\nWith two lines.").Concat(Eot("Second one, ünïcødé.")).ToList();

        var one = new ShardTokenizer().Tokenize([dir.File("a.txt"), dir.File("b.txt")], dir.File("out/all"));
        Assert.That(one.Select(Path.GetFileName), Is.EqualTo(new[] { "all_000000.bin" }));
        Assert.That(ReadShards(one), Is.EqualTo(expected));

        var reports = new List<(long Done, long Total, long Tokens)>();
        var progress = new SyncProgress(reports.Add);
        var small = new ShardTokenizer(maxTokensPerShard: 4).Tokenize([dir.File("*.txt")], dir.File("out/small"), progress);
        Assert.That(small.Select(Path.GetFileName), Is.EqualTo(Enumerable.Range(0, (expected.Count + 3) / 4).Select(i => $"small_{i:D6}.bin")));
        Assert.That(small.Select(TokenShard.ReadTokenCount).Take(small.Count - 1), Is.All.EqualTo(4));
        Assert.That(ReadShards(small), Is.EqualTo(expected), "documents straddle shards without loss");
        long bytes = new FileInfo(dir.File("a.txt")).Length + new FileInfo(dir.File("b.txt")).Length;
        Assert.That(reports[^1], Is.EqualTo((bytes, bytes, (long)expected.Count)));
        Assert.That(reports.Select(r => r.Done), Is.Ordered);
    }

    [Test]
    public void Long_text_is_encoded_in_chunks_exactly_as_a_whole()
    {
        using var dir = new TempDir();
        var sb = new StringBuilder();
        var rng = new Random(1);
        string[] words = ["alpha", "beta", "Gamma", "δέλτα", "42", "x-ray", "it's", " ", "\t", "!!", "\n"];
        while (sb.Length < 2_300_000)
        {
            sb.Append(words[rng.Next(words.Length)]);
            sb.Append(rng.Next(4) == 0 ? "\n" : " ");
        }
        string text = sb.ToString();
        File.WriteAllText(dir.File("long.txt"), text);
        var shards = new ShardTokenizer().Tokenize([dir.File("long.txt")], dir.File("long"));
        Assert.That(ReadShards(shards), Is.EqualTo(Eot(text)));
    }

    [Test]
    public async Task Parquet_text_column_rows_are_documents()
    {
        using var dir = new TempDir();
        var schema = new ParquetSchema(new DataField<int>("id"), new DataField<string>("text"));
        string path = dir.File("fineweb.parquet");
        using (var stream = File.Create(path))
        {
            await using var writer = await ParquetWriter.CreateAsync(schema, stream);
            using (var group = writer.CreateRowGroup())
            {
                await group.WriteAsync<int>(schema.DataFields[0], new[] { 1, 2, 3 });
                await group.WriteAsync(schema.DataFields[1], new string?[] { "Hello world", null, "Second doc." });
            }
            using (var group = writer.CreateRowGroup())
            {
                await group.WriteAsync<int>(schema.DataFields[0], new[] { 4 });
                await group.WriteAsync(schema.DataFields[1], new[] { "Third row group <|endoftext|> here" });
            }
        }
        var shards = await new ShardTokenizer().TokenizeAsync([path], dir.File("fw"));
        var expected = Eot("Hello world").Concat(Eot("Second doc.")).Concat(Eot("Third row group <|endoftext|> here")).ToList();
        Assert.That(ReadShards(shards), Is.EqualTo(expected));
        Assert.That(expected.Take(3), Is.EqualTo(new[] { 50256, 15496, 995 }));
    }

    [Test]
    public async Task Bad_inputs_name_the_file()
    {
        using var dir = new TempDir();
        var schema = new ParquetSchema(new DataField<string>("content"), new DataField<int>("id"));
        string path = dir.File("notext.parquet");
        using (var stream = File.Create(path))
        {
            await using var writer = await ParquetWriter.CreateAsync(schema, stream);
            using var group = writer.CreateRowGroup();
            await group.WriteAsync(schema.DataFields[0], new[] { "x" });
            await group.WriteAsync<int>(schema.DataFields[1], new[] { 1 });
        }
        var tokenizer = new ShardTokenizer();
        Assert.That(() => tokenizer.Tokenize([path], dir.File("o")),
            Throws.InstanceOf<InvalidDataException>().With.Message.Contains("notext.parquet").And.Message.Contains("no 'text' column").And.Message.Contains("'content', 'id'"));

        File.WriteAllBytes(dir.File("broken.parquet"), [.. "PAR1"u8.ToArray(), 1, 2, 3]);
        Assert.That(() => tokenizer.Tokenize([dir.File("broken.parquet")], dir.File("o")),
            Throws.InstanceOf<InvalidDataException>().With.Message.Contains("broken.parquet"));
        Assert.That(() => tokenizer.Tokenize([dir.File("missing.txt")], dir.File("o")), Throws.InstanceOf<FileNotFoundException>().With.Message.Contains("missing.txt"));
        Assert.That(() => tokenizer.Tokenize([], dir.File("o")), Throws.ArgumentException.With.Message.Contains("no input files"));
        Assert.That(() => new ShardTokenizer(0), Throws.ArgumentException.With.Message.Contains("tokens per shard"));
        Assert.That(Directory.GetFiles(dir.Path, "o_*"), Is.Empty);
    }

    /// <summary>IProgress that reports inline (Progress&lt;T&gt; posts to the thread pool).</summary>
    private sealed class SyncProgress(Action<(long, long, long)> report) : IProgress<(long BytesDone, long BytesTotal, long Tokens)>
    {
        public void Report((long BytesDone, long BytesTotal, long Tokens) value) => report(value);
    }
}
