using System.Numerics;

namespace Sdp.Engine.Backends.Cpu;

public sealed unsafe partial class CpuBackend
{
    /// <summary>Side of the square tiles a transposing permute walks, so reads and writes both stay in cache.</summary>
    private const int PermuteTile = 32;

    public void Permute(Tensor x, int[] perm, Tensor y, bool accumulate)
    {
        if (y.Numel == 0) return;
        var (dims, srcStrides) = CoalescePermute(x.Shape, perm);
        CpuStoreDispatch.Run(x.DType, accumulate, new PermuteKernel((nint)Ptr<byte>(x), (nint)Ptr<byte>(y), dims, srcStrides));
    }

    /// <summary>
    /// The permute as output dims with the source stride of each, simplified: size-1 axes dropped and
    /// neighbouring output axes merged when they are also neighbours, in order, in the source.
    /// A (B, T, H, D) -> (B, H, T, D) permute stays rank 4, but e.g. an identity becomes one flat axis.
    /// </summary>
    private static (long[] Dims, long[] SrcStrides) CoalescePermute(Shape xShape, int[] perm)
    {
        var xs = xShape.Strides();
        var dims = new List<long>();
        var strides = new List<long>();
        foreach (int a in perm)
        {
            long d = xShape[a];
            if (d == 1) continue;
            long s = xs[a];
            int last = dims.Count - 1;
            if (last >= 0 && strides[last] == s * d)
            {
                dims[last] *= d;
                strides[last] = s;
            }
            else
            {
                dims.Add(d);
                strides.Add(s);
            }
        }
        if (dims.Count == 0) return ([1], [1]);
        return ([.. dims], [.. strides]);
    }

    private readonly struct PermuteKernel(nint xp, nint yp, long[] dims, long[] srcStrides) : ICpuStoreKernel
    {
        public void Run<T, TStore>() where T : unmanaged, INumberBase<T> where TStore : struct, ICpuElementStore<T>
        {
            nint xb = xp, yb = yp;
            long[] d = dims, ss = srcStrides;
            int r = d.Length;
            long n = 1;
            foreach (var v in d) n *= v;
            var ds = new long[r]; // output (row-major) strides
            long acc = 1;
            for (int a = r - 1; a >= 0; a--)
            {
                ds[a] = acc;
                acc *= d[a];
            }

            if (ss[r - 1] == 1)
            {
                // The innermost output axis is contiguous in the source: copy whole rows.
                long inner = d[r - 1], rows = n / inner;
                CpuParallel.For(rows, Math.Max(1, ElementwiseGrain / inner), (r0, r1) =>
                {
                    T* x = (T*)xb, y = (T*)yb;
                    for (long row = r0; row < r1; row++)
                    {
                        long off = 0, rem = row;
                        for (int a = r - 2; a >= 0; a--)
                        {
                            off += rem % d[a] * ss[a];
                            rem /= d[a];
                        }
                        TStore.Row(new ReadOnlySpan<T>(x + off, (int)inner), new Span<T>(y + row * inner, (int)inner));
                    }
                });
                return;
            }

            // A transpose: the source's unit-stride axis q is not the output's innermost axis. Walk (q, last)
            // in square tiles: within a tile, source reads along q and output writes along last are both
            // contiguous runs, so each cache line is used fully. Other axes form an outer "batch".
            int q = Array.IndexOf(ss, 1L);
            int l = r - 1;
            long dq = d[q], dl = d[l];
            long batch = n / (dq * dl);
            long tilesQ = (dq + PermuteTile - 1) / PermuteTile;
            long sl = ss[l], dsq = ds[q];
            CpuParallel.For(batch * tilesQ, Math.Max(1, ElementwiseGrain / (PermuteTile * dl)), (t0, t1) =>
            {
                T* x = (T*)xb, y = (T*)yb;
                for (long t = t0; t < t1; t++)
                {
                    long b = t / tilesQ, tq = t % tilesQ;
                    long srcOff = 0, dstOff = 0, rem = b;
                    for (int a = r - 1; a >= 0; a--)
                    {
                        if (a == q || a == l) continue;
                        long i = rem % d[a];
                        rem /= d[a];
                        srcOff += i * ss[a];
                        dstOff += i * ds[a];
                    }
                    long q0 = tq * PermuteTile, q1 = Math.Min(dq, q0 + PermuteTile);
                    for (long l0 = 0; l0 < dl; l0 += PermuteTile)
                    {
                        long l1 = Math.Min(dl, l0 + PermuteTile);
                        for (long iq = q0; iq < q1; iq++)
                        {
                            T* src = x + srcOff + iq;
                            T* dst = y + dstOff + iq * dsq;
                            for (long il = l0; il < l1; il++) TStore.One(ref dst[il], src[il * sl]);
                        }
                    }
                }
            });
        }
    }

    public void ReadSlice(Tensor src, int axis, int start, Tensor dst, bool accumulate)
        => CpuStoreDispatch.Run(src.DType, accumulate, SliceKernel.Create(src, axis, start, dst, read: true));

    public void WriteSlice(Tensor src, int axis, int start, Tensor dst, bool accumulate)
        => CpuStoreDispatch.Run(src.DType, accumulate, SliceKernel.Create(src, axis, start, dst, read: false));

    /// <summary>
    /// Copies between a window of a big tensor (outer, N, inner) and a small one (outer, n, inner):
    /// per outer index one contiguous block of n·inner elements. The flat range outer·n·inner is split
    /// across threads, so a single huge block (outer = 1) is parallel too.
    /// </summary>
    private readonly struct SliceKernel(nint srcPtr, nint dstPtr, long outer, long block, long bigBlock, long windowOffset, bool read) : ICpuStoreKernel
    {
        public static SliceKernel Create(Tensor src, int axis, int start, Tensor dst, bool read)
        {
            var small = read ? dst : src;
            var big = read ? src : dst;
            long inner = big.Shape.Product(axis + 1, big.Rank);
            return new SliceKernel((nint)Ptr<byte>(src), (nint)Ptr<byte>(dst), big.Shape.Product(0, axis), small.Shape[axis] * inner, big.Shape[axis] * inner, start * inner, read);
        }

        public void Run<T, TStore>() where T : unmanaged, INumberBase<T> where TStore : struct, ICpuElementStore<T>
        {
            nint sp = srcPtr, dp = dstPtr;
            long blk = block, big = bigBlock, win = windowOffset;
            bool fromWindow = read;
            if (blk == 0) return;
            CpuParallel.For(outer * blk, ElementwiseGrain, (s, e) =>
            {
                for (long pos = s; pos < e;)
                {
                    long o = pos / blk, within = pos % blk;
                    long len = Math.Min(blk - within, e - pos);
                    long smallAt = o * blk + within, bigAt = o * big + win + within;
                    T* from = (T*)sp + (fromWindow ? bigAt : smallAt);
                    T* to = (T*)dp + (fromWindow ? smallAt : bigAt);
                    TStore.Row(new ReadOnlySpan<T>(from, (int)len), new Span<T>(to, (int)len));
                    pos += len;
                }
            });
        }
    }
}
