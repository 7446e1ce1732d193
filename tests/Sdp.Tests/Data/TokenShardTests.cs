using System.Buffers.Binary;
using Sdp.Models.Data;

namespace Sdp.Tests.Data;

public class TokenShardTests
{
    [Test]
    public void Writer_produces_llmc_layout_and_reader_reads_it_back()
    {
        using var dir = new TempDir();
        var path = dir.File("a.bin");
        ushort[] tokens = [0, 1, 50256, 65535, 7];
        TokenShardWriter.Write(path, tokens);
        var bytes = File.ReadAllBytes(path);
        Assert.That(bytes, Has.Length.EqualTo(1024 + 2 * 5));
        Assert.That(BinaryPrimitives.ReadInt32LittleEndian(bytes), Is.EqualTo(20240520));
        Assert.That(BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(4)), Is.EqualTo(1));
        Assert.That(BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(8)), Is.EqualTo(5));
        Assert.That(bytes.AsSpan(12, 1012).ToArray(), Is.All.EqualTo(0), "rest of the header is zero");
        Assert.That(BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(1024 + 2 * 2)), Is.EqualTo(50256));
        Assert.That(TokenShard.ReadAll(path), Is.EqualTo(tokens));
        Assert.That(TokenShard.ReadTokenCount(path), Is.EqualTo(5));
        using var shard = TokenShard.Open(path);
        var middle = new int[3];
        shard.Read(1, middle);
        Assert.That(middle, Is.EqualTo(new[] { 1, 50256, 65535 }));
        Assert.That(Directory.GetFiles(dir.Path), Has.Length.EqualTo(1), "no temporary file left behind");
    }

    [Test]
    public void Writer_takes_ints_overwrites_atomically_and_rejects_out_of_range_tokens()
    {
        using var dir = new TempDir();
        var path = dir.File("sub/b.bin");
        TokenShardWriter.Write(path, new[] { 3, 2, 1 });
        TokenShardWriter.Write(path, new[] { 9, 8 });
        Assert.That(TokenShard.ReadAll(path), Is.EqualTo(new ushort[] { 9, 8 }));
        Assert.That(() => TokenShardWriter.Write(path, new[] { 1, 65536 }),
            Throws.ArgumentException.With.Message.Contains("65536").And.Message.Contains("index 1").And.Message.Contains("b.bin"));
        Assert.That(() => TokenShardWriter.Write(path, new[] { -1 }), Throws.ArgumentException.With.Message.Contains("-1"));
        Assert.That(TokenShard.ReadAll(path), Is.EqualTo(new ushort[] { 9, 8 }), "a failed write leaves the old file");
        Assert.That(Directory.GetFiles(System.IO.Path.Combine(dir.Path, "sub")), Has.Length.EqualTo(1));
    }

    [Test]
    public void Empty_shard_is_valid()
    {
        using var dir = new TempDir();
        TokenShardWriter.Write(dir.File("e.bin"), ReadOnlySpan<ushort>.Empty);
        Assert.That(TokenShard.ReadAll(dir.File("e.bin")), Is.Empty);
    }

    [Test]
    public void Bad_shards_name_the_file_and_what_was_expected()
    {
        using var dir = new TempDir();
        Assert.That(() => TokenShard.Open(dir.File("missing.bin")), Throws.InstanceOf<FileNotFoundException>().With.Message.Contains("missing.bin"));

        File.WriteAllBytes(dir.File("short.bin"), new byte[100]);
        Assert.That(() => TokenShard.Open(dir.File("short.bin")),
            Throws.InstanceOf<InvalidDataException>().With.Message.Contains("short.bin").And.Message.Contains("100 bytes").And.Message.Contains("1024-byte header"));

        RawFiles.Shard(dir.File("magic.bin"), [1, 2], magic: 12345);
        Assert.That(() => TokenShard.Open(dir.File("magic.bin")),
            Throws.InstanceOf<InvalidDataException>().With.Message.Contains("magic.bin").And.Message.Contains("12345").And.Message.Contains("20240520").And.Message.Contains("offset 0"));

        RawFiles.Shard(dir.File("version.bin"), [1, 2], version: 2);
        Assert.That(() => TokenShard.Open(dir.File("version.bin")),
            Throws.InstanceOf<InvalidDataException>().With.Message.Contains("version.bin").And.Message.Contains("version at offset 4 is 2").And.Message.Contains("expected 1"));

        RawFiles.Shard(dir.File("truncated.bin"), [1, 2, 3], count: 5);
        Assert.That(() => TokenShard.Open(dir.File("truncated.bin")),
            Throws.InstanceOf<InvalidDataException>().With.Message.Contains("truncated.bin").And.Message.Contains("truncated").And.Message.Contains("5 tokens").And.Message.Contains("1034 bytes").And.Message.Contains("1030 bytes"));

        RawFiles.Shard(dir.File("oversized.bin"), [1, 2, 3], extraBytes: 1);
        Assert.That(() => TokenShard.Open(dir.File("oversized.bin")),
            Throws.InstanceOf<InvalidDataException>().With.Message.Contains("oversized.bin").And.Message.Contains("trailing bytes").And.Message.Contains("1030 bytes").And.Message.Contains("1031 bytes"));

        RawFiles.Shard(dir.File("negative.bin"), [], count: -4);
        Assert.That(() => TokenShard.Open(dir.File("negative.bin")),
            Throws.InstanceOf<InvalidDataException>().With.Message.Contains("negative.bin").And.Message.Contains("-4"));
    }

    [Test]
    public void Reads_outside_the_shard_are_rejected()
    {
        using var dir = new TempDir();
        TokenShardWriter.Write(dir.File("a.bin"), new[] { 1, 2, 3 });
        using var shard = TokenShard.Open(dir.File("a.bin"));
        Assert.That(() => shard.Read(2, new ushort[2]), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("[2, 4)").And.Message.Contains("3 tokens"));
    }

    [Test]
    public void Paths_resolve_from_file_directory_or_glob_sorted_by_name()
    {
        using var dir = new TempDir();
        foreach (var name in new[] { "train_002.bin", "train_000.bin", "train_001.bin", "val_000.bin", "train_000.txt" }) File.WriteAllText(dir.File(name), "");
        Assert.That(TokenShard.ResolvePaths(dir.File("train_*.bin")).Select(Path.GetFileName), Is.EqualTo(new[] { "train_000.bin", "train_001.bin", "train_002.bin" }));
        Assert.That(TokenShard.ResolvePaths(dir.Path).Select(Path.GetFileName), Is.EqualTo(new[] { "train_000.bin", "train_001.bin", "train_002.bin", "val_000.bin" }));
        Assert.That(TokenShard.ResolvePaths(dir.File("val_000.bin")), Is.EqualTo(new[] { dir.File("val_000.bin") }));
        Assert.That(() => TokenShard.ResolvePaths(dir.File("test_*.bin")), Throws.InstanceOf<FileNotFoundException>().With.Message.Contains("test_*.bin"));
        Assert.That(() => TokenShard.ResolvePaths(dir.File("nope.bin")), Throws.InstanceOf<FileNotFoundException>().With.Message.Contains("nope.bin"));
        Assert.That(() => TokenShard.ResolvePaths(dir.File("nodir/x_*.bin")), Throws.InstanceOf<FileNotFoundException>().With.Message.Contains("nodir"));
    }
}
