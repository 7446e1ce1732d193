using System.Runtime.CompilerServices;
using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Memory;
using Sdp.Tests.Support;

namespace Sdp.Tests.Memory;

/// <summary>
/// Storage that nobody disposed: host bytes are freed by the finalizer, device bytes never are (a device
/// context belongs to its owner's thread); they wait for their backend, which frees them on its own thread.
/// </summary>
[NonParallelizable] // counts process-wide abandoned storages
public class StorageLifetimeTests
{
    /// <summary>Device-like storage: the finalizer must not free it; records the thread that did.</summary>
    private sealed class DeviceLikeStorage(IBackend owner, long bytes, MemoryAccount account) : Storage(owner, bytes, MemoryCategory.Workspace, account)
    {
        public static int FreedOnThread = -1;

        protected override void Free() => FreedOnThread = Environment.CurrentManagedThreadId;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void Abandon(IBackend owner, MemoryAccount account) => _ = new DeviceLikeStorage(owner, 1000, account);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void AbandonHostTensor(MemoryAccount account)
    {
        using (account.Activate()) _ = Tensor.Empty(new Shape(250), DType.Float32, CpuBackend.Instance);
    }

    private static void CollectFinalizers()
    {
        for (int i = 0; i < 3; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
    }

    [Test]
    public void Abandoned_device_storage_waits_for_its_owner_and_is_freed_on_the_owners_thread()
    {
        var owner = new CountingBackend();
        var account = new MemoryAccount("device");
        long before = Storage.AbandonedCount;
        DeviceLikeStorage.FreedOnThread = -1;

        Abandon(owner, account);
        CollectFinalizers();

        Assert.That(Storage.AbandonedCount - before, Is.EqualTo(1), "the finalizer reports the leak");
        Assert.That(DeviceLikeStorage.FreedOnThread, Is.EqualTo(-1), "the finalizer thread did not free device memory");
        Assert.That(account.CurrentTotal, Is.EqualTo(1000), "still charged until its owner frees it");
        Assert.That(Storage.FreeAbandoned(new CountingBackend()), Is.Zero, "another backend's storage is left alone");

        Assert.That(Storage.FreeAbandoned(owner), Is.EqualTo(1));
        Assert.That(DeviceLikeStorage.FreedOnThread, Is.EqualTo(Environment.CurrentManagedThreadId), "freed on the owner's thread");
        Assert.That(account.CurrentTotal, Is.Zero, "refunded when freed");
        Assert.That(Storage.FreeAbandoned(owner), Is.Zero, "freed exactly once");
    }

    [Test]
    public void Abandoned_host_storage_is_freed_by_the_finalizer()
    {
        var account = new MemoryAccount("host");
        long before = Storage.AbandonedCount;
        AbandonHostTensor(account);
        CollectFinalizers();
        Assert.That(account.CurrentTotal, Is.Zero, "host bytes went back without an owner's help");
        Assert.That(Storage.AbandonedCount, Is.EqualTo(before), "host memory is not a device leak");
    }
}
