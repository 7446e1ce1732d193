using System.Runtime.InteropServices;

namespace Sdp.Kernels.Cuda;

/// <summary>Device memory from cuMemAlloc, freed by Dispose (or, bound first, by the finalizer).</summary>
public sealed unsafe class DeviceBuffer : CudaResource
{
    private DeviceBuffer(CudaContext context, CUdeviceptr pointer, long bytes) : base(context)
    {
        SetHandle((nint)pointer.Value);
        Bytes = bytes;
    }

    public long Bytes { get; }

    /// <summary>The device address, to pass as a kernel argument for a <c>T*</c> parameter.</summary>
    public CUdeviceptr Pointer
    {
        get
        {
            ObjectDisposedException.ThrowIf(IsClosed, this);
            return new CUdeviceptr((ulong)handle);
        }
    }

    public static DeviceBuffer Allocate(CudaContext context, long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bytes);
        context.Bind();
        CUdeviceptr p;
        context.Api.Check(context.Api.cuMemAlloc_v2(&p, (nuint)bytes));
        return new DeviceBuffer(context, p, bytes);
    }

    public static DeviceBuffer Allocate<T>(CudaContext context, int count) where T : unmanaged => Allocate(context, (long)count * sizeof(T));

    public void CopyFrom<T>(ReadOnlySpan<T> source) where T : unmanaged
    {
        long bytes = (long)source.Length * sizeof(T);
        CheckFits(bytes);
        _ = Bound();
        fixed (T* s = source) Api.Check(Api.cuMemcpyHtoD_v2(Pointer, s, (nuint)bytes));
    }

    public void CopyTo<T>(Span<T> destination) where T : unmanaged
    {
        long bytes = (long)destination.Length * sizeof(T);
        CheckFits(bytes);
        _ = Bound();
        fixed (T* d = destination) Api.Check(Api.cuMemcpyDtoH_v2(d, Pointer, (nuint)bytes));
    }

    public T[] ToArray<T>() where T : unmanaged
    {
        var result = new T[Bytes / sizeof(T)];
        CopyTo<T>(result);
        return result;
    }

    public void CopyFrom(DeviceBuffer source, long bytes)
    {
        CheckFits(bytes);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(bytes, source.Bytes);
        _ = Bound();
        Api.Check(Api.cuMemcpyDtoD_v2(Pointer, source.Pointer, (nuint)bytes));
    }

    /// <summary>Sets every 32-bit word (cuMemsetD32); e.g. 0x7FC00000 poisons a float buffer with NaN.</summary>
    public void Fill32(uint value)
    {
        _ = Bound();
        Api.Check(Api.cuMemsetD32_v2(Pointer, value, (nuint)(Bytes / 4)));
    }

    public void Fill8(byte value)
    {
        _ = Bound();
        Api.Check(Api.cuMemsetD8_v2(Pointer, value, (nuint)Bytes));
    }

    /// <summary>Fills a float buffer with NaN, so that an element a kernel forgot to write cannot pass for a result.</summary>
    public void PoisonNaN() => Fill32(0x7FC00000u);

    private void CheckFits(long bytes)
    {
        if (bytes > Bytes) throw new ArgumentOutOfRangeException(nameof(bytes), $"{bytes} bytes do not fit in a {Bytes}-byte device buffer");
    }

    protected override bool Release(nint value) => Api.cuMemFree_v2(new CUdeviceptr((ulong)value)) == CUresult.Success;
}

/// <summary>A stream (cuStreamCreate, non-blocking by default so it does not serialize with the legacy NULL stream).</summary>
public sealed unsafe class CudaStream : CudaResource
{
    private CudaStream(CudaContext context, nint stream) : base(context) => SetHandle(stream);

    public static CudaStream Create(CudaContext context, bool nonBlocking = true)
    {
        context.Bind();
        nint s;
        context.Api.Check(context.Api.cuStreamCreate(&s, nonBlocking ? 1u : 0u));
        return new CudaStream(context, s);
    }

    /// <summary>The raw handle for a driver call; binds the context first.</summary>
    public nint Handle => Bound();

    public void Synchronize() => Api.Check(Api.cuStreamSynchronize(Bound()));

    protected override bool Release(nint value) => Api.cuStreamDestroy_v2(value) == CUresult.Success;
}

/// <summary>An event (cuEventCreate) for ordering and timing on a stream.</summary>
public sealed unsafe class CudaEvent : CudaResource
{
    private CudaEvent(CudaContext context, nint ev) : base(context) => SetHandle(ev);

    public static CudaEvent Create(CudaContext context)
    {
        context.Bind();
        nint e;
        context.Api.Check(context.Api.cuEventCreate(&e, 0));
        return new CudaEvent(context, e);
    }

    public void Record(CudaStream? stream = null) => Api.Check(Api.cuEventRecord(Bound(), stream?.Handle ?? 0));

    public void Synchronize() => Api.Check(Api.cuEventSynchronize(Bound()));

    /// <summary>Milliseconds from <paramref name="start"/> to this event (cuEventElapsedTime).</summary>
    public float ElapsedSince(CudaEvent start)
    {
        float ms;
        Api.Check(Api.cuEventElapsedTime(&ms, start.Bound(), Bound()));
        return ms;
    }

    protected override bool Release(nint value) => Api.cuEventDestroy_v2(value) == CUresult.Success;
}
