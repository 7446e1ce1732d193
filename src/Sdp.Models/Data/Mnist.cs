using System.Buffers.Binary;
using System.IO.Compression;
using Sdp.Engine;

namespace Sdp.Models.Data;

/// <summary>
/// MNIST in the IDX format: an images file (big-endian int32 magic 2051 = unsigned bytes, 3 dims, then
/// the dims count, rows, cols, then the pixels) and a labels file (magic 2049, 1 dim, count, then one byte
/// per label). Either may be gzipped (detected by the 1f 8b magic, not the file name). Trained without
/// augmentation: a mirrored digit is another digit or none, and no MNIST recipe flips them.
/// </summary>
public static class Mnist
{
    public const int ImagesMagic = 2051;
    public const int LabelsMagic = 2049;
    public const int Classes = 10;

    public static IReadOnlyList<double> Mean { get; } = [0.1307];

    public static IReadOnlyList<double> Std { get; } = [0.3081];

    /// <summary>
    /// Loads from a directory holding train-images-idx3-ubyte / train-labels-idx1-ubyte (or t10k-... when
    /// <paramref name="train"/> is false), each optionally ending in ".gz".
    /// </summary>
    public static ImageDataset Load(string directory, bool train = true)
    {
        if (!Directory.Exists(directory)) throw new FileNotFoundException($"MNIST: directory '{directory}' does not exist", directory);
        string prefix = train ? "train" : "t10k";
        string images = Find(directory, $"{prefix}-images-idx3-ubyte", $"{prefix}-images.idx3-ubyte");
        string labels = Find(directory, $"{prefix}-labels-idx1-ubyte", $"{prefix}-labels.idx1-ubyte");
        return Load(images, labels);
    }

    /// <summary>
    /// Loads an images file and its labels file, checking that they describe the same number of images (at least one).
    /// Both headers are read and checked before anything is allocated for the data: a plain file must be exactly as
    /// long as its header says, a gzipped one must be one gzip member whose trailer agrees with the header (so a
    /// truncated, appended or concatenated file is refused) and that deflate could have produced from the file's size.
    /// </summary>
    public static ImageDataset Load(string imagesPath, string labelsPath)
    {
        using var images = IdxFile.Open(imagesPath, ImagesMagic, 3, "images");
        using var labelsFile = IdxFile.Open(labelsPath, LabelsMagic, 1, "labels");
        int n = images.Dims[0], rows = images.Dims[1], cols = images.Dims[2];
        int labelCount = labelsFile.Dims[0];
        if (labelCount != n)
            throw new InvalidDataException($"MNIST: images '{imagesPath}' hold {n} images but labels '{labelsPath}' hold {labelCount} labels; the counts must match");
        if (n == 0) throw new InvalidDataException($"MNIST images '{imagesPath}': the header says 0 images{GzNote(images.Gzipped)}; there is nothing to train or evaluate on");
        var labels = labelsFile.ReadData();
        for (int i = 0; i < labels.Length; i++)
        {
            if (labels[i] >= Classes)
                throw new InvalidDataException($"MNIST labels '{labelsPath}': label {labels[i]} at byte offset {8 + i} is not a digit 0..9");
        }
        var pixels = images.ReadData();
        return new ImageDataset($"{imagesPath} + {labelsPath}", pixels, labels, 1, rows, cols, Classes, [.. Mean], [.. Std], ImageAugmentation.None);
    }

    /// <summary>
    /// An IDX file of unsigned bytes, plain or gzipped (by the 1f 8b magic), opened with its header read and checked:
    /// the data (<see cref="ReadData"/>) is allocated only once its size is known to match what the file can hold.
    /// </summary>
    private sealed class IdxFile : IDisposable
    {
        /// <summary>Deflate expands at most about 1032:1, so a gzip file of F bytes holds at most this many times F.</summary>
        private const long MaxInflation = 1032;

        private readonly FileStream _file;
        private readonly Stream _content;
        private readonly string _path;
        private readonly string _what;
        private readonly string _says;
        private readonly string _should;
        private readonly int _headerBytes;
        private readonly long _size;

        private IdxFile(FileStream file, Stream content, string path, string what, int[] dims, bool gzipped, string says, string should, int headerBytes, long size)
            => (_file, _content, _path, _what, Dims, Gzipped, _says, _should, _headerBytes, _size) = (file, content, path, what, dims, gzipped, says, should, headerBytes, size);

        public int[] Dims { get; }

        public bool Gzipped { get; }

        public static IdxFile Open(string path, int magic, int dims, string what)
        {
            if (!File.Exists(path) && !Directory.Exists(path)) throw new FileNotFoundException($"MNIST: file '{path}' does not exist", path);
            long fileLength = InputFile.RequireRegularFile(path, $"MNIST {what}");
            var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 12);
            Stream? content = null;
            try
            {
                Span<byte> signature = stackalloc byte[2];
                bool gz = file.ReadAtLeast(signature, 2, throwOnEndOfStream: false) == 2 && signature[0] == 0x1f && signature[1] == 0x8b;
                uint trailerLength = 0;
                if (gz)
                {
                    if (fileLength < 18) throw new InvalidDataException($"MNIST: '{path}' starts with the gzip magic 1f 8b but is {fileLength} bytes, shorter than any gzip member (18 bytes)");
                    // ISIZE, the last 4 bytes of a gzip member: its uncompressed length mod 2^32.
                    Span<byte> trailer = stackalloc byte[4];
                    file.Position = fileLength - 4;
                    file.ReadExactly(trailer);
                    trailerLength = BinaryPrimitives.ReadUInt32LittleEndian(trailer);
                }
                file.Position = 0;
                content = gz ? new GZipStream(file, CompressionMode.Decompress, leaveOpen: true) : file;

                int headerBytes = 4 + 4 * dims;
                var header = new byte[headerBytes];
                int got = ReadFully(content, header, path, gz);
                if (got >= 4)
                {
                    int found = BinaryPrimitives.ReadInt32BigEndian(header);
                    if (found != magic)
                    {
                        int other = magic == ImagesMagic ? LabelsMagic : ImagesMagic;
                        string hint = found == other ? $" ({found} is the {(magic == ImagesMagic ? "labels" : "images")} magic: are the files swapped?)" : "";
                        throw new InvalidDataException($"MNIST {what} '{path}': magic number at offset 0 is {found} (0x{found:x8}), expected {magic} (0x{magic:x8}, unsigned bytes, {dims} dimension(s)){hint}");
                    }
                }
                if (got < headerBytes)
                    throw new InvalidDataException($"MNIST {what} '{path}': {got} bytes is too short for an IDX header with {dims} dimension(s) ({headerBytes} bytes){GzNote(gz)}");
                var shape = new int[dims];
                long size = 1;
                for (int d = 0; d < dims; d++)
                {
                    shape[d] = BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(4 + 4 * d));
                    if (shape[d] < 0) throw new InvalidDataException($"MNIST '{path}': dimension {d} at offset {4 + 4 * d} is {shape[d]}, expected a non-negative count");
                    // Saturates instead of overflowing: three int32 counts can multiply past 2^63.
                    size = shape[d] == 0 || size <= long.MaxValue / shape[d] ? size * shape[d] : long.MaxValue;
                }
                if (dims == 3 && (shape[1] < 1 || shape[2] < 1)) throw new InvalidDataException($"MNIST images '{path}': image size {shape[1]}x{shape[2]} must be positive");
                string says = dims == 3 ? $"header says {shape[0]} images of {shape[1]}x{shape[2]}" : $"header says {shape[0]} labels";
                long expected = size > long.MaxValue - headerBytes ? long.MaxValue : headerBytes + size;
                string should = expected == long.MaxValue ? "more than 2^63 bytes" : $"{expected} bytes";
                if (!gz && fileLength != expected)
                    throw new InvalidDataException($"MNIST {what} '{path}': {says}, so the data should be {should}, but it is {fileLength} bytes");
                if (gz && (expected == long.MaxValue || (uint)expected != trailerLength))
                    throw new InvalidDataException($"MNIST {what} '{path}': {says}, so the data should be {should}, but it is {trailerLength} bytes after gzip decompression " +
                        "(by the gzip trailer: a truncated or appended file, or more than one gzip member, has no matching trailer)");
                if (gz && expected > MaxInflation * fileLength)
                    throw new InvalidDataException($"MNIST {what} '{path}': {says}, so the data should be {should}, more than a {fileLength}-byte gzip file can inflate to");
                if (size > Array.MaxLength) throw new InvalidDataException($"MNIST {what} '{path}': {says}: {size} bytes are more than one array holds");
                return new IdxFile(file, content, path, what, shape, gz, says, should, headerBytes, size);
            }
            catch
            {
                content?.Dispose();
                file.Dispose();
                throw;
            }
        }

        /// <summary>The data after the header: exactly as many bytes as it says, with nothing after them.</summary>
        public byte[] ReadData()
        {
            var data = new byte[_size];
            int read = ReadFully(_content, data, _path, Gzipped);
            if (read < data.Length)
                throw new InvalidDataException($"MNIST {_what} '{_path}': {_says}, so the data should be {_should}, but it is {_headerBytes + read} bytes{GzNote(Gzipped)}");
            // Reading to the end also makes zlib check the member's CRC-32.
            Span<byte> more = stackalloc byte[1];
            if (ReadFully(_content, more, _path, Gzipped) != 0)
                throw new InvalidDataException($"MNIST {_what} '{_path}': {_says}, so the data should be {_should}, but there is more{GzNote(Gzipped)}");
            return data;
        }

        public void Dispose()
        {
            if (!ReferenceEquals(_content, _file)) _content.Dispose();
            _file.Dispose();
        }

        /// <summary>Reads until <paramref name="buffer"/> is full or the content ends; a gzip stream that does not decompress is one error naming the file.</summary>
        private static int ReadFully(Stream content, Span<byte> buffer, string path, bool gz)
        {
            try
            {
                return content.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
            }
            catch (Exception e) when (gz && e is InvalidDataException or IOException)
            {
                throw new InvalidDataException($"MNIST: '{path}' starts with the gzip magic 1f 8b but does not decompress: {e.Message}", e);
            }
        }
    }

    private static string Find(string directory, params string[] names)
    {
        foreach (var name in names)
        {
            foreach (var candidate in new[] { name, name + ".gz" })
            {
                string path = System.IO.Path.Combine(directory, candidate);
                if (File.Exists(path)) return path;
            }
        }
        throw new FileNotFoundException($"MNIST: directory '{directory}' has no {names[0]} (or {names[0]}.gz)", System.IO.Path.Combine(directory, names[0]));
    }

    private static string GzNote(bool gzipped) => gzipped ? " after gzip decompression" : "";
}
