using Sdp.Engine;

namespace Sdp.Models.Data;

/// <summary>
/// The CIFAR-10 binary version: files of records, each 1 label byte (0..9) then 3072 pixel bytes
/// (3 x 32 x 32, CHW, RGB). The standard files hold exactly 10000 records each: data_batch_1.bin to
/// data_batch_5.bin for training and test_batch.bin for testing. Trained with the standard crop and flip.
/// </summary>
public static class Cifar10
{
    public const int Classes = 10;
    public const int Channels = 3;
    public const int Size = 32;
    public const int ImageBytes = Channels * Size * Size;
    public const int RecordBytes = 1 + ImageBytes;

    public static IReadOnlyList<double> Mean { get; } = [0.4914, 0.4822, 0.4465];

    public static IReadOnlyList<double> Std { get; } = [0.2470, 0.2435, 0.2616];

    public static IReadOnlyList<string> ClassNames { get; } = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

    public static IReadOnlyList<string> TrainFiles { get; } = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];

    public const string TestFile = "test_batch.bin";

    /// <summary>
    /// Loads a directory (the five training batches, or test_batch.bin when <paramref name="train"/> is
    /// false; a "cifar-10-batches-bin" subdirectory is looked into too) or a single batch file.
    /// </summary>
    public static ImageDataset Load(string path, bool train = true)
    {
        if (File.Exists(path)) return LoadFiles([path], path);
        if (!Directory.Exists(path)) throw new FileNotFoundException($"CIFAR-10: '{path}' is neither a file nor a directory", path);
        string dir = path;
        string first = train ? TrainFiles[0] : TestFile;
        string nested = System.IO.Path.Combine(path, "cifar-10-batches-bin");
        if (!File.Exists(System.IO.Path.Combine(dir, first)) && Directory.Exists(nested)) dir = nested;
        var files = (train ? TrainFiles : [TestFile]).Select(f => System.IO.Path.Combine(dir, f)).ToArray();
        foreach (var f in files)
        {
            if (!File.Exists(f)) throw new FileNotFoundException($"CIFAR-10: directory '{dir}' has no {System.IO.Path.GetFileName(f)} (expected {string.Join(", ", train ? TrainFiles : [TestFile])})", f);
        }
        return LoadFiles(files, $"{dir} ({(train ? "train" : "test")})");
    }

    /// <summary>Loads and concatenates CIFAR-10 batch files.</summary>
    public static ImageDataset LoadFiles(IReadOnlyList<string> files, string? name = null)
    {
        if (files.Count == 0) throw new ArgumentException("CIFAR-10: no files given");
        var records = new List<(string File, long Count)>();
        long total = 0;
        foreach (var f in files)
        {
            if (!File.Exists(f) && !Directory.Exists(f)) throw new FileNotFoundException($"CIFAR-10: batch file '{f}' does not exist", f);
            long length = InputFile.RequireRegularFile(f, "CIFAR-10 batch");
            if (length % RecordBytes != 0)
                throw new InvalidDataException($"CIFAR-10 batch '{f}': file is {length} bytes, expected a positive multiple of {RecordBytes} (1 label byte + 3072 pixel bytes per record; the standard files hold 10000 records = {10000L * RecordBytes} bytes)");
            records.Add((f, length / RecordBytes));
            total += length / RecordBytes;
        }
        if (total * ImageBytes > Array.MaxLength) throw new InvalidDataException($"CIFAR-10: {total} images are too many to hold in memory");
        var pixels = new byte[total * ImageBytes];
        var labels = new byte[total];
        long index = 0;
        var record = new byte[RecordBytes];
        foreach (var (file, count) in records)
        {
            using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            for (long r = 0; r < count; r++, index++)
            {
                stream.ReadExactly(record);
                byte label = record[0];
                if (label >= Classes)
                    throw new InvalidDataException($"CIFAR-10 batch '{file}': label {label} of record {r} (byte offset {r * RecordBytes}) is not a class 0..9");
                labels[index] = label;
                record.AsSpan(1).CopyTo(pixels.AsSpan((int)(index * ImageBytes), ImageBytes));
            }
        }
        return new ImageDataset(name ?? string.Join(", ", files), pixels, labels, Channels, Size, Size, Classes, [.. Mean], [.. Std], ImageAugmentation.CropFlip);
    }
}
