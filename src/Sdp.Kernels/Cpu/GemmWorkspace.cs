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
    [ThreadStatic] private static GemmWorkspace? t_shared;
    [ThreadStatic] private static GemmWorkspace? t_stage;
    [ThreadStatic] private static GemmWorkspace? t_unfold;
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

    /// <summary>
    /// Returns this thread's second buffer, which a multi-threaded call's owner uses for the packed B blocks its
    /// helpers read (kept apart from <see cref="Acquire"/>, which every participant uses for its own A block).
    /// </summary>
    public static byte* AcquireShared(nuint bytes)
    {
        GemmWorkspace ws = t_shared ??= new GemmWorkspace();
        if (ws._capacity < bytes)
        {
            ws.Grow(bytes);
        }

        return ws._ptr;
    }

    /// <summary>
    /// Returns this thread's third buffer: the compact output a masked GEMM stages before scattering it (held across
    /// calls like the others, so that a fresh multi-megabyte allocation is not page-faulted in on every call).
    /// </summary>
    public static byte* AcquireStage(nuint bytes)
    {
        GemmWorkspace ws = t_stage ??= new GemmWorkspace();
        if (ws._capacity < bytes)
        {
            ws.Grow(bytes);
        }

        return ws._ptr;
    }

    /// <summary>
    /// Returns this thread's fourth buffer: the rows an implicit-GEMM convolution unfolds before spreading them over
    /// packed panels (its packers run inside a GEMM call, which holds the other three).
    /// </summary>
    public static byte* AcquireUnfold(nuint bytes)
    {
        GemmWorkspace ws = t_unfold ??= new GemmWorkspace();
        if (ws._capacity < bytes)
        {
            ws.Grow(bytes);
        }

        return ws._ptr;
    }

    /// <summary>Frees the calling thread's buffers (the next call on this thread allocates again).</summary>
    public static void ReleaseCurrentThread()
    {
        Release(ref t_current);
        Release(ref t_shared);
        Release(ref t_stage);
        Release(ref t_unfold);
    }

    private static void Release(ref GemmWorkspace? slot)
    {
        GemmWorkspace? ws = slot;
        if (ws is not null)
        {
            slot = null;
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
