using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Sdp.Engine;
using Sdp.Models.Checkpoints;
using static Sdp.Tests.Checkpoints.CheckpointTest;

namespace Sdp.Tests.Checkpoints;

/// <summary>SafeTensorsFile write then read: bit-exact storage, the reference layout, dtype conversions, F16/BF16 rounding.</summary>
public class SafeTensorsRoundTripTests
{
    private string _dir = "";

    [SetUp]
    public void CreateDirectory() => _dir = NewScratchDirectory();

    [TearDown]
    public void DeleteDirectory() => DeleteScratchDirectory(_dir);

    private static readonly int[][] Shapes = [[], [0], [1], [7], [2, 3], [3, 0, 2], [3, 1, 4, 2], [5, 17]];

    /// <summary>Random values of <paramref name="dtype"/>, with the awkward ones (±0, ±inf, NaN with payload, subnormals, extremes) mixed in.</summary>
    private static Tensor RandomTensor(Shape shape, DType dtype, Random rng)
    {
        int n = (int)shape.Numel;
        switch (dtype)
        {
            case DType.Float32:
            {
                float[] special = [0f, -0f, float.PositiveInfinity, float.NegativeInfinity, BitConverter.UInt32BitsToSingle(0x7FC12345), float.Epsilon, -1e-40f, float.MaxValue];
                var v = new float[n];
                for (int i = 0; i < n; i++) v[i] = i % 5 == 4 ? special[rng.Next(special.Length)] : BitConverter.Int32BitsToSingle(rng.Next()) * (rng.Next(2) == 0 ? 1 : -1);
                return Tensor.FromArray(v, shape);
            }
            case DType.Float64:
            {
                double[] special = [0.0, -0.0, double.PositiveInfinity, double.NegativeInfinity, BitConverter.Int64BitsToDouble(0x7FF8_0000_1234_5678), double.Epsilon, double.MaxValue];
                var v = new double[n];
                for (int i = 0; i < n; i++) v[i] = i % 5 == 4 ? special[rng.Next(special.Length)] : BitConverter.Int64BitsToDouble(rng.NextInt64() & 0x7FEF_FFFF_FFFF_FFFF) * (rng.Next(2) == 0 ? 1 : -1);
                return Tensor.FromArray(v, shape);
            }
            case DType.Int32:
            {
                int[] special = [int.MinValue, int.MaxValue, 0, -1];
                var v = new int[n];
                for (int i = 0; i < n; i++) v[i] = i % 5 == 4 ? special[rng.Next(special.Length)] : rng.Next(int.MinValue, int.MaxValue);
                return Tensor.FromArray(v, shape);
            }
            default:
            {
                long[] special = [long.MinValue, long.MaxValue, 0, -1];
                var v = new long[n];
                for (int i = 0; i < n; i++) v[i] = i % 5 == 4 ? special[rng.Next(special.Length)] : rng.NextInt64(long.MinValue, long.MaxValue);
                return Tensor.FromArray(v, shape);
            }
        }
    }

    [Test]
    public void Save_then_load_is_bit_exact_for_every_native_dtype_and_shape([Values(DType.Float32, DType.Float64, DType.Int32, DType.Int64)] DType dtype)
    {
        using var scope = TensorScope.Begin();
        var rng = new Random(1234 + (int)dtype);
        var tensors = Shapes.Select((s, i) => ($"t{i}", RandomTensor(new Shape(s), dtype, rng))).ToList();
        string path = Path.Combine(_dir, "x.safetensors");
        SafeTensorsFile.Write(path, tensors);

        using var file = SafeTensorsFile.Read(path);
        Assert.That(file.Names, Is.EqualTo(tensors.Select(t => t.Item1)));
        foreach (var (name, expected) in tensors)
        {
            var info = file.Info(name);
            Assert.That(info.DType, Is.EqualTo(dtype.ToSafeTensors()), name);
            Assert.That(info.Shape, Is.EqualTo(expected.Shape), name);
            using var loaded = file.Load(name, dtype);
            Assert.That(loaded.Shape, Is.EqualTo(expected.Shape), name);
            Assert.That(Bits(loaded), Is.EqualTo(Bits(expected)), $"{name} {expected.Shape}");
        }
    }

    [Test]
    public void File_layout_matches_the_reference_writer()
    {
        // 8-byte LE length N; N bytes of compact JSON padded with spaces to a multiple of 8; data in the
        // order written, contiguous, ending at the end of the file.
        using var scope = TensorScope.Begin();
        var a = Tensor.FromArray([1f, 2f, 3f], new Shape(3));
        var b = Tensor.FromArray([7L], Shape.Scalar);
        var c = Tensor.FromArray([0.5, -0.5], new Shape(1, 2));
        string path = Path.Combine(_dir, "layout.safetensors");
        SafeTensorsFile.Write(path, [("a", a), ("b", b), ("c", c)], new Dictionary<string, string> { ["format"] = "pt" });

        var bytes = File.ReadAllBytes(path);
        long n = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.That(n % 8, Is.Zero, "header length is a multiple of 8");
        string header = Encoding.UTF8.GetString(bytes, 8, (int)n);
        const string json = """{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"I64","shape":[],"data_offsets":[12,20]},"c":{"dtype":"F64","shape":[1,2],"data_offsets":[20,36]}}""";
        Assert.That(header.TrimEnd(' '), Is.EqualTo(json));
        Assert.That(header, Has.Length.EqualTo(json.Length + (8 - json.Length % 8) % 8), "padded with spaces only up to the next multiple of 8");
        Assert.That(bytes, Has.Length.EqualTo(8 + n + 36));
        Assert.That(BitConverter.ToSingle(bytes, (int)(8 + n + 8)), Is.EqualTo(3f));
        Assert.That(BitConverter.ToInt64(bytes, (int)(8 + n + 12)), Is.EqualTo(7));
        Assert.That(BitConverter.ToDouble(bytes, (int)(8 + n + 28)), Is.EqualTo(-0.5));
    }

    [Test]
    public void Metadata_and_unusual_names_round_trip()
    {
        using var scope = TensorScope.Begin();
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["config"] = """{"dim": 64, "name": "tiny \"llama\""}""", ["note"] = "ünïcødé <&> \\ \n tab\t" };
        string path = Path.Combine(_dir, "meta.safetensors");
        SafeTensorsFile.Write(path, [("layers.0.attn/q \"proj\"", Tensor.Ones(new Shape(2))), ("ß", Tensor.Zeros(new Shape(1)))], metadata);
        using var file = SafeTensorsFile.Read(path);
        Assert.That(file.Metadata, Is.EquivalentTo(metadata));
        Assert.That(file.Names, Is.EqualTo(new[] { "layers.0.attn/q \"proj\"", "ß" }));
        using var doc = JsonDocument.Parse(File.ReadAllBytes(path).AsMemory(8, (int)file.HeaderLength));
        Assert.That(doc.RootElement.EnumerateObject().First().Name, Is.EqualTo("__metadata__"), "metadata comes first");
    }

    [Test]
    public void No_metadata_writes_no_metadata_entry_and_an_empty_file_is_valid()
    {
        string path = Path.Combine(_dir, "empty.safetensors");
        SafeTensorsFile.Write(path, []);
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(Fixture("{}", [])));
        using var file = SafeTensorsFile.Read(path);
        Assert.That(file.Count, Is.Zero);
        Assert.That(file.Metadata, Is.Empty);
    }

    [Test]
    public void Load_converts_between_dtypes()
    {
        using var scope = TensorScope.Begin();
        string path = Path.Combine(_dir, "conv.safetensors");
        double[] d = [0.1, -1e300, 3.0];
        SafeTensorsFile.Write(path, [
            ("f32", Tensor.FromArray([0.1f, -2.5f], new Shape(2))),
            ("f64", Tensor.FromArray(d, new Shape(3))),
            ("i32", Tensor.FromArray([int.MinValue, 5], new Shape(2))),
            ("i64", Tensor.FromArray([long.MaxValue, -3L, 1L << 40], new Shape(3))),
        ]);
        using var file = SafeTensorsFile.Read(path);
        // Widening is exact.
        Assert.That(file.Load("f32", DType.Float64).ToArray<double>(), Is.EqualTo(new[] { (double)0.1f, -2.5 }));
        Assert.That(file.Load("i32", DType.Int64).ToArray<long>(), Is.EqualTo(new[] { (long)int.MinValue, 5L }));
        Assert.That(file.Load("i32", DType.Float64).ToArray<double>(), Is.EqualTo(new[] { (double)int.MinValue, 5.0 }));
        // Narrowing rounds to nearest once: F64 and I64 straight to float32.
        Assert.That(file.Load("f64").ToArray<float>(), Is.EqualTo(new[] { 0.1f, float.NegativeInfinity, 3f }));
        Assert.That(file.Load("i64").ToArray<float>(), Is.EqualTo(new[] { (float)long.MaxValue, -3f, (float)(1L << 40) }));
    }

    [Test]
    public void Load_refuses_lossy_integer_targets_with_the_offending_element()
    {
        using var scope = TensorScope.Begin();
        string path = Path.Combine(_dir, "bad-conv.safetensors");
        SafeTensorsFile.Write(path, [("f", Tensor.FromArray([1f], new Shape(1))), ("i64", Tensor.FromArray([1L, 1L << 40], new Shape(2)))]);
        using var file = SafeTensorsFile.Read(path);
        var toInt = Assert.Throws<ArgumentException>(() => file.Load("f", DType.Int64));
        Assert.That(toInt!.Message, Does.Contain("'f'").And.Contain("F32").And.Contain("int64").And.Contain(file.Path));
        var range = Assert.Throws<InvalidDataException>(() => file.Load("i64", DType.Int32));
        Assert.That(range!.Message, Does.Contain("element 1 of tensor 'i64'").And.Contain("int32"));
        var missing = Assert.Throws<KeyNotFoundException>(() => file.Info("nope"));
        Assert.That(missing!.Message, Does.Contain("'nope'").And.Contain(file.Path));
        using var wrongShape = Tensor.Zeros(new Shape(3), DType.Int64);
        var shape = Assert.Throws<ArgumentException>(() => file.LoadInto("i64", wrongShape));
        Assert.That(shape!.Message, Does.Contain("(2,)").And.Contain("(3,)"));
    }

    [Test]
    public void LoadInto_overwrites_an_existing_tensor_in_place()
    {
        using var scope = TensorScope.Begin();
        string path = Path.Combine(_dir, "into.safetensors");
        SafeTensorsFile.Write(path, [("w", Tensor.FromArray([1f, 2f, 3f, 4f], new Shape(2, 2)))]);
        using var file = SafeTensorsFile.Read(path);
        var dst = Tensor.Zeros(new Shape(2, 2), DType.Float64);
        file.LoadInto("w", dst);
        Assert.That(dst.ToArray<double>(), Is.EqualTo(new[] { 1.0, 2, 3, 4 }));
    }

    // ---- F16 / BF16 ---------------------------------------------------------------------------------------

    private float[] StoreAndReload(Tensor t, SafeTensorsDType storeAs)
    {
        string path = Path.Combine(_dir, $"half-{Guid.NewGuid():N}.safetensors");
        SafeTensorsFile.Write(path, [("x", t)], storeAs: storeAs);
        using var file = SafeTensorsFile.Read(path);
        var info = file.Info("x");
        Assert.That(info.DType, Is.EqualTo(storeAs));
        Assert.That(info.ByteLength, Is.EqualTo(2 * t.Numel));
        return file.Load("x").ToArray<float>();
    }

    [Test]
    public void Exactly_representable_values_survive_bf16_and_f16([Values(DType.Float32, DType.Float64)] DType dtype, [Values(SafeTensorsDType.BF16, SafeTensorsDType.F16)] SafeTensorsDType half)
    {
        // BF16 keeps 8 significant bits and float32's exponent range; F16 keeps 11 bits, exponents 2^-24..65504.
        double[] values = half == SafeTensorsDType.BF16
            ? [0, -0.0, 1, -2.5, 0.15625, 3.140625, 1.5 * Math.Pow(2, 100), Math.Pow(2, -133), -Math.Pow(2, -126), 3.3895313892515355e38, double.PositiveInfinity, double.NegativeInfinity]
            : [0, -0.0, 1, -2.5, 1.0009765625, 65504, -65504, Math.Pow(2, -14), Math.Pow(2, -24), 3.140625, double.PositiveInfinity, double.NegativeInfinity];
        using var scope = TensorScope.Begin();
        var back = StoreAndReload(Tensor.FromDoubles(values, new Shape(values.Length), dtype), half);
        Assert.That(back.Select(v => BitConverter.SingleToUInt32Bits(v)), Is.EqualTo(values.Select(v => BitConverter.SingleToUInt32Bits((float)v))));
        var nan = StoreAndReload(Tensor.FromDoubles([double.NaN], new Shape(1), dtype), half);
        Assert.That(float.IsNaN(nan[0]), Is.True, "NaN stays NaN");
    }

    [Test]
    public void Other_values_round_to_nearest_even([Values(DType.Float32, DType.Float64)] DType dtype)
    {
        // BF16 near 1 has spacing 2^-7; F16 has 2^-10. Halfway cases go to the even mantissa.
        double b = Math.Pow(2, -7), h = Math.Pow(2, -10);
        (double Input, double Bf16)[] bf16 =
        [
            (1 + b / 2, 1),                            // tie, 1 is even
            (1 + 3 * b / 2, 1 + 2 * b),                // tie between 1+b (odd) and 1+2b (even)
            (1 + b / 2 + Math.Pow(2, -20), 1 + b),     // just above the tie
            (-(1 + b / 2), -1),
            (1 + b / 2 - Math.Pow(2, -20), 1),         // just below the tie
            (float.MaxValue, double.PositiveInfinity), // past BF16's largest finite value
            (Math.Pow(2, -134), 0),                    // half the smallest BF16 subnormal: tie to 0
        ];
        (double Input, double F16)[] f16 =
        [
            (1 + h / 2, 1),
            (1 + 3 * h / 2, 1 + 2 * h),
            (1 + h / 2 + Math.Pow(2, -20), 1 + h),
            (65519, 65504),                            // below the overflow threshold
            (65520, double.PositiveInfinity),          // the tie above 65504 (odd) goes to infinity
            (Math.Pow(2, -25), 0),                     // tie between 0 and the smallest subnormal 2^-24
            (3 * Math.Pow(2, -26), Math.Pow(2, -24)),
        ];
        using var scope = TensorScope.Begin();
        var gotB = StoreAndReload(Tensor.FromDoubles([.. bf16.Select(c => c.Input)], new Shape(bf16.Length), dtype), SafeTensorsDType.BF16);
        var gotH = StoreAndReload(Tensor.FromDoubles([.. f16.Select(c => c.Input)], new Shape(f16.Length), dtype), SafeTensorsDType.F16);
        Assert.Multiple(() =>
        {
            for (int i = 0; i < bf16.Length; i++) Assert.That((double)gotB[i], Is.EqualTo(bf16[i].Bf16), $"BF16 of {bf16[i].Input:R}");
            for (int i = 0; i < f16.Length; i++) Assert.That((double)gotH[i], Is.EqualTo(f16[i].F16), $"F16 of {f16[i].Input:R}");
        });
    }

    [Test]
    public void Float64_sources_round_once_not_through_float32()
    {
        // 1 + 2^-8 + 2^-40 is just above the BF16 tie between 1 and 1 + 2^-7, so it rounds up; rounded to
        // float32 first it would become exactly the tie and then round down to 1. Likewise for F16 at 2^-11.
        using var scope = TensorScope.Begin();
        var x = Tensor.FromArray([1 + Math.Pow(2, -8) + Math.Pow(2, -40), 1 + Math.Pow(2, -11) + Math.Pow(2, -40)], new Shape(2));
        var bf16 = StoreAndReload(x, SafeTensorsDType.BF16);
        var f16 = StoreAndReload(x, SafeTensorsDType.F16);
        Assert.That(bf16[0], Is.EqualTo(1 + Math.Pow(2, -7)));
        Assert.That(f16[1], Is.EqualTo(1 + Math.Pow(2, -10)));
    }

    [Test]
    public void Random_values_round_to_the_nearest_representable_value([Values(SafeTensorsDType.BF16, SafeTensorsDType.F16)] SafeTensorsDType half)
    {
        // Independent check: the result r must be at least as close to x as its two neighbours in the
        // target format (found by stepping the target's bit pattern), and on an exact tie r's mantissa is even.
        var rng = new Random(7);
        int n = 4000;
        var xs = new double[n];
        for (int i = 0; i < n; i++)
        {
            double exp = half == SafeTensorsDType.BF16 ? rng.Next(-130, 120) : rng.Next(-23, 15);
            xs[i] = (rng.Next(2) == 0 ? 1 : -1) * (1 + rng.NextDouble()) * Math.Pow(2, exp);
            if (i % 3 == 0) xs[i] = (float)xs[i]; // float32-exact inputs exercise the ties more often
        }
        using var scope = TensorScope.Begin();
        var got = StoreAndReload(Tensor.FromArray(xs, new Shape(n)), half);
        var failures = new List<string>();
        for (int i = 0; i < n; i++)
        {
            double x = xs[i], r = got[i];
            ushort bits = half == SafeTensorsDType.BF16 ? (ushort)(BitConverter.SingleToUInt32Bits(got[i]) >> 16) : BitConverter.HalfToUInt16Bits((Half)got[i]);
            double Value(int b) => half == SafeTensorsDType.BF16 ? BitConverter.Int32BitsToSingle(b << 16) : (double)BitConverter.UInt16BitsToHalf((ushort)b);
            double down = Value(bits - 1), up = Value(bits + 1);
            double err = Math.Abs(r - x);
            bool nearest = err <= Math.Abs(down - x) && err <= Math.Abs(up - x);
            bool tie = err == Math.Abs(down - x) || err == Math.Abs(up - x);
            if (!nearest || (tie && (bits & 1) != 0)) failures.Add($"{x:R} -> {r:R}");
        }
        Assert.That(failures, Is.Empty);
    }

    [Test]
    public void StoreAs_leaves_integer_tensors_alone()
    {
        using var scope = TensorScope.Begin();
        string path = Path.Combine(_dir, "mixed.safetensors");
        SafeTensorsFile.Write(path, [("w", Tensor.FromArray([1.5f], new Shape(1))), ("ids", Tensor.FromArray([1L << 50], new Shape(1)))], storeAs: SafeTensorsDType.BF16);
        using var file = SafeTensorsFile.Read(path);
        Assert.That(file.Info("w").DType, Is.EqualTo(SafeTensorsDType.BF16));
        Assert.That(file.Info("ids").DType, Is.EqualTo(SafeTensorsDType.I64));
        Assert.That(file.Load("ids", DType.Int64).ToArray<long>(), Is.EqualTo(new[] { 1L << 50 }));
    }
}
