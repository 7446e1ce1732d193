using System.Collections.Concurrent;

namespace Sdp.Kernels.Cuda;

/// <summary>A loaded module (cuModuleLoadData) and the kernels it exports.</summary>
public sealed unsafe class CudaModule : CudaResource
{
    private readonly ConcurrentDictionary<string, CudaFunction> _functions = new(StringComparer.Ordinal);

    private CudaModule(CudaContext context, nint module) : base(context) => SetHandle(module);

    public static CudaModule Load(CudaContext context, byte[] image)
    {
        context.Bind();
        nint m;
        fixed (byte* p = image) context.Api.Check(context.Api.cuModuleLoadData(&m, p));
        return new CudaModule(context, m);
    }

    /// <summary>Compiles <paramref name="source"/> with NVRTC (throwing with the full log on failure) and loads it.</summary>
    public static CudaModule Compile(CudaContext context, string source, string name, params string[] options)
    {
        using var program = NvrtcProgram.Create(context.Api, source, name);
        program.Compile(options);
        return Load(context, program.GetPtx());
    }

    /// <summary>The extern "C" kernel <paramref name="name"/>, looked up once and then cached.</summary>
    public CudaFunction Function(string name) => _functions.GetOrAdd(name, n =>
    {
        nint f;
        byte[] utf8 = CudaContext.Utf8Z(n);
        fixed (byte* p = utf8) Api.Check(Api.cuModuleGetFunction(&f, Bound(), p), $"cuModuleGetFunction({n})");
        return new CudaFunction(this, f, n);
    });

    protected override bool Release(nint value) => Api.cuModuleUnload(value) == CUresult.Success;
}

/// <summary>
/// A kernel. Launch arguments follow cuLaunchKernel's contract: an array of pointers, each to one
/// argument whose bytes match the C parameter exactly (<c>int</c>↔int, <c>T*</c>↔<see cref="CUdeviceptr"/>,
/// <c>size_t</c>↔nuint). The typed overloads keep the arguments on the stack, no boxing.
/// </summary>
public sealed unsafe class CudaFunction
{
    internal CudaFunction(CudaModule module, nint handle, string name)
    {
        Module = module;
        Handle = handle;
        Name = name;
    }

    public CudaModule Module { get; }
    public nint Handle { get; }
    public string Name { get; }
    private CudaContext Context => Module.Context;

    /// <summary>Allows launches with up to <paramref name="bytes"/> of dynamic shared memory (needed above 48 KiB).</summary>
    public void SetMaxDynamicSharedMemory(int bytes)
    {
        Context.Bind();
        Context.Api.Check(Context.Api.cuFuncSetAttribute(Handle, CUfunctionAttribute.MaxDynamicSharedSizeBytes, bytes), $"cuFuncSetAttribute({Name}, MAX_DYNAMIC_SHARED_SIZE_BYTES, {bytes})");
    }

    /// <summary>cuLaunchKernel with <paramref name="args"/> pointing at one value per kernel parameter.</summary>
    public void LaunchRaw(Dim3 grid, Dim3 block, uint sharedBytes, CudaStream? stream, void** args)
    {
        nint s = stream?.Handle ?? 0;
        Context.Bind();
        CUresult r = Context.Api.cuLaunchKernel(Handle, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, sharedBytes, s, args, null);
        Context.Api.Check(r, $"cuLaunchKernel({Name}, grid ({grid.X},{grid.Y},{grid.Z}), block ({block.X},{block.Y},{block.Z}), {sharedBytes} B shared)");
    }

    public void Launch<T0>(Dim3 grid, Dim3 block, uint sharedBytes, CudaStream? stream, T0 a0)
        where T0 : unmanaged
    {
        void** p = stackalloc void*[1];
        p[0] = &a0;
        LaunchRaw(grid, block, sharedBytes, stream, p);
    }

    public void Launch<T0, T1>(Dim3 grid, Dim3 block, uint sharedBytes, CudaStream? stream, T0 a0, T1 a1)
        where T0 : unmanaged where T1 : unmanaged
    {
        void** p = stackalloc void*[2];
        p[0] = &a0;
        p[1] = &a1;
        LaunchRaw(grid, block, sharedBytes, stream, p);
    }

    public void Launch<T0, T1, T2>(Dim3 grid, Dim3 block, uint sharedBytes, CudaStream? stream, T0 a0, T1 a1, T2 a2)
        where T0 : unmanaged where T1 : unmanaged where T2 : unmanaged
    {
        void** p = stackalloc void*[3];
        p[0] = &a0;
        p[1] = &a1;
        p[2] = &a2;
        LaunchRaw(grid, block, sharedBytes, stream, p);
    }

    public void Launch<T0, T1, T2, T3>(Dim3 grid, Dim3 block, uint sharedBytes, CudaStream? stream, T0 a0, T1 a1, T2 a2, T3 a3)
        where T0 : unmanaged where T1 : unmanaged where T2 : unmanaged where T3 : unmanaged
    {
        void** p = stackalloc void*[4];
        p[0] = &a0;
        p[1] = &a1;
        p[2] = &a2;
        p[3] = &a3;
        LaunchRaw(grid, block, sharedBytes, stream, p);
    }

    public void Launch<T0, T1, T2, T3, T4>(Dim3 grid, Dim3 block, uint sharedBytes, CudaStream? stream, T0 a0, T1 a1, T2 a2, T3 a3, T4 a4)
        where T0 : unmanaged where T1 : unmanaged where T2 : unmanaged where T3 : unmanaged where T4 : unmanaged
    {
        void** p = stackalloc void*[5];
        p[0] = &a0;
        p[1] = &a1;
        p[2] = &a2;
        p[3] = &a3;
        p[4] = &a4;
        LaunchRaw(grid, block, sharedBytes, stream, p);
    }

    public override string ToString() => Name;
}
