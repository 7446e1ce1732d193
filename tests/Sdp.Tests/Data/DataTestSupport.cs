using System.Buffers.Binary;

namespace Sdp.Tests.Data;

/// <summary>A fresh temporary directory, deleted on dispose.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "sdp-data-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}

internal static class RawFiles
{
    /// <summary>An llm.c shard built byte by byte (independently of TokenShardWriter), with any header values.</summary>
    public static void Shard(string path, IReadOnlyList<int> tokens, int magic = 20240520, int version = 1, int? count = null, int extraBytes = 0)
    {
        var bytes = new byte[1024 + 2 * tokens.Count + extraBytes];
        BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(0), magic);
        BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(4), version);
        BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(8), count ?? tokens.Count);
        for (int i = 0; i < tokens.Count; i++) BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(1024 + 2 * i), (ushort)tokens[i]);
        System.IO.File.WriteAllBytes(path, bytes);
    }

    public static int[] Range(int start, int count) => Enumerable.Range(start, count).ToArray();
}
