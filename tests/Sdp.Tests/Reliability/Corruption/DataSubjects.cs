using System.Buffers.Binary;
using System.IO.Compression;
using Sdp.Models.Data;

namespace Sdp.Tests.Reliability.Corruption;

/// <summary>
/// An llm.c token shard as `sdp train --data` reads it: <see cref="TokenShard.ReadAll"/>, <see cref="TokenShard.MaxToken"/>
/// and a <see cref="TokenLoader"/> of batch 2 x 8 (which needs 17 tokens) taking its first batch.
/// Valid: 1024-byte header with magic 20240520, version 1 and a non-negative token count, then exactly that many
/// uint16 tokens (any values; the rest of the header is reserved and ignored), and at least 17 tokens for the loader.
/// </summary>
public sealed class TokenShardSubject : CorruptionSubject
{
    public const string File = "train_000.bin";
    private const int Tokens = 300;
    private const int LoaderNeeds = 2 * 8 + 1;

    public TokenShardSubject() : base("token-shard")
    {
        TokenShardWriter.Write(PathOf(File), Enumerable.Range(0, Tokens).Select(i => (i * 37 + 11) % 4096).ToArray().AsSpan());
        Keep(File);
    }

    public override void Read()
    {
        string path = PathOf(File);
        TokenShard.ReadAll(path);
        TokenShard.MaxToken(path);
        using var loader = new TokenLoader(path, 2, 8);
        loader.NextBatch(new int[16], new int[16]);
    }

    public override Expect Judge(string file, byte[] bytes)
    {
        if (bytes.Length < TokenShard.HeaderBytes) return Expect.Reject;
        int magic = BinaryPrimitives.ReadInt32LittleEndian(bytes), version = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(4));
        int count = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(8));
        return JsonOracle.AcceptIf(magic == 20240520 && version == 1 && count >= LoaderNeeds && bytes.Length == TokenShard.HeaderBytes + 2L * count);
    }

    protected override int HotBytes(string file) => 12;

    public override IEnumerable<Mutation> FixedMutations()
    {
        var original = Originals[File];
        foreach (var m in TruncationsAround(File, [0, 4, 8, 12, TokenShard.HeaderBytes, TokenShard.HeaderBytes + 2 * LoaderNeeds, original.Length])) yield return m;
        foreach (var m in NotARegularFile(File)) yield return m;
        Mutation Field(int offset, int value, Expect expect, int? truncateTo = null)
        {
            var bytes = (byte[])original.Clone();
            BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(offset), value);
            if (truncateTo is { } t) bytes = bytes[..t];
            string what = offset switch { 0 => "magic", 4 => "version", 8 => "token count", _ => $"reserved header int at {offset}" };
            return Stated(File, "header field", $"{what} {value}{(truncateTo is { } l ? $", file cut to {l} bytes" : "")}", bytes, expect);
        }
        foreach (int magic in (int[])[0, 20240521, -20240520, int.MaxValue]) yield return Field(0, magic, Expect.Reject);
        foreach (int version in (int[])[0, 2, -1, int.MaxValue]) yield return Field(4, version, Expect.Reject);
        foreach (int count in (int[])[-1, int.MinValue, int.MaxValue, Tokens + 1, Tokens - 1, 0, 1 << 30]) yield return Field(8, count, Expect.Reject);
        yield return Field(8, LoaderNeeds - 1, Expect.Reject, TokenShard.HeaderBytes + 2 * (LoaderNeeds - 1));
        yield return Field(8, LoaderNeeds, Expect.Accept, TokenShard.HeaderBytes + 2 * LoaderNeeds);
        yield return Field(8, 100, Expect.Accept, TokenShard.HeaderBytes + 200);
        foreach (int offset in (int[])[12, 16, 512, 1020]) yield return Field(offset, unchecked((int)0xDEADBEEF), Expect.Accept);
        yield return Stated(File, "append", "one more token than the count says", Edit.Append(original, [1, 0]), Expect.Reject);
        yield return Stated(File, "append", "one odd byte", Edit.Append(original, [1]), Expect.Reject);
        yield return Stated(File, "overwrite", "every token 0xFFFF", Edit.Overwrite(original, TokenShard.HeaderBytes, Enumerable.Repeat((byte)0xFF, 2 * Tokens).ToArray()), Expect.Accept);
    }
}

/// <summary>
/// A CIFAR-10 binary batch as `sdp train --model resnet18 --data` reads it (<see cref="Cifar10.Load"/> of the file).
/// The product writes no CIFAR files, so the original is built from the format's description: records of one label
/// byte (0..9) and 3072 pixel bytes. Valid: a positive multiple of 3073 bytes whose every label is below 10.
/// </summary>
public sealed class CifarSubject : CorruptionSubject
{
    public const string File = "data_batch_1.bin";
    private const int Records = 4;

    public CifarSubject() : base("cifar10")
    {
        var random = new Random(5);
        var bytes = new byte[Records * Cifar10.RecordBytes];
        random.NextBytes(bytes);
        for (int r = 0; r < Records; r++) bytes[r * Cifar10.RecordBytes] = (byte)(r * 3 % 10);
        Keep(File, bytes);
    }

    public override void Read() => Cifar10.Load(PathOf(File));

    public override Expect Judge(string file, byte[] bytes)
    {
        if (bytes.Length == 0 || bytes.Length % Cifar10.RecordBytes != 0) return Expect.Reject;
        for (int at = 0; at < bytes.Length; at += Cifar10.RecordBytes)
            if (bytes[at] >= 10) return Expect.Reject;
        return Expect.Accept;
    }

    public override Mutation RandomMutation(Random random)
    {
        // Labels are 1 byte in 3073: aim a quarter of the edits at one, so label corruption is tried often.
        if (random.NextDouble() >= 0.25) return base.RandomMutation(random);
        var original = Originals[File];
        int at = random.Next(Records) * Cifar10.RecordBytes;
        byte label = (byte)random.Next(256);
        var bytes = Edit.Overwrite(original, at, [label]);
        return new Mutation(File, "label", $"record {at / Cifar10.RecordBytes} label {label}", bytes, Judge(File, bytes));
    }

    public override IEnumerable<Mutation> FixedMutations()
    {
        var original = Originals[File];
        foreach (var m in TruncationsAround(File, [0, 1, .. Enumerable.Range(1, Records).Select(r => r * Cifar10.RecordBytes)])) yield return m;
        foreach (var m in NotARegularFile(File)) yield return m;
        foreach (byte label in (byte[])[10, 11, 128, 255]) yield return Stated(File, "label", $"label {label}", Edit.Overwrite(original, Cifar10.RecordBytes, [label]), Expect.Reject);
        yield return Stated(File, "label", "label 9", Edit.Overwrite(original, 0, [9]), Expect.Accept);
        yield return Stated(File, "append", "a whole record labelled 7", Edit.Append(original, [7, .. new byte[Cifar10.ImageBytes]]), Expect.Accept);
        yield return Stated(File, "append", "a whole record labelled 200", Edit.Append(original, [200, .. new byte[Cifar10.ImageBytes]]), Expect.Reject);
        yield return Stated(File, "append", "3072 bytes (a record without its label byte)", Edit.Append(original, new byte[Cifar10.ImageBytes]), Expect.Reject);
    }
}

/// <summary>
/// An MNIST directory as `sdp train --model resnet18 --data` reads it (<see cref="Mnist.Load(string, bool)"/>), plain IDX
/// or gzipped. The product writes no MNIST files, so the originals are built from the IDX description: images
/// (big-endian int32 magic 2051, count, rows, cols, then pixels) and labels (magic 2049, count, then one byte each).
/// Valid: exact lengths, positive image size, at least one image, equal counts, labels below 10; gzipped files are one
/// complete gzip member (decompressing to a valid file) with nothing after it.
/// </summary>
public sealed class MnistSubject : CorruptionSubject
{
    private const int Images = 5;
    private const int Size = 6;
    private readonly bool _gzip;
    private readonly string _images;
    private readonly string _labels;
    private readonly Dictionary<string, byte[]> _plain = [];

    public MnistSubject(bool gzip) : base(gzip ? "mnist-gz" : "mnist")
    {
        _gzip = gzip;
        _images = "train-images-idx3-ubyte" + (gzip ? ".gz" : "");
        _labels = "train-labels-idx1-ubyte" + (gzip ? ".gz" : "");
        var images = new byte[16 + Images * Size * Size];
        BinaryPrimitives.WriteInt32BigEndian(images, Mnist.ImagesMagic);
        BinaryPrimitives.WriteInt32BigEndian(images.AsSpan(4), Images);
        BinaryPrimitives.WriteInt32BigEndian(images.AsSpan(8), Size);
        BinaryPrimitives.WriteInt32BigEndian(images.AsSpan(12), Size);
        new Random(8).NextBytes(images.AsSpan(16));
        var labels = new byte[8 + Images];
        BinaryPrimitives.WriteInt32BigEndian(labels, Mnist.LabelsMagic);
        BinaryPrimitives.WriteInt32BigEndian(labels.AsSpan(4), Images);
        for (int i = 0; i < Images; i++) labels[8 + i] = (byte)(i * 7 % 10);
        _plain[_images] = images;
        _plain[_labels] = labels;
        Keep(_images, gzip ? Gzip(images) : images);
        Keep(_labels, gzip ? Gzip(labels) : labels);
    }

    public override void Read() => Mnist.Load(Root, train: true);

    /// <summary>For plain files, the IDX rules on the bytes; for gzipped ones, only edits whose effect on the member is known are judged here (see <see cref="RandomMutation"/>).</summary>
    public override Expect Judge(string file, byte[] bytes)
    {
        if (_gzip) throw new InvalidOperationException("gzipped MNIST mutations carry their own expectation");
        return JudgePlain(file, bytes);
    }

    private Expect JudgePlain(string file, byte[] bytes)
    {
        var images = file == _images ? bytes : _plain[_images];
        var labels = file == _labels ? bytes : _plain[_labels];
        if (images.Length < 16 || labels.Length < 8) return Expect.Reject;
        int n = BinaryPrimitives.ReadInt32BigEndian(images.AsSpan(4)), rows = BinaryPrimitives.ReadInt32BigEndian(images.AsSpan(8)), cols = BinaryPrimitives.ReadInt32BigEndian(images.AsSpan(12));
        int count = BinaryPrimitives.ReadInt32BigEndian(labels.AsSpan(4));
        bool valid = BinaryPrimitives.ReadInt32BigEndian(images) == Mnist.ImagesMagic && BinaryPrimitives.ReadInt32BigEndian(labels) == Mnist.LabelsMagic
            && n >= 1 && rows >= 1 && cols >= 1 && images.Length == 16 + (System.Numerics.BigInteger)n * rows * cols
            && count == n && labels.Length == 8L + count && labels.AsSpan(8).IndexOfAnyInRange((byte)10, (byte)255) < 0;
        return JsonOracle.AcceptIf(valid);
    }

    public override Mutation RandomMutation(Random random)
    {
        if (!_gzip)
        {
            // The header is 16 bytes of 196: aim half the edits at it.
            return random.NextDouble() < 0.5 ? base.RandomMutation(random) : HeaderEdit(random);
        }
        string file = random.Next(2) == 0 ? _images : _labels;
        if (random.NextDouble() < 0.5)
        {
            // Corrupt the content, then gzip it properly: the IDX rules decide.
            var (kind, detail, plain) = Edit.RandomEdit(random, _plain[file], file == _images ? 16 : 8);
            return new Mutation(file, "gzipped " + kind, detail, Gzip(plain), JudgePlain(file, plain));
        }
        return GzipEdit(random, file);
    }

    private Mutation HeaderEdit(Random random)
    {
        string file = random.Next(2) == 0 ? _images : _labels;
        var bytes = Edit.Overwrite(_plain[file], random.Next(file == _images ? 4 : 2) * 4, BitConverter.GetBytes(random.Next(int.MinValue, int.MaxValue)));
        return new Mutation(file, "header field", "random int32", bytes, JudgePlain(file, bytes));
    }

    /// <summary>
    /// An edit of the gzip member itself (RFC 1952). A truncation or appended bytes leave no single complete member with
    /// nothing after it: refused. A flipped bit is judged by inflating the member in full (zlib checks the CRC-32 and
    /// length of the trailer): flips in MTIME, XFL, OS, the FTEXT flag or the unused bits after the last deflate block
    /// change nothing and must load; a member that no longer inflates must be refused.
    /// </summary>
    private Mutation GzipEdit(Random random, string file)
    {
        var member = Originals[file];
        double roll = random.NextDouble();
        if (roll < 0.2)
        {
            int length = random.Next(member.Length);
            return new Mutation(file, "gzip truncation", $"at byte {length} of {member.Length}", member[..length], Expect.Reject);
        }
        if (roll < 0.3)
        {
            var extra = Edit.Random(random, random.Next(1, 9));
            return new Mutation(file, "gzip append", $"{extra.Length} bytes after the member", Edit.Append(member, extra), Expect.Reject);
        }
        int at = random.NextDouble() < 0.4 ? random.Next(10) : random.Next(member.Length);
        int bit = random.Next(8);
        var flipped = Edit.FlipBit(member, at, bit);
        return new Mutation(file, "gzip bit flip", $"byte {at} bit {bit}", flipped, Inflate(flipped) is { } plain ? JudgePlain(file, plain) : Expect.Reject);
    }

    /// <summary>The member's content, or null when it does not inflate (bad header, bad deflate data, CRC-32 or length mismatch).</summary>
    private static byte[]? Inflate(byte[] member)
    {
        try
        {
            using var gz = new GZipStream(new MemoryStream(member), CompressionMode.Decompress);
            using var output = new MemoryStream();
            gz.CopyTo(output);
            return output.ToArray();
        }
        catch (InvalidDataException)
        {
            return null;
        }
    }

    public override IEnumerable<Mutation> FixedMutations()
    {
        foreach (string file in (string[])[_images, _labels])
        {
            foreach (var m in NotARegularFile(file)) yield return m;
            var member = Originals[file];
            if (_gzip)
            {
                foreach (int length in (int[])[0, 1, 2, 9, 10, 11, member.Length / 2, member.Length - 9, member.Length - 8, member.Length - 5, member.Length - 4, member.Length - 1])
                    yield return new Mutation(file, "gzip truncation", $"at byte {length} of {member.Length}", member[..length], Expect.Reject);
                yield return new Mutation(file, "gzip append", "a second gzip member", Edit.Append(member, member), Expect.Reject);
                yield return new Mutation(file, "gzip append", "8 zero bytes", Edit.Append(member, new byte[8]), Expect.Reject);
            }
        }
        foreach (var (file, offset, value, what) in PlainHeaderCases())
        {
            var plain = Edit.Overwrite(_plain[file], offset, BigEndian(value));
            var expect = JudgePlain(file, plain);
            if (expect != Expect.Reject) throw new InvalidOperationException($"the MNIST oracle accepts {what}");
            yield return new Mutation(file, "header field", what, _gzip ? Gzip(plain) : plain, Expect.Reject);
        }
        var plainImages = _plain[_images];
        // Zero images: a header that agrees with its (empty) data, and labels that agree with it, still hold nothing to train on.
        var noImages = Edit.Overwrite(plainImages[..16], 4, BigEndian(0));
        yield return new Mutation(_images, "header field", "0 images (labels still 5)", _gzip ? Gzip(noImages) : noImages, Expect.Reject);
        // A decompression bomb: a few KB of gzip that inflate to 64 MB behind a header claiming 1 image of 8192 x 8192.
        if (_gzip)
        {
            var bomb = new byte[16 + 8192 * 8192];
            plainImages.AsSpan(0, 16).CopyTo(bomb);
            BinaryPrimitives.WriteInt32BigEndian(bomb.AsSpan(4), 1);
            BinaryPrimitives.WriteInt32BigEndian(bomb.AsSpan(8), 8192);
            BinaryPrimitives.WriteInt32BigEndian(bomb.AsSpan(12), 8192);
            yield return new Mutation(_images, "gzip bomb", "64 MB of zeros in 64 KB, one 8192 x 8192 image against 5 labels", Gzip(bomb), Expect.Reject);
            var claim = (byte[])noImages.Clone();
            BinaryPrimitives.WriteInt32BigEndian(claim.AsSpan(4), 1_000_000);
            BinaryPrimitives.WriteInt32BigEndian(claim.AsSpan(8), 1000);
            BinaryPrimitives.WriteInt32BigEndian(claim.AsSpan(12), 1000);
            yield return new Mutation(_images, "header field", "10^12 pixels claimed by a 40-byte member", Gzip(claim), Expect.Reject);
        }
        var label = Edit.Overwrite(_plain[_labels], 8 + 2, [10]);
        yield return new Mutation(_labels, "label", "label 10", _gzip ? Gzip(label) : label, Expect.Reject);
        label = Edit.Overwrite(_plain[_labels], 8 + 2, [9]);
        yield return new Mutation(_labels, "label", "label 9", _gzip ? Gzip(label) : label, Expect.Accept);
        if (!_gzip)
        {
            foreach (var m in TruncationsAround(_images, [0, 4, 8, 12, 16, 16 + Size * Size, plainImages.Length])) yield return m;
            foreach (var m in TruncationsAround(_labels, [0, 4, 8, 9, _plain[_labels].Length])) yield return m;
        }
    }

    private IEnumerable<(string File, int Offset, int Value, string What)> PlainHeaderCases()
    {
        yield return (_images, 0, Mnist.LabelsMagic, "the labels magic in the images file");
        yield return (_labels, 0, Mnist.ImagesMagic, "the images magic in the labels file");
        yield return (_images, 0, 0x00000801, "magic with 1 dimension");
        yield return (_images, 0, 0x00000804, "magic with 4 dimensions");
        yield return (_images, 0, 0x00000D03, "magic of float32 data");
        foreach (int n in (int[])[-1, 0, 4, 6, int.MaxValue, int.MinValue]) yield return (_images, 4, n, $"{n} images");
        foreach (int rows in (int[])[-6, 0, 5, 7, 65536, int.MaxValue]) yield return (_images, 8, rows, $"{rows} rows");
        foreach (int cols in (int[])[-6, 0, 12, int.MaxValue]) yield return (_images, 12, cols, $"{cols} columns");
        foreach (int count in (int[])[-1, 0, 4, 6, int.MaxValue]) yield return (_labels, 4, count, $"{count} labels");
    }

    private static byte[] BigEndian(int value)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteInt32BigEndian(bytes, value);
        return bytes;
    }

    private static byte[] Gzip(byte[] plain)
    {
        using var output = new MemoryStream();
        using (var gz = new GZipStream(output, CompressionLevel.Optimal, leaveOpen: true)) gz.Write(plain);
        return output.ToArray();
    }
}
