using Sdp.Engine.Backends;
using Sdp.Engine.Memory;

namespace Sdp.Engine;

/// <summary>
/// One device allocation, shared by the tensors that view it and reference-counted, so that a view
/// keeps its base alive and the bytes return to the backend the moment the last user lets go.
/// The bytes are charged to the <see cref="MemoryAccount"/> that was current when it was allocated.
/// </summary>
public abstract class Storage
{
    private int _references = 1;
    private int _savedBy;
    private readonly object _gate = new();

    protected Storage(IBackend backend, long byteLength, MemoryCategory category, MemoryAccount account)
    {
        Backend = backend;
        ByteLength = byteLength;
        Category = category;
        Account = account;
        account.Charge(category, byteLength);
    }

    public IBackend Backend { get; }

    public long ByteLength { get; }

    public MemoryCategory Category { get; }

    public MemoryAccount Account { get; }

    public bool IsFreed { get; private set; }

    /// <summary>
    /// Whether <see cref="Free"/> may run on any thread, the finalizer's included. True for host memory;
    /// false (the default) for device memory, whose free needs the owner's device context and stream.
    /// </summary>
    protected virtual bool FreeableOnAnyThread => false;

    /// <summary>
    /// A safety net for tensors that were never disposed (<see cref="TensorScope"/> is the normal path): host
    /// bytes go back at once, late; device storage is queued for its backend, which frees it on its own
    /// thread (<see cref="FreeAbandoned"/>), and is counted as a leak.
    /// </summary>
    ~Storage()
    {
        if (IsFreed) return;
        if (FreeableOnAnyThread)
        {
            IsFreed = true;
            Account.Refund(Category, ByteLength);
            Free();
            return;
        }
        Interlocked.Increment(ref _abandonedCount);
        Abandoned.Enqueue(this); // resurrected until its owner frees it
    }

    private static readonly System.Collections.Concurrent.ConcurrentQueue<Storage> Abandoned = new();
    private static long _abandonedCount;

    /// <summary>Device storages the finalizer found undisposed since the process started: each one is a leak in the caller.</summary>
    public static long AbandonedCount => Interlocked.Read(ref _abandonedCount);

    /// <summary>
    /// Frees the abandoned storages of <paramref name="owner"/> on the calling thread and returns how many;
    /// a device backend calls it where its context is current (allocation, synchronisation). Storages of
    /// other backends stay queued.
    /// </summary>
    public static int FreeAbandoned(IBackend owner)
    {
        int freed = 0, pending = Abandoned.Count;
        for (int i = 0; i < pending && Abandoned.TryDequeue(out var s); i++)
        {
            if (!ReferenceEquals(s.Backend, owner))
            {
                Abandoned.Enqueue(s);
                continue;
            }
            s.IsFreed = true;
            s.Account.Refund(s.Category, s.ByteLength);
            s.Free();
            freed++;
        }
        return freed;
    }

    /// <summary>Returns the bytes to the device. Called exactly once, when the last reference is released.</summary>
    protected abstract void Free();

    internal void Retain()
    {
        lock (_gate)
        {
            if (IsFreed) throw new ObjectDisposedException(nameof(Storage), "storage was already freed");
            _references++;
        }
    }

    internal void Release()
    {
        lock (_gate)
        {
            if (IsFreed) return;
            if (--_references > 0) return;
            IsFreed = true;
            if (_savedBy > 0 && Category == MemoryCategory.Workspace) Account.Move(MemoryCategory.Activations, MemoryCategory.Workspace, ByteLength);
        }
        Account.Refund(Category, ByteLength);
        Free();
        GC.SuppressFinalize(this);
    }

    /// <summary>Transient storage held by a tape node counts as an activation until the node lets go.</summary>
    internal void MarkSaved()
    {
        lock (_gate)
        {
            if (_savedBy++ == 0 && Category == MemoryCategory.Workspace) Account.Move(MemoryCategory.Workspace, MemoryCategory.Activations, ByteLength);
        }
    }

    internal void UnmarkSaved()
    {
        lock (_gate)
        {
            if (--_savedBy == 0 && Category == MemoryCategory.Workspace && !IsFreed) Account.Move(MemoryCategory.Activations, MemoryCategory.Workspace, ByteLength);
        }
    }
}
