using System.Buffers.Binary;
using System.Numerics;
using System.Text;
using System.Text.Json.Nodes;

namespace Sdp.Tests.Reliability.Corruption;

/// <summary>What a strict load expects of one tensor of a safetensors file: its shape, and whether it lands in a floating-point tensor.</summary>
public sealed record ExpectedTensor(int[] Shape, bool FloatTarget);

/// <summary>
/// The safetensors format as its specification states it, for deciding whether corrupted bytes are still a file a
/// strict load accepts: [u64 little-endian N][N bytes of JSON header][data]; the header is an object whose
/// "__metadata__" maps strings to strings and whose other entries give dtype, shape and data_offsets [begin, end]
/// relative to the data; the tensors tile the data exactly; a strict load wants exactly the model's names and
/// shapes, any dtype for a floating-point tensor and an integer dtype for an integer one (values in range).
/// </summary>
public static class SafeTensorsOracle
{
    /// <summary>The header limit the reference implementation (and Sdp) sets.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    /// <summary>Nesting a header may have: 16 levels (a valid header needs 3).</summary>
    public const int MaxDepth = 16;

    /// <summary>The specification's element types: header name, bytes per element, floating point or not.</summary>
    public static readonly IReadOnlyDictionary<string, (int Size, bool Float)> DTypes = new Dictionary<string, (int, bool)>
    {
        ["BOOL"] = (1, false), ["U8"] = (1, false), ["I8"] = (1, false), ["F8_E5M2"] = (1, true), ["F8_E4M3"] = (1, true),
        ["I16"] = (2, false), ["U16"] = (2, false), ["F16"] = (2, true), ["BF16"] = (2, true),
        ["I32"] = (4, false), ["U32"] = (4, false), ["F32"] = (4, true),
        ["I64"] = (8, false), ["U64"] = (8, false), ["F64"] = (8, true),
    };

    /// <summary>The header length N of a well-formed file.</summary>
    public static int HeaderLength(byte[] file) => (int)BinaryPrimitives.ReadUInt64LittleEndian(file);

    /// <summary>The header text of a well-formed file (padding included).</summary>
    public static string HeaderText(byte[] file) => Encoding.UTF8.GetString(file, 8, HeaderLength(file));

    /// <summary>The file with its header replaced by <paramref name="header"/> (padded with spaces to a multiple of 8 unless told not to) and the length field set to match, or to <paramref name="lengthField"/>.</summary>
    public static byte[] WithHeader(byte[] file, byte[] header, bool pad = true, ulong? lengthField = null)
    {
        int n = HeaderLength(file);
        int padding = pad ? (8 - header.Length % 8) % 8 : 0;
        var result = new byte[8 + header.Length + padding + (file.Length - 8 - n)];
        BinaryPrimitives.WriteUInt64LittleEndian(result, lengthField ?? (ulong)(header.Length + padding));
        header.CopyTo(result, 8);
        result.AsSpan(8 + header.Length, padding).Fill((byte)' ');
        file.AsSpan(8 + n).CopyTo(result.AsSpan(8 + header.Length + padding));
        return result;
    }

    public static byte[] WithHeader(byte[] file, string header, bool pad = true) => WithHeader(file, Encoding.UTF8.GetBytes(header), pad);

    /// <summary>What a strict load expects, taken from a valid file that the model it was saved from loads.</summary>
    public static Dictionary<string, ExpectedTensor> ExpectedFrom(byte[] file)
        => Header(file).Where(p => p.Key != "__metadata__").ToDictionary(
            p => p.Key,
            p => new ExpectedTensor([.. p.Value!["shape"]!.AsArray().Select(d => (int)d!)], DTypes[(string)p.Value!["dtype"]!].Float));

    /// <summary>The header of a well-formed file as a JSON object, to edit.</summary>
    public static JsonObject Header(byte[] file) => JsonNode.Parse(HeaderText(file))!.AsObject();

    /// <summary>
    /// Whether a strict load of <paramref name="file"/> into a model with <paramref name="expected"/> tensors succeeds
    /// (null: whether the file is well-formed, whatever it holds). <paramref name="metadataValid"/> adds the reader's
    /// rules for the metadata, <paramref name="dataValid"/> its rules for the values of a tensor (name, dtype, bytes).
    /// </summary>
    public static Expect Judge(byte[] file, IReadOnlyDictionary<string, ExpectedTensor>? expected,
        Func<JsonObject, bool>? metadataValid = null, Func<string, string, ReadOnlySpan<byte>, bool>? dataValid = null)
    {
        if (file.Length < 8) return Expect.Reject;
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(file);
        if (n > (ulong)(file.Length - 8) || n > MaxHeaderBytes) return Expect.Reject;
        long dataStart = 8 + (long)n, dataLength = file.Length - dataStart;
        if (!JsonOracle.TryParse(file.AsSpan(8, (int)n), out var root, MaxDepth) || root is not JsonObject header) return Expect.Reject;
        var spans = new List<(BigInteger Begin, BigInteger End)>();
        foreach (var (name, value) in header)
        {
            if (name == "__metadata__")
            {
                if (value is not JsonObject metadata || metadata.Any(p => !JsonOracle.IsString(p.Value, out _))) return Expect.Reject;
                if (metadataValid is not null && !metadataValid(metadata)) return Expect.Reject;
                continue;
            }
            ExpectedTensor? want = null;
            if ((expected is not null && !expected.TryGetValue(name, out want)) || value is not JsonObject entry) return Expect.Reject;
            if (!JsonOracle.IsString(entry["dtype"], out string dtypeName) || !DTypes.TryGetValue(dtypeName, out var dtype)) return Expect.Reject;
            if (entry["shape"] is not JsonArray shape || (want is not null && shape.Count != want.Shape.Length)) return Expect.Reject;
            BigInteger numel = 1;
            for (int i = 0; i < shape.Count; i++)
            {
                if (!IsUnsigned(shape[i], out var d) || d > int.MaxValue || (want is not null && d != want.Shape[i])) return Expect.Reject;
                numel *= d;
            }
            if (entry["data_offsets"] is not JsonArray offsets || offsets.Count != 2
                || !IsUnsigned(offsets[0], out var begin) || !IsUnsigned(offsets[1], out var end)) return Expect.Reject;
            if (begin > end || end > dataLength || end - begin != numel * dtype.Size) return Expect.Reject;
            if (dataValid is not null && !dataValid(name, dtypeName, file.AsSpan((int)(dataStart + (long)begin), (int)(end - begin)))) return Expect.Reject;
            if (want is { FloatTarget: false })
            {
                if (dtype.Float) return Expect.Reject;
                // An unsigned 64-bit value beyond long's range does not fit the int64 tensor.
                if (dtypeName == "U64")
                {
                    for (long at = dataStart + (long)begin; at < dataStart + (long)end; at += 8)
                        if (BinaryPrimitives.ReadUInt64LittleEndian(file.AsSpan((int)at)) > long.MaxValue) return Expect.Reject;
                }
            }
            spans.Add((begin, end));
        }
        if (expected is not null && spans.Count != expected.Count) return Expect.Reject;
        BigInteger cursor = 0;
        foreach (var (begin, end) in spans.OrderBy(s => s.Begin).ThenBy(s => s.End))
        {
            if (begin != cursor) return Expect.Reject;
            cursor = end;
        }
        return JsonOracle.AcceptIf(cursor == dataLength);
    }

    /// <summary>A non-negative JSON integer literal up to 2^64 - 1 (a minus sign, even on zero, is not unsigned).</summary>
    private static bool IsUnsigned(JsonNode? node, out BigInteger value)
        => JsonOracle.IsInteger(node, out value) && !node!.ToJsonString().StartsWith('-') && value <= ulong.MaxValue;
}
