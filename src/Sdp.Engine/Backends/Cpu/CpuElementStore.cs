using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;

namespace Sdp.Engine.Backends.Cpu;

/// <summary>
/// How a data-movement kernel (permute, slice, gather) writes its results: overwrite (forward) or
/// accumulate (backward, the += contract). Passed as a generic struct argument so the JIT compiles one
/// specialised loop per (element type, store) pair with no per-element branch.
/// </summary>
internal interface ICpuElementStore<T> where T : unmanaged
{
    /// <summary>dst (=|+=) src, for spans of equal length.</summary>
    static abstract void Row(ReadOnlySpan<T> src, Span<T> dst);

    /// <summary>dst (=|+=) value.</summary>
    static abstract void One(ref T dst, T value);
}

/// <summary>dst = src.</summary>
internal readonly struct CpuAssignStore<T> : ICpuElementStore<T> where T : unmanaged
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Row(ReadOnlySpan<T> src, Span<T> dst) => src.CopyTo(dst);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void One(ref T dst, T value) => dst = value;
}

/// <summary>dst += src.</summary>
internal readonly struct CpuAccumulateStore<T> : ICpuElementStore<T> where T : unmanaged, INumberBase<T>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Row(ReadOnlySpan<T> src, Span<T> dst) => TensorPrimitives.Add(dst, src, dst);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void One(ref T dst, T value) => dst += value;
}

/// <summary>A kernel body generic over the element type and the store, run by <see cref="CpuStoreDispatch.Run"/>.</summary>
internal interface ICpuStoreKernel
{
    void Run<T, TStore>() where T : unmanaged, INumberBase<T> where TStore : struct, ICpuElementStore<T>;
}

internal static class CpuStoreDispatch
{
    /// <summary>Runs <paramref name="kernel"/> specialised for <paramref name="dtype"/>, assigning or accumulating.</summary>
    public static void Run<TKernel>(DType dtype, bool accumulate, TKernel kernel) where TKernel : struct, ICpuStoreKernel
    {
        switch (dtype)
        {
            case DType.Float32:
                if (accumulate) kernel.Run<float, CpuAccumulateStore<float>>();
                else kernel.Run<float, CpuAssignStore<float>>();
                break;
            case DType.Float64:
                if (accumulate) kernel.Run<double, CpuAccumulateStore<double>>();
                else kernel.Run<double, CpuAssignStore<double>>();
                break;
            case DType.Int32:
                if (accumulate) kernel.Run<int, CpuAccumulateStore<int>>();
                else kernel.Run<int, CpuAssignStore<int>>();
                break;
            case DType.Int64:
                if (accumulate) kernel.Run<long, CpuAccumulateStore<long>>();
                else kernel.Run<long, CpuAssignStore<long>>();
                break;
            default:
                throw new NotSupportedException($"dtype {dtype}");
        }
    }
}
