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

    /// <summary>
    /// An MNIST directory (plain IDX train and t10k files) of <paramref name="count"/> images of
    /// <paramref name="size"/> x <paramref name="size"/> seeded noise each, labels i mod 10: a mirrored or
    /// shifted image equals no image of the set.
    /// </summary>
    public static void Mnist(string directory, int count, int size)
    {
        var rng = new Sdp.Engine.Rng(21);
        foreach (var prefix in new[] { "train", "t10k" })
        {
            var images = new byte[16 + count * size * size];
            BinaryPrimitives.WriteInt32BigEndian(images, 2051);
            BinaryPrimitives.WriteInt32BigEndian(images.AsSpan(4), count);
            BinaryPrimitives.WriteInt32BigEndian(images.AsSpan(8), size);
            BinaryPrimitives.WriteInt32BigEndian(images.AsSpan(12), size);
            for (int i = 16; i < images.Length; i++) images[i] = (byte)rng.NextInt(256);
            var labels = new byte[8 + count];
            BinaryPrimitives.WriteInt32BigEndian(labels, 2049);
            BinaryPrimitives.WriteInt32BigEndian(labels.AsSpan(4), count);
            for (int i = 0; i < count; i++) labels[8 + i] = (byte)(i % 10);
            System.IO.File.WriteAllBytes(System.IO.Path.Combine(directory, $"{prefix}-images-idx3-ubyte"), images);
            System.IO.File.WriteAllBytes(System.IO.Path.Combine(directory, $"{prefix}-labels-idx1-ubyte"), labels);
        }
    }
}
