using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Memory;
using Sdp.Kernels.Cuda;

namespace Sdp.Engine.Backends.Cuda;

/// <summary>
/// The CUDA backend: kernels.cu (compiled by NVRTC, or by the emulated device's compiler), cuBLAS for dense
/// GEMMs, one stream and one caching allocator per backend. A trainer gives each worker its own backend, so
/// each worker has its own stream and its own memory, on its own GPU or sharing one. Every method only queues
/// work on the stream; the host waits only in <see cref="Download{T}"/>, <see cref="Synchronize"/> and peer
/// copies, which is what keeps a training step at two host reads.
///
/// Device-side errors that ops report without a host read (an embedding id or rotary position out of range)
/// set a flag on the device; the next host wait reads it and throws, like a device-side assert.
/// </summary>
public sealed unsafe partial class CudaBackend : IBackend, IDisposable
{
    private readonly CudaStream _stream;
    private readonly CublasHandle _blas;
    private readonly CUdeviceptr _errorFlag; // int32[4]: code, index, value, limit (kernels.cu §0 error flag)
    private bool _errorFlagArmed;
    private bool _disposed;

    private CudaBackend(CudaContext context)
    {
        Context = context;
        Kernels = CudaKernels.Load(context);
        _stream = CudaStream.Create(context);
        _blas = CublasHandle.Create(context);
        _blas.SetStream(_stream);
        Allocator = new CudaAllocator(context);
        _errorFlag = Allocator.Allocate(16, () => "");
        Context.Api.Check(Context.Api.cuMemsetD32_v2(_errorFlag, 0, 4), "cuMemsetD32_v2(error flag)");
        Device = new Device(DeviceKind.Cuda, context.Device);
    }

    /// <summary>
    /// A backend on device <paramref name="ordinal"/> of <paramref name="api"/> (default: what <c>SDP_CUDA</c>
    /// selects, see <see cref="Sdp.Kernels.Cuda.Cuda.Load()"/>), with its own stream, cuBLAS handle and allocator.
    /// Several backends may share one device.
    /// </summary>
    public static CudaBackend Open(int ordinal = 0, CudaApi? api = null)
    {
        api ??= Sdp.Kernels.Cuda.Cuda.Load();
        int count;
        api.Check(api.cuDeviceGetCount(&count));
        if (ordinal < 0 || ordinal >= count)
            throw new ArgumentOutOfRangeException(nameof(ordinal), $"CUDA device {ordinal} does not exist: the {api} has {count} device(s)");
        return new CudaBackend(CudaContext.Open(api, ordinal));
    }

    public Device Device { get; }

    public CudaContext Context { get; }

    /// <summary>kernels.cu, loaded once per device and shared by its backends.</summary>
    public CudaModule Kernels { get; }

    public CudaAllocator Allocator { get; }

    public CudaStream Stream => _stream;

    public CublasHandle Blas => _blas;

    public bool IsEmulated => Context.Api.Implementation == CudaImplementation.Emulated;

    public override string ToString() => IsEmulated ? $"{Device} (emulated)" : Device.ToString();

    public BackendDiagnostics Diagnostics
    {
        get
        {
            var (free, total) = Context.MemoryInfo();
            string kind = IsEmulated ? "emulated CUDA device (kernels.cu compiled as host C++, run on the CPU)" : "NVIDIA GPU";
            return new BackendDiagnostics(
                $"{Device} {Context.Name}: {kind}, compute capability {CudaKernels.ComputeCapability(Context)}, {MemorySnapshot.FormatBytes(total)}",
                [
                    ("implementation", Context.Api.ToString()),
                    ("device memory", $"{MemorySnapshot.FormatBytes(free)} free of {MemorySnapshot.FormatBytes(total)}"),
                    ("allocator", $"{MemorySnapshot.FormatBytes(Allocator.ReservedBytes)} reserved ({MemorySnapshot.FormatBytes(Allocator.CachedBytes)} cached, peak {MemorySnapshot.FormatBytes(Allocator.PeakReservedBytes)}), {Allocator.DeviceAllocations} cuMemAlloc calls"),
                    ("gemm", "cuBLAS (fp32 without TF32, fp64); masked GEMMs in kernels.cu"),
                    ("kernel cache", IsEmulated ? "the emulator's compiled-object cache" : CudaKernels.CachePath(Context)),
                ],
                "caching allocator: cached blocks and size-class rounding",
                Allocator.ReservedBytes - Allocator.RequestedBytes);
        }
    }

    public Storage Allocate(long bytes, MemoryCategory category, MemoryAccount account) => CudaStorage.Create(this, bytes, category, account);

    // ---- addresses and launches -----------------------------------------------------------------------------

    /// <summary>The device address of <paramref name="t"/>'s first element; the tensor must live on this backend.</summary>
    internal CUdeviceptr Ptr(Tensor t)
    {
        if (t.Storage is not CudaStorage s || !ReferenceEquals(s.Backend, this))
            throw new ArgumentException($"tensor {t} lives on {t.Backend}, not on {this}; move it with Tensor.To first");
        return s.Pointer + t.ByteOffset;
    }

    /// <summary>As <see cref="Ptr"/>, or the null address for an absent optional tensor.</summary>
    internal CUdeviceptr PtrOrNull(Tensor? t) => t is null ? default : Ptr(t);

    /// <summary>The kernel-name suffix of a dtype: f32, f64, i32, i64.</summary>
    internal static string Sfx(DType d) => d switch
    {
        DType.Float32 => "f32",
        DType.Float64 => "f64",
        DType.Int32 => "i32",
        _ => "i64",
    };

    internal CudaFunction Kernel(string name) => Kernels.Function(name);

    /// <summary>Queues <paramref name="kernel"/> on this backend's stream.</summary>
    internal void Launch(string kernel, Dim3 grid, Dim3 block, KernelArgs args, uint sharedBytes = 0) =>
        args.Launch(Kernel(kernel), grid, block, sharedBytes, _stream);

    /// <summary>Threads per block of the 1-D kernels (SDP_THREADS in kernels.cu).</summary>
    internal const int Threads1D = 256;

    /// <summary>A grid-stride 1-D launch over <paramref name="n"/> elements: block 256, grid min(⌈n/256⌉, 65535). Nothing runs for n = 0.</summary>
    internal void Launch1D(string kernel, long n, KernelArgs args)
    {
        if (n <= 0) return;
        uint grid = (uint)Math.Min((n + Threads1D - 1) / Threads1D, 65535);
        Launch(kernel, new Dim3(grid), new Dim3(Threads1D), args);
    }

    /// <summary>The device error flag, passed to kernels that report bad indices; arms the check at the next host wait.</summary>
    internal CUdeviceptr ErrorFlag()
    {
        _errorFlagArmed = true;
        return _errorFlag;
    }

    // ---- transfers ------------------------------------------------------------------------------------------

    public void Upload<T>(ReadOnlySpan<T> src, Tensor dst) where T : unmanaged
    {
        long bytes = (long)src.Length * sizeof(T);
        if (bytes == 0) return;
        // Pageable host memory: the driver has consumed src when the call returns, so the caller may reuse it.
        fixed (T* p = src) Context.Api.Check(Context.Api.cuMemcpyHtoDAsync_v2(Ptr(dst), p, (nuint)bytes, BoundStream()), "cuMemcpyHtoDAsync_v2");
    }

    public void Download<T>(Tensor src, Span<T> dst) where T : unmanaged
    {
        long bytes = (long)dst.Length * sizeof(T);
        if (bytes > 0)
            fixed (T* p = dst) Context.Api.Check(Context.Api.cuMemcpyDtoHAsync_v2(p, Ptr(src), (nuint)bytes, BoundStream()), "cuMemcpyDtoHAsync_v2");
        Synchronize();
    }

    public void Copy(Tensor src, Tensor dst)
    {
        long bytes = src.Numel * src.DType.ElementSize();
        if (bytes == 0) return;
        Context.Api.Check(Context.Api.cuMemcpyDtoDAsync_v2(Ptr(dst), Ptr(src), (nuint)bytes, BoundStream()), "cuMemcpyDtoDAsync_v2");
    }

    public void CopyPeer(Tensor src, Tensor dst)
    {
        long bytes = src.Numel * src.DType.ElementSize();
        if (bytes == 0) return;
        if (ReferenceEquals(src.Backend, this))
        {
            Copy(src, dst);
            return;
        }
        if (src.Storage is CpuStorage host)
        {
            Context.Api.Check(Context.Api.cuMemcpyHtoDAsync_v2(Ptr(dst), host.Pointer + src.ByteOffset, (nuint)bytes, BoundStream()), "cuMemcpyHtoDAsync_v2(peer from host)");
            return;
        }
        if (src.Backend is CudaBackend other && other.Context.Api == Context.Api)
        {
            // Unified addressing lets one copy reach another device's memory; the source's stream finishes first,
            // and this stream before returning, since the source may be reused by its owner as soon as we return.
            other.Synchronize();
            Context.Api.Check(Context.Api.cuMemcpyDtoDAsync_v2(Ptr(dst), other.Ptr(src), (nuint)bytes, BoundStream()), "cuMemcpyDtoDAsync_v2(peer)");
            Synchronize();
            return;
        }
        byte[] staged = new byte[bytes]; // another kind of device: through host memory
        switch (src.DType)
        {
            case DType.Float32: src.Backend.Download(src, MemoryMarshal.Cast<byte, float>(staged.AsSpan())); break;
            case DType.Float64: src.Backend.Download(src, MemoryMarshal.Cast<byte, double>(staged.AsSpan())); break;
            case DType.Int32: src.Backend.Download(src, MemoryMarshal.Cast<byte, int>(staged.AsSpan())); break;
            default: src.Backend.Download(src, MemoryMarshal.Cast<byte, long>(staged.AsSpan())); break;
        }
        Upload<byte>(staged, dst);
    }

    public void Fill(Tensor dst, double value)
    {
        var args = new KernelArgs().Add(Ptr(dst));
        switch (dst.DType)
        {
            case DType.Float32: args.Add((float)value); break;
            case DType.Float64: args.Add(value); break;
            case DType.Int32: args.Add((int)value); break;
            default: args.Add((long)value); break;
        }
        Launch1D($"fill_{Sfx(dst.DType)}", dst.Numel, args.Add(dst.Numel));
    }

    public void Cast(Tensor src, Tensor dst)
    {
        if (src.DType == dst.DType)
        {
            Copy(src, dst);
            return;
        }
        Launch1D($"cast_{Sfx(src.DType)}_{Sfx(dst.DType)}", src.Numel, new KernelArgs().Add(Ptr(src)).Add(Ptr(dst)).Add(src.Numel));
    }

    /// <summary>Waits for this backend's stream, then reports a device-side error that a kernel flagged.</summary>
    public void Synchronize()
    {
        _stream.Synchronize();
        if (!_errorFlagArmed) return;
        _errorFlagArmed = false;
        Span<int> flag = stackalloc int[4];
        fixed (int* p = flag) Context.Api.Check(Context.Api.cuMemcpyDtoH_v2(p, _errorFlag, 16), "cuMemcpyDtoH_v2(error flag)");
        if (flag[0] == 0) return;
        Context.Api.Check(Context.Api.cuMemsetD32_v2(_errorFlag, 0, 4), "cuMemsetD32_v2(error flag)");
        throw DeviceError(flag[0], flag[1], flag[2], flag[3]);
    }

    /// <summary>
    /// The exception for a flagged device error. The flag is int32[4] = {code, flat index, value, limit}; the first
    /// kernel thread to find a bad index claims it (atomicCAS on the code), so the report names one bad element.
    /// Codes: 1 an embedding id outside [0, V), 2 a rotary position outside the cos/sin tables, 3 a cross-entropy
    /// target outside [0, V) that is not the ignore index.
    /// </summary>
    private static Exception DeviceError(int code, int index, int value, int limit) => code switch
    {
        1 => new ArgumentOutOfRangeException("ids",
            $"embedding: id {value} at flat position {index} of ids is out of range for the vocabulary: ids must lie in [0, {limit}) (V = {limit}) (reported by the device)"),
        2 => new ArgumentOutOfRangeException("positions",
            $"rope: position id {value} at flat position {index} of positions is outside the {limit} rows of the cos/sin tables: positions must lie in [0, {limit}) (reported by the device)"),
        3 => new ArgumentOutOfRangeException("targets",
            $"cross_entropy: target {value} at row {index} is outside [0, {limit}) and is not the ignore index (reported by the device)"),
        _ => new InvalidOperationException($"a kernel raised device error {code} (index {index}, value {value}, limit {limit})"),
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private nint BoundStream() => _stream.Handle; // binds the context to this thread

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _stream.Synchronize();
        Allocator.Release(_errorFlag, 16);
        Allocator.EmptyCache();
        _blas.Dispose();
        _stream.Dispose();
        Context.Dispose();
    }
}
