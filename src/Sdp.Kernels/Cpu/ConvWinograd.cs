using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Sdp.Kernels.Cpu;

/// <summary>
/// The transforms of Winograd's minimal filtering algorithm F(m, 3) for a 3-tap correlation y_i = Σ_k g_k d_(i+k),
/// i &lt; m, over α = m + 2 inputs: y = Aᵀ [(G g) ⊙ (Bᵀ d)], nested in 2-d as Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A.
/// The matrices are Toom-Cook's for the interpolation points 0, ±1, (±2,) ∞ (the well-conditioned standard set);
/// they are data, so one set of kernels serves every tile size. Each is kept as its non-zero entries per row, since
/// about a third of the entries are zero.
/// </summary>
public sealed class WinogradTransform
{
    /// <summary>F(2x2, 3x3): α = 4, points 0, 1, -1, ∞. 16 multiplications per 4 outputs instead of 36.</summary>
    public static readonly WinogradTransform F2 = new(
        2,
        [
            1, 0, -1, 0,
            0, 1, 1, 0,
            0, -1, 1, 0,
            0, 1, 0, -1,
        ],
        [
            1, 0, 0,
            0.5f, 0.5f, 0.5f,
            0.5f, -0.5f, 0.5f,
            0, 0, 1,
        ],
        [
            1, 1, 1, 0,
            0, 1, -1, -1,
        ]);

    /// <summary>F(4x4, 3x3): α = 6, points 0, 1, -1, 2, -2, ∞. 36 multiplications per 16 outputs instead of 144.</summary>
    public static readonly WinogradTransform F4 = new(
        4,
        [
            4, 0, -5, 0, 1, 0,
            0, -4, -4, 1, 1, 0,
            0, 4, -4, -1, 1, 0,
            0, -2, -1, 2, 1, 0,
            0, 2, -1, -2, 1, 0,
            0, 4, 0, -5, 0, 1,
        ],
        [
            1 / 4f, 0, 0,
            -1 / 6f, -1 / 6f, -1 / 6f,
            -1 / 6f, 1 / 6f, -1 / 6f,
            1 / 24f, 1 / 12f, 1 / 6f,
            1 / 24f, -1 / 12f, 1 / 6f,
            0, 0, 1,
        ],
        [
            1, 1, 1, 1, 1, 0,
            0, 1, -1, 2, -2, 0,
            0, 1, 1, 4, 4, 0,
            0, 1, -1, 8, -8, 1,
        ]);

    private WinogradTransform(int m, float[] inputT, float[] filter, float[] outputT)
    {
        M = m;
        int alpha = m + 2;
        InputT = new Sparse(alpha, alpha, inputT);
        Filter = new Sparse(alpha, 3, filter);
        OutputT = new Sparse(m, alpha, outputT);
        Output = OutputT.Transposed();
        FilterT = Filter.Transposed();
    }

    /// <summary>Output tile size m.</summary>
    public int M { get; }

    /// <summary>Input tile size α = m + 2.</summary>
    public int Alpha => M + 2;

    /// <summary>α², the number of independent products (GEMMs) per tile.</summary>
    public int Points => Alpha * Alpha;

    /// <summary>Bᵀ (α x α): input tile d to Bᵀ d B.</summary>
    internal Sparse InputT { get; }

    /// <summary>G (α x 3): filter g to G g Gᵀ.</summary>
    internal Sparse Filter { get; }

    /// <summary>Gᵀ (3 x α): a transformed filter gradient back to the 3 x 3 kernel.</summary>
    internal Sparse FilterT { get; }

    /// <summary>Aᵀ (m x α): a product tile back to the m x m output.</summary>
    internal Sparse OutputT { get; }

    /// <summary>A (α x m): an output-gradient tile to A dY Aᵀ.</summary>
    internal Sparse Output { get; }

    /// <summary>The transform for output tile size m (2 or 4).</summary>
    public static WinogradTransform ForTile(int m) => m switch
    {
        2 => F2,
        4 => F4,
        _ => throw new ArgumentOutOfRangeException(nameof(m), m, "Winograd tiles of 2 or 4 outputs are implemented"),
    };

    /// <summary>A dense matrix (rows x cols) as its non-zero entries, row by row.</summary>
    internal sealed class Sparse
    {
        public Sparse(int rows, int cols, float[] dense)
        {
            if (dense.Length != rows * cols)
            {
                throw new ArgumentException($"a {rows} x {cols} matrix needs {rows * cols} entries, got {dense.Length}");
            }

            Rows = rows;
            Cols = cols;
            Dense = dense;
            RowStart = new int[rows + 1];
            var index = new List<int>();
            var value = new List<float>();
            for (int r = 0; r < rows; r++)
            {
                RowStart[r] = index.Count;
                for (int c = 0; c < cols; c++)
                {
                    if (dense[(r * cols) + c] != 0)
                    {
                        index.Add(c);
                        value.Add(dense[(r * cols) + c]);
                    }
                }
            }

            RowStart[rows] = index.Count;
            Index = [.. index];
            Value = [.. value];
        }

        public int Rows { get; }

        public int Cols { get; }

        public float[] Dense { get; }

        /// <summary>Row r's entries are [RowStart[r], RowStart[r + 1]) of <see cref="Index"/> and <see cref="Value"/>.</summary>
        public int[] RowStart { get; }

        public int[] Index { get; }

        public float[] Value { get; }

        public Sparse Transposed()
        {
            var t = new float[Dense.Length];
            for (int r = 0; r < Rows; r++)
            {
                for (int c = 0; c < Cols; c++)
                {
                    t[(c * Rows) + r] = Dense[(r * Cols) + c];
                }
            }

            return new Sparse(Cols, Rows, t);
        }
    }
}

/// <summary>
/// Winograd convolution building blocks for float32 NCHW, 3 x 3 kernels, stride 1, any padding, any plane size
/// (edge tiles are read with zeros beyond the plane and written only where they overlap it). The caller (the CPU
/// backend) owns threading and workspace; every routine here handles a range of items and touches nothing else, so
/// ranges may run on different threads.
/// <para>Layouts, for a group of T tiles (t = image-in-group, tile row, tile column) and ξ &lt; α² transform points:
/// U[ξ][o][c] (the transformed filters, O x C per point), V[ξ][t][c] (transformed input tiles, T x C per point),
/// M[ξ][t][o] (products, T x O per point). The forward pass is then α² GEMMs M[ξ] = V[ξ] · U[ξ]ᵀ, and the weight
/// gradient α² GEMMs dU[ξ] += Mᵀ[ξ] · V[ξ] with M holding the transformed output gradient.</para>
/// <para>Vectorisation: every transform runs on 8 channels at once (the lanes of a Vector256), so the transformed
/// buffers are written and read in contiguous runs of channels. On the NCHW side, where channels lie a plane apart, the
/// row transforms (<see cref="InputTransformRows"/>, <see cref="OutputGradTransformRows"/>, <see cref="OutputTransformRows"/>)
/// move whole rows through a per-thread band with 8 x 8 register transposes; the first version's per-tile transforms
/// (<see cref="InputTransform"/> and the others), which gather and store element by element, stay as the benchmark's
/// and the tests' point of comparison.</para>
/// </summary>
[SkipLocalsInit]
public static unsafe class ConvWinograd
{
    private const int Lanes = 8;

    /// <summary>The largest α the stack buffers are sized for (F(6, 3)).</summary>
    private const int MaxAlpha = 8;

    /// <summary>Stack scratch of one transform: window, half-transformed and result tiles, and the spill of the result.</summary>
    private const int ScratchVectors = 4 * MaxAlpha * MaxAlpha;

    /// <summary>Tile rows of an OH x OW output: ⌈OH / m⌉.</summary>
    public static int TileRows(in ConvGeometry g, int m) => (g.OH + m - 1) / m;

    /// <summary>Tile columns of an OH x OW output: ⌈OW / m⌉.</summary>
    public static int TileCols(in ConvGeometry g, int m) => (g.OW + m - 1) / m;

    /// <summary>Whether the geometry is one these kernels compute: 3 x 3, stride 1, an output of the size stride 1 gives.</summary>
    public static bool Supports(in ConvGeometry g) =>
        g.KH == 3 && g.KW == 3 && g.Stride == 1 && g.OH == g.H + (2 * g.Pad) - 2 && g.OW == g.W + (2 * g.Pad) - 2 && g.OH > 0 && g.OW > 0;

    /// <summary>U[ξ][o][c] = (G w[o, c] Gᵀ)[ξ] for filters [o0, o1); w is (O, C, 3, 3), U has point stride
    /// <paramref name="pointStride"/> (at least O·C) and row stride C.</summary>
    public static void FilterTransform(WinogradTransform tr, float* w, int inChannels, float* u, long pointStride, int o0, int o1)
    {
        Vector256<float>* scratch = stackalloc Vector256<float>[ScratchVectors];
        for (int o = o0; o < o1; o++)
        {
            TransformIn(scratch, tr.Filter, w + ((long)o * inChannels * 9), 9, inChannels, 3, 3, 3, 0, 0, u + ((long)o * inChannels), pointStride);
        }
    }

    /// <summary>
    /// V[ξ][t][c] = (Bᵀ d B)[ξ] for tiles [t0, t1) of a group whose first image is x (N', C, H, W): tile t's input d is
    /// the α x α window of x at row th·m - pad, column tw·m - pad (zeros outside the plane). V has point stride
    /// <paramref name="pointStride"/> (at least the group's tiles x C) and row stride C.
    /// </summary>
    public static void InputTransform(WinogradTransform tr, in ConvGeometry g, float* x, int t0, int t1, float* v, long pointStride)
    {
        Vector256<float>* scratch = stackalloc Vector256<float>[ScratchVectors];
        int m = tr.M, rows = TileRows(g, m), cols = TileCols(g, m), perImage = rows * cols;
        for (int t = t0; t < t1; t++)
        {
            int n = t / perImage, r = t - (n * perImage), th = r / cols, tw = r - (th * cols);
            TransformIn(scratch, tr.InputT, x + ((long)n * g.C * g.HW), g.HW, g.C, g.W, g.H, g.W, (th * m) - g.Pad, (tw * m) - g.Pad, v + ((long)t * g.C), pointStride);
        }
    }

    /// <summary>
    /// Mh[ξ][t][o] = (A dY Aᵀ)[ξ] for tiles [t0, t1) of a group whose first image's output gradient is dy (N', O, OH, OW):
    /// tile t's dY is the m x m block at (th·m, tw·m), zeros outside the plane. Mh has row stride O.
    /// </summary>
    public static void OutputGradTransform(WinogradTransform tr, in ConvGeometry g, float* dy, int t0, int t1, float* mh, long pointStride)
    {
        Vector256<float>* scratch = stackalloc Vector256<float>[ScratchVectors];
        int m = tr.M, rows = TileRows(g, m), cols = TileCols(g, m), perImage = rows * cols;
        for (int t = t0; t < t1; t++)
        {
            int n = t / perImage, r = t - (n * perImage), th = r / cols, tw = r - (th * cols);
            TransformIn(scratch, tr.Output, dy + ((long)n * g.O * g.P), g.P, g.O, g.OW, g.OH, g.OW, th * m, tw * m, mh + ((long)t * g.O), pointStride);
        }
    }

    /// <summary>
    /// y[tile] = (Aᵀ M A) + beta·y[tile] for tiles [t0, t1) of a group whose first image's output is y (N', O, OH, OW);
    /// M[ξ][t][o] has row stride O. beta = 0 does not read y.
    /// </summary>
    public static void OutputTransform(WinogradTransform tr, in ConvGeometry g, float* mt, long pointStride, int t0, int t1, float* y, float beta)
    {
        Vector256<float>* scratch = stackalloc Vector256<float>[ScratchVectors];
        int m = tr.M, rows = TileRows(g, m), cols = TileCols(g, m), perImage = rows * cols;
        for (int t = t0; t < t1; t++)
        {
            int n = t / perImage, r = t - (n * perImage), th = r / cols, tw = r - (th * cols);
            int oh = th * m, ow = tw * m;
            float* dst = y + ((long)n * g.O * g.P) + ((long)oh * g.OW) + ow;
            TransformOut(scratch, tr.OutputT, mt + ((long)t * g.O), pointStride, g.O, dst, g.P, g.OW, Math.Min(m, g.OH - oh), Math.Min(m, g.OW - ow), beta);
        }
    }

    // ---- Row transforms: the NCHW side through an interleaved band --------------------------------------------
    //
    // A work item is one tile row of one image (r = image-in-group · TileRows + tile row). Per block of 8 channels the
    // rows the tile row needs are interleaved into a band of vectors (band[i][b] = the 8 channels at one pixel, zeros
    // outside the plane) with 8 x 8 transposes of contiguous row loads, so the tiles then read plain vectors: no gathers,
    // no bounds checks. The output side runs the other way: tiles are transformed into a band of m output rows, which
    // is transposed back to the 8 channel planes with whole-vector stores (beta·y fused). The band is per thread, of
    // BandFloats floats, 32-byte aligned.

    /// <summary>Floats of band scratch one thread needs for the row transforms of this shape: α rows of ⌈OW/m⌉·m + 2
    /// pixels of 8 channels (the widest band, the input side's).</summary>
    public static long BandFloats(in ConvGeometry g, int m) => (long)(m + 2) * ((TileCols(g, m) * m) + 2) * Lanes;

    /// <summary>Work items of the row transforms for a group of <paramref name="images"/> images: one per (image, tile row).</summary>
    public static int RowItems(in ConvGeometry g, int m, int images) => images * TileRows(g, m);

    /// <summary>
    /// V[ξ][t][c] = (Bᵀ d B)[ξ] for the tiles of row items [r0, r1) of a group whose first image is x; the same values as
    /// <see cref="InputTransform"/>. <paramref name="band"/>: this thread's <see cref="BandFloats"/> floats.
    /// </summary>
    public static void InputTransformRows(WinogradTransform tr, in ConvGeometry g, float* x, int r0, int r1, float* v, long pointStride, float* band)
    {
        if (tr.M == 4) InputRows<InputF4>(g, 4, x, r0, r1, v, pointStride, (Vector256<float>*)band);
        else if (tr.M == 2) InputRows<InputF2>(g, 2, x, r0, r1, v, pointStride, (Vector256<float>*)band);
        else throw new ArgumentOutOfRangeException(nameof(tr), tr.M, "row transforms are written for F(2, 3) and F(4, 3)");
    }

    /// <summary>
    /// Mh[ξ][t][o] = (A dY Aᵀ)[ξ] for the tiles of row items [r0, r1) of a group whose first image's output gradient is dy;
    /// the same values as <see cref="OutputGradTransform"/>.
    /// </summary>
    public static void OutputGradTransformRows(WinogradTransform tr, in ConvGeometry g, float* dy, int r0, int r1, float* mh, long pointStride, float* band)
    {
        if (tr.M == 4) OutputGradRows<OutputGradF4>(g, 4, dy, r0, r1, mh, pointStride, (Vector256<float>*)band);
        else if (tr.M == 2) OutputGradRows<OutputGradF2>(g, 2, dy, r0, r1, mh, pointStride, (Vector256<float>*)band);
        else throw new ArgumentOutOfRangeException(nameof(tr), tr.M, "row transforms are written for F(2, 3) and F(4, 3)");
    }

    /// <summary>
    /// y = (Aᵀ M A) + beta·y for the tiles of row items [r0, r1) of a group whose first image's output is y; the same values
    /// as <see cref="OutputTransform"/>. beta = 0 does not read y.
    /// </summary>
    public static void OutputTransformRows(WinogradTransform tr, in ConvGeometry g, float* mt, long pointStride, int r0, int r1, float* y, float beta, float* band)
    {
        if (tr.M == 4) OutputRows<OutputF4>(g, 4, mt, pointStride, r0, r1, y, beta, (Vector256<float>*)band);
        else if (tr.M == 2) OutputRows<OutputF2>(g, 2, mt, pointStride, r0, r1, y, beta, (Vector256<float>*)band);
        else throw new ArgumentOutOfRangeException(nameof(tr), tr.M, "row transforms are written for F(2, 3) and F(4, 3)");
    }

    private static void InputRows<TB>(in ConvGeometry g, int m, float* x, int r0, int r1, float* v, long pointStride, Vector256<float>* band)
        where TB : struct, ITransform1d
    {
        Vector256<float>* half = stackalloc Vector256<float>[2 * MaxAlpha * MaxAlpha];
        Vector256<float>* result = half + (MaxAlpha * MaxAlpha);
        int alpha = m + 2, rows = TileRows(g, m), cols = TileCols(g, m), width = (cols * m) + 2;
        for (int r = r0; r < r1; r++)
        {
            int n = r / rows, th = r - (n * rows);
            float* image = x + ((long)n * g.C * g.HW);
            long firstTile = ((long)n * rows * cols) + ((long)th * cols);
            for (int c = 0; c < g.C; c += Lanes)
            {
                int count = Math.Min(Lanes, g.C - c);
                FillBand(image + ((long)c * g.HW), g.HW, count, g.H, g.W, (th * m) - g.Pad, -g.Pad, alpha, width, band);
                for (int tw = 0; tw < cols; tw++)
                {
                    Apply2d<TB>(band + (tw * m), width, half, result, alpha);
                    StoreTile(result, alpha * alpha, v + ((firstTile + tw) * g.C) + c, pointStride, count);
                }
            }
        }
    }

    private static void OutputGradRows<TA>(in ConvGeometry g, int m, float* dy, int r0, int r1, float* mh, long pointStride, Vector256<float>* band)
        where TA : struct, ITransform1d
    {
        Vector256<float>* half = stackalloc Vector256<float>[2 * MaxAlpha * MaxAlpha];
        Vector256<float>* result = half + (MaxAlpha * MaxAlpha);
        int alpha = m + 2, rows = TileRows(g, m), cols = TileCols(g, m), width = cols * m;
        for (int r = r0; r < r1; r++)
        {
            int n = r / rows, th = r - (n * rows);
            float* image = dy + ((long)n * g.O * g.P);
            long firstTile = ((long)n * rows * cols) + ((long)th * cols);
            for (int o = 0; o < g.O; o += Lanes)
            {
                int count = Math.Min(Lanes, g.O - o);
                FillBand(image + ((long)o * g.P), g.P, count, g.OH, g.OW, th * m, 0, m, width, band);
                for (int tw = 0; tw < cols; tw++)
                {
                    Apply2d<TA>(band + (tw * m), width, half, result, alpha);
                    StoreTile(result, alpha * alpha, mh + ((firstTile + tw) * g.O) + o, pointStride, count);
                }
            }
        }
    }

    private static void OutputRows<TA>(in ConvGeometry g, int m, float* mt, long pointStride, int r0, int r1, float* y, float beta, Vector256<float>* band)
        where TA : struct, ITransform1d
    {
        Vector256<float>* tile = stackalloc Vector256<float>[2 * MaxAlpha * MaxAlpha];
        Vector256<float>* half = tile + (MaxAlpha * MaxAlpha);
        int alpha = m + 2, points = alpha * alpha, rows = TileRows(g, m), cols = TileCols(g, m), width = cols * m;
        for (int r = r0; r < r1; r++)
        {
            int n = r / rows, th = r - (n * rows), validRows = Math.Min(m, g.OH - (th * m));
            float* image = y + ((long)n * g.O * g.P) + ((long)th * m * g.OW);
            long firstTile = ((long)n * rows * cols) + ((long)th * cols);
            for (int o = 0; o < g.O; o += Lanes)
            {
                int count = Math.Min(Lanes, g.O - o);
                for (int tw = 0; tw < cols; tw++)
                {
                    float* src = mt + ((firstTile + tw) * g.O) + o;
                    for (int xi = 0; xi < points; xi++)
                    {
                        tile[xi] = count == Lanes ? Vector256.Load(src + (xi * pointStride)) : LoadStrided(src + (xi * pointStride), 1, count);
                    }

                    Apply2d<TA>(tile, alpha, half, band + (tw * m), width);
                }

                for (int i = 0; i < validRows; i++)
                {
                    DeinterleaveRow(band + (i * width), g.OW, image + ((long)o * g.P) + ((long)i * g.OW), g.P, count, beta);
                }
            }
        }
    }

    /// <summary>band[i][b] (bandRows x bandCols vectors) = lanes ℓ &lt; count of plane src + ℓ·laneStride (planeRows x planeCols,
    /// row stride planeCols) at row r0 + i, column c0 + b; zero outside the plane and in lanes ≥ count.</summary>
    private static void FillBand(float* src, long laneStride, int count, int planeRows, int planeCols, int r0, int c0, int bandRows, int bandCols, Vector256<float>* band)
    {
        int b0 = Math.Clamp(-c0, 0, bandCols), b1 = Math.Clamp(planeCols - c0, b0, bandCols);
        for (int i = 0; i < bandRows; i++)
        {
            Vector256<float>* dst = band + (i * bandCols);
            int row = r0 + i;
            if ((uint)row >= (uint)planeRows)
            {
                for (int b = 0; b < bandCols; b++) dst[b] = Vector256<float>.Zero;
                continue;
            }

            for (int b = 0; b < b0; b++) dst[b] = Vector256<float>.Zero;
            InterleaveRow(src + ((long)row * planeCols) + c0 + b0, laneStride, count, b1 - b0, dst + b0);
            for (int b = b1; b < bandCols; b++) dst[b] = Vector256<float>.Zero;
        }
    }

    /// <summary>dst[j] lane ℓ = src[ℓ·laneStride + j] for j &lt; width, ℓ &lt; count (lanes ≥ count zero): 8 x 8 blocks transposed
    /// in registers, the tail element by element.</summary>
    private static void InterleaveRow(float* src, long laneStride, int count, int width, Vector256<float>* dst)
    {
        int j = 0;
        if (Avx.IsSupported)
        {
            Vector256<float>* block = stackalloc Vector256<float>[Lanes];
            for (; j + Lanes <= width; j += Lanes)
            {
                for (int k = 0; k < Lanes; k++) block[k] = k < count ? Vector256.Load(src + (k * laneStride) + j) : Vector256<float>.Zero;
                Transpose8x8(block);
                for (int k = 0; k < Lanes; k++) dst[j + k] = block[k];
            }
        }

        for (; j < width; j++)
        {
            dst[j] = LoadStrided(src + j, laneStride, count);
        }
    }

    /// <summary>Lane ℓ &lt; count of src[j] (j &lt; width) to dst[ℓ·laneStride + j], as value + beta·dst (beta = 0: dst not read).</summary>
    private static void DeinterleaveRow(Vector256<float>* src, int width, float* dst, long laneStride, int count, float beta)
    {
        int j = 0;
        if (Avx.IsSupported)
        {
            Vector256<float>* block = stackalloc Vector256<float>[Lanes];
            var b = Vector256.Create(beta);
            for (; j + Lanes <= width; j += Lanes)
            {
                for (int k = 0; k < Lanes; k++) block[k] = src[j + k];
                Transpose8x8(block);
                for (int k = 0; k < count; k++)
                {
                    float* p = dst + (k * laneStride) + j;
                    (beta == 0f ? block[k] : block[k] + (b * Vector256.Load(p))).Store(p);
                }
            }
        }

        for (; j < width; j++)
        {
            float* from = (float*)(src + j);
            for (int k = 0; k < count; k++)
            {
                float* p = dst + (k * laneStride) + j;
                *p = beta == 0f ? from[k] : from[k] + (beta * *p);
            }
        }
    }

    /// <summary>Transposes the 8 x 8 matrix whose rows are the 8 vectors in place (AVX: in-lane unpacks and shuffles, then
    /// swapping 128-bit halves).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose8x8(Vector256<float>* r)
    {
        Vector256<float> t0 = Avx.UnpackLow(r[0], r[1]), t1 = Avx.UnpackHigh(r[0], r[1]);
        Vector256<float> t2 = Avx.UnpackLow(r[2], r[3]), t3 = Avx.UnpackHigh(r[2], r[3]);
        Vector256<float> t4 = Avx.UnpackLow(r[4], r[5]), t5 = Avx.UnpackHigh(r[4], r[5]);
        Vector256<float> t6 = Avx.UnpackLow(r[6], r[7]), t7 = Avx.UnpackHigh(r[6], r[7]);
        // Per 128-bit half: columns 0 and 4 (q0), 1 and 5 (q1), 2 and 6 (q2), 3 and 7 (q3) of rows 0-3, then of rows 4-7.
        Vector256<float> q0 = Avx.Shuffle(t0, t2, 0x44), q1 = Avx.Shuffle(t0, t2, 0xEE);
        Vector256<float> q2 = Avx.Shuffle(t1, t3, 0x44), q3 = Avx.Shuffle(t1, t3, 0xEE);
        Vector256<float> q4 = Avx.Shuffle(t4, t6, 0x44), q5 = Avx.Shuffle(t4, t6, 0xEE);
        Vector256<float> q6 = Avx.Shuffle(t5, t7, 0x44), q7 = Avx.Shuffle(t5, t7, 0xEE);
        r[0] = Avx.Permute2x128(q0, q4, 0x20);
        r[1] = Avx.Permute2x128(q1, q5, 0x20);
        r[2] = Avx.Permute2x128(q2, q6, 0x20);
        r[3] = Avx.Permute2x128(q3, q7, 0x20);
        r[4] = Avx.Permute2x128(q0, q4, 0x31);
        r[5] = Avx.Permute2x128(q1, q5, 0x31);
        r[6] = Avx.Permute2x128(q2, q6, 0x31);
        r[7] = Avx.Permute2x128(q3, q7, 0x31);
    }

    /// <summary>dst[ξ·pointStride + ℓ] = tile[ξ] lane ℓ, for ξ &lt; points, ℓ &lt; count.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreTile(Vector256<float>* tile, int points, float* dst, long pointStride, int count)
    {
        if (count == Lanes)
        {
            for (int xi = 0; xi < points; xi++) tile[xi].Store(dst + (xi * pointStride));
            return;
        }

        for (int xi = 0; xi < points; xi++)
        {
            for (int k = 0; k < count; k++) dst[(xi * pointStride) + k] = tile[xi].GetElement(k);
        }
    }

    /// <summary>dw[o, c] = Gᵀ dU[o, c] G + beta·dw[o, c] for filters [o0, o1) (beta = 0: dw not read); dU[ξ][o][c] has point
    /// stride <paramref name="pointStride"/> and row stride C, dw is (O, C, 3, 3).</summary>
    public static void FilterGradTransform(WinogradTransform tr, float* du, int inChannels, long pointStride, float* dw, float beta, int o0, int o1)
    {
        Vector256<float>* scratch = stackalloc Vector256<float>[ScratchVectors];
        for (int o = o0; o < o1; o++)
        {
            TransformOut(scratch, tr.FilterT, du + ((long)o * inChannels), pointStride, inChannels, dw + ((long)o * inChannels * 9), 9, 3, 3, 3, beta);
        }
    }

    /// <summary>
    /// For each lane (channel) ℓ &lt; lanes: the s x s window of plane src + ℓ·laneStride (rows x cols, row stride rowStride)
    /// at (r0, c0), zeros outside the plane, is transformed to L X Lᵀ (α x α, L = <paramref name="l"/> α x s), and point ξ
    /// stored at dst[ξ·pointStride + ℓ].
    /// </summary>
    private static void TransformIn(Vector256<float>* scratch, WinogradTransform.Sparse l, float* src, long laneStride, int lanes, int rowStride, int rows, int cols, int r0, int c0, float* dst, long pointStride)
    {
        int s = l.Cols, alpha = l.Rows;
        Vector256<float>* window = scratch, half = scratch + (MaxAlpha * MaxAlpha), result = half + (MaxAlpha * MaxAlpha);
        bool gather = Avx2.IsSupported && laneStride * (Lanes - 1) <= int.MaxValue;
        Vector256<int> index = gather ? Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7) * (int)laneStride : default;
        for (int c = 0; c < lanes; c += Lanes)
        {
            int count = Math.Min(Lanes, lanes - c);
            float* plane = src + (c * laneStride);
            for (int i = 0; i < s; i++)
            {
                int row = r0 + i;
                bool rowInside = (uint)row < (uint)rows;
                for (int j = 0; j < s; j++)
                {
                    int col = c0 + j;
                    if (!rowInside || (uint)col >= (uint)cols)
                    {
                        window[(i * s) + j] = Vector256<float>.Zero;
                        continue;
                    }

                    float* p = plane + ((long)row * rowStride) + col;
                    if (gather && count == Lanes)
                    {
                        window[(i * s) + j] = Avx2.GatherVector256(p, index, 4);
                    }
                    else
                    {
                        window[(i * s) + j] = LoadStrided(p, laneStride, count);
                    }
                }
            }

            // half = L · X (α x s), result = half · Lᵀ (α x α).
            if (ReferenceEquals(l, WinogradTransform.F4.InputT))
            {
                Apply2d<InputF4>(window, half, result);
            }
            else if (ReferenceEquals(l, WinogradTransform.F4.Output))
            {
                Apply2d<OutputGradF4>(window, half, result);
            }
            else
            {
                ApplyLeft(l, window, s, half);
                ApplyRight(l, half, alpha, s, result);
            }

            float* d = dst + c;
            if (count == Lanes)
            {
                for (int xi = 0; xi < alpha * alpha; xi++)
                {
                    result[xi].Store(d + (xi * pointStride));
                }
            }
            else
            {
                for (int xi = 0; xi < alpha * alpha; xi++)
                {
                    for (int k = 0; k < count; k++)
                    {
                        d[(xi * pointStride) + k] = result[xi].GetElement(k);
                    }
                }
            }
        }
    }

    /// <summary>
    /// For each lane (channel) ℓ &lt; lanes: the α x α tile src[ξ·pointStride + ℓ] is transformed to R Z Rᵀ (q x q,
    /// R = <paramref name="r"/> q x α), and its [0, validRows) x [0, validCols) corner written to plane dst + ℓ·laneStride
    /// (row stride rowStride) as value + beta·dst (beta = 0: dst not read).
    /// </summary>
    private static void TransformOut(Vector256<float>* scratch, WinogradTransform.Sparse r, float* src, long pointStride, int lanes, float* dst, long laneStride, int rowStride, int validRows, int validCols, float beta)
    {
        int alpha = r.Cols, q = r.Rows;
        Vector256<float>* tile = scratch, half = scratch + (MaxAlpha * MaxAlpha), result = half + (MaxAlpha * MaxAlpha);
        float* spill = (float*)(result + (MaxAlpha * MaxAlpha));
        for (int c = 0; c < lanes; c += Lanes)
        {
            int count = Math.Min(Lanes, lanes - c);
            float* s = src + c;
            if (count == Lanes)
            {
                for (int xi = 0; xi < alpha * alpha; xi++)
                {
                    tile[xi] = Vector256.Load(s + (xi * pointStride));
                }
            }
            else
            {
                for (int xi = 0; xi < alpha * alpha; xi++)
                {
                    tile[xi] = LoadStrided(s + (xi * pointStride), 1, count);
                }
            }

            // half = R · Z (q x α), result = half · Rᵀ (q x q).
            if (ReferenceEquals(r, WinogradTransform.F4.OutputT))
            {
                Apply2d<OutputF4>(tile, half, result);
            }
            else
            {
                ApplyLeft(r, tile, alpha, half);
                ApplyRight(r, half, q, alpha, result);
            }
            for (int k = 0; k < q * q; k++)
            {
                result[k].Store(spill + (k * Lanes));
            }

            for (int k = 0; k < count; k++)
            {
                float* plane = dst + ((c + k) * laneStride);
                for (int i = 0; i < validRows; i++)
                {
                    float* row = plane + ((long)i * rowStride);
                    float* from = spill + (i * q * Lanes) + k;
                    if (beta == 0f)
                    {
                        for (int j = 0; j < validCols; j++)
                        {
                            row[j] = from[j * Lanes];
                        }
                    }
                    else
                    {
                        for (int j = 0; j < validCols; j++)
                        {
                            row[j] = from[j * Lanes] + (beta * row[j]);
                        }
                    }
                }
            }
        }
    }

    /// <summary>A 1-d transform y (Out) = L x (In) written out for one matrix L, on vectors: the hot transforms of F(4, 3)
    /// unrolled, with common subexpressions shared (about half the operations of the matrix's non-zeros).</summary>
    private interface ITransform1d
    {
        static abstract int In { get; }

        static abstract int Out { get; }

        /// <summary>y[i·yStride] for i &lt; Out from x[j·xStride] for j &lt; In.</summary>
        static abstract void Apply(Vector256<float>* x, int xStride, Vector256<float>* y, int yStride);
    }

    /// <summary>result (Out x Out) = L · X (In x In) · Lᵀ: columns of X first (into half, Out x In), then rows of half.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Apply2d<TL>(Vector256<float>* x, Vector256<float>* half, Vector256<float>* result)
        where TL : struct, ITransform1d => Apply2d<TL>(x, TL.In, half, result, TL.Out);

    /// <summary>As above with X's rows <paramref name="xRowStride"/> vectors apart and result's rows <paramref name="resultRowStride"/>
    /// apart, so that X and result may be windows of a wider band.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Apply2d<TL>(Vector256<float>* x, int xRowStride, Vector256<float>* half, Vector256<float>* result, int resultRowStride)
        where TL : struct, ITransform1d
    {
        for (int j = 0; j < TL.In; j++)
        {
            TL.Apply(x + j, xRowStride, half + j, TL.In);
        }

        for (int a = 0; a < TL.Out; a++)
        {
            TL.Apply(half + (a * TL.In), 1, result + (a * resultRowStride), 1);
        }
    }

    /// <summary>Bᵀ of F(2, 3) (4 x 4).</summary>
    private struct InputF2 : ITransform1d
    {
        public static int In => 4;

        public static int Out => 4;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Apply(Vector256<float>* x, int xs, Vector256<float>* y, int ys)
        {
            Vector256<float> d0 = x[0], d1 = x[xs], d2 = x[2 * xs], d3 = x[3 * xs];
            y[0] = d0 - d2;
            y[ys] = d1 + d2;
            y[2 * ys] = d2 - d1;
            y[3 * ys] = d1 - d3;
        }
    }

    /// <summary>Aᵀ of F(2, 3) (2 x 4).</summary>
    private struct OutputF2 : ITransform1d
    {
        public static int In => 4;

        public static int Out => 2;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Apply(Vector256<float>* x, int xs, Vector256<float>* y, int ys)
        {
            Vector256<float> m1 = x[xs], m2 = x[2 * xs];
            y[0] = x[0] + m1 + m2;
            y[ys] = m1 - m2 - x[3 * xs];
        }
    }

    /// <summary>A of F(2, 3) (4 x 2), the output-gradient transform.</summary>
    private struct OutputGradF2 : ITransform1d
    {
        public static int In => 2;

        public static int Out => 4;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Apply(Vector256<float>* x, int xs, Vector256<float>* y, int ys)
        {
            Vector256<float> d0 = x[0], d1 = x[xs];
            y[0] = d0;
            y[ys] = d0 + d1;
            y[2 * ys] = d0 - d1;
            y[3 * ys] = -d1;
        }
    }

    /// <summary>Bᵀ of F(4, 3) (6 x 6).</summary>
    private struct InputF4 : ITransform1d
    {
        public static int In => 6;

        public static int Out => 6;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Apply(Vector256<float>* x, int xs, Vector256<float>* y, int ys)
        {
            Vector256<float> d0 = x[0], d1 = x[xs], d2 = x[2 * xs], d3 = x[3 * xs], d4 = x[4 * xs], d5 = x[5 * xs];
            var four = Vector256.Create(4f);
            var a = MulAdd(Vector256.Create(-4f), d2, d4); // d4 - 4 d2
            var b = MulAdd(Vector256.Create(-4f), d1, d3); // d3 - 4 d1
            var c = d4 - d2;
            var e = (d3 - d1) * 2f;
            y[0] = MulAdd(four, d0 - d2, c);          // 4 d0 - 5 d2 + d4
            y[ys] = a + b;                            // -4 d1 - 4 d2 + d3 + d4
            y[2 * ys] = a - b;                        // 4 d1 - 4 d2 - d3 + d4
            y[3 * ys] = c + e;                        // -2 d1 - d2 + 2 d3 + d4
            y[4 * ys] = c - e;                        // 2 d1 - d2 - 2 d3 + d4
            y[5 * ys] = MulAdd(four, d1 - d3, d5 - d3); // 4 d1 - 5 d3 + d5
        }
    }

    /// <summary>Aᵀ of F(4, 3) (4 x 6).</summary>
    private struct OutputF4 : ITransform1d
    {
        public static int In => 6;

        public static int Out => 4;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Apply(Vector256<float>* x, int xs, Vector256<float>* y, int ys)
        {
            Vector256<float> m0 = x[0], m1 = x[xs], m2 = x[2 * xs], m3 = x[3 * xs], m4 = x[4 * xs], m5 = x[5 * xs];
            Vector256<float> s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
            y[0] = m0 + s12 + s34;                               // m0 + m1 + m2 + m3 + m4
            y[ys] = MulAdd(Vector256.Create(2f), d34, d12);      // m1 - m2 + 2 m3 - 2 m4
            y[2 * ys] = MulAdd(Vector256.Create(4f), s34, s12);  // m1 + m2 + 4 m3 + 4 m4
            y[3 * ys] = MulAdd(Vector256.Create(8f), d34, d12) + m5; // m1 - m2 + 8 m3 - 8 m4 + m5
        }
    }

    /// <summary>A of F(4, 3) (6 x 4), the output-gradient transform.</summary>
    private struct OutputGradF4 : ITransform1d
    {
        public static int In => 4;

        public static int Out => 6;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Apply(Vector256<float>* x, int xs, Vector256<float>* y, int ys)
        {
            Vector256<float> d0 = x[0], d1 = x[xs], d2 = x[2 * xs], d3 = x[3 * xs];
            Vector256<float> e02 = d0 + d2, o13 = d1 + d3;
            var e = MulAdd(Vector256.Create(4f), d2, d0);  // d0 + 4 d2
            var o = MulAdd(Vector256.Create(8f), d3, d1 * 2f); // 2 d1 + 8 d3
            y[0] = d0;
            y[ys] = e02 + o13;
            y[2 * ys] = e02 - o13;
            y[3 * ys] = e + o;
            y[4 * ys] = e - o;
            y[5 * ys] = d3;
        }
    }

    /// <summary>outp (L.Rows x width) = L · inp (L.Cols x width), all row-major in vectors.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ApplyLeft(WinogradTransform.Sparse l, Vector256<float>* inp, int width, Vector256<float>* outp)
    {
        fixed (int* start = l.RowStart, index = l.Index)
        fixed (float* value = l.Value)
        {
            for (int a = 0; a < l.Rows; a++)
            {
                Vector256<float>* o = outp + (a * width);
                int e0 = start[a], e1 = start[a + 1];
                for (int j = 0; j < width; j++)
                {
                    var acc = Vector256<float>.Zero;
                    for (int e = e0; e < e1; e++)
                    {
                        acc = MulAdd(Vector256.Create(value[e]), inp[(index[e] * width) + j], acc);
                    }

                    o[j] = acc;
                }
            }
        }
    }

    /// <summary>outp (height x L.Rows) = inp (height x L.Cols) · Lᵀ, all row-major in vectors.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ApplyRight(WinogradTransform.Sparse l, Vector256<float>* inp, int height, int inWidth, Vector256<float>* outp)
    {
        fixed (int* start = l.RowStart, index = l.Index)
        fixed (float* value = l.Value)
        {
            for (int i = 0; i < height; i++)
            {
                Vector256<float>* row = inp + (i * inWidth);
                Vector256<float>* o = outp + (i * l.Rows);
                for (int b = 0; b < l.Rows; b++)
                {
                    var acc = Vector256<float>.Zero;
                    for (int e = start[b]; e < start[b + 1]; e++)
                    {
                        acc = MulAdd(Vector256.Create(value[e]), row[index[e]], acc);
                    }

                    o[b] = acc;
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> MulAdd(Vector256<float> a, Vector256<float> b, Vector256<float> c) =>
        Fma.IsSupported ? Fma.MultiplyAdd(a, b, c) : (a * b) + c;

    /// <summary>Lanes [0, count) from p, p + stride, ...; the rest zero.</summary>
    private static Vector256<float> LoadStrided(float* p, long stride, int count)
    {
        float* tmp = stackalloc float[Lanes];
        for (int k = 0; k < Lanes; k++)
        {
            tmp[k] = k < count ? p[k * stride] : 0f;
        }

        return Vector256.Load(tmp);
    }
}
