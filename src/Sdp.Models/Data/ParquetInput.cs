using System.Buffers.Binary;
using Microsoft.Win32.SafeHandles;
using Parquet.Meta;

namespace Sdp.Models.Data;

/// <summary>
/// Checks of a parquet file made before the Parquet.Net library is handed any part of it. The library trusts the
/// file: a corrupted Thrift footer can send its decoder into an endless loop, and a corrupted page header or row count
/// into a crash or an allocation of whatever size the file claims. So the framing is checked here first ("PAR1", the
/// footer length, the footer inside the file), the footer and the text column's page headers are walked as Thrift
/// compact-protocol structures (every structure must end inside its bytes, every collection fit in them, nesting stay
/// shallow), and the row counts and page sizes must fit in the bytes that hold them. Every problem is one
/// <see cref="InvalidDataException"/> naming the file.
/// </summary>
internal static class ParquetInput
{
    private const int MaxDepth = 32;

    /// <summary>Deflate expands at most about 1032:1; no codec is taken to expand more (a page claiming more is refused before it is inflated).</summary>
    private const long MaxExpansion = 1032;

    /// <summary>Checks the framing and the footer of <paramref name="path"/>; returns where the footer starts.</summary>
    public static long CheckFooter(string path, SafeFileHandle handle)
    {
        long length = RandomAccess.GetLength(handle);
        if (length < 12) throw Bad(path, $"{length} bytes is too short for a parquet file (magic, footer length, magic: 12 bytes at least)");
        Span<byte> tail = stackalloc byte[8];
        ReadExactly(path, handle, tail, length - 8);
        if (!tail[4..].SequenceEqual("PAR1"u8)) throw Bad(path, "it does not end with the magic PAR1 (truncated, or followed by other data?)");
        uint footer = BinaryPrimitives.ReadUInt32LittleEndian(tail);
        if (footer == 0 || footer > length - 12) throw Bad(path, $"the footer length {footer} does not fit the file's {length} bytes");
        long start = length - 8 - footer;
        var bytes = new byte[footer];
        ReadExactly(path, handle, bytes, start);
        int used = Thrift.Walk(path, "the footer", bytes, null);
        if (used != bytes.Length) throw Bad(path, $"the footer's metadata ends at byte {used} of its {bytes.Length}");
        return start;
    }

    /// <summary>
    /// Checks the column chunk of <paramref name="column"/> in row group <paramref name="group"/>: its pages lie between the
    /// magic and the footer, each page header is a well-formed structure whose sizes fit the chunk, and the row group's
    /// rows fit in what its pages can hold.
    /// </summary>
    public static void CheckColumnChunk(string path, SafeFileHandle handle, long footerStart, RowGroup group, int index, ColumnChunk column)
    {
        string where = $"row group {index}";
        var meta = column.MetaData ?? throw Bad(path, $"{where}: the text column chunk has no metadata");
        if (group.NumRows < 0 || group.NumRows > int.MaxValue) throw Bad(path, $"{where}: {group.NumRows} rows");
        long begin = meta.DictionaryPageOffset is { } d && d > 0 && d < meta.DataPageOffset ? d : meta.DataPageOffset;
        if (begin < 4 || meta.TotalCompressedSize <= 0 || meta.TotalCompressedSize > footerStart - begin)
            throw Bad(path, $"{where}: the text column's pages [{begin}, {begin} + {meta.TotalCompressedSize}) do not lie between the magic and the footer (byte {footerStart})");
        // Every row has a value or a null marker in a page; the pages can describe no more rows than their bytes can expand to.
        if (group.NumRows > MaxExpansion * meta.TotalCompressedSize * 8)
            throw Bad(path, $"{where}: {group.NumRows} rows in {meta.TotalCompressedSize} bytes of text column");
        var chunk = new byte[meta.TotalCompressedSize];
        ReadExactly(path, handle, chunk, begin);
        int at = 0, page = 0;
        while (at < chunk.Length)
        {
            var sizes = new Dictionary<short, long>();
            int header = Thrift.Walk(path, $"{where}, page {page} header", chunk.AsSpan(at), sizes);
            long uncompressed = sizes.GetValueOrDefault((short)2, -1), compressed = sizes.GetValueOrDefault((short)3, -1);
            if (compressed < 0 || uncompressed < 0 || compressed > chunk.Length - at - header)
                throw Bad(path, $"{where}, page {page}: sizes {compressed} (compressed) and {uncompressed} do not fit the column chunk");
            if (uncompressed > MaxExpansion * compressed + 4096)
                throw Bad(path, $"{where}, page {page}: {compressed} compressed bytes claim {uncompressed} uncompressed");
            at += header + (int)compressed;
            page++;
        }
    }

    private static void ReadExactly(string path, SafeFileHandle handle, Span<byte> buffer, long offset)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int read = RandomAccess.Read(handle, buffer[done..], offset + done);
            if (read == 0) throw Bad(path, $"the file ended at byte {offset + done} (was it truncated while being read?)");
            done += read;
        }
    }

    public static InvalidDataException Bad(string path, string problem) => new($"parquet file '{path}': {problem}");

    /// <summary>The Thrift compact protocol, walked without building anything: only its structure is checked.</summary>
    private static class Thrift
    {
        /// <summary>
        /// Walks one structure at the start of <paramref name="data"/> and returns its length in bytes; the 16-to-64-bit
        /// integer fields of its top level go into <paramref name="topLevel"/> (by field id) when given.
        /// </summary>
        public static int Walk(string path, string what, ReadOnlySpan<byte> data, Dictionary<short, long>? topLevel)
        {
            int at = 0;
            Struct(path, what, data, ref at, 0, topLevel);
            return at;
        }

        private static void Struct(string path, string what, ReadOnlySpan<byte> data, ref int at, int depth, Dictionary<short, long>? fields)
        {
            if (depth > MaxDepth) throw Bad(path, $"{what} nests deeper than {MaxDepth} structures");
            short id = 0;
            while (true)
            {
                byte header = Byte(path, what, data, ref at);
                if (header == 0) return;
                int type = header & 0x0F, delta = header >> 4;
                id = delta != 0 ? (short)(id + delta) : (short)ZigZag(Varint(path, what, data, ref at));
                long? value = Value(path, what, data, ref at, type, depth);
                if (fields is not null && value is { } v) fields[id] = v;
            }
        }

        /// <summary>Skips one value of compact type <paramref name="type"/>; returns it when it is an integer.</summary>
        private static long? Value(string path, string what, ReadOnlySpan<byte> data, ref int at, int type, int depth)
        {
            switch (type)
            {
                case 1 or 2: return null; // boolean true / false: in the field header
                case 3: Byte(path, what, data, ref at); return null;
                case 4 or 5 or 6: return ZigZag(Varint(path, what, data, ref at));
                case 7: Skip(path, what, data, ref at, 8); return null;
                case 8: Skip(path, what, data, ref at, Length(path, what, data, ref at)); return null;
                case 9 or 10:
                {
                    byte header = Byte(path, what, data, ref at);
                    long size = header >> 4;
                    if (size == 15) size = Length(path, what, data, ref at);
                    Elements(path, what, data, ref at, size, header & 0x0F, depth);
                    return null;
                }
                case 11:
                {
                    long size = Length(path, what, data, ref at);
                    if (size == 0) return null;
                    byte types = Byte(path, what, data, ref at);
                    // Each entry is a key and a value of at least a byte each.
                    if (size * 2 > data.Length - at) throw Bad(path, $"{what}: a map of {size} entries in {data.Length - at} bytes");
                    for (long i = 0; i < size; i++)
                    {
                        Element(path, what, data, ref at, types >> 4, depth);
                        Element(path, what, data, ref at, types & 0x0F, depth);
                    }
                    return null;
                }
                case 12: Struct(path, what, data, ref at, depth + 1, null); return null;
                default: throw Bad(path, $"{what}: unknown Thrift type {type} at byte {at}");
            }
        }

        private static void Elements(string path, string what, ReadOnlySpan<byte> data, ref int at, long size, int type, int depth)
        {
            // Every element takes at least a byte (booleans in collections are a byte each).
            if (size > data.Length - at) throw Bad(path, $"{what}: a list of {size} elements in {data.Length - at} bytes");
            for (long i = 0; i < size; i++) Element(path, what, data, ref at, type, depth);
        }

        private static void Element(string path, string what, ReadOnlySpan<byte> data, ref int at, int type, int depth)
        {
            if (type is 1 or 2) Byte(path, what, data, ref at);
            else Value(path, what, data, ref at, type, depth + 1);
        }

        private static byte Byte(string path, string what, ReadOnlySpan<byte> data, ref int at)
            => at < data.Length ? data[at++] : throw Bad(path, $"{what} ends in the middle of a structure");

        private static void Skip(string path, string what, ReadOnlySpan<byte> data, ref int at, long count)
        {
            if (count > data.Length - at) throw Bad(path, $"{what}: {count} bytes claimed, {data.Length - at} left");
            at += (int)count;
        }

        private static long Length(string path, string what, ReadOnlySpan<byte> data, ref int at)
        {
            ulong n = Varint(path, what, data, ref at);
            return n <= int.MaxValue ? (long)n : throw Bad(path, $"{what}: a length of {n}");
        }

        private static ulong Varint(string path, string what, ReadOnlySpan<byte> data, ref int at)
        {
            ulong result = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                byte b = Byte(path, what, data, ref at);
                result |= (ulong)(b & 0x7F) << shift;
                if ((b & 0x80) == 0) return result;
            }
            throw Bad(path, $"{what}: a variable-length integer longer than 10 bytes");
        }

        private static long ZigZag(ulong n) => (long)(n >> 1) ^ -(long)(n & 1);
    }
}
