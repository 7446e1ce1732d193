using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json;
using Microsoft.Win32.SafeHandles;
using Sdp.Engine;
using Sdp.Engine.Backends;

namespace Sdp.Models.Checkpoints;

/// <summary>
/// A safetensors file (the format of Hugging Face's <c>safetensors</c> library), opened for reading:
/// <code>
/// [u64 little-endian N][N bytes of UTF-8 JSON header, space-padded][tensor data]
/// header = { "__metadata__": { string: string }, name: { "dtype": "F32", "shape": [2, 2], "data_offsets": [begin, end] }, ... }
/// </code>
/// Offsets are relative to the data buffer after the header, and the tensors tile that buffer exactly:
/// no gaps, no overlaps, nothing after the last one. <see cref="Read"/> validates all of this up front
/// (like the reference reader) and throws one <see cref="InvalidDataException"/> naming the file and the
/// problem; tensor bytes are read only when a tensor is loaded, one tensor at a time, with positional
/// reads on a handle the object keeps open until <see cref="Dispose"/>.
/// </summary>
public sealed partial class SafeTensorsFile : IDisposable
{
    /// <summary>The reference implementation's limit on the header size.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private const int ChunkBytes = 1 << 20;
    private const string MetadataKey = "__metadata__";

    private readonly SafeFileHandle _handle;
    private readonly Dictionary<string, SafeTensorInfo> _tensors;

    private SafeTensorsFile(string path, SafeFileHandle handle, long headerLength, Dictionary<string, string> metadata, List<SafeTensorInfo> tensors)
    {
        Path = path;
        _handle = handle;
        HeaderLength = headerLength;
        Metadata = metadata;
        Names = [.. tensors.Select(t => t.Name)];
        _tensors = tensors.ToDictionary(t => t.Name);
    }

    /// <summary>The file's full path.</summary>
    public string Path { get; }

    /// <summary>N, the length of the JSON header in bytes (padding included).</summary>
    public long HeaderLength { get; }

    /// <summary>Where the data buffer starts in the file: 8 + N.</summary>
    public long DataStart => 8 + HeaderLength;

    /// <summary>The header's "__metadata__" (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>The tensor names in header order.</summary>
    public IReadOnlyList<string> Names { get; }

    public int Count => Names.Count;

    public bool Contains(string name) => _tensors.ContainsKey(name);

    public bool TryGetInfo(string name, out SafeTensorInfo info) => _tensors.TryGetValue(name, out info!);

    /// <summary>The header entry of <paramref name="name"/>.</summary>
    public SafeTensorInfo Info(string name)
        => _tensors.TryGetValue(name, out var info) ? info
            : throw new KeyNotFoundException($"safetensors file '{Path}' has no tensor named '{name}' ({Count} tensors)");

    /// <summary>Opens and validates <paramref name="path"/>; the tensor data is read later, by <see cref="Load"/>.</summary>
    public static SafeTensorsFile Read(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        RequireLittleEndian();
        string full = System.IO.Path.GetFullPath(path);
        // Before opening: a pipe in the file's place would block the open forever, a device never ends.
        if (File.Exists(full) || Directory.Exists(full)) InputFile.RequireRegularFile(full, "safetensors file");
        var handle = File.OpenHandle(full, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete);
        try
        {
            long fileLength = RandomAccess.GetLength(handle);
            if (fileLength < 8) throw Bad(full, $"the file is {fileLength} bytes long, shorter than the 8-byte header length");
            Span<byte> prefix = stackalloc byte[8];
            ReadExactly(handle, full, 0, prefix, "the header length");
            ulong n = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
            if (n > (ulong)(fileLength - 8)) throw Bad(full, $"the header length {n} reaches beyond the end of the file ({fileLength - 8} bytes follow the length)");
            if (n > MaxHeaderBytes) throw Bad(full, $"the header length {n} exceeds the {MaxHeaderBytes}-byte limit");
            var header = new byte[n];
            ReadExactly(handle, full, 8, header, "the header");
            long dataLength = fileLength - 8 - (long)n;
            var (metadata, tensors) = ParseHeader(full, header, 8 + (long)n, dataLength);
            return new SafeTensorsFile(full, handle, (long)n, metadata, tensors);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A new tensor (in the current scope, on <paramref name="backend"/> or the CPU) holding tensor
    /// <paramref name="name"/> converted to <paramref name="dtype"/>: widening conversions (BF16, F16,
    /// F32 to float32 or float64; integers to any dtype that holds them) are exact, F64 to float32 and
    /// 64-bit integers to floats round to nearest. Floating-point values are never loaded as integers, and
    /// integers out of range of an int32 target are an error.
    /// </summary>
    public Tensor Load(string name, DType dtype = DType.Float32, IBackend? backend = null)
    {
        var info = Info(name);
        RequireLoadable(info, dtype);
        var tensor = Tensor.Empty(info.Shape, dtype, backend);
        try
        {
            ReadInto(info, tensor);
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
        return tensor;
    }

    /// <summary>Overwrites <paramref name="destination"/> (same shape, any dtype) with tensor <paramref name="name"/>, converting as <see cref="Load"/>.</summary>
    public void LoadInto(string name, Tensor destination)
    {
        ArgumentNullException.ThrowIfNull(destination);
        var info = Info(name);
        if (destination.IsDisposed) throw new ArgumentException($"safetensors file '{Path}': cannot load tensor '{name}' into a disposed tensor", nameof(destination));
        if (destination.Shape != info.Shape)
        {
            throw new ArgumentException($"safetensors file '{Path}': tensor '{name}' has shape {info.Shape} but the destination {destination} has shape {destination.Shape}", nameof(destination));
        }
        RequireLoadable(info, destination.DType);
        ReadInto(info, destination);
    }

    public void Dispose() => _handle.Dispose();

    public override string ToString() => $"safetensors '{Path}' ({Count} tensors)";

    // ---- loading --------------------------------------------------------------------------------------

    private delegate int Decoder<T>(SafeTensorsDType dtype, ReadOnlySpan<byte> src, Span<T> dst);

    private void RequireLoadable(SafeTensorInfo info, DType dtype)
    {
        if (!info.DType.CanLoadAs(dtype))
        {
            throw new ArgumentException($"safetensors file '{Path}': tensor '{info.Name}' holds {info.DTypeName} values, which cannot be loaded as {dtype.Name()} (floating-point values load only as float32 or float64)");
        }
    }

    private void ReadInto(SafeTensorInfo info, Tensor dst)
    {
        ObjectDisposedException.ThrowIf(_handle.IsClosed, this);
        switch (dst.DType)
        {
            case DType.Float32: ReadAs<float>(info, dst, (d, s, t) => { ElementCodec.Decode(d, s, t); return -1; }); break;
            case DType.Float64: ReadAs<double>(info, dst, (d, s, t) => { ElementCodec.Decode(d, s, t); return -1; }); break;
            case DType.Int32: ReadAs<int>(info, dst, ElementCodec.Decode); break;
            case DType.Int64: ReadAs<long>(info, dst, ElementCodec.Decode); break;
            default: throw new NotSupportedException($"safetensors: cannot load into a {dst.DType.Name()} tensor");
        }
    }

    private void ReadAs<T>(SafeTensorInfo info, Tensor dst, Decoder<T> decode) where T : unmanaged
    {
        if (info.Numel > Array.MaxLength)
        {
            throw new NotSupportedException($"safetensors file '{Path}': tensor '{info.Name}' has {info.Numel} elements, more than one host array holds ({Array.MaxLength})");
        }
        var values = GC.AllocateUninitializedArray<T>((int)info.Numel);
        int size = info.DType.ElementSize();
        int perChunk = ChunkBytes / size;
        string what = $"tensor '{info.Name}'";
        if (info.DType == DTypeExtensions.Of<T>().ToSafeTensors())
        {
            // Same encoding: read straight into the host array.
            for (int i = 0; i < values.Length; i += perChunk)
            {
                int n = Math.Min(perChunk, values.Length - i);
                ReadExactly(_handle, Path, info.FileOffset + (long)i * size, MemoryMarshal.AsBytes(values.AsSpan(i, n)), what);
            }
        }
        else
        {
            // A conversion buffer no larger than the tensor: a scalar does not need a megabyte.
            var buffer = ArrayPool<byte>.Shared.Rent((int)Math.Min(ChunkBytes, Math.Max(1, info.Numel * size)));
            try
            {
                for (int i = 0; i < values.Length; i += perChunk)
                {
                    int n = Math.Min(perChunk, values.Length - i);
                    var bytes = buffer.AsSpan(0, n * size);
                    ReadExactly(_handle, Path, info.FileOffset + (long)i * size, bytes, what);
                    int bad = decode(info.DType, bytes, values.AsSpan(i, n));
                    if (bad >= 0)
                    {
                        throw new InvalidDataException($"safetensors file '{Path}': element {(long)i + bad} of tensor '{info.Name}' ({info.DTypeName}) is out of range for {dst.DType.Name()}");
                    }
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
        dst.Backend.Upload<T>(values, dst);
    }

    private static void ReadExactly(SafeFileHandle handle, string path, long offset, Span<byte> buffer, string what)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int read = RandomAccess.Read(handle, buffer[done..], offset + done);
            if (read == 0) throw Bad(path, $"the file ended at byte {offset + done} while reading {what} (was it truncated after it was opened?)");
            done += read;
        }
    }

    private static void RequireLittleEndian()
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("safetensors support needs a little-endian machine");
    }

    // ---- header validation ----------------------------------------------------------------------------

    private static (Dictionary<string, string> Metadata, List<SafeTensorInfo> Tensors) ParseHeader(string path, byte[] header, long dataStart, long dataLength)
    {
        if (!System.Text.Unicode.Utf8.IsValid(header)) throw Bad(path, "the header is not valid UTF-8");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw Bad(path, $"the header is not valid JSON: {e.Message}");
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw Bad(path, $"the header is a JSON {Kind(root)}, expected an object");
            var metadata = new Dictionary<string, string>();
            var tensors = new List<SafeTensorInfo>();
            var seen = new HashSet<string>();
            foreach (var property in root.EnumerateObject())
            {
                if (!seen.Add(property.Name)) throw Bad(path, $"the header names '{property.Name}' more than once");
                if (property.Name == MetadataKey) ParseMetadata(path, property.Value, metadata);
                else tensors.Add(ParseEntry(path, property.Name, property.Value, dataStart, dataLength));
            }
            CheckLayout(path, tensors, dataLength);
            return (metadata, tensors);
        }
    }

    private static void ParseMetadata(string path, JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind != JsonValueKind.Object) throw Bad(path, $"\"{MetadataKey}\" is a JSON {Kind(value)}, expected an object of strings");
        foreach (var entry in value.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.String) throw Bad(path, $"\"{MetadataKey}\" entry '{entry.Name}' is a JSON {Kind(entry.Value)}, expected a string");
            if (!metadata.TryAdd(entry.Name, entry.Value.GetString()!)) throw Bad(path, $"\"{MetadataKey}\" names '{entry.Name}' more than once");
        }
    }

    private static SafeTensorInfo ParseEntry(string path, string name, JsonElement entry, long dataStart, long dataLength)
    {
        string where = $"tensor '{name}'";
        if (entry.ValueKind != JsonValueKind.Object) throw Bad(path, $"{where}: the entry is a JSON {Kind(entry)}, expected an object with dtype, shape and data_offsets");
        var keys = new HashSet<string>(StringComparer.Ordinal);
        foreach (var field in entry.EnumerateObject())
        {
            // Which of two "dtype"s would count is up to the reader; refuse rather than guess.
            if (!keys.Add(field.Name)) throw Bad(path, $"{where}: the entry names \"{field.Name}\" more than once");
        }

        if (!entry.TryGetProperty("dtype", out var dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
        {
            throw Bad(path, $"{where}: \"dtype\" is missing or not a string");
        }
        string dtypeName = dtypeElement.GetString()!;
        var dtype = SafeTensorsDTypeExtensions.FromHeaderName(dtypeName)
            ?? throw Bad(path, $"{where}: unknown dtype '{dtypeName}' (supported: {SafeTensorsDTypeExtensions.SupportedNames})");

        if (!entry.TryGetProperty("shape", out var shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
        {
            throw Bad(path, $"{where}: \"shape\" is missing or not an array");
        }
        var dims = new int[shapeElement.GetArrayLength()];
        int axis = 0;
        foreach (var d in shapeElement.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetUInt64(out ulong size)) throw Bad(path, $"{where}: shape {shapeElement.GetRawText()} is not a list of non-negative integers");
            if (size > int.MaxValue) throw Bad(path, $"{where}: dimension {axis} of shape {shapeElement.GetRawText()} is larger than {int.MaxValue}");
            dims[axis++] = (int)size;
        }
        Shape shape;
        long expectedBytes;
        try
        {
            shape = new Shape(dims);
            expectedBytes = checked(shape.Numel * dtype.ElementSize());
        }
        catch (OverflowException)
        {
            throw Bad(path, $"{where}: shape {shapeElement.GetRawText()} has too many elements");
        }

        if (!entry.TryGetProperty("data_offsets", out var offsets) || offsets.ValueKind != JsonValueKind.Array || offsets.GetArrayLength() != 2)
        {
            throw Bad(path, $"{where}: \"data_offsets\" is missing or not a [begin, end] pair");
        }
        if (!offsets[0].TryGetUInt64(out ulong begin) || !offsets[1].TryGetUInt64(out ulong end))
        {
            throw Bad(path, $"{where}: data_offsets {offsets.GetRawText()} are not non-negative integers");
        }
        if (begin > end) throw Bad(path, $"{where}: data_offsets [{begin}, {end}] end before they begin");
        if (end > (ulong)dataLength)
        {
            throw Bad(path, $"{where}: data_offsets [{begin}, {end}] are out of range: only {dataLength} bytes of tensor data follow the header (is the file truncated?)");
        }
        if ((long)(end - begin) != expectedBytes)
        {
            throw Bad(path, $"{where}: {dtypeName} shape {shape} needs {expectedBytes} bytes but data_offsets [{begin}, {end}] span {end - begin}");
        }
        return new SafeTensorInfo(name, dtype, shape, (long)begin, (long)end, dataStart + (long)begin);
    }

    /// <summary>The tensors must tile [0, dataLength) exactly, in some order, as the reference reader requires.</summary>
    private static void CheckLayout(string path, List<SafeTensorInfo> tensors, long dataLength)
    {
        long cursor = 0;
        SafeTensorInfo? previous = null;
        foreach (var t in tensors.OrderBy(t => t.Begin).ThenBy(t => t.End))
        {
            if (t.Begin > cursor)
            {
                string before = previous is null ? "the first tensor" : $"'{previous.Name}' [{previous.Begin}, {previous.End}]";
                throw Bad(path, $"the tensor data has a hole: bytes [{cursor}, {t.Begin}) between {before} and '{t.Name}' [{t.Begin}, {t.End}] belong to no tensor");
            }
            if (t.Begin < cursor)
            {
                throw Bad(path, $"tensors '{previous!.Name}' [{previous.Begin}, {previous.End}] and '{t.Name}' [{t.Begin}, {t.End}] overlap");
            }
            cursor = t.End;
            previous = t;
        }
        if (cursor < dataLength)
        {
            throw Bad(path, $"{dataLength - cursor} bytes after the last tensor's data (bytes [{cursor}, {dataLength}) of the data buffer) belong to no tensor");
        }
    }

    private static string Kind(JsonElement e) => e.ValueKind.ToString().ToLowerInvariant();

    internal static InvalidDataException Bad(string path, string problem) => new($"safetensors file '{path}': {problem}");
}
