using System.Runtime.InteropServices;
using System.Text;

namespace Sdp.Kernels.Cuda;

/// <summary>
/// A device's primary context (shared with the runtime API, so cuBLAS and NCCL see it too), retained
/// while this handle lives. The driver's current context is per thread, so every wrapper binds it
/// (<see cref="Bind"/>) before it calls the driver: test workers, thread-pool continuations and the
/// finalizer thread all start unbound.
/// </summary>
public sealed unsafe class CudaContext : SafeHandle
{
    private CudaContext(CudaApi api, int device, nint ctx) : base(0, true)
    {
        Api = api;
        Device = device;
        SetHandle(ctx);
    }

    public CudaApi Api { get; }
    public int Device { get; }
    public override bool IsInvalid => handle == 0;

    /// <summary>Initializes the driver, retains device <paramref name="ordinal"/>'s primary context and binds it to this thread.</summary>
    public static CudaContext Open(CudaApi api, int ordinal = 0)
    {
        api.Check(api.cuInit(0));
        int device;
        api.Check(api.cuDeviceGet(&device, ordinal));
        nint ctx;
        api.Check(api.cuDevicePrimaryCtxRetain(&ctx, device));
        var context = new CudaContext(api, device, ctx);
        context.Bind();
        return context;
    }

    /// <summary>Makes this context current on the calling thread (cuCtxSetCurrent).</summary>
    public void Bind()
    {
        ObjectDisposedException.ThrowIf(IsClosed, this);
        Api.Check(Api.cuCtxSetCurrent(handle));
    }

    public string Name
    {
        get
        {
            byte* name = stackalloc byte[256];
            Api.Check(Api.cuDeviceGetName(name, 256, Device));
            return Marshal.PtrToStringUTF8((nint)name)!;
        }
    }

    public int Attribute(CUdeviceAttribute attribute)
    {
        int value;
        Api.Check(Api.cuDeviceGetAttribute(&value, attribute, Device));
        return value;
    }

    /// <summary>cuMemGetInfo: free and total device memory in bytes.</summary>
    public (long Free, long Total) MemoryInfo()
    {
        Bind();
        nuint free, total;
        Api.Check(Api.cuMemGetInfo_v2(&free, &total));
        return ((long)free, (long)total);
    }

    public void Synchronize()
    {
        Bind();
        Api.Check(Api.cuCtxSynchronize());
    }

    protected override bool ReleaseHandle() => Api.cuDevicePrimaryCtxRelease_v2(Device) == CUresult.Success;

    internal static byte[] Utf8Z(string s)
    {
        byte[] b = new byte[Encoding.UTF8.GetByteCount(s) + 1];
        Encoding.UTF8.GetBytes(s, b);
        return b;
    }
}

/// <summary>
/// A driver object that belongs to a context: it keeps the context alive and binds it before it is
/// released, so a finalizer never frees on an unbound thread.
/// </summary>
public abstract unsafe class CudaResource : SafeHandle
{
    protected CudaResource(CudaContext context) : base(0, true)
    {
        Context = context;
        bool added = false;
        context.DangerousAddRef(ref added);
    }

    public CudaContext Context { get; }
    protected CudaApi Api => Context.Api;
    public override bool IsInvalid => handle == 0;

    protected sealed override bool ReleaseHandle()
    {
        bool ok = Api.cuCtxSetCurrent(Context.DangerousGetHandle()) == CUresult.Success && Release(handle);
        Context.DangerousRelease();
        return ok;
    }

    /// <summary>Frees the driver object; the context is already bound.</summary>
    protected abstract bool Release(nint value);

    /// <summary>Binds the owning context and returns the raw handle, for a driver call.</summary>
    protected nint Bound()
    {
        ObjectDisposedException.ThrowIf(IsClosed, this);
        Context.Bind();
        return handle;
    }
}
