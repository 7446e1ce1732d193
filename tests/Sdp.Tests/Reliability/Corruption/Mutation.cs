namespace Sdp.Tests.Reliability.Corruption;

/// <summary>What the product's reader must do with a corrupted file.</summary>
public enum Expect
{
    /// <summary>One clear error of the bad-input kind (exit code 2 from the CLI), naming the file.</summary>
    Reject,

    /// <summary>The file is still valid by construction (a flipped bit inside float data, a whitespace change): it loads.</summary>
    Accept,

    /// <summary>
    /// Only where the test has no decoder of its own for the bytes hit (the Thrift footer and pages of a parquet file):
    /// either outcome, but a refusal must still be one bad-input error naming the file, within the time and allocation
    /// bounds. Counted and reported separately.
    /// </summary>
    Either,
}

/// <summary>What a mutation puts where a regular file was, besides other bytes.</summary>
public enum Replacement
{
    /// <summary>The file holds <see cref="Mutation.Bytes"/>.</summary>
    Bytes,

    /// <summary>The file is gone.</summary>
    Deleted,

    /// <summary>An empty directory stands where the file was.</summary>
    Directory,

    /// <summary>A named pipe nobody writes to: a reader that opens it blocks forever.</summary>
    Fifo,

    /// <summary>A symbolic link to /dev/zero: endless zero bytes behind a file name.</summary>
    LinkToDevZero,
}

/// <summary>
/// One corrupted variant of one file of a subject: what replaces the file, the outcome the reader must give, and
/// how it was made (kind and detail, enough to reproduce it by hand).
/// </summary>
public sealed record Mutation(string File, string Kind, string Detail, byte[]? Bytes, Expect Expect)
{
    public Replacement Replacement { get; init; } = Replacement.Bytes;

    public override string ToString() => $"{File}: {Kind} ({Detail}), expected {Expect}";
}

/// <summary>Byte-level edits, each returning a new array.</summary>
public static class Edit
{
    public static byte[] Truncate(byte[] bytes, int length) => bytes[..length];

    public static byte[] FlipBit(byte[] bytes, int position, int bit)
    {
        var copy = (byte[])bytes.Clone();
        copy[position] ^= (byte)(1 << bit);
        return copy;
    }

    public static byte[] Overwrite(byte[] bytes, int position, ReadOnlySpan<byte> with)
    {
        var copy = (byte[])bytes.Clone();
        with[..Math.Min(with.Length, copy.Length - position)].CopyTo(copy.AsSpan(position));
        return copy;
    }

    public static byte[] Insert(byte[] bytes, int position, ReadOnlySpan<byte> extra) => [.. bytes.AsSpan(0, position), .. extra, .. bytes.AsSpan(position)];

    public static byte[] Append(byte[] bytes, ReadOnlySpan<byte> extra) => [.. bytes, .. extra];

    public static byte[] Random(Random random, int length)
    {
        var bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }

    /// <summary>
    /// A seeded random edit of <paramref name="bytes"/>: one flipped bit, a few overwritten bytes, a byte set to one of
    /// the values parsers trip over, a truncation, or bytes appended or inserted. With probability 0.7 the position is
    /// drawn from the first <paramref name="hotBytes"/> (headers, where a change means most), else from the whole file.
    /// </summary>
    public static (string Kind, string Detail, byte[] Bytes) RandomEdit(Random random, byte[] bytes, int hotBytes)
    {
        int Position(int limit) => limit <= 0 ? 0 : random.NextDouble() < 0.7 ? random.Next(Math.Min(Math.Max(hotBytes, 1), limit)) : random.Next(limit);
        double roll = random.NextDouble();
        if (bytes.Length == 0 || roll < 0.12)
        {
            var extra = Random(random, random.Next(1, 65));
            return ("append", $"{extra.Length} random bytes", Append(bytes, extra));
        }
        if (roll < 0.47)
        {
            int at = Position(bytes.Length), bit = random.Next(8);
            return ("bit flip", $"byte {at} bit {bit}", FlipBit(bytes, at, bit));
        }
        if (roll < 0.60)
        {
            int at = Position(bytes.Length);
            var with = Random(random, random.Next(1, 5));
            return ("overwrite", $"{with.Length} random bytes at {at}", Overwrite(bytes, at, with));
        }
        if (roll < 0.75)
        {
            int at = Position(bytes.Length);
            byte value = Awkward[random.Next(Awkward.Length)];
            return ("awkward byte", $"byte {at} set to 0x{value:x2}", Overwrite(bytes, at, [value]));
        }
        if (roll < 0.90)
        {
            int length = Position(bytes.Length);
            return ("truncation", $"at byte {length} of {bytes.Length}", Truncate(bytes, length));
        }
        int where = Position(bytes.Length + 1);
        var inserted = Random(random, random.Next(1, 9));
        return ("insertion", $"{inserted.Length} random bytes at {where}", Insert(bytes, where, inserted));
    }

    /// <summary>Bytes that end strings, open structures, break UTF-8 or stand for nothing: 0, quote, backslash, brackets, a lone continuation byte, 0xFF.</summary>
    private static readonly byte[] Awkward = [0x00, (byte)'"', (byte)'\\', (byte)'[', (byte)'{', (byte)'}', (byte)',', (byte)'-', (byte)'9', 0x80, 0xC3, 0xFF, 0x7F];
}
