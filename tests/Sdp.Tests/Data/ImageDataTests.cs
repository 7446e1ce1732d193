using System.Buffers.Binary;
using System.IO.Compression;
using Sdp.Cli;
using Sdp.Engine;
using Sdp.Models.Data;
using Sdp.Models.Training;

namespace Sdp.Tests.Data;

public class ImageDataTests
{
    // ---- CIFAR-10 ------------------------------------------------------------------------------------

    /// <summary>Record r of file f: label (f + r) % 10, pixel p = (f*31 + r*7 + p) mod 256.</summary>
    private static byte[] CifarBytes(int fileIndex, int records)
    {
        var bytes = new byte[records * 3073];
        for (int r = 0; r < records; r++)
        {
            bytes[r * 3073] = (byte)((fileIndex + r) % 10);
            for (int p = 0; p < 3072; p++) bytes[r * 3073 + 1 + p] = (byte)((fileIndex * 31 + r * 7 + p) % 256);
        }
        return bytes;
    }

    [Test]
    public void Cifar_single_file_is_parsed_record_by_record()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("b.bin"), CifarBytes(2, 3));
        var ds = Cifar10.Load(dir.File("b.bin"));
        Assert.That((ds.Count, ds.Channels, ds.Height, ds.Width, ds.Classes), Is.EqualTo((3, 3, 32, 32, 10)));
        Assert.That(ds.Labels.ToArray(), Is.EqualTo(new byte[] { 2, 3, 4 }));
        // Image 1 pixel (c=2, y=5, x=9) is byte 1 + 2*1024 + 5*32 + 9 of record 1 (CHW).
        int p = 2 * 1024 + 5 * 32 + 9;
        Assert.That(ds.Image(1)[p], Is.EqualTo((byte)((2 * 31 + 7 + p) % 256)));
        Assert.That(ds.Mean.ToArray(), Is.EqualTo(new[] { 0.4914, 0.4822, 0.4465 }));
        Assert.That(ds.Std.ToArray(), Is.EqualTo(new[] { 0.2470, 0.2435, 0.2616 }));
    }

    [Test]
    public void Cifar_directory_loads_the_five_training_batches_or_the_test_batch()
    {
        using var dir = new TempDir();
        var nested = Path.Combine(dir.Path, "cifar-10-batches-bin");
        Directory.CreateDirectory(nested);
        for (int f = 1; f <= 5; f++) File.WriteAllBytes(Path.Combine(nested, $"data_batch_{f}.bin"), CifarBytes(f, 2));
        File.WriteAllBytes(Path.Combine(nested, "test_batch.bin"), CifarBytes(9, 4));
        var train = Cifar10.Load(dir.Path);
        Assert.That(train.Count, Is.EqualTo(10));
        Assert.That(train.Labels.ToArray(), Is.EqualTo(new byte[] { 1, 2, 2, 3, 3, 4, 4, 5, 5, 6 }), "files in order 1..5");
        Assert.That(train.Image(9)[0], Is.EqualTo((byte)((5 * 31 + 7) % 256)));
        var test = Cifar10.Load(nested, train: false);
        Assert.That(test.Count, Is.EqualTo(4));
        Assert.That(test.Labels.ToArray(), Is.EqualTo(new byte[] { 9, 0, 1, 2 }));

        File.Delete(Path.Combine(nested, "data_batch_4.bin"));
        Assert.That(() => Cifar10.Load(nested), Throws.InstanceOf<FileNotFoundException>().With.Message.Contains("data_batch_4.bin"));
    }

    [Test]
    public void Cifar_bad_files_name_the_file_and_size()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("short.bin"), new byte[3073 * 2 - 1]);
        Assert.That(() => Cifar10.Load(dir.File("short.bin")),
            Throws.InstanceOf<InvalidDataException>().With.Message.Contains("short.bin").And.Message.Contains("6145 bytes").And.Message.Contains("multiple of 3073"));
        File.WriteAllBytes(dir.File("empty.bin"), []);
        Assert.That(() => Cifar10.Load(dir.File("empty.bin")), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("empty.bin").And.Message.Contains("0 bytes"));
        var bad = CifarBytes(0, 3);
        bad[2 * 3073] = 10;
        File.WriteAllBytes(dir.File("label.bin"), bad);
        Assert.That(() => Cifar10.Load(dir.File("label.bin")),
            Throws.InstanceOf<InvalidDataException>().With.Message.Contains("label.bin").And.Message.Contains("label 10 of record 2").And.Message.Contains("offset 6146"));
        Assert.That(() => Cifar10.Load(dir.File("nothing")), Throws.InstanceOf<FileNotFoundException>().With.Message.Contains("nothing"));
        Assert.That(() => Cifar10.Load(dir.Path), Throws.InstanceOf<FileNotFoundException>().With.Message.Contains("data_batch_1.bin"));
    }

    // ---- MNIST ------------------------------------------------------------------------------------------

    private static byte[] IdxImages(int n, int rows, int cols, int magic = 2051, int extra = 0)
    {
        var bytes = new byte[16 + n * rows * cols + extra];
        BinaryPrimitives.WriteInt32BigEndian(bytes, magic);
        BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(4), n);
        BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(8), rows);
        BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(12), cols);
        for (int i = 16; i < bytes.Length; i++) bytes[i] = (byte)(i * 3);
        return bytes;
    }

    private static byte[] IdxLabels(params byte[] labels)
    {
        var bytes = new byte[8 + labels.Length];
        BinaryPrimitives.WriteInt32BigEndian(bytes, 2049);
        BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(4), labels.Length);
        labels.CopyTo(bytes, 8);
        return bytes;
    }

    private static byte[] Gzip(byte[] data)
    {
        using var ms = new MemoryStream();
        using (var gz = new GZipStream(ms, CompressionLevel.Fastest)) gz.Write(data);
        return ms.ToArray();
    }

    [Test]
    public void Mnist_idx_is_parsed_plain_or_gzipped()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("train-images-idx3-ubyte"), IdxImages(3, 4, 5));
        File.WriteAllBytes(dir.File("train-labels-idx1-ubyte.gz"), Gzip(IdxLabels(7, 0, 9)));
        // The gzip magic decides, not the name: a gzipped file without .gz still loads.
        File.WriteAllBytes(dir.File("t10k-images-idx3-ubyte"), Gzip(IdxImages(2, 4, 5)));
        File.WriteAllBytes(dir.File("t10k-labels-idx1-ubyte"), IdxLabels(1, 2));
        var train = Mnist.Load(dir.Path);
        Assert.That((train.Count, train.Channels, train.Height, train.Width), Is.EqualTo((3, 1, 4, 5)));
        Assert.That(train.Labels.ToArray(), Is.EqualTo(new byte[] { 7, 0, 9 }));
        Assert.That(train.Image(2)[6], Is.EqualTo((byte)((16 + 2 * 20 + 6) * 3)));
        Assert.That(train.Mean.ToArray(), Is.EqualTo(new[] { 0.1307 }));
        Assert.That(train.Std.ToArray(), Is.EqualTo(new[] { 0.3081 }));
        var test = Mnist.Load(dir.Path, train: false);
        Assert.That(test.Count, Is.EqualTo(2));
        Assert.That(test.Image(1).ToArray(), Is.EqualTo(IdxImages(2, 4, 5).AsSpan(36, 20).ToArray()));
    }

    [Test]
    public void Mnist_bad_files_are_rejected_naming_the_file()
    {
        using var dir = new TempDir();
        string images = dir.File("i"), labels = dir.File("l");
        File.WriteAllBytes(images, IdxImages(3, 2, 2));
        File.WriteAllBytes(labels, IdxLabels(1, 2));
        Assert.That(() => Mnist.Load(images, labels),
            Throws.InstanceOf<InvalidDataException>().With.Message.Contains("3 images").And.Message.Contains("2 labels").And.Message.Contains("'" + images + "'").And.Message.Contains("'" + labels + "'"));

        File.WriteAllBytes(labels, IdxLabels(1, 2, 3));
        Assert.That(() => Mnist.Load(labels, images), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("2049").And.Message.Contains("expected 2051").And.Message.Contains("swapped"));

        File.WriteAllBytes(images, IdxImages(3, 2, 2, magic: 0x0803 + 0x100));
        Assert.That(() => Mnist.Load(images, labels), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("'" + images + "'").And.Message.Contains("magic"));

        File.WriteAllBytes(images, IdxImages(3, 2, 2, extra: -1));
        Assert.That(() => Mnist.Load(images, labels), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("'" + images + "'").And.Message.Contains("28 bytes").And.Message.Contains("27 bytes"));

        File.WriteAllBytes(images, Gzip(IdxImages(3, 2, 2, extra: 2)));
        Assert.That(() => Mnist.Load(images, labels), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("30 bytes").And.Message.Contains("after gzip decompression"));

        File.WriteAllBytes(images, Gzip(IdxImages(3, 2, 2))[..20]);
        Assert.That(() => Mnist.Load(images, labels), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("'" + images + "'").And.Message.Contains("gzip"));

        File.WriteAllBytes(images, IdxImages(3, 2, 2));
        File.WriteAllBytes(labels, IdxLabels(1, 12, 3));
        Assert.That(() => Mnist.Load(images, labels), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("label 12 at byte offset 9"));

        File.WriteAllBytes(labels, [0, 0, 8]);
        Assert.That(() => Mnist.Load(images, labels), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("'" + labels + "'").And.Message.Contains("too short"));

        Assert.That(() => Mnist.Load(images, dir.File("missing")), Throws.InstanceOf<FileNotFoundException>().With.Message.Contains("missing"));
        Assert.That(() => Mnist.Load(dir.Path), Throws.InstanceOf<FileNotFoundException>().With.Message.Contains("train-images-idx3-ubyte"));
    }

    // ---- augmentation and normalisation ----------------------------------------------------------------

    [Test]
    public void Crop_and_flip_move_pixels_as_pad_then_crop_then_mirror()
    {
        // One channel, 3 x 4, pixels 1..12 row-major:
        //  1  2  3  4
        //  5  6  7  8
        //  9 10 11 12
        byte[] src = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        var dst = new byte[12];
        ImageAugment.CropFlip(src, dst, 1, 3, 4, 0, 0, false);
        Assert.That(dst, Is.EqualTo(src), "centre crop is the identity");
        // Crop offset (dx, dy) = (1, -1): dst(y, x) = src(y - 1, x + 1), zero outside.
        ImageAugment.CropFlip(src, dst, 1, 3, 4, 1, -1, false);
        Assert.That(dst, Is.EqualTo(new byte[] { 0, 0, 0, 0, 2, 3, 4, 0, 6, 7, 8, 0 }));
        // Mirror only: each row reversed.
        ImageAugment.CropFlip(src, dst, 1, 3, 4, 0, 0, true);
        Assert.That(dst, Is.EqualTo(new byte[] { 4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9 }));
        // Crop (dx, dy) = (-2, 1) then mirror: dst(y, x) = src(y + 1, 3 - x - 2).
        ImageAugment.CropFlip(src, dst, 1, 3, 4, -2, 1, true);
        Assert.That(dst, Is.EqualTo(new byte[] { 6, 5, 0, 0, 10, 9, 0, 0, 0, 0, 0, 0 }));
        // Two channels move together.
        byte[] two = [.. src, .. src.Select(v => (byte)(v + 100))];
        var out2 = new byte[24];
        ImageAugment.CropFlip(two, out2, 2, 3, 4, 1, -1, false);
        Assert.That(out2.AsSpan(12).ToArray(), Is.EqualTo(new byte[] { 0, 0, 0, 0, 102, 103, 104, 0, 106, 107, 108, 0 }));
    }

    [Test]
    public void Normalisation_uses_per_channel_constants()
    {
        byte[] src = [0, 255, 51, 102];
        var dst = new float[4];
        ImageAugment.Normalize(src, dst, 2, [0.5, 0.1], [0.25, 0.2]);
        // (0 - 0.5)/0.25 = -2, (1 - 0.5)/0.25 = 2, (0.2 - 0.1)/0.2 = 0.5, (0.4 - 0.1)/0.2 = 1.5
        Assert.That(dst, Is.EqualTo(new[] { -2f, 2f, 0.5f, 1.5f }).Within(1e-6));
    }

    // ---- loader ---------------------------------------------------------------------------------------

    /// <summary>N images of 2 x 4 x 4 where every pixel of image i is i (and label i % 3).</summary>
    private static ImageDataset Constant(int n) =>
        new("constant", [.. Enumerable.Range(0, n).SelectMany(i => Enumerable.Repeat((byte)i, 32))], [.. Enumerable.Range(0, n).Select(i => (byte)(i % 3))], 2, 4, 4, 3, [0, 0], [1 / 255.0, 1 / 255.0]);

    private static (float[] X, int[] Y) Next(ImageLoader loader)
    {
        var (x, y) = loader.NextBatch();
        Assert.That(x.Shape, Is.EqualTo(new Shape(loader.Batch, loader.Dataset.Channels, loader.Dataset.Height, loader.Dataset.Width)));
        Assert.That(y.Shape, Is.EqualTo(new Shape(loader.Batch)));
        return (x.ToArray<float>(), y.ToArray<int>());
    }

    [Test]
    public void Loader_without_shuffle_walks_the_dataset_in_order_and_drops_the_tail()
    {
        var loader = new ImageLoader(Constant(7), batch: 3, shuffle: false);
        Assert.That(loader.BatchesPerEpoch, Is.EqualTo(2));
        var (x0, y0) = Next(loader);
        Assert.That(x0.Where((_, i) => i % 32 == 0), Is.EqualTo(new[] { 0f, 1, 2 }), "mean 0, std 1/255: the raw pixel value");
        Assert.That(y0, Is.EqualTo(new[] { 0, 1, 2 }));
        Assert.That(Next(loader).Y, Is.EqualTo(new[] { 0, 1, 2 }), "images 3, 4, 5");
        Assert.That(loader.State, Is.EqualTo(new DataLoaderState(1, 0, 0)));
        Assert.That(Next(loader).X[0], Is.EqualTo(0f), "image 6 dropped, epoch 1 starts again");
    }

    [Test]
    public void Loader_keeping_the_last_batch_reads_every_image_exactly_once_per_epoch([Values(false, true)] bool shuffle)
    {
        // 7 images in batches of 3: 3, 3, then the 1 left, so one epoch is each image once; then epoch 1.
        var loader = new ImageLoader(Constant(7), batch: 3, shuffle, dropLast: false, seed: 6);
        Assert.That(loader.BatchesPerEpoch, Is.EqualTo(3));
        var seen = new List<float>();
        foreach (int size in new[] { 3, 3, 1 })
        {
            Assert.That(loader.NextBatchSize, Is.EqualTo(size));
            var (x, y) = loader.NextBatch();
            Assert.That((x.Shape[0], y.Shape[0]), Is.EqualTo((size, size)));
            seen.AddRange(x.ToArray<float>().Where((_, i) => i % 32 == 0));
        }
        Assert.That(seen.Order(), Is.EqualTo(Enumerable.Range(0, 7).Select(i => (float)i)), "every image once");
        Assert.That(loader.State, Is.EqualTo(new DataLoaderState(1, 0, 0)));
        Assert.That(loader.NextBatchSize, Is.EqualTo(3));

        var small = new ImageLoader(Constant(2), batch: 5, shuffle, dropLast: false);
        Assert.That((small.BatchesPerEpoch, small.NextBatchSize), Is.EqualTo((1L, 2)), "a set smaller than a batch is one batch");
        Assert.That(() => new ImageLoader(Constant(7), 3, shuffle, workers: 2, dropLast: false), Throws.ArgumentException.With.Message.Contains("one worker"));
    }

    [TestCase(false, ImageAugmentation.None)]
    [TestCase(true, ImageAugmentation.CropFlip)]
    public void Loader_workers_match_the_combined_batch(bool shuffle, ImageAugmentation augmentation)
    {
        var ds = ShapesDataset.Create(40, seed: 2, size: 8);
        const int B = 3, W = 2;
        var combined = new ImageLoader(ds, B * W, shuffle, augmentation, seed: 5);
        var workers = Enumerable.Range(0, W).Select(w => new ImageLoader(ds, B, shuffle, augmentation, 5, w, W)).ToArray();
        int size = ds.ImageSize;
        for (int step = 0; step < 9; step++) // 6 batches per epoch: crosses into epoch 1
        {
            var (cx, cy) = Next(combined);
            var parts = workers.Select(Next).ToArray();
            for (int row = 0; row < B * W; row++)
            {
                Assert.That(parts[row % W].X.AsSpan(row / W * size, size).ToArray(), Is.EqualTo(cx.AsSpan(row * size, size).ToArray()), $"step {step} row {row}");
                Assert.That(parts[row % W].Y[row / W], Is.EqualTo(cy[row]));
            }
        }
    }

    [Test]
    public void Loader_shuffle_and_augmentation_are_seeded_and_resume_from_state()
    {
        var ds = ShapesDataset.Create(30, seed: 1, size: 16);
        float[][] Run(ImageLoader l, int n) => [.. Enumerable.Range(0, n).Select(_ => Next(l).X)];
        var a = Run(new ImageLoader(ds, 5, shuffle: true, augmentation: ImageAugmentation.CropFlip, seed: 8), 12);
        var b = Run(new ImageLoader(ds, 5, shuffle: true, augmentation: ImageAugmentation.CropFlip, seed: 8), 12);
        var c = Run(new ImageLoader(ds, 5, shuffle: true, augmentation: ImageAugmentation.CropFlip, seed: 9), 12);
        Assert.That(b, Is.EqualTo(a));
        Assert.That(c[0], Is.Not.EqualTo(a[0]));

        var first = new ImageLoader(ds, 5, shuffle: true, augmentation: ImageAugmentation.CropFlip, seed: 8);
        Run(first, 4);
        var state = first.State;
        var rest = Run(first, 8);
        var resumed = new ImageLoader(ds, 5, shuffle: true, augmentation: ImageAugmentation.CropFlip, seed: 8) { State = state };
        Assert.That(Run(resumed, 8), Is.EqualTo(rest));

        // Shuffled labels: every image exactly once per epoch (30 = 6 batches of 5).
        var labels = new ImageLoader(ds, 5, shuffle: true, seed: 8);
        var epoch0 = Enumerable.Range(0, 6).SelectMany(_ => Next(labels).Y).ToArray();
        Assert.That(epoch0.Order(), Is.EqualTo(Enumerable.Range(0, 30).Select(i => i % 10).Order()));
        Assert.That(epoch0, Is.Not.EqualTo(Enumerable.Range(0, 30).Select(i => i % 10)));
    }

    [Test]
    public void Loader_augmentation_is_a_crop_and_flip_of_the_image()
    {
        // With augmentation each output is CropFlip(image, dx, dy, flip) for some |dx|, |dy| <= 4: check that
        // one of the 162 candidates reproduces it exactly, and that not all are the identity.
        var ds = ShapesDataset.Create(10, seed: 4, size: 12);
        var loader = new ImageLoader(ds, 10, shuffle: false, augmentation: ImageAugmentation.CropFlip, seed: 1);
        var (x, _) = Next(loader);
        var plain = new float[ds.ImageSize];
        var candidate = new byte[ds.ImageSize];
        int identity = 0;
        for (int i = 0; i < 10; i++)
        {
            var got = x.AsSpan(i * ds.ImageSize, ds.ImageSize).ToArray();
            bool found = false;
            for (int dy = -4; dy <= 4 && !found; dy++)
            {
                for (int dx = -4; dx <= 4 && !found; dx++)
                {
                    foreach (bool flip in new[] { false, true })
                    {
                        ImageAugment.CropFlip(ds.Image(i), candidate, 3, 12, 12, dx, dy, flip);
                        ImageAugment.Normalize(candidate, plain, 3, ds.Mean, ds.Std);
                        if (!plain.AsSpan().SequenceEqual(got)) continue;
                        found = true;
                        if (dx == 0 && dy == 0 && !flip) identity++;
                        break;
                    }
                }
            }
            Assert.That(found, Is.True, $"image {i} is a pad-4 crop/flip of the source");
        }
        Assert.That(identity, Is.LessThan(10));
    }

    [Test]
    public void Loader_bad_arguments_are_rejected()
    {
        var ds = Constant(5);
        Assert.That(() => new ImageLoader(ds, 6), Throws.ArgumentException.With.Message.Contains("5 images").And.Message.Contains("fewer than one batch"));
        Assert.That(() => new ImageLoader(ds, 2, worker: 0, workers: 3), Throws.ArgumentException.With.Message.Contains("W*B = 3*2 = 6"));
        Assert.That(() => new ImageLoader(ds, 0), Throws.ArgumentException.With.Message.Contains("batch size"));
        Assert.That(() => new ImageLoader(ds, 1, worker: -1), Throws.ArgumentException.With.Message.Contains("worker index -1"));
        var loader = new ImageLoader(ds, 2);
        Assert.That(() => loader.State = new DataLoaderState(0, 1, 0), Throws.ArgumentException.With.Message.Contains("shard 0"));
        Assert.That(() => loader.State = new DataLoaderState(0, 0, 3), Throws.ArgumentException.With.Message.Contains("0..2"));
        Assert.That(() => new ImageDataset("x", new byte[10], new byte[2], 1, 2, 2, 3, [0], [1]), Throws.ArgumentException.With.Message.Contains("10 pixel bytes"));
        Assert.That(() => new ImageDataset("x", new byte[8], [0, 3], 1, 2, 2, 3, [0], [1]), Throws.ArgumentException.With.Message.Contains("label 3 of image 1"));
    }

    // ---- per-dataset augmentation --------------------------------------------------------------------------

    /// <summary>How many of <paramref name="batches"/> training batches' images are not, exactly, one image of the set with its label.</summary>
    private static int AlteredImages(ImageLoader loader, int batches)
    {
        var ds = loader.Dataset;
        var originals = Enumerable.Range(0, ds.Count).Select(i =>
        {
            var normalized = new float[ds.ImageSize];
            ImageAugment.Normalize(ds.Image(i), normalized, ds.Channels, ds.Mean, ds.Std);
            return (Pixels: normalized, Label: ds.Label(i));
        }).ToList();
        int altered = 0;
        for (int b = 0; b < batches; b++)
        {
            var (x, y) = Next(loader);
            for (int j = 0; j < loader.Batch; j++)
            {
                var image = x.AsSpan(j * ds.ImageSize, ds.ImageSize).ToArray();
                if (!originals.Any(o => o.Label == y[j] && o.Pixels.AsSpan().SequenceEqual(image))) altered++;
            }
        }
        return altered;
    }

    [Test]
    public void Augmentation_is_the_datasets_cifar_crops_and_flips_mnist_and_shapes_do_not()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("b.bin"), CifarBytes(0, 2));
        RawFiles.Mnist(dir.Path, 3, 6);
        Assert.That(Cifar10.Load(dir.File("b.bin")).Augmentation, Is.EqualTo(ImageAugmentation.CropFlip));
        Assert.That(Mnist.Load(dir.Path).Augmentation, Is.EqualTo(ImageAugmentation.None));
        Assert.That(ShapesDataset.Create(2).Augmentation, Is.EqualTo(ImageAugmentation.None));
        Assert.That(Mnist.Load(dir.Path).WithAugmentation(ImageAugmentation.CropFlip).WithNormalization([0.5], [0.5]).Augmentation, Is.EqualTo(ImageAugmentation.CropFlip));
        Assert.That(ImageAugment.Parse(ImageAugment.NameOf(ImageAugmentation.CropFlip)), Is.EqualTo(ImageAugmentation.CropFlip));
        Assert.That(() => ImageAugment.Parse("flip"), Throws.ArgumentException.With.Message.Contains("none, crop-flip"));
    }

    [Test]
    public void Mnist_training_batches_are_never_flipped_or_cropped()
    {
        // The training stream the CLI builds for MNIST: 3 shuffled epochs of 20 images, every one exactly a stored
        // image; the same stream with --augment crop-flip alters most of them, so the check can see an augmentation.
        using var dir = new TempDir();
        RawFiles.Mnist(dir.Path, 20, 6);
        var (source, _, description) = RunSetup.BuildData("resnet18", dir.Path, batch: 5, seq: 1, shuffle: true, seed: 4, train: true);
        var loader = ((ImageBatches)source).Loader;
        Assert.That(loader.Augmentation, Is.EqualTo(ImageAugmentation.None));
        Assert.That(description, Does.EndWith("augmentation none"));
        Assert.That(AlteredImages(loader, 12), Is.Zero);

        var forced = ((ImageBatches)RunSetup.BuildData("resnet18", dir.Path, 5, 1, true, 4, train: true, augmentation: ImageAugmentation.CropFlip).Source).Loader;
        Assert.That(AlteredImages(forced, 12), Is.GreaterThan(30));
        var test = ((ImageBatches)RunSetup.BuildData("resnet18", dir.Path, 5, 1, true, 4, train: false, augmentation: ImageAugmentation.CropFlip).Source).Loader;
        Assert.That(test.Augmentation, Is.EqualTo(ImageAugmentation.None), "evaluation never augments");
    }

    // ---- procedural shapes -------------------------------------------------------------------------------

    [Test]
    public void Shapes_are_deterministic_balanced_and_class_dependent()
    {
        var a = ShapesDataset.Create(200, seed: 3);
        var b = ShapesDataset.Create(200, seed: 3);
        var c = ShapesDataset.Create(200, seed: 4);
        Assert.That((a.Count, a.Channels, a.Height, a.Width, a.Classes), Is.EqualTo((200, 3, 32, 32, 10)));
        Assert.That(a.Pixels.SequenceEqual(b.Pixels), Is.True);
        Assert.That(a.Pixels.SequenceEqual(c.Pixels), Is.False);
        Assert.That(a.Labels.ToArray().GroupBy(l => l).Select(g => g.Count()), Is.All.EqualTo(20));
        // Normalisation constants are the set's own statistics: normalised pixels have mean ~0, std ~1.
        var all = new float[a.Count * a.ImageSize];
        for (int i = 0; i < a.Count; i++) ImageAugment.Normalize(a.Image(i), all.AsSpan(i * a.ImageSize, a.ImageSize), 3, a.Mean, a.Std);
        double mean = all.Average(v => (double)v);
        double std = Math.Sqrt(all.Average(v => (v - mean) * (v - mean)));
        Assert.That(mean, Is.EqualTo(0).Within(1e-3));
        Assert.That(std, Is.EqualTo(1).Within(1e-3));

        // Learnable signal: a nearest-class-mean classifier on a 4x4-pooled brightness profile, fit on one
        // half and scored on the other, beats chance (10%) by a wide margin.
        var train = ShapesDataset.Create(1000, seed: 10);
        var test = ShapesDataset.Create(500, seed: 11);
        static double[] Features(ImageDataset d, int i)
        {
            var f = new double[3 * 16];
            var img = d.Image(i);
            for (int ch = 0; ch < 3; ch++)
            {
                for (int y = 0; y < 32; y++)
                {
                    for (int x = 0; x < 32; x++) f[ch * 16 + y / 8 * 4 + x / 8] += img[ch * 1024 + y * 32 + x] / 64.0;
                }
            }
            return f;
        }
        var centroids = new double[10][];
        for (int k = 0; k < 10; k++) centroids[k] = new double[48];
        for (int i = 0; i < train.Count; i++)
        {
            var f = Features(train, i);
            for (int j = 0; j < 48; j++) centroids[train.Label(i)][j] += f[j] / 100;
        }
        int correct = 0;
        for (int i = 0; i < test.Count; i++)
        {
            var f = Features(test, i);
            int best = Enumerable.Range(0, 10).MinBy(k => centroids[k].Zip(f, (m, v) => (m - v) * (m - v)).Sum());
            if (best == test.Label(i)) correct++;
        }
        TestContext.Out.WriteLine($"nearest-class-mean accuracy: {correct / 5.0:F1}%");
        Assert.That(correct / (double)test.Count, Is.GreaterThan(0.3));
    }
}
