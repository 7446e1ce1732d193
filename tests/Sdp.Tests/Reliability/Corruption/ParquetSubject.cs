using System.Buffers.Binary;
using Parquet;
using Parquet.Schema;
using Sdp.Models.Data;

namespace Sdp.Tests.Reliability.Corruption;

/// <summary>
/// FineWeb-style parquet as `sdp tokenize` reads it (<see cref="ShardTokenizer.Tokenize"/>, which also writes the
/// shards). The product writes no parquet, so the original is written with the Parquet.Net library the reader uses:
/// an id and a nullable "text" column in two row groups. What the test can decide on its own is the framing (RFC-like
/// rules of the format): a file that does not start with "PAR1" is text, and text is always taken; a parquet file must
/// end with its footer length and "PAR1", the footer lying inside the file. Edits inside the Thrift footer or the pages
/// that keep the framing need a parquet decoder to judge: those are <see cref="Expect.Either"/> (no crash, no hang,
/// bounded allocation, one clear error if refused).
/// </summary>
public sealed class ParquetSubject : CorruptionSubject
{
    public const string File = "fineweb.parquet";
    private static readonly byte[] Magic = "PAR1"u8.ToArray();

    public ParquetSubject() : base("parquet")
    {
        Directory.CreateDirectory(PathOf("out"));
        var schema = new ParquetSchema(new DataField<int>("id"), new DataField<string>("text"));
        WriteAsync(schema, PathOf(File)).GetAwaiter().GetResult();
        Keep(File);
    }

    private static async Task WriteAsync(ParquetSchema schema, string path)
    {
        using var stream = System.IO.File.Create(path);
        await using var writer = await ParquetWriter.CreateAsync(schema, stream);
        using (var group = writer.CreateRowGroup())
        {
            await group.WriteAsync<int>(schema.DataFields[0], new[] { 1, 2, 3 });
            await group.WriteAsync(schema.DataFields[1], new string?[] { "The quick brown fox.", null, "Jumps over the lazy dog." });
        }
        using (var group = writer.CreateRowGroup())
        {
            await group.WriteAsync<int>(schema.DataFields[0], new[] { 4 });
            await group.WriteAsync(schema.DataFields[1], new[] { "A second row group." });
        }
    }

    public override void Read() => new ShardTokenizer(4096).Tokenize([PathOf(File)], PathOf(Path.Combine("out", "tok")));

    public override Expect Judge(string file, byte[] bytes)
    {
        if (bytes.Length == 0) return Expect.Reject; // an empty input holds nothing to tokenize (and looks like a pipe or device)
        if (bytes.Length < 4 || !bytes.AsSpan(0, 4).SequenceEqual(Magic)) return Expect.Accept; // text: any bytes are a document
        if (bytes.Length < 12 || !bytes.AsSpan(bytes.Length - 4).SequenceEqual(Magic)) return Expect.Reject;
        uint footer = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(bytes.Length - 8));
        if (footer == 0 || footer > bytes.Length - 12) return Expect.Reject;
        return bytes.AsSpan().SequenceEqual(Originals[File]) ? Expect.Accept : Expect.Either;
    }

    /// <summary>Edits aim at the footer (its last 8 bytes and the Thrift metadata before them) half of the time.</summary>
    public override Mutation RandomMutation(Random random)
    {
        var original = Originals[File];
        if (random.NextDouble() < 0.5) return base.RandomMutation(random);
        int footer = (int)BinaryPrimitives.ReadUInt32LittleEndian(original.AsSpan(original.Length - 8));
        int at = original.Length - 8 - footer + random.Next(footer + 8);
        int bit = random.Next(8);
        var bytes = Edit.FlipBit(original, at, bit);
        return new Mutation(File, "footer bit flip", $"byte {at} bit {bit}", bytes, Judge(File, bytes));
    }

    public override IEnumerable<Mutation> FixedMutations()
    {
        var original = Originals[File];
        int footer = (int)BinaryPrimitives.ReadUInt32LittleEndian(original.AsSpan(original.Length - 8));
        int footerStart = original.Length - 8 - footer;
        foreach (var m in TruncationsAround(File, [4, 8, footerStart, footerStart + footer / 2, original.Length - 8, original.Length - 4])) yield return m;
        yield return new Mutation(File, "missing file", "deleted", null, Expect.Reject) { Replacement = Replacement.Deleted };
        yield return new Mutation(File, "not a file", "a directory", null, Expect.Reject) { Replacement = Replacement.Directory };
        yield return new Mutation(File, "not a file", "a named pipe", null, Expect.Reject) { Replacement = Replacement.Fifo };
        yield return new Mutation(File, "not a file", "a link to /dev/zero", null, Expect.Reject) { Replacement = Replacement.LinkToDevZero };
        foreach (uint length in (uint[])[0, 1, (uint)footer - 1, (uint)footer + 1, (uint)original.Length, int.MaxValue, uint.MaxValue])
        {
            var bytes = (byte[])original.Clone();
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(original.Length - 8), length);
            yield return new Mutation(File, "footer length", $"{length} instead of {footer}", bytes, Judge(File, bytes));
        }
        yield return Stated(File, "magic", "the trailing PAR1 broken", Edit.Overwrite(original, original.Length - 1, "2"u8), Expect.Reject);
        yield return Stated(File, "magic", "the leading PAR1 broken: the file is read as text", Edit.Overwrite(original, 3, "2"u8), Expect.Accept);
        yield return Stated(File, "append", "bytes after the trailing PAR1", Edit.Append(original, [1, 2, 3]), Expect.Reject);
        yield return Stated(File, "document", "just PAR1 (too short for a footer)", [.. Magic], Expect.Reject);
        yield return Stated(File, "document", "PAR1 + footer length 0 + PAR1", [.. Magic, 0, 0, 0, 0, .. Magic], Expect.Reject);
        yield return Stated(File, "document", "three bytes of text", "abc"u8.ToArray(), Expect.Accept);
    }
}
