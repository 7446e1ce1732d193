using System.Numerics;

namespace Sdp.Engine.Backends.Cpu;

public sealed unsafe partial class CpuBackend
{
    public void IndexSelect(Tensor x, int axis, Tensor indices, Tensor y, bool accumulate)
    {
        long n = x.Shape[axis];
        ValidateIndices(indices, axis, n);
        long inner = x.Shape.Product(axis + 1, x.Rank);
        var kernel = new IndexSelectKernel((nint)Ptr<byte>(x), (nint)Ptr<byte>(y), (nint)Ptr<byte>(indices), indices.DType == DType.Int64,
            x.Shape.Product(0, axis), n, indices.Numel, inner);
        CpuStoreDispatch.Run(x.DType, accumulate, kernel);
    }

    public void IndexAdd(Tensor src, int axis, Tensor indices, Tensor dst)
    {
        long n = dst.Shape[axis];
        ValidateIndices(indices, axis, n);
        long inner = dst.Shape.Product(axis + 1, dst.Rank);
        var kernel = new IndexAddKernel((nint)Ptr<byte>(src), (nint)Ptr<byte>(dst), (nint)Ptr<byte>(indices), indices.DType == DType.Int64,
            dst.Shape.Product(0, axis), n, indices.Numel, inner);
        CpuStoreDispatch.Run(dst.DType, accumulate: true, kernel);
    }

    /// <summary>Reads index k of an int32 or int64 index tensor.</summary>
    private static long IndexAt(nint indices, bool int64, long k) => int64 ? ((long*)indices)[k] : ((int*)indices)[k];

    /// <summary>Sequential pre-pass, so a bad index throws (unwrapped, the first one) before any write.</summary>
    private static void ValidateIndices(Tensor indices, int axis, long size)
    {
        nint ip = (nint)Ptr<byte>(indices);
        bool int64 = indices.DType == DType.Int64;
        long k = indices.Numel;
        for (long i = 0; i < k; i++)
        {
            long v = IndexAt(ip, int64, i);
            if ((ulong)v >= (ulong)size) throw new ArgumentOutOfRangeException(null, $"index {v} at position {i} is out of range for axis {axis} of size {size}");
        }
    }

    /// <summary>y (outer, K, inner) (=|+=) x (outer, N, inner) gathered at indices: one contiguous row per (o, k).</summary>
    private readonly struct IndexSelectKernel(nint xp, nint yp, nint ip, bool int64, long outer, long n, long k, long inner) : ICpuStoreKernel
    {
        public void Run<T, TStore>() where T : unmanaged, INumberBase<T> where TStore : struct, ICpuElementStore<T>
        {
            nint xb = xp, yb = yp, ib = ip;
            bool wide = int64;
            long size = n, count = k, row = inner;
            if (row == 0) return;
            CpuParallel.For(outer * count, Math.Max(1, ElementwiseGrain / row), (r0, r1) =>
            {
                for (long r = r0; r < r1; r++)
                {
                    long o = r / count, j = r % count;
                    long at = IndexAt(ib, wide, j);
                    TStore.Row(new ReadOnlySpan<T>((T*)xb + (o * size + at) * row, (int)row), new Span<T>((T*)yb + r * row, (int)row));
                }
            });
        }
    }

    /// <summary>
    /// dst (outer, N, inner) += src (outer, K, inner) scattered at indices. Threads split (o, inner) into
    /// disjoint column blocks and each walks k in order, so repeated indices never race and sum in a
    /// fixed order.
    /// </summary>
    private readonly struct IndexAddKernel(nint sp, nint dp, nint ip, bool int64, long outer, long n, long k, long inner) : ICpuStoreKernel
    {
        public void Run<T, TStore>() where T : unmanaged, INumberBase<T> where TStore : struct, ICpuElementStore<T>
        {
            nint sb = sp, db = dp, ib = ip;
            bool wide = int64;
            long size = n, count = k, row = inner;
            if (row == 0 || count == 0) return;
            // Enough column blocks per outer index to occupy every thread, but at least 64 columns each.
            long threads = CpuParallel.MaxThreads;
            long blocksPerOuter = outer >= threads ? 1 : Math.Min((threads + outer - 1) / outer, (row + 63) / 64);
            long blockLen = (row + blocksPerOuter - 1) / blocksPerOuter;
            blocksPerOuter = (row + blockLen - 1) / blockLen;
            long blocks = blocksPerOuter;
            CpuParallel.For(outer * blocks, Math.Max(1, ElementwiseGrain / (count * blockLen)), (t0, t1) =>
            {
                for (long t = t0; t < t1; t++)
                {
                    long o = t / blocks, c0 = t % blocks * blockLen;
                    int len = (int)Math.Min(blockLen, row - c0);
                    T* src = (T*)sb + o * count * row + c0;
                    T* dst = (T*)db + o * size * row + c0;
                    for (long j = 0; j < count; j++)
                    {
                        TStore.Row(new ReadOnlySpan<T>(src + j * row, len), new Span<T>(dst + IndexAt(ib, wide, j) * row, len));
                    }
                }
            });
        }
    }
}
