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

    /// <summary>A safety net for tensors that were never disposed: the bytes still go back, late.</summary>
    ~Storage()
    {
        if (IsFreed) return;
        IsFreed = true;
        Account.Refund(Category, ByteLength);
        Free();
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
