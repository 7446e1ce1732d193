using Sdp.Engine;
using Sdp.Models.Checkpoints;
using static Sdp.Tests.Checkpoints.CheckpointTest;

namespace Sdp.Tests.Checkpoints;

/// <summary>
/// Files as other tools write them, built byte by byte. The Python <c>safetensors</c> library (Rust
/// core) writes "__metadata__" first, then the tensors sorted by dtype (widest alignment first) and name,
/// in compact JSON (serde_json) with fields dtype, shape, data_offsets, padded with spaces to 8 bytes.
/// </summary>
public class SafeTensorsFixtureTests
{
    private string _dir = "";

    [SetUp]
    public void CreateDirectory() => _dir = NewScratchDirectory();

    [TearDown]
    public void DeleteDirectory() => DeleteScratchDirectory(_dir);

    private string WriteFixture(byte[] bytes)
    {
        string path = Path.Combine(_dir, "fixture.safetensors");
        File.WriteAllBytes(path, bytes);
        return path;
    }

    [Test]
    public void Reads_a_file_written_by_python_safetensors()
    {
        // save_file({"weight": torch.tensor([[1., 2.], [3., 4.]]),
        //            "bias": torch.tensor([1.0, -2.0, 0.5], dtype=torch.bfloat16)}, path, metadata={"format": "pt"})
        // F32 sorts before BF16. BF16 bits: 1.0 = 0x3F80, -2.0 = 0xC000, 0.5 = 0x3F00.
        const string header = """{"__metadata__":{"format":"pt"},"weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"bias":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}}""";
        byte[] data =
        [
            0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x40, 0x40, 0x00, 0x00, 0x80, 0x40, // 1, 2, 3, 4 (F32 LE)
            0x80, 0x3F, 0x00, 0xC0, 0x00, 0x3F, // 1, -2, 0.5 (BF16 LE)
        ];
        var bytes = Fixture(header, data);
        Assert.That(BitConverter.ToUInt64(bytes), Is.EqualTo(152), "152 bytes of JSON, already a multiple of 8: no padding");

        using var file = SafeTensorsFile.Read(WriteFixture(bytes));
        using var scope = TensorScope.Begin();
        Assert.That(file.Metadata, Is.EquivalentTo(new Dictionary<string, string> { ["format"] = "pt" }));
        Assert.That(file.Names, Is.EqualTo(new[] { "weight", "bias" }));
        Assert.That(file.Info("bias"), Is.EqualTo(new SafeTensorInfo("bias", SafeTensorsDType.BF16, new Shape(3), 16, 22, 8 + 152 + 16)));
        var w = file.Load("weight");
        Assert.That(w.Shape, Is.EqualTo(new Shape(2, 2)));
        Assert.That(w.ToArray<float>(), Is.EqualTo(new[] { 1f, 2f, 3f, 4f }));
        Assert.That(file.Load("bias").ToArray<float>(), Is.EqualTo(new[] { 1f, -2f, 0.5f }));
        Assert.That(file.Load("bias", DType.Float64).ToArray<double>(), Is.EqualTo(new[] { 1.0, -2.0, 0.5 }));
    }

    [Test]
    public void Writes_byte_for_byte_what_python_safetensors_writes()
    {
        // save_file({"weight": torch.tensor([[1., 2.], [3., 4.]]), "ids": torch.tensor([1, -1, 2**40])},
        //           path, metadata={"format": "pt"}): I64 sorts before F32.
        const string header = """{"__metadata__":{"format":"pt"},"ids":{"dtype":"I64","shape":[3],"data_offsets":[0,24]},"weight":{"dtype":"F32","shape":[2,2],"data_offsets":[24,40]}}""";
        byte[] data =
        [
            0x01, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0x01, 0, 0, // 1, -1, 2^40
            0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x40, 0x40, 0x00, 0x00, 0x80, 0x40,
        ];
        using var scope = TensorScope.Begin();
        string path = Path.Combine(_dir, "ours.safetensors");
        SafeTensorsFile.Write(path,
            [("ids", Tensor.FromArray([1L, -1L, 1L << 40], new Shape(3))), ("weight", Tensor.FromArray([1f, 2f, 3f, 4f], new Shape(2, 2)))],
            new Dictionary<string, string> { ["format"] = "pt" });
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(Fixture(header, data)));
    }

    [Test]
    public void Reads_every_integer_and_small_float_dtype()
    {
        // Bytes for each dtype, little-endian; expected values worked out by hand:
        // F16 0x3C00 = 1, 0xC500 = -5, 0x7BFF = 65504; F8_E4M3 (bias 7) 0x38 = 1, 0x7E = 448, 0x01 = 2^-9, 0xB8 = -1;
        // F8_E5M2 (upper byte of F16) 0x3C = 1, 0xC0 = -2, 0x7C = inf, 0x01 = 2^-16.
        const string header = """{"b":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]},"u8":{"dtype":"U8","shape":[2],"data_offsets":[3,5]},"i8":{"dtype":"I8","shape":[2],"data_offsets":[5,7]},"e4":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[7,11]},"e5":{"dtype":"F8_E5M2","shape":[4],"data_offsets":[11,15]},"pad":{"dtype":"U8","shape":[1],"data_offsets":[15,16]},"i16":{"dtype":"I16","shape":[2],"data_offsets":[16,20]},"u16":{"dtype":"U16","shape":[1],"data_offsets":[20,22]},"f16":{"dtype":"F16","shape":[3],"data_offsets":[22,28]},"u32":{"dtype":"U32","shape":[1],"data_offsets":[28,32]},"u64":{"dtype":"U64","shape":[1],"data_offsets":[32,40]}}""";
        byte[] data =
        [
            1, 0, 1,
            255, 7,
            0x80, 0x7F,
            0x38, 0x7E, 0x01, 0xB8,
            0x3C, 0xC0, 0x7C, 0x01,
            9,
            0x00, 0x80, 0xFF, 0x7F,
            0xFF, 0xFF,
            0x00, 0x3C, 0x00, 0xC5, 0xFF, 0x7B,
            0xFF, 0xFF, 0xFF, 0xFF,
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F,
        ];
        using var file = SafeTensorsFile.Read(WriteFixture(Fixture(header, data)));
        using var scope = TensorScope.Begin();
        Assert.Multiple(() =>
        {
            Assert.That(file.Load("b", DType.Int32).ToArray<int>(), Is.EqualTo(new[] { 1, 0, 1 }));
            Assert.That(file.Load("u8", DType.Int64).ToArray<long>(), Is.EqualTo(new[] { 255L, 7 }));
            Assert.That(file.Load("i8").ToArray<float>(), Is.EqualTo(new[] { -128f, 127f }));
            Assert.That(file.Load("e4").ToArray<float>(), Is.EqualTo(new[] { 1f, 448f, MathF.Pow(2, -9), -1f }));
            Assert.That(file.Load("e5").ToArray<float>(), Is.EqualTo(new[] { 1f, -2f, float.PositiveInfinity, MathF.Pow(2, -16) }));
            Assert.That(file.Load("i16", DType.Int32).ToArray<int>(), Is.EqualTo(new[] { short.MinValue, short.MaxValue }));
            Assert.That(file.Load("u16", DType.Float64).ToArray<double>(), Is.EqualTo(new[] { 65535.0 }));
            Assert.That(file.Load("f16").ToArray<float>(), Is.EqualTo(new[] { 1f, -5f, 65504f }));
            Assert.That(file.Load("u32", DType.Int64).ToArray<long>(), Is.EqualTo(new[] { (long)uint.MaxValue }));
            Assert.That(file.Load("u64", DType.Int64).ToArray<long>(), Is.EqualTo(new[] { long.MaxValue }));
        });
        var tooBig = Assert.Throws<InvalidDataException>(() => file.Load("u32", DType.Int32));
        Assert.That(tooBig!.Message, Does.Contain("'u32'").And.Contain("out of range for int32"));
    }

    [Test]
    public void Accepts_unpadded_headers_with_whitespace_and_any_field_order()
    {
        // Other writers may pretty-print and skip the padding; the format only requires valid JSON.
        const string header = "{\n  \"a\" : { \"data_offsets\": [0, 4], \"shape\": [1], \"dtype\": \"F32\" }\n}\n";
        using var file = SafeTensorsFile.Read(WriteFixture(Fixture(header, BitConverter.GetBytes(2.5f), pad: false)));
        using var scope = TensorScope.Begin();
        Assert.That(file.Load("a").ToArray<float>(), Is.EqualTo(new[] { 2.5f }));
    }

    [Test]
    public void Tensors_may_be_laid_out_in_any_order_and_zero_sized_ones_anywhere()
    {
        const string header = """{"late":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"empty":{"dtype":"F64","shape":[0,3],"data_offsets":[4,4]},"early":{"dtype":"I32","shape":[],"data_offsets":[0,4]}}""";
        byte[] data = [.. BitConverter.GetBytes(-7), .. BitConverter.GetBytes(0.25f)];
        using var file = SafeTensorsFile.Read(WriteFixture(Fixture(header, data)));
        using var scope = TensorScope.Begin();
        Assert.That(file.Names, Is.EqualTo(new[] { "late", "empty", "early" }));
        Assert.That(file.Load("early", DType.Int32).Item(), Is.EqualTo(-7));
        Assert.That(file.Load("late").Item(), Is.EqualTo(0.25));
        Assert.That(file.Load("empty", DType.Float64).Shape, Is.EqualTo(new Shape(0, 3)));
    }
}
