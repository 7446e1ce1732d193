using System.Numerics;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Sdp.Tests.Reliability.Corruption;

/// <summary>
/// The test's own reading of JSON documents, to decide independently of the readers whether a corrupted document is
/// still valid: RFC 8259 text in UTF-8 (comments and trailing commas only where a format allows them), no name twice
/// in one object, no deeper than the format's limit; then the format's rules (<see cref="Document"/> helpers).
/// </summary>
public static partial class JsonOracle
{
    /// <summary>The document, or false when the bytes are not one valid JSON text of the format's grammar.</summary>
    public static bool TryParse(ReadOnlySpan<byte> bytes, out JsonNode? root, int maxDepth = 64, bool commentsAndTrailingCommas = false, bool byteOrderMark = false)
    {
        root = null;
        if (byteOrderMark && bytes.StartsWith("\uFEFF"u8)) bytes = bytes[3..];
        if (!System.Text.Unicode.Utf8.IsValid(bytes)) return false;
        var options = new JsonDocumentOptions
        {
            AllowDuplicateProperties = false,
            MaxDepth = maxDepth,
            CommentHandling = commentsAndTrailingCommas ? JsonCommentHandling.Skip : JsonCommentHandling.Disallow,
            AllowTrailingCommas = commentsAndTrailingCommas,
        };
        try
        {
            // JsonDocument checks the whole text (and duplicate names) eagerly; the node tree is what the rules walk.
            using (JsonDocument.Parse(bytes.ToArray(), options))
            {
            }
            root = JsonNode.Parse(bytes, null, options);
            return true;
        }
        catch (JsonException)
        {
            return false;
        }
    }

    /// <summary>A JSON integer literal (no fraction, no exponent: what .NET's integer getters accept), any size.</summary>
    public static bool IsInteger(JsonNode? node, out BigInteger value)
    {
        value = default;
        if (node is not JsonValue v || v.GetValueKind() != JsonValueKind.Number) return false;
        string text = v.ToJsonString();
        if (!IntegerLiteral().IsMatch(text)) return false;
        value = BigInteger.Parse(text, System.Globalization.CultureInfo.InvariantCulture);
        return true;
    }

    public static bool IsIntegerIn(JsonNode? node, BigInteger min, BigInteger max) => IsInteger(node, out var v) && v >= min && v <= max;

    public static bool IsInt32(JsonNode? node, long min = int.MinValue) => IsIntegerIn(node, min, int.MaxValue);

    /// <summary>Any JSON number, as a double (a literal beyond double's range is infinite).</summary>
    public static bool IsNumber(JsonNode? node, out double value)
    {
        value = double.NaN;
        if (node is not JsonValue v || v.GetValueKind() != JsonValueKind.Number) return false;
        value = double.Parse(v.ToJsonString(), System.Globalization.CultureInfo.InvariantCulture);
        return true;
    }

    public static bool IsFiniteNumber(JsonNode? node, out double value) => IsNumber(node, out value) && double.IsFinite(value);

    public static bool IsString(JsonNode? node, out string value)
    {
        value = "";
        if (node is not JsonValue v || v.GetValueKind() != JsonValueKind.String) return false;
        value = v.GetValue<string>();
        return true;
    }

    public static bool IsString(JsonNode? node, string expected) => IsString(node, out string s) && s == expected;

    public static bool IsBool(JsonNode? node, out bool value)
    {
        value = false;
        if (node is not JsonValue v || v.GetValueKind() is not (JsonValueKind.True or JsonValueKind.False)) return false;
        value = v.GetValue<bool>();
        return true;
    }

    /// <summary>Absent or JSON null.</summary>
    public static bool IsAbsent(JsonObject o, string key) => !o.TryGetPropertyValue(key, out var node) || node is null;

    public static Expect AcceptIf(bool valid) => valid ? Expect.Accept : Expect.Reject;

    public static byte[] Utf8(string text) => Encoding.UTF8.GetBytes(text);

    public static byte[] Compact(JsonNode node) => Utf8(node.ToJsonString());

    [GeneratedRegex("^-?(0|[1-9][0-9]*)$")]
    private static partial Regex IntegerLiteral();
}
