using System.Text;
using Sdp.Engine;
using Sdp.Models.Checkpoints;
using static Sdp.Tests.Checkpoints.CheckpointTest;

namespace Sdp.Tests.Checkpoints;

/// <summary>Malformed files fail with one InvalidDataException naming the file and the problem; failed writes leave nothing behind.</summary>
public class SafeTensorsValidationTests
{
    private string _dir = "";

    [SetUp]
    public void CreateDirectory() => _dir = NewScratchDirectory();

    [TearDown]
    public void DeleteDirectory() => DeleteScratchDirectory(_dir);

    /// <summary>A header entry for an F32 tensor of shape (2,) with the given raw data_offsets.</summary>
    private static string F32x2(string name, string offsets) => $"\"{name}\":{{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{offsets}}}";

    private static string Header(params string[] entries) => "{" + string.Join(",", entries) + "}";

    private void ExpectInvalid(byte[] bytes, params string[] fragments)
    {
        string path = Path.Combine(_dir, "bad.safetensors");
        File.WriteAllBytes(path, bytes);
        var ex = Assert.Throws<InvalidDataException>(() => SafeTensorsFile.Read(path).Dispose());
        Assert.That(ex!.Message, Does.Contain($"safetensors file '{path}'"));
        foreach (var f in fragments) Assert.That(ex.Message, Does.Contain(f));
        File.Delete(path); // the reader closed its handle, even on failure
    }

    private void ExpectInvalid(string header, int dataBytes, params string[] fragments) => ExpectInvalid(Fixture(header, new byte[dataBytes]), fragments);

    [Test]
    public void File_shorter_than_the_length_prefix() => ExpectInvalid([1, 2, 3], "3 bytes long", "shorter than the 8-byte header length");

    [Test]
    public void Header_length_beyond_the_file()
    {
        var bytes = new byte[8 + 10];
        BitConverter.TryWriteBytes(bytes, 1000UL);
        ExpectInvalid(bytes, "header length 1000", "beyond the end of the file", "10 bytes follow");
    }

    [Test]
    public void Header_that_is_not_json_or_not_utf8()
    {
        ExpectInvalid("{\"a\": {\"dtype\": ", 0, "not valid JSON");
        ExpectInvalid(PrefixOnly("{\"\u00ff\":{}}"), "not valid UTF-8");
        ExpectInvalid("[1, 2]", 0, "the header is a JSON array, expected an object");
    }

    /// <summary>A file whose header is <paramref name="latin1"/> encoded as Latin-1 (so non-ASCII characters are invalid UTF-8).</summary>
    private static byte[] PrefixOnly(string latin1) => [.. BitConverter.GetBytes((ulong)latin1.Length), .. Encoding.Latin1.GetBytes(latin1)];

    [Test]
    public void Unknown_dtype() => ExpectInvalid("""{"w":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}""", 16, "tensor 'w'", "unknown dtype 'F128'", "BF16");

    [Test]
    public void Byte_length_not_matching_the_shape()
        => ExpectInvalid("""{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}""", 12, "tensor 'w'", "F32 shape (2, 2) needs 16 bytes", "data_offsets [0, 12] span 12");

    [Test]
    public void Offsets_out_of_range()
    {
        ExpectInvalid(Header(F32x2("w", "[0,8]")), 4, "tensor 'w'", "data_offsets [0, 8] are out of range", "only 4 bytes");
        ExpectInvalid(Header(F32x2("w", "[8,0]")), 8, "tensor 'w'", "end before they begin");
        ExpectInvalid(Header(F32x2("w", "[0,99999999999999999999]")), 8, "tensor 'w'", "not non-negative integers");
        ExpectInvalid(Header(F32x2("w", "[0]")), 8, "tensor 'w'", "not a [begin, end] pair");
    }

    [Test]
    public void Truncated_data()
    {
        using var scope = TensorScope.Begin();
        string path = Path.Combine(_dir, "ok.safetensors");
        SafeTensorsFile.Write(path, [("a", Tensor.Ones(new Shape(4))), ("b", Tensor.Ones(new Shape(4)))]);
        var bytes = File.ReadAllBytes(path);
        ExpectInvalid(bytes[..^3], "tensor 'b'", "data_offsets [16, 32] are out of range", "only 29 bytes", "truncated");
    }

    [Test]
    public void Overlapping_tensors()
        => ExpectInvalid(Header(F32x2("a", "[0,8]"), F32x2("b", "[4,12]")), 12, "tensors 'a' [0, 8] and 'b' [4, 12] overlap");

    [Test]
    public void Holes_between_tensors_before_the_first_or_after_the_last()
    {
        ExpectInvalid(Header(F32x2("a", "[0,8]"), F32x2("b", "[12,20]")), 20, "hole", "bytes [8, 12)", "'a' [0, 8]", "'b' [12, 20]");
        ExpectInvalid(Header(F32x2("b", "[4,12]")), 12, "hole", "bytes [0, 4)", "the first tensor");
        ExpectInvalid(Header(F32x2("a", "[0,8]")), 13, "5 bytes after the last tensor", "belong to no tensor");
    }

    [Test]
    public void Duplicate_names()
    {
        ExpectInvalid(Header(F32x2("a", "[0,8]"), F32x2("a", "[8,16]")), 16, "names 'a' more than once");
        ExpectInvalid("""{"__metadata__":{"k":"1","k":"2"}}""", 0, "\"__metadata__\" names 'k' more than once");
    }

    [Test]
    public void Malformed_entries_and_metadata()
    {
        ExpectInvalid("""{"__metadata__":{"step":3}}""", 0, "\"__metadata__\" entry 'step' is a JSON number, expected a string");
        ExpectInvalid("""{"__metadata__":[]}""", 0, "\"__metadata__\" is a JSON array");
        ExpectInvalid("""{"w":[1]}""", 0, "tensor 'w'", "the entry is a JSON array");
        ExpectInvalid("""{"w":{"shape":[1],"data_offsets":[0,4]}}""", 4, "tensor 'w'", "\"dtype\" is missing");
        ExpectInvalid("""{"w":{"dtype":"F32","data_offsets":[0,4]}}""", 4, "tensor 'w'", "\"shape\" is missing");
        ExpectInvalid("""{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}""", 4, "tensor 'w'", "shape [-1] is not a list of non-negative integers");
        ExpectInvalid("""{"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}""", 4, "shape [1.5] is not a list of non-negative integers");
        ExpectInvalid("""{"w":{"dtype":"F32","shape":[4294967296],"data_offsets":[0,4]}}""", 4, "dimension 0", "larger than 2147483647");
        ExpectInvalid("""{"w":{"dtype":"F64","shape":[2147483647,2147483647,2147483647],"data_offsets":[0,4]}}""", 4, "has too many elements");
    }

    // ---- writing --------------------------------------------------------------------------------------

    [Test]
    public void Write_into_a_missing_directory_fails_and_creates_nothing()
    {
        using var scope = TensorScope.Begin();
        string missing = Path.Combine(_dir, "no-such-dir");
        Assert.Throws<DirectoryNotFoundException>(() => SafeTensorsFile.Write(Path.Combine(missing, "x.safetensors"), [("a", Tensor.Ones(new Shape(2)))]));
        Assert.That(Directory.Exists(missing), Is.False);
        Assert.That(Directory.GetFileSystemEntries(_dir), Is.Empty);
    }

    private static IEnumerable<(string, Tensor)> ThrowsAfterOne(Tensor t)
    {
        yield return ("a", t);
        throw new InvalidOperationException("the data source failed");
    }

    [Test]
    public void Failure_while_enumerating_leaves_no_file_and_keeps_the_old_one()
    {
        using var scope = TensorScope.Begin();
        string path = Path.Combine(_dir, "x.safetensors");
        var ex = Assert.Throws<InvalidOperationException>(() => SafeTensorsFile.Write(path, ThrowsAfterOne(Tensor.Ones(new Shape(2)))));
        Assert.That(ex!.Message, Is.EqualTo("the data source failed"));
        Assert.That(Directory.GetFileSystemEntries(_dir), Is.Empty);

        SafeTensorsFile.Write(path, [("old", Tensor.Zeros(new Shape(3)))]);
        var before = File.ReadAllBytes(path);
        Assert.Throws<InvalidOperationException>(() => SafeTensorsFile.Write(path, ThrowsAfterOne(Tensor.Ones(new Shape(2)))));
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(before), "the old file is intact");
        Assert.That(FileNames(_dir), Is.EqualTo(new[] { "x.safetensors" }), "no temporary file is left");
    }

    [Test]
    public void Failure_after_the_data_is_written_removes_the_temporary_file()
    {
        // The final rename fails because a directory occupies the target path.
        using var scope = TensorScope.Begin();
        string path = Path.Combine(_dir, "occupied");
        Directory.CreateDirectory(path);
        Assert.That(() => SafeTensorsFile.Write(path, [("a", Tensor.Ones(new Shape(1000)))]), Throws.InstanceOf<IOException>().Or.InstanceOf<UnauthorizedAccessException>());
        Assert.That(FileNames(_dir), Is.Empty, "no temporary file is left");
        Assert.That(Directory.GetFileSystemEntries(path), Is.Empty);
    }

    [Test]
    public void Overwrite_replaces_the_old_file_completely()
    {
        using var scope = TensorScope.Begin();
        string path = Path.Combine(_dir, "x.safetensors");
        SafeTensorsFile.Write(path, [("big", Tensor.Zeros(new Shape(1000)))]);
        SafeTensorsFile.Write(path, [("small", Tensor.Ones(new Shape(2)))]);
        using var file = SafeTensorsFile.Read(path);
        Assert.That(file.Names, Is.EqualTo(new[] { "small" }));
        Assert.That(FileNames(_dir), Is.EqualTo(new[] { "x.safetensors" }));
    }

    [Test]
    public void Write_rejects_bad_arguments_before_creating_anything()
    {
        using var scope = TensorScope.Begin();
        string path = Path.Combine(_dir, "x.safetensors");
        var a = Tensor.Ones(new Shape(2));
        var disposed = Tensor.Ones(new Shape(2));
        disposed.Dispose();
        Assert.Multiple(() =>
        {
            Assert.That(() => SafeTensorsFile.Write(path, [("a", a), ("a", a)]), Throws.ArgumentException.With.Message.Contains("'a' appears more than once").And.Message.Contains(path));
            Assert.That(() => SafeTensorsFile.Write(path, [("__metadata__", a)]), Throws.ArgumentException.With.Message.Contains("reserves"));
            Assert.That(() => SafeTensorsFile.Write(path, [("", a)]), Throws.ArgumentException.With.Message.Contains("tensor 0 has no name"));
            Assert.That(() => SafeTensorsFile.Write(path, [("d", disposed)]), Throws.ArgumentException.With.Message.Contains("'d' is null or disposed"));
            Assert.That(() => SafeTensorsFile.Write(path, [("a", a)], storeAs: SafeTensorsDType.I32), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("not I32"));
            Assert.That(() => SafeTensorsFile.Write(path, [("a", a)], storeAs: SafeTensorsDType.F8E4M3), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("not F8_E4M3"));
        });
        Assert.That(Directory.GetFileSystemEntries(_dir), Is.Empty);
    }

    [Test]
    public void Loading_after_dispose_fails_clearly()
    {
        using var scope = TensorScope.Begin();
        string path = Path.Combine(_dir, "x.safetensors");
        SafeTensorsFile.Write(path, [("a", Tensor.Ones(new Shape(2)))]);
        var file = SafeTensorsFile.Read(path);
        file.Dispose();
        Assert.Throws<ObjectDisposedException>(() => file.Load("a"));
    }
}
