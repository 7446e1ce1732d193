using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Sdp.Kernels.Cpu;

/// <summary>
/// Where the rows of an implicit GEMM's column matrix come from: the input itself, unfolded by the geometry
/// (<see cref="ConvGemm.UnfoldRow"/>), or planes on the output grid (OH x OW per plane), each row k being one plane shifted
/// by (dh, dw) with zeros where the shift leaves it (a row table holds plane, dh, dw per k). The planes serve strided
/// convolutions: split into its stride phases, a stride-s input is read by every kernel tap as a contiguous shifted copy,
/// as a stride-1 "same" convolution's input is, instead of a gather of every s-th element.
/// </summary>
public readonly unsafe struct ColumnSource<T>
    where T : unmanaged, INumber<T>
{
    private readonly T* data;
    private readonly int* rows;
    private readonly long imageStride;

    private ColumnSource(T* data, int* rows, long imageStride)
    {
        this.data = data;
        this.rows = rows;
        this.imageStride = imageStride;
    }

    /// <summary>The input x (N, C, H, W) of the geometry, unfolded as im2col would.</summary>
    public static ColumnSource<T> Input(T* x) => new(x, null, 0);

    /// <summary>Planes of OH x OW elements, image n's first at planes + n·imageStride; row k of the column matrix is plane
    /// rowTable[3k] shifted by (rowTable[3k+1], rowTable[3k+2]): element (oh, ow) = plane[oh + dh, ow + dw], zero outside.</summary>
    public static ColumnSource<T> Planes(T* planes, long imageStride, int* rowTable) => new(planes, rowTable, imageStride);

    /// <summary>The same source for the batch slice that starts at image n0.</summary>
    public ColumnSource<T> FromImage(in ConvGeometry g, int n0) =>
        rows == null ? new(data + ((long)n0 * g.C * g.HW), null, 0) : new(data + (n0 * imageStride), rows, imageStride);

    /// <summary>Whether rows come from stored planes (<see cref="Planes"/>) rather than the input's unfolding.</summary>
    internal bool HasPlanes => rows != null;

    /// <summary>Where row k's columns [t0, t0 + len) already lie contiguously in memory (an unshifted plane, the run inside
    /// one image), so they can be read in place; null when they must be unfolded.</summary>
    internal T* DirectRun(in ConvGeometry g, int k, long t0, int len)
    {
        if (rows == null || rows[(3 * k) + 1] != 0 || rows[(3 * k) + 2] != 0)
        {
            return null;
        }

        int p = g.P;
        long n = t0 / p;
        if ((t0 + len - 1) / p != n)
        {
            return null;
        }

        return data + (n * imageStride) + ((long)rows[3 * k] * p) + (t0 - (n * p));
    }

    /// <summary>Row k of the column matrix, columns [t0, t0 + len) of the batch, into dst.</summary>
    internal void Unfold(in ConvGeometry g, int k, long t0, int len, T* dst)
    {
        if (rows == null)
        {
            ConvGemm.UnfoldRow(g, data, k, t0, len, dst);
        }
        else
        {
            ConvGemm.UnfoldShifted(data, imageStride, g.OH, g.OW, rows[3 * k], rows[(3 * k) + 1], rows[(3 * k) + 2], t0, len, dst);
        }
    }
}

/// <summary>Strided convolutions through stride phases (see <see cref="ColumnSource{T}"/>).</summary>
public static unsafe partial class ConvGemm
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int FloorDiv(int a, int b) => a >= 0 ? a / b : -((-a + b - 1) / b);

    /// <summary>
    /// Whether the phase planes (s² per channel, each OH x OW: phase (a, b) holds x[s·i + a, s·j + b]) carry every input
    /// element the convolution reads: a tap with input offset r = kh - pad = s·dh + a reads phase row oh + dh, which must stay
    /// below OH whenever its input row s·(oh + dh) + a lies inside the plane (and likewise for columns).
    /// </summary>
    public static bool PhaseSplitFits(in ConvGeometry g)
    {
        if (g.Stride < 2)
        {
            return false;
        }

        return Fits(g.H, g.OH, g.KH, g.Stride, g.Pad) && Fits(g.W, g.OW, g.KW, g.Stride, g.Pad);

        static bool Fits(int size, int outSize, int taps, int stride, int pad)
        {
            for (int kOffset = 0; kOffset < taps; kOffset++)
            {
                int r = kOffset - pad, dh = FloorDiv(r, stride), a = r - (stride * dh);
                if (dh >= 1 && (stride * outSize) + a < size)
                {
                    return false;
                }
            }

            return true;
        }
    }

    /// <summary>The stride phases some kernel tap reads, as bit masks over row phases a and column phases b.</summary>
    private static (uint Rows, uint Cols) UsedPhases(in ConvGeometry g)
    {
        uint rows = 0, cols = 0;
        for (int kh = 0; kh < g.KH; kh++)
        {
            int r = kh - g.Pad;
            rows |= 1u << (r - (g.Stride * FloorDiv(r, g.Stride)));
        }

        for (int kw = 0; kw < g.KW; kw++)
        {
            int r = kw - g.Pad;
            cols |= 1u << (r - (g.Stride * FloorDiv(r, g.Stride)));
        }

        return (rows, cols);
    }

    /// <summary>Phase planes kept per input plane: only the phases some tap reads (all four for a 3x3 stride-2 kernel with
    /// padding 1, one for the 1x1 stride-2 shortcut, whose planes are then just x's even rows and columns).</summary>
    public static int PhasesPerPlane(in ConvGeometry g)
    {
        var (rows, cols) = UsedPhases(g);
        return BitOperations.PopCount(rows) * BitOperations.PopCount(cols);
    }

    /// <summary>Where phase (a, b) lies among a plane's kept phases (row phases outer, both in increasing order).</summary>
    private static int PhaseSlot(uint usedRows, uint usedCols, int a, int b) =>
        (BitOperations.PopCount(usedRows & ((1u << a) - 1)) * BitOperations.PopCount(usedCols)) + BitOperations.PopCount(usedCols & ((1u << b) - 1));

    /// <summary>Elements of the phase planes of the whole batch: N·C·<see cref="PhasesPerPlane"/>·OH·OW.</summary>
    public static long PhasePlaneElements(in ConvGeometry g) => (long)g.N * g.C * PhasesPerPlane(g) * g.P;

    /// <summary>The row table of the column matrix over phase planes: row k = (c, kh, kw) reads plane c·U + slot(a, b)
    /// (U = <see cref="PhasesPerPlane"/>) shifted by (dh, dw), where kh - pad = s·dh + a and kw - pad = s·dw + b. 3·K ints.</summary>
    public static void FillPhaseRows(in ConvGeometry g, int* rows)
    {
        int s = g.Stride, u = PhasesPerPlane(g);
        var (usedRows, usedCols) = UsedPhases(g);
        for (int c = 0, k = 0; c < g.C; c++)
        {
            for (int kh = 0; kh < g.KH; kh++)
            {
                int dh = FloorDiv(kh - g.Pad, s), a = kh - g.Pad - (s * dh);
                for (int kw = 0; kw < g.KW; kw++, k++)
                {
                    int dw = FloorDiv(kw - g.Pad, s), b = kw - g.Pad - (s * dw);
                    rows[3 * k] = (c * u) + PhaseSlot(usedRows, usedCols, a, b);
                    rows[(3 * k) + 1] = dh;
                    rows[(3 * k) + 2] = dw;
                }
            }
        }
    }

    /// <summary>
    /// Splits the (image, channel) planes [plane0, plane1) of x into the stride phases some tap reads: phase (a, b) of
    /// plane (n, c) is planes[((n·C + c)·U + slot(a, b))·OH·OW + i·OW + j] = x[n, c, s·i + a, s·j + b], zero past the
    /// input's edge (U and slot: <see cref="PhasesPerPlane"/>, <see cref="FillPhaseRows"/>).
    /// </summary>
    public static void SplitPhases<T>(in ConvGeometry g, T* x, T* planes, long plane0, long plane1)
        where T : unmanaged, INumber<T>
    {
        int s = g.Stride, oh_ = g.OH, ow_ = g.OW, p = g.P, w = g.W, u = PhasesPerPlane(g);
        var (usedRows, usedCols) = UsedPhases(g);
        bool evensUsed = (usedCols & 1) != 0, oddsUsed = (usedCols & 2) != 0;
        for (long plane = plane0; plane < plane1; plane++)
        {
            T* src = x + (plane * g.HW);
            T* dst0 = planes + (plane * u * p);
            for (int a = 0; a < s; a++)
            {
                if ((usedRows & (1u << a)) == 0)
                {
                    continue;
                }

                for (int i = 0; i < oh_; i++)
                {
                    int ih = (s * i) + a;
                    T* row = src + ((long)ih * w);
                    T* d = dst0 + ((long)i * ow_); // phase (a, b) of this row at d + slot(a, b)·p
                    if (ih >= g.H)
                    {
                        for (int b = 0; b < s; b++)
                        {
                            if ((usedCols & (1u << b)) != 0)
                            {
                                new Span<T>(d + ((long)PhaseSlot(usedRows, usedCols, a, b) * p), ow_).Clear();
                            }
                        }

                        continue;
                    }

                    int j = 0;
                    if (s == 2 && typeof(T) == typeof(float) && Avx2.IsSupported)
                    {
                        // 16 input columns per step, de-interleaved into 8 even (phase b = 0) and 8 odd (b = 1).
                        float* even = (float*)d + ((long)PhaseSlot(usedRows, usedCols, a, 0) * p);
                        float* odd = (float*)d + ((long)PhaseSlot(usedRows, usedCols, a, 1) * p);
                        for (; j + 8 <= ow_ && (2 * j) + 16 <= w; j += 8)
                        {
                            var lo = Vector256.Load((float*)row + (2 * j));
                            var hi = Vector256.Load((float*)row + (2 * j) + 8);
                            if (evensUsed)
                            {
                                Vector256.Store(Avx2.Permute4x64(Avx.Shuffle(lo, hi, 0b10_00_10_00).AsDouble(), 0b11_01_10_00).AsSingle(), even + j);
                            }

                            if (oddsUsed)
                            {
                                Vector256.Store(Avx2.Permute4x64(Avx.Shuffle(lo, hi, 0b11_01_11_01).AsDouble(), 0b11_01_10_00).AsSingle(), odd + j);
                            }
                        }
                    }

                    for (; j < ow_; j++)
                    {
                        for (int b = 0; b < s; b++)
                        {
                            if ((usedCols & (1u << b)) == 0)
                            {
                                continue;
                            }

                            int iw = (s * j) + b;
                            d[((long)PhaseSlot(usedRows, usedCols, a, b) * p) + j] = iw < w ? row[iw] : T.Zero;
                        }
                    }
                }
            }
        }
    }

    /// <summary>
    /// Row k of a column matrix over shifted planes (see <see cref="ColumnSource{T}.Planes"/>), columns [t0, t0 + len) of
    /// the batch (t = (n, oh, ow)), into dst.
    /// </summary>
    internal static void UnfoldShifted<T>(T* planes, long imageStride, int ph, int pw, int plane, int dh, int dw, long t0, int len, T* dst)
        where T : unmanaged, INumber<T>
    {
        int p = ph * pw;
        int lo = Math.Clamp(-dw, 0, pw), hi = Math.Clamp(pw - dw, lo, pw);
        int ohLo = Math.Clamp(-dh, 0, ph), ohHi = Math.Clamp(ph - dh, ohLo, ph);
        int shift = (dh * pw) + dw;
        int n = (int)(t0 / p), q = (int)(t0 - ((long)n * p));
        while (len > 0)
        {
            int run = Math.Min(len, p - q);
            PlaneRun(planes + (n * imageStride) + ((long)plane * p), pw, p, shift, lo, hi, ohLo, ohHi, q, run, dst);
            dst += run;
            len -= run;
            q = 0;
            n++;
        }
    }

    /// <summary>
    /// dx's channel plane dxc += the fold (col2im) of that channel's KH·KW rows of a column-gradient block: row k = (c, kh, kw)
    /// of dcols (row stride ld, the image's columns starting at dcols) adds into dx at the rows and columns it was unfolded
    /// from. At stride 2 (float32, AVX2) eight columns go at a time: they are interleaved with zeros and added to sixteen
    /// consecutive elements of dx, leaving the odd ones unchanged (x + 0 = x), instead of eight scalar strided adds.
    /// </summary>
    public static void Col2ImPlane<T>(in ConvGeometry g, T* dcols, long ld, int c, T* dxc)
        where T : unmanaged, INumber<T>
    {
        int s = g.Stride, pad = g.Pad, ow_ = g.OW;
        bool vector = s == 2 && typeof(T) == typeof(float) && Avx2.IsSupported;
        for (int kh = 0; kh < g.KH; kh++)
        {
            for (int kw = 0; kw < g.KW; kw++)
            {
                T* row = dcols + ((((long)c * g.KH) + kh) * g.KW + kw) * ld;
                var (lo, hi) = ValidRange(kw, g.W, ow_, s, pad);
                if (hi <= lo)
                {
                    continue;
                }

                // Vector steps start at o with input columns 2o - pad + kw .. + 15 inside the row: o + 8 <= vectorEnd.
                int vectorEnd = vector ? Math.Min(hi, FloorDiv(g.W - 16 + pad - kw, 2) + 8) : lo;
                for (int oh = 0; oh < g.OH; oh++)
                {
                    int ih = (oh * s) - pad + kh;
                    if ((uint)ih >= (uint)g.H)
                    {
                        continue;
                    }

                    T* src = row + ((long)oh * ow_);
                    T* dst = dxc + ((long)ih * g.W) - pad + kw; // dst[o·s] is input column o·s - pad + kw
                    int o = lo;
                    if (vector)
                    {
                        for (; o + 8 <= vectorEnd; o += 8)
                        {
                            var v = Vector256.Load((float*)src + o);
                            var lowPairs = Avx.UnpackLow(v, Vector256<float>.Zero);   // s0 0 s1 0 | s4 0 s5 0
                            var highPairs = Avx.UnpackHigh(v, Vector256<float>.Zero); // s2 0 s3 0 | s6 0 s7 0
                            float* d = (float*)dst + (2 * o);
                            Vector256.Store(Vector256.Load(d) + Avx.Permute2x128(lowPairs, highPairs, 0x20), d);
                            Vector256.Store(Vector256.Load(d + 8) + Avx.Permute2x128(lowPairs, highPairs, 0x31), d + 8);
                        }
                    }

                    for (; o < hi; o++)
                    {
                        dst[o * s] += src[o];
                    }
                }
            }
        }
    }
}
