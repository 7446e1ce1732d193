using System.Runtime.InteropServices;

namespace Sdp.Kernels.Cuda;

/// <summary>An NVRTC program: CUDA C++ source compiled at run time. On the emulated device the "PTX" is
/// a token naming a shared object compiled by the host compiler and cached on disk by content hash.</summary>
public sealed unsafe class NvrtcProgram : SafeHandle
{
    private NvrtcProgram(CudaApi api, nint program) : base(0, true)
    {
        Api = api;
        SetHandle(program);
    }

    public CudaApi Api { get; }
    public override bool IsInvalid => handle == 0;

    public static NvrtcProgram Create(CudaApi api, string source, string name)
    {
        byte[] src = CudaContext.Utf8Z(source);
        byte[] nm = CudaContext.Utf8Z(name);
        nint program;
        fixed (byte* s = src)
        fixed (byte* n = nm)
            api.Check(api.nvrtcCreateProgram(&program, s, n, 0, null, null));
        return new NvrtcProgram(api, program);
    }

    /// <summary>Compiles; on failure throws <see cref="NvrtcException"/> carrying the compiler's whole log.</summary>
    public void Compile(params string[] options)
    {
        ObjectDisposedException.ThrowIf(IsClosed, this);
        var handles = new GCHandle[options.Length];
        byte** opts = stackalloc byte*[Math.Max(1, options.Length)];
        try
        {
            for (int i = 0; i < options.Length; i++)
            {
                handles[i] = GCHandle.Alloc(CudaContext.Utf8Z(options[i]), GCHandleType.Pinned);
                opts[i] = (byte*)handles[i].AddrOfPinnedObject();
            }
            NvrtcResult r = Api.nvrtcCompileProgram(handle, options.Length, opts);
            if (r != NvrtcResult.Success)
            {
                string log = Log;
                throw new NvrtcException(r, "nvrtcCompileProgram", $"nvrtcCompileProgram failed: {Api.NvrtcErrorString(r)}{Environment.NewLine}{log}", log);
            }
        }
        finally
        {
            foreach (var h in handles) if (h.IsAllocated) h.Free();
        }
    }

    /// <summary>The compiler's output (warnings, errors; on the emulated device also whether the cache hit).</summary>
    public string Log
    {
        get
        {
            nuint size;
            Api.Check(Api.nvrtcGetProgramLogSize(handle, &size));
            byte[] log = new byte[(int)size];
            fixed (byte* l = log) Api.Check(Api.nvrtcGetProgramLog(handle, l));
            return System.Text.Encoding.UTF8.GetString(log, 0, Math.Max(0, (int)size - 1));
        }
    }

    /// <summary>The compiled image, NUL-terminated, for cuModuleLoadData.</summary>
    public byte[] GetPtx()
    {
        nuint size;
        Api.Check(Api.nvrtcGetPTXSize(handle, &size));
        byte[] ptx = new byte[(int)size];
        fixed (byte* p = ptx) Api.Check(Api.nvrtcGetPTX(handle, p));
        return ptx;
    }

    protected override bool ReleaseHandle()
    {
        nint p = handle;
        return Api.nvrtcDestroyProgram(&p) == NvrtcResult.Success;
    }
}
