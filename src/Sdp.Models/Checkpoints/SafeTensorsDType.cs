using Sdp.Engine;

namespace Sdp.Models.Checkpoints;

/// <summary>
/// Element types of the safetensors format, named as in the file header ("F32", "BF16", ...). Sdp reads
/// all of them and converts on load; it writes F64, F32, I64 and I32 natively, and F16 or BF16 on request.
/// The sub-byte and scale-only formats of newer safetensors versions (F4, F6_*, F8_E8M0) are not supported.
/// </summary>
public enum SafeTensorsDType
{
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

public static class SafeTensorsDTypeExtensions
{
    /// <summary>Bytes per element.</summary>
    public static int ElementSize(this SafeTensorsDType dtype) => dtype switch
    {
        SafeTensorsDType.Bool or SafeTensorsDType.U8 or SafeTensorsDType.I8 or SafeTensorsDType.F8E5M2 or SafeTensorsDType.F8E4M3 => 1,
        SafeTensorsDType.I16 or SafeTensorsDType.U16 or SafeTensorsDType.F16 or SafeTensorsDType.BF16 => 2,
        SafeTensorsDType.I32 or SafeTensorsDType.U32 or SafeTensorsDType.F32 => 4,
        SafeTensorsDType.F64 or SafeTensorsDType.I64 or SafeTensorsDType.U64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown safetensors dtype"),
    };

    public static bool IsFloatingPoint(this SafeTensorsDType dtype)
        => dtype is SafeTensorsDType.F8E5M2 or SafeTensorsDType.F8E4M3 or SafeTensorsDType.F16 or SafeTensorsDType.BF16 or SafeTensorsDType.F32 or SafeTensorsDType.F64;

    /// <summary>The spelling in a safetensors header: "F32", "BF16", "F8_E4M3", "BOOL", ...</summary>
    public static string HeaderName(this SafeTensorsDType dtype) => dtype switch
    {
        SafeTensorsDType.Bool => "BOOL",
        SafeTensorsDType.F8E5M2 => "F8_E5M2",
        SafeTensorsDType.F8E4M3 => "F8_E4M3",
        _ => dtype.ToString(),
    };

    /// <summary>The dtype a header spells <paramref name="name"/> (case-sensitive, as the reference reader), or null.</summary>
    public static SafeTensorsDType? FromHeaderName(string name)
    {
        foreach (var d in Enum.GetValues<SafeTensorsDType>())
        {
            if (d.HeaderName() == name) return d;
        }
        return null;
    }

    /// <summary>The safetensors dtype that stores an Sdp dtype unchanged.</summary>
    public static SafeTensorsDType ToSafeTensors(this DType dtype) => dtype switch
    {
        DType.Float32 => SafeTensorsDType.F32,
        DType.Float64 => SafeTensorsDType.F64,
        DType.Int32 => SafeTensorsDType.I32,
        DType.Int64 => SafeTensorsDType.I64,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown dtype"),
    };

    /// <summary>
    /// Whether values stored as <paramref name="stored"/> may be loaded as <paramref name="target"/>:
    /// anything converts to a floating-point dtype; integer dtypes accept integers and booleans only
    /// (range-checked on load), never floating-point values.
    /// </summary>
    public static bool CanLoadAs(this SafeTensorsDType stored, DType target)
        => target.IsFloatingPoint() || !stored.IsFloatingPoint();

    /// <summary>Every header spelling Sdp understands, for error messages.</summary>
    internal static string SupportedNames => string.Join(", ", Enum.GetValues<SafeTensorsDType>().Select(d => d.HeaderName()));
}
