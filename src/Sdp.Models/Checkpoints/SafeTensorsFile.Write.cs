using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Encodings.Web;
using System.Text.Json;
using Sdp.Engine;

namespace Sdp.Models.Checkpoints;

public sealed partial class SafeTensorsFile
{
    /// <summary>
    /// Writes <paramref name="tensors"/> to <paramref name="path"/> as the reference writer does: compact
    /// JSON header ("__metadata__" first when <paramref name="metadata"/> is given, then one entry per
    /// tensor with dtype, shape, data_offsets), padded with spaces to a multiple of 8 bytes, followed by
    /// the tensors' bytes, contiguous and in the order given.
    /// <para>Each tensor is stored as its own dtype (F32, F64, I32, I64) unless <paramref name="storeAs"/>
    /// is given, which converts every floating-point tensor to F64, F32, F16 or BF16 (rounding to nearest,
    /// ties to even, once from the source value); integer tensors always keep their dtype.</para>
    /// <para>The write is atomic: the file is assembled under a temporary name in the same directory,
    /// flushed to disk and renamed over <paramref name="path"/>. If anything fails (including the
    /// enumeration of <paramref name="tensors"/>) the temporary file is deleted and an existing file at
    /// <paramref name="path"/> is left untouched.</para>
    /// </summary>
    public static void Write(string path, IEnumerable<(string Name, Tensor Tensor)> tensors, IReadOnlyDictionary<string, string>? metadata = null, SafeTensorsDType? storeAs = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(tensors);
        RequireLittleEndian();
        string where = $"SafeTensorsFile.Write '{path}'";
        if (storeAs is { } s && s is not (SafeTensorsDType.F64 or SafeTensorsDType.F32 or SafeTensorsDType.F16 or SafeTensorsDType.BF16))
        {
            throw new ArgumentOutOfRangeException(nameof(storeAs), storeAs, $"{where}: floating-point tensors can be stored as F64, F32, F16 or BF16, not {s.HeaderName()}");
        }

        // Everything is enumerated and validated before the file is created.
        var entries = new List<Entry>();
        var names = new HashSet<string>();
        long offset = 0;
        foreach (var (name, tensor) in tensors)
        {
            int i = entries.Count;
            if (string.IsNullOrEmpty(name)) throw new ArgumentException($"{where}: tensor {i} has no name", nameof(tensors));
            if (name == MetadataKey) throw new ArgumentException($"{where}: tensor {i} may not be named '{MetadataKey}', which the header reserves for metadata", nameof(tensors));
            if (!names.Add(name)) throw new ArgumentException($"{where}: the tensor name '{name}' appears more than once", nameof(tensors));
            if (tensor is null || tensor.IsDisposed) throw new ArgumentException($"{where}: tensor '{name}' is null or disposed", nameof(tensors));
            var stored = storeAs is { } target && tensor.DType.IsFloatingPoint() ? target : tensor.DType.ToSafeTensors();
            long bytes = tensor.Numel * stored.ElementSize();
            entries.Add(new Entry(name, tensor, stored, offset, offset + bytes));
            offset += bytes;
        }
        if (metadata is not null)
        {
            foreach (var (key, value) in metadata)
            {
                if (key is null || value is null) throw new ArgumentException($"{where}: metadata keys and values must not be null", nameof(metadata));
            }
        }

        byte[] header = BuildHeader(entries, metadata);
        AtomicFile.Write(path, stream =>
        {
            Span<byte> prefix = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
            stream.Write(prefix);
            stream.Write(header);
            foreach (var e in entries) WriteData(stream, e);
        });
    }

    private sealed record Entry(string Name, Tensor Tensor, SafeTensorsDType Stored, long Begin, long End);

    private static byte[] BuildHeader(List<Entry> entries, IReadOnlyDictionary<string, string>? metadata)
    {
        var buffer = new ArrayBufferWriter<byte>();
        // The reference writer (serde_json) escapes only quotes, backslashes and control characters.
        var options = new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping, Indented = false };
        using (var w = new Utf8JsonWriter(buffer, options))
        {
            w.WriteStartObject();
            if (metadata is not null)
            {
                w.WriteStartObject(MetadataKey);
                foreach (var (key, value) in metadata) w.WriteString(key, value);
                w.WriteEndObject();
            }
            foreach (var e in entries)
            {
                w.WriteStartObject(e.Name);
                w.WriteString("dtype", e.Stored.HeaderName());
                w.WriteStartArray("shape");
                foreach (var d in e.Tensor.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(e.Begin);
                w.WriteNumberValue(e.End);
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        int padding = (8 - buffer.WrittenCount % 8) % 8;
        var header = new byte[buffer.WrittenCount + padding];
        buffer.WrittenSpan.CopyTo(header);
        header.AsSpan(buffer.WrittenCount).Fill((byte)' ');
        return header;
    }

    private static void WriteData(Stream stream, Entry e)
    {
        var t = e.Tensor;
        switch (t.DType)
        {
            case DType.Float32: WriteFloats(stream, t.ToArray<float>(), e.Stored); break;
            case DType.Float64: WriteFloats(stream, t.ToArray<double>(), e.Stored); break;
            case DType.Int32: WriteRaw<int>(stream, t.ToArray<int>()); break;
            case DType.Int64: WriteRaw<long>(stream, t.ToArray<long>()); break;
            default: throw new NotSupportedException($"safetensors: cannot write a {t.DType.Name()} tensor ('{e.Name}')");
        }
    }

    private static void WriteRaw<T>(Stream stream, T[] values) where T : unmanaged
    {
        int perChunk = ChunkBytes / Marshal.SizeOf<T>();
        for (int i = 0; i < values.Length; i += perChunk)
        {
            stream.Write(MemoryMarshal.AsBytes(values.AsSpan(i, Math.Min(perChunk, values.Length - i))));
        }
    }

    private static void WriteFloats(Stream stream, float[] values, SafeTensorsDType stored)
    {
        if (stored == SafeTensorsDType.F32)
        {
            WriteRaw<float>(stream, values);
            return;
        }
        WriteConverted(stream, values, stored, (src, dst) =>
        {
            if (stored == SafeTensorsDType.F64)
            {
                var d = MemoryMarshal.Cast<byte, double>(dst);
                for (int i = 0; i < src.Length; i++) d[i] = src[i];
            }
            else ElementCodec.Encode(src, stored, dst);
        });
    }

    private static void WriteFloats(Stream stream, double[] values, SafeTensorsDType stored)
    {
        if (stored == SafeTensorsDType.F64)
        {
            WriteRaw<double>(stream, values);
            return;
        }
        WriteConverted(stream, values, stored, (src, dst) =>
        {
            if (stored == SafeTensorsDType.F32)
            {
                var d = MemoryMarshal.Cast<byte, float>(dst);
                for (int i = 0; i < src.Length; i++) d[i] = (float)src[i];
            }
            else ElementCodec.Encode(src, stored, dst);
        });
    }

    private delegate void Encoder<T>(ReadOnlySpan<T> src, Span<byte> dst);

    private static void WriteConverted<T>(Stream stream, T[] values, SafeTensorsDType stored, Encoder<T> encode) where T : unmanaged
    {
        int size = stored.ElementSize();
        int perChunk = ChunkBytes / size;
        var buffer = ArrayPool<byte>.Shared.Rent(ChunkBytes);
        try
        {
            for (int i = 0; i < values.Length; i += perChunk)
            {
                int n = Math.Min(perChunk, values.Length - i);
                var bytes = buffer.AsSpan(0, n * size);
                encode(values.AsSpan(i, n), bytes);
                stream.Write(bytes);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
