using System.Buffers.Binary;
using System.IO.Enumeration;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Sdp.Engine;

namespace Sdp.Models.Data;

/// <summary>
/// One token shard in llm.c's format: a header of 256 little-endian int32 (header[0] = magic 20240520,
/// header[1] = version 1, header[2] = token count), then that many uint16 little-endian tokens, and
/// nothing else. Opening validates the header and the exact file length; reads are random access, so
/// the loader never holds a whole shard in memory.
/// </summary>
public sealed class TokenShard : IDisposable
{
    public const int Magic = 20240520;
    public const int Version = 1;
    public const int HeaderInts = 256;
    public const int HeaderBytes = HeaderInts * sizeof(int);

    private readonly SafeFileHandle _handle;

    private TokenShard(string path, SafeFileHandle handle, long count)
    {
        Path = path;
        _handle = handle;
        TokenCount = count;
    }

    public string Path { get; }

    public long TokenCount { get; }

    /// <summary>Opens and validates a shard; every problem is one exception naming the file.</summary>
    public static TokenShard Open(string path)
    {
        if (!File.Exists(path) && !Directory.Exists(path)) throw new FileNotFoundException($"token shard '{path}' does not exist", path);
        // Before opening: a pipe in the shard's place would block the open forever, a device never ends.
        InputFile.RequireRegularFile(path, "token shard");
        var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            long count = ValidateHeader(path, handle);
            return new TokenShard(path, handle, count);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Validates a shard and returns its token count without keeping it open.</summary>
    public static long ReadTokenCount(string path)
    {
        using var shard = Open(path);
        return shard.TokenCount;
    }

    /// <summary>Every token of a shard.</summary>
    public static ushort[] ReadAll(string path)
    {
        using var shard = Open(path);
        var tokens = new ushort[shard.TokenCount];
        shard.Read(0, tokens);
        return tokens;
    }

    private static long ValidateHeader(string path, SafeFileHandle handle)
    {
        long length = RandomAccess.GetLength(handle);
        if (length < HeaderBytes)
            throw new InvalidDataException($"token shard '{path}': file is {length} bytes, shorter than the {HeaderBytes}-byte header (256 x int32) of an llm.c token shard");
        var header = new byte[HeaderBytes];
        ReadExactly(handle, header, 0, path);
        int magic = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(0));
        if (magic != Magic)
            throw new InvalidDataException($"token shard '{path}': magic number at offset 0 is {magic}, expected {Magic} (llm.c token shard)");
        int version = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(4));
        if (version != Version)
            throw new InvalidDataException($"token shard '{path}': version at offset 4 is {version}, expected {Version} (uint16 GPT-2 tokens)");
        int count = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(8));
        if (count < 0)
            throw new InvalidDataException($"token shard '{path}': token count at offset 8 is {count}, expected a non-negative number");
        long expected = HeaderBytes + 2L * count;
        if (length != expected)
        {
            string what = length < expected ? "truncated" : "has trailing bytes";
            throw new InvalidDataException($"token shard '{path}': file {what}: header says {count} tokens, so the file should be {HeaderBytes} + 2*{count} = {expected} bytes, but it is {length} bytes");
        }
        return count;
    }

    /// <summary>Copies tokens [start, start + destination.Length) into <paramref name="destination"/>.</summary>
    public void Read(long start, Span<ushort> destination)
    {
        if (start < 0 || start + destination.Length > TokenCount)
            throw new ArgumentOutOfRangeException(nameof(start), $"token shard '{Path}': tokens [{start}, {start + destination.Length}) are outside the shard's {TokenCount} tokens");
        var bytes = MemoryMarshal.AsBytes(destination);
        ReadExactly(_handle, bytes, HeaderBytes + 2 * start, Path);
        if (!BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(destination, destination);
    }

    /// <summary>The largest token id of a shard (-1 when it is empty), read in chunks so a large shard is never held whole.</summary>
    public static int MaxToken(string path)
    {
        using var shard = Open(path);
        var chunk = new ushort[(int)Math.Min(shard.TokenCount, 1 << 20)];
        int max = -1;
        for (long start = 0; start < shard.TokenCount; start += chunk.Length)
        {
            var span = chunk.AsSpan(0, (int)Math.Min(chunk.Length, shard.TokenCount - start));
            shard.Read(start, span);
            foreach (ushort t in span) max = Math.Max(max, t);
        }
        return max;
    }

    /// <summary>Copies tokens [start, start + destination.Length) into <paramref name="destination"/> as int32.</summary>
    public void Read(long start, Span<int> destination)
    {
        ushort[] buffer = new ushort[destination.Length];
        Read(start, buffer);
        for (int i = 0; i < buffer.Length; i++) destination[i] = buffer[i];
    }

    private static void ReadExactly(SafeFileHandle handle, Span<byte> buffer, long offset, string path)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = RandomAccess.Read(handle, buffer[done..], offset + done);
            if (n == 0) throw new InvalidDataException($"token shard '{path}': unexpected end of file at byte offset {offset + done} (the file changed while it was read?)");
            done += n;
        }
    }

    public void Dispose() => _handle.Dispose();

    /// <summary>
    /// Expands a data path into files sorted by name: a file, a directory (its *.bin files), or a glob whose
    /// last path component has wildcards (e.g. "data/train_*.bin"). Nothing matching is a FileNotFoundException.
    /// </summary>
    public static string[] ResolvePaths(string pathOrGlob, string defaultPattern = "*.bin", string what = "token shards")
    {
        if (string.IsNullOrWhiteSpace(pathOrGlob)) throw new ArgumentException($"{what}: the data path is empty");
        if (File.Exists(pathOrGlob)) return [pathOrGlob];
        string directory, pattern;
        if (Directory.Exists(pathOrGlob))
        {
            (directory, pattern) = (pathOrGlob, defaultPattern);
        }
        else
        {
            directory = System.IO.Path.GetDirectoryName(pathOrGlob) is { Length: > 0 } d ? d : ".";
            pattern = System.IO.Path.GetFileName(pathOrGlob);
            if (pattern.IndexOfAny(['*', '?']) < 0)
                throw new FileNotFoundException($"{what}: '{pathOrGlob}' does not exist", pathOrGlob);
            if (directory.IndexOfAny(['*', '?']) >= 0)
                throw new ArgumentException($"{what}: '{pathOrGlob}' has wildcards in its directory part; only the file name may have them");
            if (!Directory.Exists(directory))
                throw new FileNotFoundException($"{what}: directory '{directory}' of '{pathOrGlob}' does not exist", pathOrGlob);
        }
        var files = Directory.EnumerateFiles(directory)
            .Where(f => FileSystemName.MatchesSimpleExpression(pattern, System.IO.Path.GetFileName(f), ignoreCase: false))
            .OrderBy(f => System.IO.Path.GetFileName(f), StringComparer.Ordinal)
            .ToArray();
        if (files.Length == 0)
            throw new FileNotFoundException($"{what}: no files match '{pattern}' in directory '{directory}'", pathOrGlob);
        return files;
    }
}

/// <summary>Writes llm.c token shards atomically: a temporary file in the same directory, then a rename.</summary>
public static class TokenShardWriter
{
    public static void Write(string path, ReadOnlySpan<ushort> tokens)
    {
        CheckCount(path, tokens.Length);
        var buffer = tokens.ToArray();
        WriteChunks(path, tokens.Length, (start, chunk) => buffer.AsSpan((int)start, chunk.Length).CopyTo(chunk));
    }

    /// <summary>Writes int tokens, each of which must be in [0, 65535].</summary>
    public static void Write(string path, ReadOnlySpan<int> tokens)
    {
        CheckCount(path, tokens.Length);
        var buffer = new ushort[tokens.Length];
        for (int i = 0; i < tokens.Length; i++)
        {
            int t = tokens[i];
            if ((uint)t > ushort.MaxValue)
                throw new ArgumentException($"token shard '{path}': token {t} at index {i} does not fit the shard's uint16 format (expected 0..65535)");
            buffer[i] = (ushort)t;
        }
        WriteChunks(path, buffer.Length, (start, chunk) => buffer.AsSpan((int)start, chunk.Length).CopyTo(chunk));
    }

    /// <summary>Writes <paramref name="count"/> tokens produced chunk by chunk: fill(start, chunk) fills tokens [start, start + chunk.Length).</summary>
    public static void WriteChunks(string path, long count, ChunkFiller fill)
    {
        CheckCount(path, count);
        string full = System.IO.Path.GetFullPath(path);
        string directory = System.IO.Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(directory);
        string temp = System.IO.Path.Combine(directory, $".{System.IO.Path.GetFileName(full)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            // Buffers no larger than the shard: a shard of a few tokens needs no 64K-token staging area.
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, (int)Math.Min(1 << 16, TokenShard.HeaderBytes + 2 * count)))
            {
                var header = new byte[TokenShard.HeaderBytes];
                BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(0), TokenShard.Magic);
                BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(4), TokenShard.Version);
                BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(8), (int)count);
                stream.Write(header);
                int chunkTokens = (int)Math.Min(1 << 16, Math.Max(1, count));
                var chunk = new ushort[chunkTokens];
                for (long start = 0; start < count; start += chunkTokens)
                {
                    var span = chunk.AsSpan(0, (int)Math.Min(chunkTokens, count - start));
                    fill(start, span);
                    if (!BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(span, span);
                    stream.Write(MemoryMarshal.AsBytes(span));
                }
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(temp); } catch (IOException) { }
            throw;
        }
    }

    public delegate void ChunkFiller(long start, Span<ushort> chunk);

    private static void CheckCount(string path, long count)
    {
        if (count > int.MaxValue)
            throw new ArgumentException($"token shard '{path}': {count} tokens do not fit the header's int32 count (at most {int.MaxValue})");
    }
}
