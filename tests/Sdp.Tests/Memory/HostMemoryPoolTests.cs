using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Memory;
using Sdp.Engine.Nn;
using Sdp.Engine.Optim;
using Sdp.Models.Data;
using Sdp.Models.ResNet;
using Sdp.Models.Training;
using static Sdp.Tests.Training.TrainingTestSupport;

namespace Sdp.Tests.Memory;

/// <summary>
/// The CPU backend's caching allocator (<see cref="HostMemoryPool"/>): a freed block serves the next request of its size
/// class without the C allocator, the memory accounts are charged the tensors' own bytes as before, the cache stays
/// within its limits, and a reused block's old contents never reach a result (a training run on poisoned reused blocks
/// is bit-identical to one on fresh ones).
/// </summary>
[NonParallelizable]
public class HostMemoryPoolTests
{
    private static HostMemoryPool Pool => CpuBackend.HostPool;

    private long _oldLimit;
    private bool _oldPoison;

    [SetUp]
    public void Save() => (_oldLimit, _oldPoison) = (Pool.LimitBytes, Pool.PoisonReusedBlocks);

    [TearDown]
    public void Restore() => (Pool.LimitBytes, Pool.PoisonReusedBlocks) = (_oldLimit, _oldPoison);

    [Test]
    public unsafe void A_freed_block_serves_the_next_request_of_its_class_and_accounts_stay_exact()
    {
        var account = new MemoryAccount("pool");
        using (account.Activate())
        {
            nint first;
            using (var t = Tensor.Empty(new Shape(1000, 1001), DType.Float32))
            {
                first = (nint)((CpuStorage)t.Storage).Pointer;
                Assert.That(account.CurrentBytes(MemoryCategory.Activations) + account.CurrentBytes(MemoryCategory.Workspace), Is.EqualTo(1000 * 1001 * 4L));
            }
            long misses = Pool.Blocks.Misses;
            long cached = Pool.Blocks.CachedBytes;
            Assert.That(cached, Is.GreaterThanOrEqualTo(BlockFreeLists<nint>.SizeClass(1000 * 1001 * 4L)), "the freed block waits in the cache");
            // A slightly different size in the same class (4,004,000 and 4,000,000 bytes both round to 4,194,304).
            using var u = Tensor.Empty(new Shape(1000, 1000), DType.Float32);
            Assert.That((nint)((CpuStorage)u.Storage).Pointer, Is.EqualTo(first), "the same block again");
            Assert.That(Pool.Blocks.Misses, Is.EqualTo(misses), "no call to the C allocator");
            Assert.That(account.CurrentBytes(MemoryCategory.Activations) + account.CurrentBytes(MemoryCategory.Workspace), Is.EqualTo(1000 * 1000 * 4L), "the account is charged the tensor's bytes, not its block's");
            Assert.That(((long)(nint)((CpuStorage)u.Storage).Pointer) % 64, Is.Zero, "64-byte aligned");
        }
    }

    [Test]
    public unsafe void The_limit_bounds_the_cache_and_empty_cache_gives_everything_back()
    {
        var pool = new HostMemoryPool { LimitBytes = 0 };
        pool.Return(pool.Rent(1 << 20), 1 << 20);
        Assert.That(pool.Blocks.CachedBytes, Is.Zero, "limit 0: nothing is kept");
        Assert.That(pool.Blocks.ReservedBytes, Is.Zero);

        pool.LimitBytes = long.MaxValue;
        byte* a = pool.Rent(1 << 20);
        pool.Return(a, 1 << 20);
        Assert.That(pool.Blocks.CachedBytes, Is.EqualTo(1L << 20));
        Assert.That((nint)pool.Rent(1 << 20), Is.EqualTo((nint)a), "the cached block again");
        Assert.That(pool.Blocks.Misses, Is.EqualTo(2));
        pool.Return(a, 1 << 20);
        Assert.That(pool.EmptyCache(), Is.EqualTo(1L << 20));
        Assert.That(pool.Blocks.CachedBytes, Is.Zero);
        Assert.That(pool.Blocks.ReservedBytes, Is.Zero);
    }

    [Test]
    public unsafe void The_cache_holds_at_most_the_peak_in_use()
    {
        var pool = new HostMemoryPool();
        // Blocks of ever larger size classes, each given back at once: caching them all would hold their sum, 3.8 MiB
        // (the peak in use is the largest alone, 1.25 MiB).
        long[] sizes = [256 << 10, 320 << 10, 512 << 10, 640 << 10, 768 << 10, 1 << 20, 1280 << 10];
        foreach (long size in sizes) pool.Return(pool.Rent(size), size);
        Assert.That(pool.Blocks.PeakInUseBytes, Is.EqualTo(1280L << 10));
        Assert.That(pool.Blocks.CachedBytes, Is.GreaterThan(0).And.LessThanOrEqualTo(1280L << 10));
        Assert.That(pool.Blocks.ReservedBytes, Is.EqualTo(pool.Blocks.CachedBytes), "nothing in use");
        pool.EmptyCache();
    }

    [Test]
    public void Poisoned_reused_blocks_hold_nan()
    {
        Pool.PoisonReusedBlocks = true;
        using (var t = Tensor.Zeros(new Shape(4096), DType.Float32)) { }
        var u = Tensor.Empty(new Shape(4096), DType.Float32);
        Assert.That(u.ToArray<float>().Count(float.IsNaN), Is.EqualTo(4096));
        u.Dispose();
        using var d = Tensor.Empty(new Shape(2048), DType.Float64);
        Assert.That(d.ToArray<double>().Count(double.IsNaN), Is.EqualTo(2048), "the same bytes read as float64");
    }

    /// <summary>ResNet-18 (width 8, BatchNorm, 32 x 32 images) trained 4 steps with every reused block filled with NaN,
    /// against the same 4 steps on blocks as the pool left them: a kernel that reads an output element before writing
    /// it, or a buffer assumed to start at zero, would put NaN into the weights.</summary>
    [Test]
    public void Training_on_poisoned_reused_blocks_is_bit_identical()
    {
        ITrainable Train(bool poison)
        {
            Tape.Current.Clear();
            Pool.PoisonReusedBlocks = poison;
            var model = new ResNetTrainable(new ResNet18(new ResNetConfig(Width: 8), new Rng(5)));
            var optimizer = new Sgd(model.Module.Parameters(), lr: 0.05, momentum: 0.9, weightDecay: 5e-4);
            var data = new ImageBatches(new ImageLoader(ShapesDataset.Create(32, seed: 4, size: 32), batch: 8, shuffle: true, augmentation: ImageAugmentation.CropFlip, seed: 6));
            using var trainer = new Trainer(model, optimizer, data, new TrainerOptions { Steps = 4, Clip = 1.0, Schedule = new WarmupCosineSchedule(0.05, 1, 4, 0.005) }, new MemoryAccount("poison"));
            trainer.Run();
            return model;
        }

        var plain = Train(poison: false);
        var poisoned = Train(poison: true);
        Assert.That(Pool.Blocks.Misses, Is.GreaterThan(0));
        AssertSameModuleState(plain, poisoned);
        foreach (var p in poisoned.Module.Parameters()) Assert.That(p.ToArray<float>(), Has.None.NaN, p.Name);
    }
}
