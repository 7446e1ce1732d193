using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Sdp.Kernels.Cpu;

/// <summary>Shape of a 2-d convolution over NCHW tensors: N images of C x H x W, O filters of C x KH x KW, output OH x OW.</summary>
public readonly record struct ConvGeometry(int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW, int Stride, int Pad)
{
    /// <summary>Output pixels per image.</summary>
    public int P => OH * OW;

    /// <summary>Rows of the (implicit) column matrix: one per (channel, kernel row, kernel column).</summary>
    public int K => C * KH * KW;

    public int HW => H * W;

    /// <summary>Stride 1 and an output plane the size of the input plane ("same" padding): row k of the column
    /// matrix restricted to one image is the input plane shifted by a constant, with the padding positions zero.</summary>
    public bool SamePlane => Stride == 1 && OH == H && OW == W;
}

/// <summary>
/// Implicit-GEMM convolution: the column matrix of im2col (row k = (c, kh, kw), column t = (n, oh, ow)) is never
/// materialised; its blocks are unfolded from the input straight into the GEMM's packed panels, one block at a time,
/// where they are hot in cache. The whole batch is one GEMM, threaded by the GEMM itself (shared packed B blocks,
/// dynamic row and column items), so no core idles on a small last group and no per-thread column buffers exist.
/// <list type="bullet">
/// <item>forward: y (O, N·P) = W (O, K) · cols (K, N·P), C scattered to y's (N, O, P) layout through column offsets;</item>
/// <item>weight gradient: dW (O, K) += dY (O, N·P) · colsᵀ (N·P, K), both operands packed from dy and x;</item>
/// <item>input gradient at stride 1: a forward convolution of dy with the flipped, transposed kernel (see the backend);
/// at larger strides a GEMM and a fold (<see cref="Col2ImPlane{T}"/>).</item>
/// </list>
/// Strided convolutions unfold from the input's stride phases (<see cref="ColumnSource{T}"/>, <see cref="SplitPhases{T}"/>)
/// where those carry every input (<see cref="PhaseSplitFits"/>): each kernel tap then copies contiguous runs, as at
/// stride 1, instead of gathering every s-th element of each input row.
/// The sum over k runs in the GEMM's fixed order, so results do not depend on the thread count.
/// </summary>
public static unsafe partial class ConvGemm
{
    /// <summary>
    /// y (N, O, OH, OW) = conv(x, w) + beta · y, one GEMM over the whole batch on <paramref name="threads"/> threads.
    /// w is (O, C, KH, KW); colOffsets holds <see cref="FillColumnOffsets"/>'s table for at least N images.
    /// </summary>
    public static void Forward<T>(in ConvGeometry g, T* x, T* w, T* y, T beta, int* colOffsets, int threads)
        where T : unmanaged, INumber<T> => Forward(g, ColumnSource<T>.Input(x), w, y, beta, colOffsets, threads);

    /// <summary>As <see cref="Forward{T}(in ConvGeometry, T*, T*, T*, T, int*, int)"/>, with the column matrix read from
    /// <paramref name="source"/> (the input, or its phase planes).</summary>
    public static void Forward<T>(in ConvGeometry g, ColumnSource<T> source, T* w, T* y, T beta, int* colOffsets, int threads)
        where T : unmanaged, INumber<T>
    {
        int* scatter = g.N > 1 && g.O > 1 ? colOffsets : null;
        var packer = new ColumnPacker<T>(g, source);
        Gemm.GemmPacked(g.O, g.N * g.P, g.K, packer, w, g.K, null, 0, beta, y, g.P, scatter, threads);
    }

    /// <summary>Where column t = (n, pixel) of the forward GEMM's output lies in y (N, O, P), relative to row o's start
    /// in image 0: n·O·P + pixel. The table for N images serves any batch of at most N images of this shape.</summary>
    public static void FillColumnOffsets(in ConvGeometry g, int* colOffsets)
    {
        int p = g.P;
        for (int i = 0; i < g.N; i++)
        {
            int baseOffset = i * g.O * p;
            for (int q = 0; q < p; q++)
            {
                colOffsets[(i * p) + q] = baseOffset + q;
            }
        }
    }

    /// <summary>dW (O, C, KH, KW) += Σ over images and pixels of dy ⊗ unfold(x), one GEMM over the whole batch.</summary>
    public static void WeightGrad<T>(in ConvGeometry g, T* x, T* dy, T* dw, int threads)
        where T : unmanaged, INumber<T> => WeightGrad(g, ColumnSource<T>.Input(x), dy, dw, T.One, threads);

    /// <summary>As <see cref="WeightGrad{T}(in ConvGeometry, T*, T*, T*, int)"/>, with the column matrix read from <paramref name="source"/>,
    /// as dw = dY · colsᵀ + beta·dw (beta = 0: dw not read).</summary>
    public static void WeightGrad<T>(in ConvGeometry g, ColumnSource<T> source, T* dy, T* dw, T beta, int threads)
        where T : unmanaged, INumber<T>
    {
        var packer = new WeightGradPacker<T>(g, source, dy);
        Gemm.GemmPacked(g.O, g.K, g.N * g.P, packer, null, 0, null, 0, beta, dw, g.K, null, threads);
    }

    /// <summary>Valid output columns [lo, hi) for kernel offset kOffset: those whose input index o·s - p + kOffset lies in [0, size).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static (int Lo, int Hi) ValidRange(int kOffset, int size, int outSize, int stride, int pad)
    {
        int a = pad - kOffset; // o·s >= a
        int lo = a <= 0 ? 0 : (a + stride - 1) / stride;
        int b = size - 1 + pad - kOffset; // o·s <= b
        int hi = b < 0 ? 0 : Math.Min(outSize, (b / stride) + 1);
        lo = Math.Min(lo, outSize);
        return (lo, Math.Max(lo, hi));
    }

    /// <summary>
    /// Writes row k of the column matrix, columns [t0, t0 + len) (t = (n, oh, ow) flattened over the batch), to dst.
    /// Whole image planes go in one shifted copy when the geometry is <see cref="ConvGeometry.SamePlane"/>; otherwise
    /// output row by output row.
    /// </summary>
    internal static void UnfoldRow<T>(in ConvGeometry g, T* x, int k, long t0, int len, T* dst)
        where T : unmanaged, INumber<T>
    {
        int khw = g.KH * g.KW;
        int c = k / khw, r = k - (c * khw), kh = r / g.KW, kw = r - (kh * g.KW);
        int s = g.Stride, pad = g.Pad, ow_ = g.OW, p = g.P;
        var (lo, hi) = ValidRange(kw, g.W, ow_, s, pad);
        var (ohLo, ohHi) = ValidRange(kh, g.H, g.OH, s, pad);
        int n = (int)(t0 / p), q = (int)(t0 - ((long)n * p));
        while (len > 0)
        {
            T* xc = x + (((long)n * g.C) + c) * g.HW;
            if (g.SamePlane)
            {
                int run = Math.Min(len, p - q);
                UnfoldPlaneRun(g, xc, kh, kw, lo, hi, ohLo, ohHi, q, run, dst);
                dst += run;
                len -= run;
                q += run;
            }
            else
            {
                int oh = q / ow_, ow = q - (oh * ow_);
                int run = Math.Min(len, ow_ - ow);
                if (oh < ohLo || oh >= ohHi)
                {
                    new Span<T>(dst, run).Clear();
                }
                else
                {
                    T* src = xc + ((oh * s) - pad + kh) * g.W - pad + kw; // src[o·s] is input column o·s - pad + kw
                    int end = ow + run;
                    int a = Math.Clamp(lo, ow, end), b = Math.Clamp(hi, a, end);
                    T* d = dst - ow;
                    for (int o = ow; o < a; o++)
                    {
                        d[o] = T.Zero;
                    }

                    if (s == 1)
                    {
                        new ReadOnlySpan<T>(src + a, b - a).CopyTo(new Span<T>(d + a, b - a));
                    }
                    else
                    {
                        int o = a;
                        if (s == 2 && typeof(T) == typeof(float) && Avx2.IsSupported)
                        {
                            // 15 loads (the 16th lane masked off, so nothing past the row's last needed element is
                            // read), the even ones kept.
                            for (; o + 8 <= b; o += 8)
                            {
                                Vector256.Store(EvenLanes((float*)src + (o * 2)), (float*)d + o);
                            }
                        }

                        for (; o < b; o++)
                        {
                            d[o] = src[o * s];
                        }
                    }

                    for (int o = b; o < end; o++)
                    {
                        d[o] = T.Zero;
                    }
                }

                dst += run;
                len -= run;
                q += run;
            }

            if (q == p)
            {
                q = 0;
                n++;
            }
        }
    }

    /// <summary>Lanes 0..6 on: the 16th float of a stride-2 load is never needed, and masking it off keeps the read
    /// inside the row (and the tensor) whenever the 8 outputs' own inputs are.</summary>
    private static readonly Vector256<float> FirstSevenLanes = Vector256.Create(-1, -1, -1, -1, -1, -1, -1, 0).AsSingle();

    /// <summary>Elements 0, 2, ..., 14 of the floats at p; reads p[0..15) only.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> EvenLanes(float* p)
    {
        Vector256<float> lo = Vector256.Load(p), hi = Avx.MaskLoad(p + 8, FirstSevenLanes);
        Vector256<float> evens = Avx.Shuffle(lo, hi, 0b10_00_10_00); // per 128-bit lane: lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6
        return Avx2.Permute4x64(evens.AsDouble(), 0b11_01_10_00).AsSingle();
    }

    /// <summary>
    /// Same-plane geometry, pixels [q, q + run) of one image: input index = pixel + (kh - pad)·W + (kw - pad), copied
    /// in one piece over the valid output rows, then the columns that fall into the horizontal padding are zeroed.
    /// </summary>
    private static void UnfoldPlaneRun<T>(in ConvGeometry g, T* xc, int kh, int kw, int lo, int hi, int ohLo, int ohHi, int q, int run, T* dst)
        where T : unmanaged, INumber<T> =>
        PlaneRun(xc, g.OW, g.HW, ((kh - g.Pad) * g.W) + (kw - g.Pad), lo, hi, ohLo, ohHi, q, run, dst);

    /// <summary>
    /// Pixels [q, q + run) of one shifted plane on a grid of rows of <paramref name="pw"/> (the plane's own row length):
    /// element t = plane[t + shift] for output rows [ohLo, ohHi) and columns [lo, hi), zero elsewhere.
    /// </summary>
    private static void PlaneRun<T>(T* xc, int pw, int planeSize, int shift, int lo, int hi, int ohLo, int ohHi, int q, int run, T* dst)
        where T : unmanaged, INumber<T>
    {
        int ow_ = pw, end = q + run;
        int a = Math.Clamp(ohLo * ow_, q, end), b = Math.Clamp(ohHi * ow_, a, end);
        if (a > q)
        {
            new Span<T>(dst, a - q).Clear();
        }

        if (b > a)
        {
            // The copy's ends may lie one column into the padding, where the shifted index leaves the plane; those
            // elements are zeroed below, so only the in-plane part is read.
            int srcA = Math.Max(a, -shift), srcB = Math.Min(b, planeSize - shift);
            for (int t = a; t < srcA; t++)
            {
                dst[t - q] = T.Zero;
            }

            if (srcB > srcA)
            {
                new ReadOnlySpan<T>(xc + srcA + shift, srcB - srcA).CopyTo(new Span<T>(dst + (srcA - q), srcB - srcA));
            }

            for (int t = Math.Max(srcB, srcA); t < b; t++)
            {
                dst[t - q] = T.Zero;
            }

            if (lo > 0 || hi < ow_)
            {
                int rowA = a / ow_, rowB = (b - 1) / ow_;
                for (int row = rowA; row <= rowB; row++)
                {
                    int rb = row * ow_;
                    for (int o = 0; o < lo; o++)
                    {
                        int t = rb + o;
                        if (t >= a && t < b)
                        {
                            dst[t - q] = T.Zero;
                        }
                    }

                    for (int o = hi; o < ow_; o++)
                    {
                        int t = rb + o;
                        if (t >= a && t < b)
                        {
                            dst[t - q] = T.Zero;
                        }
                    }
                }
            }
        }

        if (end > b)
        {
            new Span<T>(dst + (b - q), end - b).Clear();
        }
    }

    /// <summary>Rows of the column matrix unfolded together before they are spread over the panels.</summary>
    private const int StripRows = 8;

    /// <summary>The calling thread's scratch for unfolded rows (a GEMM workspace buffer: kept, counted in <see cref="Gemm.WorkspaceBytes"/>).</summary>
    private static T* UnfoldScratch<T>(int elements)
        where T : unmanaged => (T*)GemmWorkspace.AcquireUnfold((nuint)((long)elements * sizeof(T)));

    /// <summary>op(B) = the column matrix (K x N·P): row by row into scratch, then each row spread over the NR-wide panels.</summary>
    private sealed class ColumnPacker<T>(ConvGeometry g, ColumnSource<T> source) : IGemmPacker<T>
        where T : unmanaged, INumber<T>
    {
        public bool PacksA => false;

        public bool PacksB => true;

        public void PackA(int i0, int p0, int rows, int depth, T* dst, int mr) => throw new NotSupportedException();

        public void PackB(int p0, int j0, int depth, int cols, T* dst, int nr)
        {
            int p = g.P;
            if (source.HasPlanes && p % nr == 0 && j0 % nr == 0)
            {
                // Image by image (image boundaries then fall on panel boundaries), so that unshifted plane rows can be
                // read in place (ColumnSource.DirectRun) rather than copied through the strip.
                for (int t = j0, end = j0 + cols; t < end;)
                {
                    int run = Math.Min(end - t, p - (t % p));
                    PackColumns(p0, t, depth, run, dst + ((nint)((t - j0) / nr) * nr * depth), nr);
                    t += run;
                }

                return;
            }

            PackColumns(p0, j0, depth, cols, dst, nr);
        }

        private void PackColumns(int p0, int j0, int depth, int cols, T* dst, int nr)
        {
            // Strips of StripRows rows: each panel then receives StripRows·nr contiguous elements per strip. Spreading one
            // row at a time over the panels would store to addresses nr·depth apart, which alias the same cache sets.
            T* strip = UnfoldScratch<T>(StripRows * cols);
            int full = cols / nr, live = cols - (full * nr);
            nint panelStride = (nint)nr * depth;
            nint* rowStarts = stackalloc nint[StripRows];
            for (int p = 0; p < depth; p += StripRows)
            {
                int rows = Math.Min(StripRows, depth - p);
                for (int r = 0; r < rows; r++)
                {
                    // A row that is an unshifted run of one stored plane is read in place; others are unfolded into the strip.
                    T* row = source.DirectRun(g, p0 + p + r, j0, cols);
                    if (row == null)
                    {
                        row = strip + ((nint)r * cols);
                        source.Unfold(g, p0 + p + r, j0, cols, row);
                    }

                    rowStarts[r] = (nint)row;
                }

                T* d = dst + ((nint)p * nr);
                for (int q = 0; q < full; q++, d += panelStride)
                {
                    for (int r = 0; r < rows; r++)
                    {
                        CopyPanelRow((T*)rowStarts[r] + ((nint)q * nr), d + ((nint)r * nr), nr);
                    }
                }

                if (live > 0)
                {
                    for (int r = 0; r < rows; r++)
                    {
                        T* src = (T*)rowStarts[r] + ((nint)full * nr);
                        T* dr = d + ((nint)r * nr);
                        for (int j = 0; j < live; j++)
                        {
                            dr[j] = src[j];
                        }

                        for (int j = live; j < nr; j++)
                        {
                            dr[j] = T.Zero;
                        }
                    }
                }
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static void CopyPanelRow(T* src, T* dst, int nr)
        {
            if (typeof(T) == typeof(float) && nr == 16 && Vector256.IsHardwareAccelerated)
            {
                Vector256.Store(Vector256.Load((float*)src), (float*)dst);
                Vector256.Store(Vector256.Load((float*)src + 8), (float*)dst + 8);
            }
            else
            {
                Unsafe.CopyBlockUnaligned(dst, src, (uint)(nr * sizeof(T)));
            }
        }
    }

    /// <summary>
    /// dW's operands: op(A) = dY (O x N·P), element (o, t) = dy[n, o, pixel]; op(B) = colsᵀ (N·P x K), packed from
    /// unfolded rows transposed 8 x 8 into the panels.
    /// </summary>
    private sealed class WeightGradPacker<T>(ConvGeometry g, ColumnSource<T> source, T* dy) : IGemmPacker<T>
        where T : unmanaged, INumber<T>
    {
        public bool PacksA => true;

        public bool PacksB => true;

        public void PackA(int i0, int p0, int rows, int depth, T* dst, int mr)
        {
            int p = g.P, o = g.O;
            for (int ir = 0; ir < rows; ir += mr, dst += (nint)mr * depth)
            {
                int live = Math.Min(mr, rows - ir);
                int t = p0, end = p0 + depth;
                while (t < end)
                {
                    int n = t / p, q = t - (n * p);
                    int run = Math.Min(end - t, p - q);
                    T* src = dy + ((((long)n * o) + i0 + ir) * p) + q;
                    T* d = dst + ((nint)(t - p0) * mr);
                    if (typeof(T) == typeof(float) && mr == 6 && live == 6 && Avx.IsSupported)
                    {
                        GemmPack.PackA6Float((float*)src, p, run, (float*)d); // its overshoot lands on the next run, packed after it
                    }
                    else
                    {
                        for (int e = 0; e < run; e++, d += mr)
                        {
                            for (int r = 0; r < live; r++)
                            {
                                d[r] = src[((nint)r * p) + e];
                            }

                            for (int r = live; r < mr; r++)
                            {
                                d[r] = T.Zero;
                            }
                        }
                    }

                    t += run;
                }
            }
        }

        public void PackB(int p0, int j0, int depth, int cols, T* dst, int nr)
        {
            // Unfold nr rows of the column matrix (nr kernel taps, pixels p0..p0+depth) into scratch, then transpose. Over
            // stored planes the pixels go image by image, and unshifted plane rows are transposed in place.
            T* rows = UnfoldScratch<T>(nr * depth);
            nint* rowStarts = stackalloc nint[nr];
            int p = g.P;
            for (int jr = 0; jr < cols; jr += nr, dst += (nint)nr * depth)
            {
                int live = Math.Min(nr, cols - jr);
                for (int e0 = 0; e0 < depth;)
                {
                    int run = source.HasPlanes ? Math.Min(depth - e0, p - ((p0 + e0) % p)) : depth;
                    for (int j = 0; j < live; j++)
                    {
                        T* row = source.DirectRun(g, j0 + jr + j, p0 + e0, run);
                        if (row == null)
                        {
                            row = rows + ((nint)j * depth) + e0;
                            source.Unfold(g, j0 + jr + j, p0 + e0, run, row);
                        }

                        rowStarts[j] = (nint)row;
                    }

                    T* seg = dst + ((nint)e0 * nr);
                    int j8 = 0;
                    if (typeof(T) == typeof(float) && Avx.IsSupported)
                    {
                        for (; j8 + 8 <= live; j8 += 8)
                        {
                            float** r = (float**)rowStarts + j8;
                            GemmPack.PackBT8FloatRows(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], run, (float*)seg + j8, nr);
                        }
                    }

                    for (int j = j8; j < live; j++)
                    {
                        T* s = (T*)rowStarts[j];
                        T* d = seg + j;
                        for (int e = 0; e < run; e++, d += nr)
                        {
                            *d = s[e];
                        }
                    }

                    e0 += run;
                }

                for (int j = live; j < nr; j++)
                {
                    T* d = dst + j;
                    for (int e = 0; e < depth; e++, d += nr)
                    {
                        *d = T.Zero;
                    }
                }
            }
        }
    }
}
