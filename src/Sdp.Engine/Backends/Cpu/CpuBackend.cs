using System.Numerics;
using System.Runtime.CompilerServices;
using Sdp.Engine.Memory;
using Sdp.Kernels.Cpu;

namespace Sdp.Engine.Backends.Cpu;

/// <summary>
/// The reference backend: exact, multi-threaded, SIMD where it pays. Float kernels are written once
/// over <c>T : IBinaryFloatingPointIeee754</c> and dispatched on the tensor's dtype, so the float64
/// path used by gradient checks runs the same code as float32 training.
/// </summary>
public sealed unsafe partial class CpuBackend : IBackend
{
    public static CpuBackend Instance { get; } = new();

    private CpuBackend()
    {
    }

    public Device Device => Device.Cpu;

    public override string ToString() => "cpu";

    /// <summary>The host memory of every CPU tensor (one pool per process: the CPU backend is one instance).</summary>
    public static HostMemoryPool HostPool { get; } = new();

    /// <summary>
    /// The GEMM microkernel and its default thread count, the threads of the other ops, the <see cref="Vector{T}"/>
    /// width, and the memory charged to no account: the GEMM's packing buffers (thread-local, kept between calls) and
    /// what the host pool holds beyond the tensors' bytes (cached blocks and size-class rounding).
    /// </summary>
    public BackendDiagnostics Diagnostics
    {
        get
        {
            long packing = Gemm.WorkspaceBytes;
            var pool = HostPool.Blocks;
            long poolExtra = pool.ReservedBytes - pool.RequestedBytes;
            int simdBits = Vector<byte>.Count * 8;
            return new BackendDiagnostics(
                $"cpu (reference backend): {CpuParallel.MaxThreads} threads, {simdBits}-bit SIMD, GEMM {Gemm.KernelName}",
                [
                    ("gemm kernel", $"{Gemm.KernelName}, {Gemm.MaxThreads} threads"),
                    ("op threads", $"{CpuParallel.MaxThreads}"),
                    ("simd width", $"{simdBits}-bit Vector<T> ({Vector<float>.Count} x float32)"),
                    ("gemm buffers", MemorySnapshot.FormatBytes(packing)),
                    ("host pool", $"{MemorySnapshot.FormatBytes(pool.ReservedBytes)} reserved ({MemorySnapshot.FormatBytes(pool.CachedBytes)} cached, peak {MemorySnapshot.FormatBytes(pool.PeakReservedBytes)}), {pool.Misses} allocations from the C heap"),
                ],
                "GEMM packing buffers and cached host blocks (per process, all threads)",
                packing + poolExtra);
        }
    }

    public Storage Allocate(long bytes, MemoryCategory category, MemoryAccount account) => new CpuStorage(this, bytes, category, account);

    /// <summary>The first element of a CPU tensor. The caller guarantees T matches the dtype.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static T* Ptr<T>(Tensor t) where T : unmanaged => (T*)(((CpuStorage)t.Storage).Pointer + t.ByteOffset);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Span<T> Span<T>(Tensor t) where T : unmanaged => new(Ptr<T>(t), checked((int)t.Numel));

    public void Upload<T>(ReadOnlySpan<T> src, Tensor dst) where T : unmanaged => src.CopyTo(Span<T>(dst));

    public void Download<T>(Tensor src, Span<T> dst) where T : unmanaged => Span<T>(src).CopyTo(dst);

    public void Copy(Tensor src, Tensor dst)
    {
        long bytes = src.Numel * src.DType.ElementSize();
        Buffer.MemoryCopy(Ptr<byte>(src), Ptr<byte>(dst), bytes, bytes);
    }

    public void CopyPeer(Tensor src, Tensor dst)
    {
        if (src.Storage is CpuStorage)
        {
            Copy(src, dst); // host memory: directly addressable whichever backend owns it
            return;
        }
        switch (src.DType)
        {
            case DType.Float32: src.Backend.Download(src, Span<float>(dst)); break;
            case DType.Float64: src.Backend.Download(src, Span<double>(dst)); break;
            case DType.Int32: src.Backend.Download(src, Span<int>(dst)); break;
            default: src.Backend.Download(src, Span<long>(dst)); break;
        }
    }

    public void Fill(Tensor dst, double value)
    {
        switch (dst.DType)
        {
            case DType.Float32: FillCore(Ptr<float>(dst), dst.Numel, (float)value); break;
            case DType.Float64: FillCore(Ptr<double>(dst), dst.Numel, value); break;
            case DType.Int32: FillCore(Ptr<int>(dst), dst.Numel, (int)value); break;
            case DType.Int64: FillCore(Ptr<long>(dst), dst.Numel, (long)value); break;
        }
    }

    /// <summary>Fills in parallel chunks: zeroing a batch's activation gradients is memory-bound, one core cannot saturate it.</summary>
    private static void FillCore<T>(T* p, long n, T value) where T : unmanaged
    {
        if (n <= 4 * ElementwiseGrain)
        {
            new Span<T>(p, (int)n).Fill(value);
            return;
        }
        nint pp = (nint)p;
        CpuParallel.For(n, 4 * ElementwiseGrain, (s, e) => new Span<T>((T*)pp + s, (int)(e - s)).Fill(value));
    }

    public void Cast(Tensor src, Tensor dst)
    {
        long n = src.Numel;
        for (long i = 0; i < n; i++) Write(dst, i, Read(src, i));
    }

    public void Synchronize()
    {
    }

    private static double Read(Tensor t, long i) => t.DType switch
    {
        DType.Float32 => Ptr<float>(t)[i],
        DType.Float64 => Ptr<double>(t)[i],
        DType.Int32 => Ptr<int>(t)[i],
        _ => Ptr<long>(t)[i],
    };

    private static void Write(Tensor t, long i, double v)
    {
        switch (t.DType)
        {
            case DType.Float32: Ptr<float>(t)[i] = (float)v; break;
            case DType.Float64: Ptr<double>(t)[i] = v; break;
            case DType.Int32: Ptr<int>(t)[i] = (int)v; break;
            default: Ptr<long>(t)[i] = (long)v; break;
        }
    }
}
