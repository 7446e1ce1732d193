using System.Runtime.InteropServices;

namespace Sdp.Kernels.Cpu;

/// <summary>
/// Per-thread, 64-byte aligned packing buffer. Grows on demand and is reused across calls; freed when its thread dies
/// (the finalizer runs once the thread-static reference is gone) or on <see cref="ReleaseCurrentThread"/>.
/// Every byte held is counted in <see cref="TotalBytes"/>.
/// </summary>
internal sealed unsafe class GemmWorkspace
{
    private const nuint Alignment = 64;
    private const nuint Granule = 64 * 1024;

    [ThreadStatic] private static GemmWorkspace? t_current;
    private static long s_totalBytes;

    private byte* _ptr;
    private nuint _capacity;

    public static long TotalBytes => Interlocked.Read(ref s_totalBytes);

    /// <summary>Returns this thread's buffer, at least <paramref name="bytes"/> long and 64-byte aligned.</summary>
    public static byte* Acquire(nuint bytes)
    {
        GemmWorkspace ws = t_current ??= new GemmWorkspace();
        if (ws._capacity < bytes)
        {
            ws.Grow(bytes);
        }

        return ws._ptr;
    }

    /// <summary>Frees the calling thread's buffer (the next call on this thread allocates again).</summary>
    public static void ReleaseCurrentThread()
    {
        GemmWorkspace? ws = t_current;
        if (ws is not null)
        {
            t_current = null;
            ws.Free();
            GC.SuppressFinalize(ws);
        }
    }

    private void Grow(nuint bytes)
    {
        nuint cap = (bytes + Granule - 1) / Granule * Granule;
        Free();
        _ptr = (byte*)NativeMemory.AlignedAlloc(cap, Alignment);
        _capacity = cap;
        Interlocked.Add(ref s_totalBytes, (long)cap);
    }

    private void Free()
    {
        if (_ptr != null)
        {
            NativeMemory.AlignedFree(_ptr);
            Interlocked.Add(ref s_totalBytes, -(long)_capacity);
            _ptr = null;
            _capacity = 0;
        }
    }

    ~GemmWorkspace() => Free();
}
