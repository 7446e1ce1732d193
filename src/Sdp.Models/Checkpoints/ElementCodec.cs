using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace Sdp.Models.Checkpoints;

/// <summary>
/// Conversions between safetensors element encodings (little-endian) and Sdp's element types.
/// Narrowing to F16 and BF16 rounds to nearest, ties to even, in one rounding step from the source
/// value (float64 sources are not rounded to float32 first, which could round twice).
/// </summary>
internal static class ElementCodec
{
    // ---- scalar formats -------------------------------------------------------------------------------

    /// <summary>BF16 is the upper half of a float32, so widening is exact.</summary>
    public static float Bf16ToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    public static ushort SingleToBf16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((bits >> 16) | 0x0040); // keep sign and payload top, force a quiet NaN
        // Adding 0x7FFF plus the lowest kept bit rounds to nearest and breaks ties toward an even result;
        // a carry out of the mantissa bumps the exponent, which is the correct rounding (up to infinity).
        uint roundingBias = 0x7FFFu + ((bits >> 16) & 1u);
        return (ushort)((bits + roundingBias) >> 16);
    }

    public static ushort DoubleToBf16(double value) => SingleToBf16(RoundToOddSingle(value));

    public static ushort SingleToF16(float value) => BitConverter.HalfToUInt16Bits((Half)value);

    public static ushort DoubleToF16(double value) => SingleToF16(RoundToOddSingle(value));

    /// <summary>
    /// float32 rounded to odd: truncated toward zero, with the lowest mantissa bit set when inexact.
    /// Rounding that result to a format at least two bits narrower (F16: 11 bits, BF16: 8 bits, vs 24)
    /// gives the same value as rounding <paramref name="value"/> directly, so double → F16/BF16 rounds once.
    /// </summary>
    public static float RoundToOddSingle(double value)
    {
        float f = (float)value;
        if (!double.IsFinite(value) || f == value) return f;
        if (float.IsInfinity(f)) return f; // beyond float32's range: past BF16's and F16's rounding thresholds too
        uint bits = BitConverter.SingleToUInt32Bits(f);
        if (Math.Abs((double)f) > Math.Abs(value)) bits--; // magnitude one ulp down: truncation toward zero
        return BitConverter.UInt32BitsToSingle(bits | 1u);
    }

    /// <summary>OCP FP8 E5M2: the upper byte of an F16.</summary>
    public static float F8E5M2ToSingle(byte bits) => (float)BitConverter.UInt16BitsToHalf((ushort)(bits << 8));

    /// <summary>OCP FP8 E4M3 "fn" (torch.float8_e4m3fn): bias 7, no infinities, S.1111.111 is NaN.</summary>
    public static float F8E4M3ToSingle(byte bits)
    {
        int exponent = (bits >> 3) & 0xF;
        int mantissa = bits & 0x7;
        float sign = (bits & 0x80) != 0 ? -1f : 1f;
        if (exponent == 0xF && mantissa == 0x7) return float.NaN;
        float magnitude = exponent == 0
            ? mantissa * (1f / 512f) // subnormal: m/8 · 2^-6
            : (1f + mantissa / 8f) * MathF.Pow(2, exponent - 7);
        return sign * magnitude;
    }

    // ---- bulk decoding into Sdp element types -----------------------------------------------------------

    /// <summary>Elements of <paramref name="src"/> (encoded as <paramref name="dtype"/>) into float32, each rounded once.</summary>
    public static void Decode(SafeTensorsDType dtype, ReadOnlySpan<byte> src, Span<float> dst)
    {
        switch (dtype)
        {
            case SafeTensorsDType.F32:
                MemoryMarshal.Cast<byte, float>(src).CopyTo(dst);
                break;
            case SafeTensorsDType.BF16:
            {
                var s = MemoryMarshal.Cast<byte, ushort>(src);
                for (int i = 0; i < s.Length; i++) dst[i] = Bf16ToSingle(s[i]);
                break;
            }
            case SafeTensorsDType.F16:
            {
                var s = MemoryMarshal.Cast<byte, Half>(src);
                for (int i = 0; i < s.Length; i++) dst[i] = (float)s[i];
                break;
            }
            case SafeTensorsDType.F64:
            {
                var s = MemoryMarshal.Cast<byte, double>(src);
                for (int i = 0; i < s.Length; i++) dst[i] = (float)s[i];
                break;
            }
            case SafeTensorsDType.I64:
            {
                var s = MemoryMarshal.Cast<byte, long>(src);
                for (int i = 0; i < s.Length; i++) dst[i] = s[i];
                break;
            }
            case SafeTensorsDType.U64:
            {
                var s = MemoryMarshal.Cast<byte, ulong>(src);
                for (int i = 0; i < s.Length; i++) dst[i] = s[i];
                break;
            }
            default:
            {
                int n = src.Length / dtype.ElementSize();
                for (int i = 0; i < n; i++) dst[i] = (float)Narrow(dtype, src, i);
                break;
            }
        }
    }

    /// <summary>Elements into float64, exactly except for 64-bit integers beyond 2^53.</summary>
    public static void Decode(SafeTensorsDType dtype, ReadOnlySpan<byte> src, Span<double> dst)
    {
        switch (dtype)
        {
            case SafeTensorsDType.F64:
                MemoryMarshal.Cast<byte, double>(src).CopyTo(dst);
                break;
            case SafeTensorsDType.F32:
            {
                var s = MemoryMarshal.Cast<byte, float>(src);
                for (int i = 0; i < s.Length; i++) dst[i] = s[i];
                break;
            }
            case SafeTensorsDType.I64:
            {
                var s = MemoryMarshal.Cast<byte, long>(src);
                for (int i = 0; i < s.Length; i++) dst[i] = s[i];
                break;
            }
            case SafeTensorsDType.U64:
            {
                var s = MemoryMarshal.Cast<byte, ulong>(src);
                for (int i = 0; i < s.Length; i++) dst[i] = s[i];
                break;
            }
            default:
            {
                int n = src.Length / dtype.ElementSize();
                for (int i = 0; i < n; i++) dst[i] = Narrow(dtype, src, i);
                break;
            }
        }
    }

    /// <summary>Integer or boolean elements into int64; returns the index of the first value out of range, or -1.</summary>
    public static int Decode(SafeTensorsDType dtype, ReadOnlySpan<byte> src, Span<long> dst)
    {
        if (dtype == SafeTensorsDType.I64)
        {
            MemoryMarshal.Cast<byte, long>(src).CopyTo(dst);
            return -1;
        }
        int n = src.Length / dtype.ElementSize();
        for (int i = 0; i < n; i++)
        {
            if (!TryInteger(dtype, src, i, out long v)) return i;
            dst[i] = v;
        }
        return -1;
    }

    /// <summary>Integer or boolean elements into int32; returns the index of the first value out of range, or -1.</summary>
    public static int Decode(SafeTensorsDType dtype, ReadOnlySpan<byte> src, Span<int> dst)
    {
        if (dtype == SafeTensorsDType.I32)
        {
            MemoryMarshal.Cast<byte, int>(src).CopyTo(dst);
            return -1;
        }
        int n = src.Length / dtype.ElementSize();
        for (int i = 0; i < n; i++)
        {
            if (!TryInteger(dtype, src, i, out long v) || v < int.MinValue || v > int.MaxValue) return i;
            dst[i] = (int)v;
        }
        return -1;
    }

    /// <summary>Element <paramref name="i"/> of every format whose values a double holds exactly (all but I64/U64).</summary>
    private static double Narrow(SafeTensorsDType dtype, ReadOnlySpan<byte> src, int i) => dtype switch
    {
        SafeTensorsDType.Bool => src[i] != 0 ? 1 : 0,
        SafeTensorsDType.U8 => src[i],
        SafeTensorsDType.I8 => (sbyte)src[i],
        SafeTensorsDType.F8E5M2 => F8E5M2ToSingle(src[i]),
        SafeTensorsDType.F8E4M3 => F8E4M3ToSingle(src[i]),
        SafeTensorsDType.I16 => BinaryPrimitives.ReadInt16LittleEndian(src[(2 * i)..]),
        SafeTensorsDType.U16 => BinaryPrimitives.ReadUInt16LittleEndian(src[(2 * i)..]),
        SafeTensorsDType.F16 => (double)BinaryPrimitives.ReadHalfLittleEndian(src[(2 * i)..]),
        SafeTensorsDType.BF16 => Bf16ToSingle(BinaryPrimitives.ReadUInt16LittleEndian(src[(2 * i)..])),
        SafeTensorsDType.I32 => BinaryPrimitives.ReadInt32LittleEndian(src[(4 * i)..]),
        SafeTensorsDType.U32 => BinaryPrimitives.ReadUInt32LittleEndian(src[(4 * i)..]),
        SafeTensorsDType.F32 => BinaryPrimitives.ReadSingleLittleEndian(src[(4 * i)..]),
        SafeTensorsDType.F64 => BinaryPrimitives.ReadDoubleLittleEndian(src[(8 * i)..]),
        _ => throw new InvalidOperationException($"{dtype.HeaderName()} values are not narrow enough to convert through float64 exactly"),
    };

    private static bool TryInteger(SafeTensorsDType dtype, ReadOnlySpan<byte> src, int i, out long value)
    {
        switch (dtype)
        {
            case SafeTensorsDType.Bool: value = src[i] != 0 ? 1 : 0; return true;
            case SafeTensorsDType.U8: value = src[i]; return true;
            case SafeTensorsDType.I8: value = (sbyte)src[i]; return true;
            case SafeTensorsDType.I16: value = BinaryPrimitives.ReadInt16LittleEndian(src[(2 * i)..]); return true;
            case SafeTensorsDType.U16: value = BinaryPrimitives.ReadUInt16LittleEndian(src[(2 * i)..]); return true;
            case SafeTensorsDType.I32: value = BinaryPrimitives.ReadInt32LittleEndian(src[(4 * i)..]); return true;
            case SafeTensorsDType.U32: value = BinaryPrimitives.ReadUInt32LittleEndian(src[(4 * i)..]); return true;
            case SafeTensorsDType.I64: value = BinaryPrimitives.ReadInt64LittleEndian(src[(8 * i)..]); return true;
            case SafeTensorsDType.U64:
            {
                ulong u = BinaryPrimitives.ReadUInt64LittleEndian(src[(8 * i)..]);
                value = (long)u;
                return u <= long.MaxValue;
            }
            default:
                throw new InvalidOperationException($"{dtype.HeaderName()} is not an integer format");
        }
    }

    // ---- bulk encoding ----------------------------------------------------------------------------------

    /// <summary>float32 values as F16 or BF16 bytes (2 per value).</summary>
    public static void Encode(ReadOnlySpan<float> src, SafeTensorsDType dtype, Span<byte> dst)
    {
        var d = MemoryMarshal.Cast<byte, ushort>(dst);
        if (dtype == SafeTensorsDType.BF16) for (int i = 0; i < src.Length; i++) d[i] = SingleToBf16(src[i]);
        else for (int i = 0; i < src.Length; i++) d[i] = SingleToF16(src[i]);
    }

    /// <summary>float64 values as F16 or BF16 bytes (2 per value), each rounded once.</summary>
    public static void Encode(ReadOnlySpan<double> src, SafeTensorsDType dtype, Span<byte> dst)
    {
        var d = MemoryMarshal.Cast<byte, ushort>(dst);
        if (dtype == SafeTensorsDType.BF16) for (int i = 0; i < src.Length; i++) d[i] = DoubleToBf16(src[i]);
        else for (int i = 0; i < src.Length; i++) d[i] = DoubleToF16(src[i]);
    }
}
