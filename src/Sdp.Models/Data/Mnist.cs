using System.Buffers.Binary;
using System.IO.Compression;

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

    /// <summary>Loads an images file and its labels file, checking that they describe the same number of images.</summary>
    public static ImageDataset Load(string imagesPath, string labelsPath)
    {
        var (imageBytes, imagesGz) = ReadMaybeGzipped(imagesPath);
        var (labelBytes, labelsGz) = ReadMaybeGzipped(labelsPath);

        int imageDims = CheckMagic(imagesPath, imageBytes, imagesGz, ImagesMagic, "images", 3);
        var dims = new int[imageDims];
        for (int d = 0; d < imageDims; d++) dims[d] = ReadDim(imagesPath, imageBytes, d);
        int n = dims[0], rows = dims[1], cols = dims[2];
        if (rows < 1 || cols < 1) throw new InvalidDataException($"MNIST images '{imagesPath}': image size {rows}x{cols} must be positive");
        long imageHeader = 4 + 4L * imageDims;
        long expectedImages = imageHeader + (long)n * rows * cols;
        if (imageBytes.LongLength != expectedImages)
            throw new InvalidDataException($"MNIST images '{imagesPath}': header says {n} images of {rows}x{cols}, so the data should be {expectedImages} bytes, but it is {imageBytes.LongLength} bytes{GzNote(imagesGz)}");

        CheckMagic(labelsPath, labelBytes, labelsGz, LabelsMagic, "labels", 1);
        int labelCount = ReadDim(labelsPath, labelBytes, 0);
        long expectedLabels = 8L + labelCount;
        if (labelBytes.LongLength != expectedLabels)
            throw new InvalidDataException($"MNIST labels '{labelsPath}': header says {labelCount} labels, so the data should be {expectedLabels} bytes, but it is {labelBytes.LongLength} bytes{GzNote(labelsGz)}");
        if (labelCount != n)
            throw new InvalidDataException($"MNIST: images '{imagesPath}' hold {n} images but labels '{labelsPath}' hold {labelCount} labels; the counts must match");

        var labels = labelBytes.AsSpan(8).ToArray();
        for (int i = 0; i < labels.Length; i++)
        {
            if (labels[i] >= Classes)
                throw new InvalidDataException($"MNIST labels '{labelsPath}': label {labels[i]} at byte offset {8 + i} is not a digit 0..9");
        }
        var pixels = imageBytes.AsSpan((int)imageHeader).ToArray();
        return new ImageDataset($"{imagesPath} + {labelsPath}", pixels, labels, 1, rows, cols, Classes, [.. Mean], [.. Std], ImageAugmentation.None);
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

    /// <summary>The file's bytes, gunzipped when it starts with the gzip magic 1f 8b.</summary>
    internal static (byte[] Bytes, bool Gzipped) ReadMaybeGzipped(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"MNIST: file '{path}' does not exist", path);
        var raw = File.ReadAllBytes(path);
        if (raw.Length < 2 || raw[0] != 0x1f || raw[1] != 0x8b) return (raw, false);
        try
        {
            using var gz = new GZipStream(new MemoryStream(raw), CompressionMode.Decompress);
            using var output = new MemoryStream();
            gz.CopyTo(output);
            return (output.ToArray(), true);
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException or IOException)
        {
            throw new InvalidDataException($"MNIST: '{path}' starts with the gzip magic 1f 8b but does not decompress: {e.Message}", e);
        }
    }

    private static int CheckMagic(string path, byte[] bytes, bool gzipped, int expected, string what, int expectedDims)
    {
        int headerBytes = 4 + 4 * expectedDims;
        if (bytes.Length >= 4)
        {
            int magic = BinaryPrimitives.ReadInt32BigEndian(bytes);
            if (magic != expected)
            {
                int other = expected == ImagesMagic ? LabelsMagic : ImagesMagic;
                string hint = magic == other ? $" ({magic} is the {(expected == ImagesMagic ? "labels" : "images")} magic: are the files swapped?)" : "";
                throw new InvalidDataException($"MNIST {what} '{path}': magic number at offset 0 is {magic} (0x{magic:x8}), expected {expected} (0x{expected:x8}, unsigned bytes, {expectedDims} dimension(s)){hint}");
            }
        }
        if (bytes.Length < headerBytes)
            throw new InvalidDataException($"MNIST {what} '{path}': {bytes.Length} bytes is too short for an IDX header with {expectedDims} dimension(s) ({headerBytes} bytes){GzNote(gzipped)}");
        return expectedDims;
    }

    private static int ReadDim(string path, byte[] bytes, int d)
    {
        int value = BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(4 + 4 * d));
        if (value < 0) throw new InvalidDataException($"MNIST '{path}': dimension {d} at offset {4 + 4 * d} is {value}, expected a non-negative count");
        return value;
    }

    private static string GzNote(bool gzipped) => gzipped ? " after gzip decompression" : "";
}
