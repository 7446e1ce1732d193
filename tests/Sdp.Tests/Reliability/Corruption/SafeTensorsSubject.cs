using System.Text;
using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Models.Checkpoints;
using Sdp.Tests.Checkpoints;

namespace Sdp.Tests.Reliability.Corruption;

/// <summary>
/// safetensors weights as `--init-from` and `sdp eval` read them: <see cref="SafeTensorsFile.Read"/> and a strict
/// <see cref="ModuleCheckpoint.LoadInto(Engine.Nn.Module, SafeTensorsFile, bool)"/> into the model that saved them,
/// for a float32 file with a config in its metadata and the same weights stored as BF16 (each with an int64 buffer).
/// </summary>
public sealed class SafeTensorsSubject : CorruptionSubject
{
    public const string F32File = "model.safetensors";
    public const string Bf16File = "model-bf16.safetensors";

    private readonly TinyNet _model = new(new Rng(3));
    private readonly Dictionary<string, ExpectedTensor> _expected;

    public SafeTensorsSubject() : base("safetensors")
    {
        var config = new Dictionary<string, string> { [TrainingCheckpoint.ConfigMetadataKey] = """{"model":"resnet18","width":4}""" };
        ModuleCheckpoint.Save(_model, PathOf(F32File), config);
        ModuleCheckpoint.Save(_model, PathOf(Bf16File), storeAs: SafeTensorsDType.BF16);
        Keep(F32File);
        Keep(Bf16File);
        _expected = ModuleCheckpoint.StateDict(_model).ToDictionary(e => e.Name, e => new ExpectedTensor([.. e.Tensor.Shape], e.Tensor.DType.IsFloatingPoint()));
    }

    public override void Read()
    {
        foreach (string file in (string[])[F32File, Bf16File])
        {
            using var f = SafeTensorsFile.Read(PathOf(file));
            ModuleCheckpoint.LoadInto(_model, f, strict: true);
        }
    }

    public override Expect Judge(string file, byte[] bytes) => SafeTensorsOracle.Judge(bytes, _expected);

    protected override int HotBytes(string file) => 8 + SafeTensorsOracle.HeaderLength(Originals[file]);

    public override IEnumerable<Mutation> FixedMutations()
    {
        foreach (string file in (string[])[F32File, Bf16File])
        {
            var original = Originals[file];
            int n = SafeTensorsOracle.HeaderLength(original);
            var header = SafeTensorsOracle.Header(original);
            var dataEnds = header.Where(p => p.Key != "__metadata__").Select(p => 8 + n + (int)p.Value!["data_offsets"]![1]!.GetValue<long>());
            foreach (var m in TruncationsAround(file, [0, 4, 8, 8 + n / 2, 8 + n, .. dataEnds, original.Length])) yield return m;
            foreach (var m in NotARegularFile(file)) yield return m;
        }
        foreach (var m in HeaderLengths()) yield return m;
        foreach (var m in HeaderEdits()) yield return m;
    }

    /// <summary>The 8-byte header length set to values that cut the header, reach past the file or claim 10^18 bytes.</summary>
    private IEnumerable<Mutation> HeaderLengths()
    {
        var original = Originals[F32File];
        ulong n = (ulong)SafeTensorsOracle.HeaderLength(original);
        ulong length = (ulong)original.Length;
        foreach (ulong claimed in (ulong[])[0, 1, 7, n - 1, n + 1, n + 8, length - 8, length - 7, length, SafeTensorsOracle.MaxHeaderBytes + 1, 1_000_000_000_000_000_000, long.MaxValue, 1UL << 63, ulong.MaxValue])
        {
            var bytes = (byte[])original.Clone();
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(bytes, claimed);
            yield return Stated(F32File, "header length", $"{claimed} instead of {n}", bytes, Expect.Reject);
        }
    }

    /// <summary>Edits of the JSON header (the length field follows): absurd shapes, offsets out of range or overlapping, wrong dtypes, duplicate names, bad metadata, non-UTF-8 names, deep nesting.</summary>
    private IEnumerable<Mutation> HeaderEdits()
    {
        var original = Originals[F32File];
        Mutation Edited(string detail, Action<JsonObject> edit, Expect expect)
        {
            var header = SafeTensorsOracle.Header(original);
            edit(header);
            return Stated(F32File, "header edit", detail, SafeTensorsOracle.WithHeader(original, JsonOracle.Compact(header)), expect);
        }
        Mutation Text(string detail, string text, Expect expect, bool pad = true)
            => Stated(F32File, "header text", detail, SafeTensorsOracle.WithHeader(original, text, pad), expect);
        string compact = SafeTensorsOracle.Header(original).ToJsonString();

        foreach (string shape in (string[])["[2147483647,2147483647]", "[1099511627776]", "[1000000000000000000]", "[-1,4]", "[1.5,4]", "[\"8\",4]", "[[8],4]",
                     "null", "{}", "\"8\"", "[]", "[0]", "[8,4,0]", "[8,4,1]", "[4,8]", "[32]", "[8,NaN]", "[8,4e0]", "[8,-0]"])
        {
            var node = shape.Contains("NaN") ? null : JsonNode.Parse(shape);
            if (node is null && shape != "null") yield return Text($"shape {shape}", compact.Replace("\"shape\":[8,4]", $"\"shape\":{shape}", StringComparison.Ordinal), Expect.Reject);
            else yield return Edited($"layers.0.weight shape {shape}", h => h["layers.0.weight"]!["shape"] = node, Expect.Reject);
        }
        var weight = SafeTensorsOracle.Header(original)["layers.0.weight"]!["data_offsets"]!.AsArray();
        long b = weight[0]!.GetValue<long>(), e = weight[1]!.GetValue<long>();
        foreach (string offsets in (string[])[$"[{b},1000000000000000000]", $"[{b},18446744073709551615]", $"[{b},18446744073709551616]", $"[{e},{b}]", $"[-4,{e}]",
                     $"[{b + 1},{e + 1}]", $"[{b},{e - 1}]", $"[{b}.5,{e}]", $"[{b}]", $"[{b},{e},{e}]", "\"x\"", "null", $"[{b},{e}.0]", $"[{b},1e400]"])
        {
            yield return Edited($"layers.0.weight data_offsets {offsets}", h => h["layers.0.weight"]!["data_offsets"] = JsonNode.Parse(offsets), Expect.Reject);
        }
        yield return Text("data_offsets [0, Infinity]", compact.Replace($"\"data_offsets\":[{b},{e}]", $"\"data_offsets\":[{b},Infinity]", StringComparison.Ordinal), Expect.Reject);

        // layers.1.bias and gain are both 3 float32 values: exchanging their offsets still tiles the data exactly.
        yield return Edited("gain and layers.1.bias exchange data_offsets", h =>
        {
            var gain = h["gain"]!["data_offsets"]!.DeepClone();
            h["gain"]!["data_offsets"] = h["layers.1.bias"]!["data_offsets"]!.DeepClone();
            h["layers.1.bias"]!["data_offsets"] = gain;
        }, Expect.Accept);
        yield return Edited("gain overlaps layers.1.bias", h => h["gain"]!["data_offsets"] = h["layers.1.bias"]!["data_offsets"]!.DeepClone(), Expect.Reject);

        foreach (var (dtype, expect) in ((string, Expect)[])[("F64", Expect.Reject), ("F16", Expect.Reject), ("BF16", Expect.Reject), ("I8", Expect.Reject),
                     ("F8_E4M3", Expect.Reject), ("I32", Expect.Accept), ("U32", Expect.Accept), ("f32", Expect.Reject), ("", Expect.Reject), ("F32 ", Expect.Reject), ("F4", Expect.Reject)])
        {
            yield return Edited($"layers.0.weight dtype \"{dtype}\"", h => h["layers.0.weight"]!["dtype"] = dtype, expect);
        }
        yield return Edited("layers.0.weight dtype null", h => h["layers.0.weight"]!["dtype"] = null, Expect.Reject);
        yield return Edited("layers.0.weight dtype 32", h => h["layers.0.weight"]!["dtype"] = 32, Expect.Reject);
        // The int64 buffer "seen" holds small non-negative values: as U64 they still fit; as F64 they are floats for an integer tensor.
        yield return Edited("seen dtype U64", h => h["seen"]!["dtype"] = "U64", Expect.Accept);
        yield return Edited("seen dtype F64", h => h["seen"]!["dtype"] = "F64", Expect.Reject);

        string gainEntry = SafeTensorsOracle.Header(original)["gain"]!.ToJsonString();
        yield return Text("tensor \"gain\" named twice", compact.Replace("{\"__metadata__\"", $"{{\"gain\":{gainEntry},\"__metadata__\"", StringComparison.Ordinal), Expect.Reject);
        yield return Text("\"dtype\" twice in one entry", compact.Replace("\"dtype\":\"F32\"", "\"dtype\":\"F32\",\"dtype\":\"F32\"", StringComparison.Ordinal), Expect.Reject);
        yield return Text("\"__metadata__\" twice", compact.Replace("{\"__metadata__\"", "{\"__metadata__\":{},\"__metadata__\"", StringComparison.Ordinal), Expect.Reject);
        yield return Stated(F32File, "header bytes", "a tensor name with byte 0xFF", SafeTensorsOracle.WithHeader(original,
            Encoding.UTF8.GetBytes(compact.Replace("\"gain\"", "\"ga\u0001n\"", StringComparison.Ordinal)).Select(x => x == 1 ? (byte)0xFF : x).ToArray()), Expect.Reject);
        yield return Stated(F32File, "header bytes", "a metadata value with the overlong encoding C0 80", SafeTensorsOracle.WithHeader(original,
            Encoding.UTF8.GetBytes(compact.Replace("\"format\":\"pt\"", "\"format\":\"p\u0001\u0002\"", StringComparison.Ordinal)).Select(x => x == 1 ? (byte)0xC0 : x == 2 ? (byte)0x80 : x).ToArray()), Expect.Reject);
        yield return Edited("a tensor renamed", h => { var g = h["gain"]!; h.Remove("gain"); h["gain2"] = g; }, Expect.Reject);
        yield return Edited("a tensor entry removed", h => h.Remove("seen"), Expect.Reject);
        yield return Edited("an unknown key in an entry", h => h["gain"]!["extra"] = 1, Expect.Accept);

        foreach (string metadata in (string[])["[]", "\"x\"", "1", "null", "{\"format\":1}", "{\"format\":null}", "{\"a\":{\"b\":\"c\"}}"])
            yield return Edited($"__metadata__ {metadata}", h => h["__metadata__"] = JsonNode.Parse(metadata), Expect.Reject);
        yield return Text("two metadata entries named alike", compact.Replace("\"format\":\"pt\"", "\"a\":\"1\",\"a\":\"2\"", StringComparison.Ordinal), Expect.Reject);
        yield return Edited("non-ASCII metadata", h => h["__metadata__"]!["note"] = "ünïcödé ✓ \u2028", Expect.Accept);
        yield return Edited("a 300 KB metadata value", h => h["__metadata__"]!["blob"] = new string('x', 300_000), Expect.Accept);

        foreach (string root in (string[])["[]", "\"x\"", "1", "null", "true", "{}"])
            yield return Text($"the header is {root}", root, Expect.Reject);
        yield return Text("100,000 nested '['", new string('[', 100_000), Expect.Reject);
        yield return Text("17 nested arrays in an entry", compact.Replace("\"dtype\":\"F32\"", "\"dtype\":\"F32\",\"x\":" + new string('[', 17) + new string(']', 17), StringComparison.Ordinal), Expect.Reject);
        yield return Text("a byte-order mark before the header", "\uFEFF" + compact, Expect.Reject);
        yield return Text("padding with tabs and newlines", compact + "\t\n\r ", Expect.Accept);
        yield return Text("no padding (header length not a multiple of 8)", compact, Expect.Accept, pad: false);
        yield return Stated(F32File, "header bytes", "padding of NUL bytes", SafeTensorsOracle.WithHeader(original, [.. Encoding.UTF8.GetBytes(compact), 0, 0, 0], pad: false), Expect.Reject);
    }

    public override void Dispose()
    {
        _model.Dispose();
        base.Dispose();
    }
}
