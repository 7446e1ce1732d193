using System.Diagnostics;
using System.Numerics;
using System.Numerics.Tensors;
using Sdp.Kernels.Cpu;

namespace Sdp.Engine.Backends.Cpu;

/// <summary>The CPU backend's convolution algorithms (<see cref="CpuBackend.ConvAlgorithm"/>).</summary>
public enum CpuConvAlgorithm
{
    /// <summary>
    /// Winograd for float32 3 x 3 stride-1 convolutions where it is faster, implicit GEMM elsewhere: F(2x2, 3x3) in the
    /// forward pass (as exact as implicit GEMM), F(4x4, 3x3) also in the input and weight gradients. The forward pass is
    /// the one whose error BatchNorm amplifies (see <see cref="WinogradFast"/>); with F(4x4) in both gradients one SGD step
    /// of ResNet-18 width 64 stays as close to PyTorch float64 as PyTorch float32 is (bench/torch_parity.py,
    /// 2.7e-4 relative L2 of the update with the ReLU kinks adjusted, PyTorch float32 2.6e-4). The default.
    /// </summary>
    Winograd,

    /// <summary>
    /// Winograd with F(4x4, 3x3) in the forward pass too: the fastest, but its ~1e-5 relative error per convolution
    /// is systematic (it repeats with the tile position), and in the forward pass BatchNorm's batch statistics carry it
    /// into every gradient below, so sums that cancel, such as BatchNorm's bias gradient, move by up to ~4e-3 relative in
    /// one SGD step on ResNet-18 (bench/torch_parity.py, width 64), past the 1e-3 bound.
    /// </summary>
    WinogradFast,

    /// <summary>Implicit GEMM (<see cref="ConvGemm"/>) for every convolution.</summary>
    Implicit,

    /// <summary>im2col + GEMM for every convolution (the oldest path; its sums run in another order).</summary>
    Im2col,
}

/// <summary>
/// CNN layers on the CPU. By default float32 3 x 3 stride-1 convolutions (almost all of ResNet's work) run Winograd's
/// minimal filtering F(4x4, 3x3) or F(2x2, 3x3) (<see cref="ConvWinograd"/>, 4x or 2.25x fewer multiplications: see
/// <see cref="WinogradTileFor"/> for which, and the section at the end), forward, input gradient and weight gradient.
/// Every other convolution, and all of them in float64, are implicit GEMMs (<see cref="ConvGemm"/>): the im2col column
/// matrix is unfolded block by block straight into the GEMM's packed panels and never materialised. The forward pass
/// and the stride-1 input gradient (a forward convolution of dy with the flipped, transposed kernel) run image groups
/// of about <see cref="ConvImplicitGroupColumns"/> columns as single-threaded GEMMs claimed by the threads in turn, or
/// one threaded GEMM when groups are few; the weight gradient is one threaded GEMM over the whole batch. Strided
/// forward passes and weight gradients first split x into its stride phases (<see cref="StridePhases"/>), so their
/// unfolding copies contiguous runs; the strided input gradient is a GEMM per image group and a vectorised fold
/// (<see cref="StridedInputGradFold"/>). Every pass when <see cref="ConvImplicitGemm"/> is off uses the older path below.
///
/// im2col + GEMM: a group of G images is unfolded into a column
/// matrix cols (K = C·KH·KW, G·P) with P = OH·OW, and y_g (O, G·P) = W (O, K) · cols. Small planes batch
/// several images per GEMM so the GEMM stays wide (ResNet's 4x4 stages); 1x1 stride-1 convolutions of one
/// image skip im2col and multiply x directly.
///
/// Threading: with at least as many image groups as threads, each thread owns a slot (its own column
/// buffer) and runs whole groups with a single-threaded GEMM — no synchronisation inside a group. With
/// fewer groups (small batches, tiny late-stage planes) groups run one after another and the GEMM, im2col
/// and col2im thread themselves. The weight gradient always sums over groups in a fixed order with a
/// threaded GEMM, so it is deterministic and needs no per-thread copies of dW. Column buffers are Tensors,
/// charged to the current memory account as workspace, and freed when the call returns (the implicit path's only
/// workspace is its output column offsets, charged the same way; its packing buffers are the GEMM's).
/// </summary>
public sealed unsafe partial class CpuBackend
{
    /// <summary>Target GEMM width (columns) for one single-threaded slot. Tuning and test hook.</summary>
    internal static int ConvSlotColumns { get; set; } = 256;

    /// <summary>Target GEMM width (columns) for a GEMM that threads itself. Tuning and test hook.</summary>
    internal static int ConvThreadedColumns { get; set; } = 1024;

    /// <summary>Target inner dimension (columns of dY and cols) of each weight-gradient GEMM: wider means
    /// fewer passes over dW. Tuning and test hook.</summary>
    internal static int ConvWeightGradColumns { get; set; } = 4096;

    /// <summary>Which convolution algorithm the CPU backend runs, read once at process start from SDP_CPU_CONV
    /// (`winograd`, the default; `implicit`; `im2col`) and settable as a test hook and benchmark switch (`sdp bench conv`
    /// times each in the same run). <see cref="CpuConvAlgorithm.Im2col"/> runs the im2col + GEMM path everywhere: the
    /// subnetwork bit-for-bit fixture, recorded before the other paths existed, starts its processes with it.</summary>
    public static CpuConvAlgorithm ConvAlgorithm { get; set; } = ParseConvAlgorithm(Environment.GetEnvironmentVariable("SDP_CPU_CONV"));

    /// <summary>Implicit GEMM or Winograd: anything but the im2col path.</summary>
    private static bool ConvImplicitGemm => ConvAlgorithm != CpuConvAlgorithm.Im2col;

    internal static CpuConvAlgorithm ParseConvAlgorithm(string? value) => value switch
    {
        null or "" or "winograd" => CpuConvAlgorithm.Winograd,
        "winograd-fast" => CpuConvAlgorithm.WinogradFast,
        "implicit" => CpuConvAlgorithm.Implicit,
        "im2col" => CpuConvAlgorithm.Im2col,
        _ => throw new InvalidOperationException($"SDP_CPU_CONV must be winograd, winograd-fast, implicit or im2col, not '{value}'"),
    };

    /// <summary>Upper bound on one group's column matrix, in elements, so workspace stays bounded.</summary>
    private const long ConvMaxGroupElements = 1L << 22;

    private readonly record struct ConvGeom(int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW, int Stride, int Pad)
    {
        /// <summary>Output pixels per image.</summary>
        public int P => OH * OW;

        /// <summary>Rows of the column matrix.</summary>
        public int K => C * KH * KW;

        public int HW => H * W;

        /// <summary>1x1, stride 1, no padding: an image's column matrix is the image itself.</summary>
        public bool Direct => KH == 1 && KW == 1 && Stride == 1 && Pad == 0;

        /// <summary>Images per group so the group's GEMM is about <paramref name="columns"/> wide, within the workspace cap.</summary>
        public int GroupSize(int columns)
        {
            long g = Math.Clamp((columns + P - 1) / P, 1, Math.Max(1, N));
            g = Math.Min(g, Math.Max(1, ConvMaxGroupElements / Math.Max(1, (long)P * K)));
            return (int)g;
        }
    }

    /// <summary>How a pass over the batch is split: G images per group, run in <see cref="Slots"/> parallel
    /// slots (single-threaded GEMMs), or sequentially with threaded GEMMs when <see cref="Slots"/> is 1 and
    /// <see cref="Threaded"/>.</summary>
    private readonly record struct ConvPlan(int G, int Groups, int Slots, bool Threaded)
    {
        public static ConvPlan For(in ConvGeom g)
        {
            int threads = Math.Max(1, CpuParallel.MaxThreads);
            int gs = g.GroupSize(ConvSlotColumns);
            int groups = (g.N + gs - 1) / gs;
            if (threads == 1 || groups >= threads) return new ConvPlan(gs, groups, Math.Min(threads, groups), false);
            int gt = g.GroupSize(ConvThreadedColumns);
            return new ConvPlan(gt, (g.N + gt - 1) / gt, 1, true);
        }

        /// <summary>The weight-gradient plan: always sequential, group size from the shape alone (deterministic sums).</summary>
        public static ConvPlan ForWeightGrad(in ConvGeom g)
        {
            int gs = g.GroupSize(ConvWeightGradColumns);
            return new ConvPlan(gs, (g.N + gs - 1) / gs, 1, true);
        }

        public int Threads => Threaded ? Math.Max(1, CpuParallel.MaxThreads) : 1;
    }

    /// <summary>Runs body over [0, count), on the pool when <paramref name="parallel"/>, else inline.</summary>
    private static void Loop(long count, bool parallel, Action<long, long> body)
    {
        if (parallel) CpuParallel.For(count, 1, body);
        else if (count > 0) body(0, count);
    }

    /// <summary>Runs each slot's contiguous share of the groups, one slot per thread.</summary>
    private static void ForEachGroup(in ConvPlan plan, Action<int, int> groupInSlot)
    {
        int slots = plan.Slots, groups = plan.Groups;
        CpuParallel.For(slots, 1, (s0, s1) =>
        {
            for (long s = s0; s < s1; s++)
            {
                long g0 = groups * s / slots, g1 = groups * (s + 1) / slots;
                for (long grp = g0; grp < g1; grp++) groupInSlot((int)s, (int)grp);
            }
        });
    }

    private static void GemmT<T>(bool transA, bool transB, int m, int n, int k, T* a, int lda, T* b, int ldb, bool accumulate, T* c, int ldc, int threads)
        where T : unmanaged
    {
        if (typeof(T) == typeof(float)) Gemm.Sgemm(transA, transB, m, n, k, 1f, (float*)a, lda, (float*)b, ldb, accumulate ? 1f : 0f, (float*)c, ldc, threads);
        else Gemm.Dgemm(transA, transB, m, n, k, 1.0, (double*)a, lda, (double*)b, ldb, accumulate ? 1.0 : 0.0, (double*)c, ldc, threads);
    }

    // ---- conv2d forward ---------------------------------------------------------------------------------

    public void Conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor y, int stride, int padding)
    {
        var g = new ConvGeom(x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3], weight.Shape[0], weight.Shape[2], weight.Shape[3], y.Shape[2], y.Shape[3], stride, padding);
        if (y.Numel == 0) return;
        if (x.DType == DType.Float32) Conv2dCore<float>(g, x, weight, bias, y);
        else Conv2dCore<double>(g, x, weight, bias, y);
    }

    /// <summary>Target GEMM width (columns) of one image group of the implicit-GEMM forward. Tuning and test hook.</summary>
    internal static int ConvImplicitGroupColumns { get; set; } = 1024;

    /// <summary>
    /// y = conv(x, w) + beta·y by implicit GEMM. With at least two image groups per thread, each thread claims whole
    /// groups in turn and runs them as single-threaded GEMMs: nothing is shared or waited for, and a thread slowed by
    /// another process just claims fewer groups. Otherwise (few, small planes) one GEMM threads itself over the
    /// batch. Every output element sums over k in the same order either way, so the split does not change results.
    /// </summary>
    private void ImplicitForward<T>(ConvGeometry g, T* x, T* w, T* y, T beta) where T : unmanaged, INumber<T>
    {
        int threads = Math.Max(1, CpuParallel.MaxThreads);
        using var offsets = ColumnOffsets((long)g.N * g.P);
        int* op = Ptr<int>(offsets);
        ConvGemm.FillColumnOffsets(g, op);
        using var phases = StridePhases(g, x, out var source);
        int groupSize = Math.Clamp((ConvImplicitGroupColumns + g.P - 1) / g.P, 1, Math.Max(1, g.N));
        int groups = (g.N + groupSize - 1) / groupSize;
        if (threads == 1 || groups < 2 * threads)
        {
            ConvGemm.Forward(g, source, w, y, beta, op, threads);
            return;
        }

        nint wp = (nint)w, yp = (nint)y, opp = (nint)op;
        int next = -1;
        long outImage = (long)g.O * g.P;
        CpuParallel.For(threads, 1, (_, _) =>
        {
            int grp;
            while ((grp = Interlocked.Increment(ref next)) < groups)
            {
                int n0 = grp * groupSize, count = Math.Min(groupSize, g.N - n0);
                ConvGemm.Forward(g with { N = count }, source.FromImage(g, n0), (T*)wp, (T*)yp + n0 * outImage, beta, (int*)opp, 1);
            }
        });
    }

    /// <summary>Runs the implicit-GEMM paths of strided convolutions as before stride phases (the strided unfold, GEMM +
    /// col2im input gradients), to time the old code beside the new. Benchmark and test hook.</summary>
    public static bool ConvStridedLegacy { get; set; }

    /// <summary>
    /// The column source of an implicit-GEMM forward or weight gradient: for strides above 1 (where
    /// <see cref="ConvGemm.PhaseSplitFits"/>), x split into its stride phases, so that every kernel tap unfolds by
    /// contiguous shifted copies rather than a gather of every s-th element; otherwise x itself. Returns the workspace (the
    /// phase planes and their row table, disposed by the caller), or null.
    /// </summary>
    private Tensor? StridePhases<T>(in ConvGeometry g, T* x, out ColumnSource<T> source) where T : unmanaged, INumber<T>
    {
        source = ColumnSource<T>.Input(x);
        if (ConvStridedLegacy || !ConvGemm.PhaseSplitFits(g)) return null;
        long planeElements = ConvGemm.PhasePlaneElements(g), tableInts = 3L * g.K;
        // One buffer: the planes, then the row table (3·K ints) in the elements after them.
        long tableElements = (tableInts * sizeof(int) + sizeof(T) - 1) / sizeof(T);
        var ws = Tensor.Empty(new Shape(checked((int)(planeElements + tableElements))), typeof(T) == typeof(float) ? DType.Float32 : DType.Float64, this);
        T* planes = Ptr<T>(ws);
        int* rows = (int*)(planes + planeElements);
        ConvGemm.FillPhaseRows(g, rows);
        var geometry = g;
        nint xp = (nint)x, pp = (nint)planes;
        CpuParallel.For((long)g.N * g.C, Math.Max(1, ElementwiseGrain / Math.Max(1, g.HW)), (p0, p1) => ConvGemm.SplitPhases(geometry, (T*)xp, (T*)pp, p0, p1));
        source = ColumnSource<T>.Planes(planes, (long)g.C * ConvGemm.PhasesPerPlane(g) * g.P, rows);
        return ws;
    }

    /// <summary>
    /// dX += col2im(Wᵀ · dY) for a strided convolution, by image groups of about <see cref="ConvImplicitGroupColumns"/>
    /// columns: with at least two groups per thread each thread claims whole groups (its own column buffer, a single-threaded
    /// GEMM, the fold by <see cref="ConvGemm.Col2ImPlane{T}"/>); otherwise groups run in turn with a threaded GEMM and fold.
    /// Every element of dX receives its adds in the same order either way.
    /// </summary>
    private void StridedInputGradFold<T>(ConvGeometry g, T* w, T* dy, T* dx) where T : unmanaged, INumber<T>
    {
        int threads = Math.Max(1, CpuParallel.MaxThreads);
        int groupSize = Math.Clamp((ConvImplicitGroupColumns + g.P - 1) / g.P, 1, Math.Max(1, g.N));
        groupSize = (int)Math.Max(1, Math.Min(groupSize, ConvMaxGroupElements / Math.Max(1, (long)g.K * g.P))); // bounded column buffers
        int groups = (g.N + groupSize - 1) / groupSize;
        bool perThread = threads > 1 && groups >= 2 * threads;
        int slots = perThread ? threads : 1;
        long ld = (long)groupSize * g.P, colsLen = g.K * ld, dyLen = groupSize > 1 ? g.O * ld : 0, slotLen = colsLen + dyLen;
        using var ws = Tensor.Empty(new Shape(checked((int)(slots * slotLen))), typeof(T) == typeof(float) ? DType.Float32 : DType.Float64, this);
        nint wsp = (nint)Ptr<T>(ws), wp = (nint)w, dyp = (nint)dy, dxp = (nint)dx;
        var geometry = g;
        var gm = new ConvGeom(g.N, g.C, g.H, g.W, g.O, g.KH, g.KW, g.OH, g.OW, g.Stride, g.Pad);

        void RunGroup(int slot, int grp, bool threaded)
        {
            int n0 = grp * groupSize, count = Math.Min(groupSize, geometry.N - n0), width = count * geometry.P;
            T* cols = (T*)wsp + slot * slotLen;
            T* a = (T*)dyp + (long)n0 * geometry.O * geometry.P;
            if (count > 1)
            {
                GatherDy(gm, (T*)dyp, n0, count, cols + colsLen, threaded);
                a = cols + colsLen;
            }
            GemmT(true, false, geometry.K, width, geometry.O, (T*)wp, geometry.K, a, width, false, cols, width, threaded ? threads : 1);
            long planes = (long)count * geometry.C;
            if (!threaded)
            {
                FoldPlanes(geometry, cols, width, (T*)dxp, n0, 0, planes);
                return;
            }
            nint cp = (nint)cols;
            CpuParallel.For(planes, Math.Max(1, ElementwiseGrain / Math.Max(1, (long)geometry.K / geometry.C * geometry.P)), (t0, t1) => FoldPlanes(geometry, (T*)cp, width, (T*)dxp, n0, t0, t1));
        }

        if (!perThread)
        {
            for (int grp = 0; grp < groups; grp++) RunGroup(0, grp, threads > 1);
            return;
        }

        int next = -1;
        CpuParallel.For(threads, 1, (s0, _) =>
        {
            int grp;
            while ((grp = Interlocked.Increment(ref next)) < groups) RunGroup((int)s0, grp, false);
        });
    }

    /// <summary>Folds (image, channel) planes [t0, t1) of a group's column gradient (K x width, image i at column i·P) into dx.</summary>
    private static void FoldPlanes<T>(in ConvGeometry g, T* cols, int width, T* dx, int n0, long t0, long t1) where T : unmanaged, INumber<T>
    {
        for (long t = t0; t < t1; t++)
        {
            int i = (int)(t / g.C), c = (int)(t % g.C);
            ConvGemm.Col2ImPlane(g, cols + (long)i * g.P, width, c, dx + ((long)(n0 + i) * g.C + c) * g.HW);
        }
    }

    private static ConvGeometry Geometry(in ConvGeom g) => new(g.N, g.C, g.H, g.W, g.O, g.KH, g.KW, g.OH, g.OW, g.Stride, g.Pad);

    /// <summary>Column offsets of an implicit-GEMM output (N·P ints), workspace charged like the column buffers.</summary>
    private Tensor ColumnOffsets(long count) => Tensor.Empty(new Shape((int)Math.Max(1, count)), DType.Int32, this);

    private void Conv2dCore<T>(ConvGeom g, Tensor xt, Tensor wt, Tensor? bt, Tensor yt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (typeof(T) == typeof(float) && WinogradTileFor(Geometry(g), WinogradTile, ForwardLargestTile) is int m and not 0)
        {
            WinogradForward(Geometry(g), m, Ptr<float>(xt), Ptr<float>(wt), Ptr<float>(yt), 0f);
            if (bt is not null) AddConvBias<T>(yt, bt);
            return;
        }

        if (ConvImplicitGemm)
        {
            ImplicitForward(Geometry(g), Ptr<T>(xt), Ptr<T>(wt), Ptr<T>(yt), T.Zero);
            if (bt is not null) AddConvBias<T>(yt, bt);
            return;
        }

        var plan = ConvPlan.For(g);
        int G = plan.G, P = g.P, K = g.K, O = g.O;
        long colsLen = g.Direct && G == 1 ? 0 : (long)K * G * P;
        long ybufLen = G == 1 ? 0 : (long)O * G * P;
        long slotLen = colsLen + ybufLen;
        using var ws = Tensor.Empty(new Shape((int)Math.Max(1, plan.Slots * slotLen)), xt.DType, this);
        nint xp = (nint)Ptr<T>(xt), wp = (nint)Ptr<T>(wt), bp = bt is null ? 0 : (nint)Ptr<T>(bt), yp = (nint)Ptr<T>(yt), wsp = (nint)Ptr<T>(ws);
        bool par = plan.Threaded;
        int threads = plan.Threads;

        ForEachGroup(plan, (slot, grp) =>
        {
            int n0 = grp * G, count = Math.Min(G, g.N - n0), ld = count * P;
            T* cols = (T*)wsp + slot * slotLen;
            T* ybuf = cols + colsLen;
            T* b;
            int ldb;
            if (g.Direct && count == 1)
            {
                b = (T*)xp + (long)n0 * g.C * g.HW;
                ldb = P;
            }
            else
            {
                Im2ColGroup<T>(g, (T*)xp, n0, count, cols, ld, par);
                b = cols;
                ldb = ld;
            }

            if (count == 1)
            {
                T* yn = (T*)yp + (long)n0 * O * P;
                GemmT(false, false, O, P, K, (T*)wp, K, b, ldb, false, yn, P, threads);
                if (bp != 0) Loop(O, par, (o0, o1) => { for (long o = o0; o < o1; o++) TensorPrimitives.Add(new ReadOnlySpan<T>(yn + o * P, P), ((T*)bp)[o], new Span<T>(yn + o * P, P)); });
                return;
            }

            GemmT(false, false, O, ld, K, (T*)wp, K, b, ldb, false, ybuf, ld, threads);
            // Scatter y_g (O, count·P) into y (N, O, P), adding the bias on the way.
            Loop((long)count * O, par, (r0, r1) =>
            {
                for (long r = r0; r < r1; r++)
                {
                    long i = r / O, o = r % O;
                    var src = new ReadOnlySpan<T>(ybuf + o * ld + i * P, P);
                    var dst = new Span<T>((T*)yp + ((n0 + i) * O + o) * P, P);
                    if (bp != 0) TensorPrimitives.Add(src, ((T*)bp)[o], dst);
                    else src.CopyTo(dst);
                }
            });
        });
    }

    /// <summary>y[n, o, :] += bias[o], one (image, channel) plane per item.</summary>
    private static void AddConvBias<T>(Tensor yt, Tensor bt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int n = yt.Shape[0], o = yt.Shape[1], plane = (int)yt.Shape.Product(2, 4);
        nint yp = (nint)Ptr<T>(yt), bp = (nint)Ptr<T>(bt);
        CpuParallel.For((long)n * o, Math.Max(1, ElementwiseGrain / Math.Max(1, plane)), (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                var row = new Span<T>((T*)yp + r * plane, plane);
                TensorPrimitives.Add(row, ((T*)bp)[r % o], row);
            }
        });
    }

    /// <summary>Unfolds images [n0, n0+count) of x into cols (K, ld), image i in columns [i·P, (i+1)·P).</summary>
    private static void Im2ColGroup<T>(ConvGeom g, T* x, int n0, int count, T* cols, int ld, bool parallel) where T : unmanaged, IFloatingPointIeee754<T>
    {
        nint xp = (nint)x, cp = (nint)cols;
        Loop((long)count * g.C, parallel, (t0, t1) =>
        {
            for (long t = t0; t < t1; t++)
            {
                int i = (int)(t / g.C), c = (int)(t % g.C);
                Im2ColChannel(g, (T*)xp + ((long)(n0 + i) * g.C + c) * g.HW, c, (T*)cp + (long)i * g.P, ld);
            }
        });
    }

    /// <summary>Valid output columns [lo, hi) for kernel column kw: those whose input column ow·s - p + kw lies in [0, W).</summary>
    private static (int Lo, int Hi) ValidRange(int kOffset, int size, int outSize, int stride, int pad)
    {
        int a = pad - kOffset; // ow·s >= a
        int lo = a <= 0 ? 0 : (a + stride - 1) / stride;
        int b = size - 1 + pad - kOffset; // ow·s <= b
        int hi = b < 0 ? 0 : Math.Min(outSize, b / stride + 1);
        return (lo, Math.Max(lo, hi));
    }

    private static void Im2ColChannel<T>(in ConvGeom g, T* xc, int c, T* cols, int ld) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int s = g.Stride, p = g.Pad, OW = g.OW;
        for (int kh = 0; kh < g.KH; kh++)
        {
            for (int kw = 0; kw < g.KW; kw++)
            {
                T* row = cols + (long)((c * g.KH + kh) * g.KW + kw) * ld;
                var (lo, hi) = ValidRange(kw, g.W, OW, s, p);
                for (int oh = 0; oh < g.OH; oh++)
                {
                    T* dst = row + oh * OW;
                    int ih = oh * s - p + kh;
                    if ((uint)ih >= (uint)g.H)
                    {
                        new Span<T>(dst, OW).Clear();
                        continue;
                    }
                    T* src = xc + ih * g.W - p + kw; // src[ow·s] is input column ow·s - p + kw
                    for (int ow = 0; ow < lo; ow++) dst[ow] = T.Zero;
                    if (s == 1) new ReadOnlySpan<T>(src + lo, hi - lo).CopyTo(new Span<T>(dst + lo, hi - lo));
                    else for (int ow = lo; ow < hi; ow++) dst[ow] = src[ow * s];
                    for (int ow = hi; ow < OW; ow++) dst[ow] = T.Zero;
                }
            }
        }
    }

    /// <summary>dx[images n0..n0+count) += fold(dcols (K, ld)), the adjoint of <see cref="Im2ColGroup"/>.</summary>
    private static void Col2ImGroup<T>(ConvGeom g, T* dcols, int n0, int count, int ld, T* dx, bool parallel) where T : unmanaged, IFloatingPointIeee754<T>
    {
        nint dxp = (nint)dx, cp = (nint)dcols;
        Loop((long)count * g.C, parallel, (t0, t1) =>
        {
            for (long t = t0; t < t1; t++)
            {
                int i = (int)(t / g.C), c = (int)(t % g.C);
                Col2ImChannel(g, (T*)cp + (long)i * g.P, ld, c, (T*)dxp + ((long)(n0 + i) * g.C + c) * g.HW);
            }
        });
    }

    private static void Col2ImChannel<T>(in ConvGeom g, T* cols, int ld, int c, T* dxc) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int s = g.Stride, p = g.Pad, OW = g.OW;
        for (int kh = 0; kh < g.KH; kh++)
        {
            for (int kw = 0; kw < g.KW; kw++)
            {
                T* row = cols + (long)((c * g.KH + kh) * g.KW + kw) * ld;
                var (lo, hi) = ValidRange(kw, g.W, OW, s, p);
                if (hi <= lo) continue;
                for (int oh = 0; oh < g.OH; oh++)
                {
                    int ih = oh * s - p + kh;
                    if ((uint)ih >= (uint)g.H) continue;
                    T* src = row + oh * OW;
                    T* dst = dxc + ih * g.W - p + kw;
                    if (s == 1)
                    {
                        var d = new Span<T>(dst + lo, hi - lo);
                        TensorPrimitives.Add(d, new ReadOnlySpan<T>(src + lo, hi - lo), d);
                    }
                    else
                    {
                        for (int ow = lo; ow < hi; ow++) dst[ow * s] += src[ow];
                    }
                }
            }
        }
    }

    // ---- conv2d backward --------------------------------------------------------------------------------

    public void Conv2dBackward(Tensor? x, Tensor? weight, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, int stride, int padding, bool overwrite = false)
    {
        if (dbias is not null)
        {
            if (overwrite) Fill(dbias, 0); // O elements
            if (dy.DType == DType.Float32) ConvBiasGrad<float>(dy, dbias);
            else ConvBiasGrad<double>(dy, dbias);
        }
        if (dx is null && dweight is null) return;
        var xs = (x ?? dx)!.Shape;
        var ks = (weight ?? dweight)!.Shape;
        var g = new ConvGeom(xs[0], xs[1], xs[2], xs[3], ks[0], ks[2], ks[3], dy.Shape[2], dy.Shape[3], stride, padding);
        if (g.N == 0 || g.P == 0) return;
        if (dy.DType == DType.Float32)
        {
            if (dweight is not null) Conv2dWeightGrad<float>(g, x!, dy, dweight, overwrite);
            if (dx is not null) Conv2dInputGrad<float>(g, weight!, dy, dx, overwrite);
        }
        else
        {
            if (dweight is not null) Conv2dWeightGrad<double>(g, x!, dy, dweight, overwrite);
            if (dx is not null) Conv2dInputGrad<double>(g, weight!, dy, dx, overwrite);
        }
    }

    /// <summary>dbias (O) += Σ_{n,p} dy[n, o, p], one channel per task, planes summed in order.</summary>
    private static void ConvBiasGrad<T>(Tensor dyt, Tensor dbt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int n = dyt.Shape[0], o = dyt.Shape[1];
        int plane = (int)dyt.Shape.Product(2, 4);
        nint dyp = (nint)Ptr<T>(dyt), dbp = (nint)Ptr<T>(dbt);
        CpuParallel.For(o, Math.Max(1, ElementwiseGrain / Math.Max(1, (long)n * plane)), (o0, o1) =>
        {
            for (long c = o0; c < o1; c++)
            {
                double acc = 0;
                for (long i = 0; i < n; i++) acc += double.CreateTruncating(TensorPrimitives.Sum(new ReadOnlySpan<T>((T*)dyp + (i * o + c) * plane, plane)));
                ((T*)dbp)[c] += T.CreateTruncating(acc);
            }
        });
    }

    /// <summary>Copies dy of images [n0, n0+count) into buf (O, count·P), image i in columns [i·P, (i+1)·P).</summary>
    private static void GatherDy<T>(in ConvGeom g, T* dy, int n0, int count, T* buf, bool parallel) where T : unmanaged
    {
        int P = g.P, O = g.O, ld = count * P;
        nint dyp = (nint)dy, bp = (nint)buf;
        Loop((long)count * O, parallel, (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                long i = r / O, o = r % O;
                new ReadOnlySpan<T>((T*)dyp + ((n0 + i) * O + o) * P, P).CopyTo(new Span<T>((T*)bp + o * ld + i * P, P));
            }
        });
    }

    /// <summary>dW (O, K) += Σ_groups dY_g (O, G·P) · cols_gᵀ, groups in order, each GEMM threaded.</summary>
    private void Conv2dWeightGrad<T>(ConvGeom g, Tensor xt, Tensor dyt, Tensor dwt, bool overwrite) where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (typeof(T) == typeof(float) && WinogradTileFor(Geometry(g), WinogradWeightGradTile, 4) is int m and not 0)
        {
            WinogradWeightGrad(Geometry(g), m, Ptr<float>(xt), Ptr<float>(dyt), Ptr<float>(dwt), overwrite ? 0f : 1f);
            return;
        }

        if (ConvImplicitGemm)
        {
            var geometry = Geometry(g);
            using var phases = StridePhases(geometry, Ptr<T>(xt), out var source);
            ConvGemm.WeightGrad(geometry, source, Ptr<T>(dyt), Ptr<T>(dwt), overwrite ? T.Zero : T.One, CpuParallel.MaxThreads);
            return;
        }
        if (overwrite) Fill(dwt, 0); // the im2col path accumulates group by group
        var plan = ConvPlan.ForWeightGrad(g);
        int G = plan.G, P = g.P, K = g.K, O = g.O;
        long colsLen = g.Direct && G == 1 ? 0 : (long)K * G * P;
        long dyLen = G == 1 ? 0 : (long)O * G * P;
        using var ws = Tensor.Empty(new Shape((int)Math.Max(1, colsLen + dyLen)), xt.DType, this);
        T* x = Ptr<T>(xt), dy = Ptr<T>(dyt), dw = Ptr<T>(dwt), cols = Ptr<T>(ws), dybuf = cols + colsLen;
        int threads = plan.Threads;
        for (int grp = 0; grp < plan.Groups; grp++)
        {
            int n0 = grp * G, count = Math.Min(G, g.N - n0), ld = count * P;
            T* a = dy + (long)n0 * O * P;
            if (count > 1)
            {
                GatherDy(g, dy, n0, count, dybuf, parallel: true);
                a = dybuf;
            }
            T* b = x + (long)n0 * g.C * g.HW;
            if (!(g.Direct && count == 1))
            {
                Im2ColGroup(g, x, n0, count, cols, ld, parallel: true);
                b = cols;
            }
            GemmT(false, true, O, K, ld, a, ld, b, ld, true, dw, K, threads);
        }
    }

    /// <summary>dX += col2im(Wᵀ (K, O) · dY_g (O, G·P)) per group; 1x1 stride-1 single images accumulate straight into dX.</summary>
    private void Conv2dInputGrad<T>(ConvGeom g, Tensor wt, Tensor dyt, Tensor dxt, bool overwrite) where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (ConvImplicitGemm && g.Stride == 1 && g.KH == g.KW && g.Pad <= g.KH - 1)
        {
            Conv2dInputGradAsForward<T>(g, wt, dyt, dxt, overwrite);
            return;
        }
        if (overwrite) Fill(dxt, 0); // the strided fold and col2im add overlapping taps
        if (ConvImplicitGemm && !ConvStridedLegacy && g.Stride > 1)
        {
            StridedInputGradFold(Geometry(g), Ptr<T>(wt), Ptr<T>(dyt), Ptr<T>(dxt));
            return;
        }
        var plan = ConvPlan.For(g);
        int G = plan.G, P = g.P, K = g.K, O = g.O;
        long colsLen = g.Direct && G == 1 ? 0 : (long)K * G * P;
        long dyLen = G == 1 ? 0 : (long)O * G * P;
        long slotLen = colsLen + dyLen;
        using var ws = Tensor.Empty(new Shape((int)Math.Max(1, plan.Slots * slotLen)), dxt.DType, this);
        nint wp = (nint)Ptr<T>(wt), dyp = (nint)Ptr<T>(dyt), dxp = (nint)Ptr<T>(dxt), wsp = (nint)Ptr<T>(ws);
        bool par = plan.Threaded;
        int threads = plan.Threads;

        ForEachGroup(plan, (slot, grp) =>
        {
            int n0 = grp * G, count = Math.Min(G, g.N - n0), ld = count * P;
            T* dcols = (T*)wsp + slot * slotLen;
            T* a = (T*)dyp + (long)n0 * O * P;
            if (count > 1)
            {
                GatherDy(g, (T*)dyp, n0, count, dcols + colsLen, par);
                a = dcols + colsLen;
            }
            if (g.Direct && count == 1)
            {
                GemmT(true, false, K, P, O, (T*)wp, K, a, P, true, (T*)dxp + (long)n0 * g.C * g.HW, P, threads);
                return;
            }
            GemmT(true, false, K, ld, O, (T*)wp, K, a, ld, false, dcols, ld, threads);
            Col2ImGroup(g, dcols, n0, count, ld, (T*)dxp, par);
        });
    }

    /// <summary>
    /// At stride 1, dX = conv(dY, W'), W'[c, o, kh, kw] = W[o, c, KH-1-kh, KW-1-kw], padding KH-1-p: a forward
    /// implicit-GEMM convolution accumulating into dX, with no column matrix and no col2im's overlapping adds.
    /// </summary>
    private void Conv2dInputGradAsForward<T>(ConvGeom g, Tensor wt, Tensor dyt, Tensor dxt, bool overwrite) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int taps = g.KH * g.KW;
        using var flipped = Tensor.Empty(new Shape(g.C, g.O, g.KH, g.KW), dxt.DType, this);
        nint wp = (nint)Ptr<T>(wt), fp = (nint)Ptr<T>(flipped);
        // Blocks of FlipChannels input channels: for each filter o, the block's taps are one contiguous run of W, and each
        // channel of the block writes its own sequential stream of W', so every cache line is used whole.
        const int FlipChannels = 16;
        int blocks = (g.C + FlipChannels - 1) / FlipChannels;
        CpuParallel.For(blocks, Math.Max(1, ElementwiseGrain / Math.Max(1, (long)g.O * taps * FlipChannels)), (b0, b1) =>
        {
            for (long blk = b0; blk < b1; blk++)
            {
                int c0 = (int)blk * FlipChannels, c1 = Math.Min(g.C, c0 + FlipChannels);
                for (int o = 0; o < g.O; o++)
                {
                    T* src = (T*)wp + ((long)o * g.C + c0) * taps;
                    for (int c = c0; c < c1; c++, src += taps)
                    {
                        T* dst = (T*)fp + ((long)c * g.O + o) * taps;
                        for (int tap = 0; tap < taps; tap++) dst[tap] = src[taps - 1 - tap];
                    }
                }
            }
        });
        var back = new ConvGeometry(g.N, g.O, g.OH, g.OW, g.C, g.KH, g.KW, g.H, g.W, 1, g.KH - 1 - g.Pad);
        if (typeof(T) == typeof(float) && WinogradTileFor(back, WinogradTile, 4) is int m and not 0)
        {
            WinogradForward(back, m, Ptr<float>(dyt), (float*)fp, Ptr<float>(dxt), overwrite ? 0f : 1f);
            return;
        }

        ImplicitForward(back, Ptr<T>(dyt), (T*)fp, Ptr<T>(dxt), overwrite ? T.Zero : T.One);
    }

    // ---- Winograd ------------------------------------------------------------------------------------------

    /// <summary>Output tile size m of Winograd F(m x m, 3 x 3) for the forward pass and the input gradient: 2 or 4, or 0
    /// for <see cref="WinogradTileFor"/>'s choice by shape. Test hook and benchmark switch (`sdp bench conv --winograd-tile`).</summary>
    public static int WinogradTile { get; set; }

    /// <summary>Output tile size m of the Winograd weight gradient: 2, 4, or 0 for the choice by shape. Test hook and benchmark switch.</summary>
    public static int WinogradWeightGradTile { get; set; }

    /// <summary>Tiles per group: the transformed input and product buffers (α² x tiles x channels each) hold one group, so
    /// this bounds the workspace and keeps the buffers near the cache; the group size depends on the shape alone, so
    /// results do not depend on the thread count. 128 rather than the first version's 512: on the 64-channel 32 x 32 layers
    /// a group's V and M then take 2.4 MB instead of 9.4 MB and stay in L2/L3 between the transforms and the GEMMs; `sdp
    /// bench conv --winograd-group-tiles` on 64>64 (2 rounds, loaded machine) gave 18 / 19 ms (fwd), 19 / 17 (dx), 17 / 14
    /// (dw) at 128 against 30 / 28, 25 / 24, 27 / 28 at 512; the 128-channel 16 x 16 layers ran the same at both, and the
    /// smaller planes already have at most 128 tiles per batch. The GEMMs keep 128 rows. Tuning and test hook, benchmark
    /// switch.</summary>
    public static int WinogradGroupTiles { get; set; } = 128;

    /// <summary>Fewest input and output channels for which Winograd runs. Tuning and test hook.</summary>
    internal static int WinogradMinChannels { get; set; } = 8;

    /// <summary>Fewest tiles over the batch for which a tile size is used. Tuning and test hook.</summary>
    internal static int WinogradMinTiles { get; set; } = 128;

    /// <summary>
    /// The output tile size for a float32 convolution of this shape, or 0 to leave it to implicit GEMM: Winograd needs
    /// 3 x 3 stride 1 (<see cref="ConvWinograd.Supports"/>) and at least <see cref="WinogradMinChannels"/> input and output
    /// channels (with fewer, as in the 3-channel stem, the GEMMs are too thin for the transforms to pay). The filter
    /// transform (α² x O x C, written and packed once per call) is amortised over the batch's tiles: measured on
    /// ResNet-18's shapes (`sdp bench conv`, batch 32, 2 threads), F(4x4) beat implicit GEMM by about 2x from 128 tiles
    /// (8 x 8 planes and up) but took 1.7-2x longer at 32 tiles (4 x 4 planes, 512 channels, a 38 MB filter transform),
    /// where F(2x2)'s 128 tiles still ran in 0.75x. So: F(4x4) with at least <see cref="WinogradMinTiles"/> tiles, else
    /// F(2x2) with as many, else implicit GEMM. <paramref name="forced"/> (a test hook) overrides the size, not the shape rule.
    /// <para>The rule is the same for the three passes. The 512-channel 4 x 4 layers were checked pass by pass, since there the
    /// filter transform (16.7 MB written per call) and the filter-gradient transform cost about a third of the call: with the
    /// row transforms and padded point strides, `sdp bench conv` (batch 32, 2 threads) gave Winograd / implicit GEMM
    /// 0.81-0.85 (forward), 0.84-0.86 (dx) and 0.85-0.92 (dw) in two quieter runs, 1.03 / 0.83 / 0.63 in a loaded one.
    /// The first version's dw, slower than implicit GEMM (19.6 against 16.7 ms), read dU's 16 points 1 MB apart, all in one
    /// cache set; padded, Winograd wins every pass, so no pass is sent elsewhere.</para>
    /// </summary>
    private static int WinogradTileFor(in ConvGeometry g, int forced, int largestTile)
    {
        if (ConvAlgorithm is not (CpuConvAlgorithm.Winograd or CpuConvAlgorithm.WinogradFast) || !ConvWinograd.Supports(g)
            || g.C < WinogradMinChannels || g.O < WinogradMinChannels) return 0;
        if (forced != 0) return forced;
        foreach (int m in (ReadOnlySpan<int>)[4, 2])
        {
            if (m > largestTile) continue;
            if ((long)g.N * ConvWinograd.TileRows(g, m) * ConvWinograd.TileCols(g, m) >= WinogradMinTiles) return m;
        }
        return 0;
    }

    /// <summary>The largest Winograd tile of the forward pass: F(4x4) only when asked for
    /// (<see cref="CpuConvAlgorithm.WinogradFast"/>), since its systematic error does not stay local there.</summary>
    private static int ForwardLargestTile => ConvAlgorithm == CpuConvAlgorithm.WinogradFast ? 4 : 2;

    /// <summary>Stopwatch ticks spent per Winograd phase since the last <see cref="TakeWinogradPhaseMs"/>: workspace allocation, filter transform
    /// (in the weight gradient: nothing), input-side transforms, the α² GEMMs, output-side transforms (dw: the filter-gradient
    /// transform). Timed on the calling thread between the parallel phases; `sdp bench conv` prints the split.</summary>
    private static readonly long[] WinogradPhaseTicks = new long[5];

    private static void WinogradPhase(int phase, ref long since)
    {
        long now = Stopwatch.GetTimestamp();
        WinogradPhaseTicks[phase] += now - since;
        since = now;
    }

    /// <summary>Milliseconds per Winograd phase (workspace, filter, input transforms, GEMMs, output transforms) since the last call, then reset.</summary>
    public static double[] TakeWinogradPhaseMs()
    {
        var ms = new double[WinogradPhaseTicks.Length];
        for (int i = 0; i < ms.Length; i++)
        {
            ms[i] = WinogradPhaseTicks[i] * 1000.0 / Stopwatch.Frequency;
            WinogradPhaseTicks[i] = 0;
        }

        return ms;
    }

    /// <summary>Images per Winograd group for this shape and tile size.</summary>
    private static int WinogradGroupImages(in ConvGeometry g, int m) =>
        Math.Clamp(WinogradGroupTiles / (ConvWinograd.TileRows(g, m) * ConvWinograd.TileCols(g, m)), 1, Math.Max(1, g.N));

    /// <summary>Runs the first version's per-tile transforms (8 channels gathered from their planes, outputs stored element by
    /// element) with unpadded point strides, in place of the row transforms. Benchmark switch (`sdp bench conv` times both in
    /// the same run) and test hook; the two compute the same values.</summary>
    public static bool WinogradLegacyTransforms { get; set; }

    /// <summary>
    /// The point stride (floats) of a transformed buffer with <paramref name="len"/> floats per point: rounded up to an odd
    /// multiple of 16 floats (64 bytes, a cache line). The transforms write or read all α² points of a tile together; at a
    /// stride that is a power of two (512 tiles x 64 channels, 512 x 512 filters) those 16 or 36 streams fall in one set of
    /// L1 and of L2 (8 ways each) and evict each other on every tile. An odd number of lines apart they spread over all sets.
    /// </summary>
    internal static long WinogradPointStride(long len)
    {
        if (WinogradLegacyTransforms) return len;
        long stride = (len + 15) & ~15L;
        return (stride & 16) == 0 ? stride + 16 : stride;
    }

    /// <summary>
    /// Work claimed in turn by up to MaxThreads threads: the points of a group's α² GEMMs (independent and of equal size;
    /// claiming keeps a thread slowed by another process from holding the others up), or its row-transform items, each
    /// thread with its own band. One per Winograd call, its delegates made once, so that a call allocates the same few
    /// objects however many groups it runs (`sdp bench conv` prints the allocation per call).
    /// </summary>
    private sealed class WinogradClaims
    {
        private readonly Action<long, long> _runSlots;
        private int _next, _items;
        private nint _bands;
        private long _bandFloats;
        private Action<int, nint>? _row;
        private Action<int>? _point;

        public WinogradClaims() => _runSlots = RunSlots;

        /// <summary>point(ξ) for ξ in [0, points), each on one thread.</summary>
        public void Points(int points, Action<int> point)
        {
            (_next, _items, _point, _row) = (-1, points, point, null);
            CpuParallel.For(Math.Min(points, Math.Max(1, CpuParallel.MaxThreads)), 1, _runSlots);
        }

        /// <summary>row(r, band) for r in [0, items), band: the claiming thread's <paramref name="bandFloats"/> floats of <paramref name="bands"/>.</summary>
        public void Rows(int items, nint bands, long bandFloats, Action<int, nint> row)
        {
            (_next, _items, _bands, _bandFloats, _row, _point) = (-1, items, bands, bandFloats, row, null);
            CpuParallel.For(Math.Min(items, Math.Max(1, CpuParallel.MaxThreads)), 1, _runSlots);
        }

        private void RunSlots(long s0, long s1)
        {
            for (long slot = s0; slot < s1; slot++)
            {
                nint band = _bands + (nint)(slot * _bandFloats * sizeof(float));
                int item;
                while ((item = Interlocked.Increment(ref _next)) < _items)
                {
                    if (_row is not null) _row(item, band);
                    else _point!(item);
                }
            }
        }
    }

    /// <summary>The workspace of one Winograd call: U (α² x O x C), V (α² x group tiles x C), M (α² x group tiles x O), each at a
    /// padded point stride, and one row-transform band per thread.</summary>
    private readonly record struct WinogradBuffers(long UStride, long VStride, long MStride, long BandFloats, int Bands, int Points)
    {
        public static WinogradBuffers For(in ConvGeometry g, WinogradTransform tr, int groupTiles) => new(
            WinogradPointStride((long)g.O * g.C), WinogradPointStride((long)groupTiles * g.C), WinogradPointStride((long)groupTiles * g.O),
            WinogradLegacyTransforms ? 0 : ConvWinograd.BandFloats(g, tr.M), Math.Max(1, CpuParallel.MaxThreads), tr.Points);

        public long Floats => (Points * (UStride + VStride + MStride)) + (Bands * BandFloats);

        public long VOffset => Points * UStride;

        public long MOffset => VOffset + (Points * VStride);

        public long BandOffset => MOffset + (Points * MStride);
    }

    /// <summary>
    /// y = conv(x, w) + beta·y by Winograd F(m x m, 3 x 3): U = G w Gᵀ once per call, then per group of tiles
    /// V = Bᵀ d B, α² GEMMs M[ξ] (tiles x O) = V[ξ] (tiles x C) · U[ξ]ᵀ (C x O), and y = Aᵀ M A + beta·y. Transforms thread
    /// over filters or tile rows, the GEMMs over points (each single-threaded), so no output depends on the thread count.
    /// </summary>
    private void WinogradForward(ConvGeometry g, int tile, float* x, float* w, float* y, float beta)
    {
        var tr = WinogradTransform.ForTile(tile);
        int points = tr.Points, perImage = ConvWinograd.TileRows(g, tr.M) * ConvWinograd.TileCols(g, tr.M);
        int groupImages = WinogradGroupImages(g, tr.M), groupTiles = groupImages * perImage;
        var b = WinogradBuffers.For(g, tr, groupTiles);
        long t = Stopwatch.GetTimestamp();
        using var ws = Tensor.Empty(new Shape(checked((int)b.Floats)), DType.Float32, this);
        WinogradPhase(0, ref t);
        nint up = (nint)Ptr<float>(ws), vp = up + (nint)(b.VOffset * sizeof(float)), mp = up + (nint)(b.MOffset * sizeof(float)), bandp = up + (nint)(b.BandOffset * sizeof(float));
        nint xp = (nint)x, wp = (nint)w, yp = (nint)y;
        long uStride = b.UStride, bandFloats = b.BandFloats;
        CpuParallel.For(g.O, Math.Max(1, 1024 / g.C), (o0, o1) => ConvWinograd.FilterTransform(tr, (float*)wp, g.C, (float*)up, uStride, (int)o0, (int)o1));
        WinogradPhase(1, ref t);
        // Per-group values live outside the loop and the delegates are made once, so that more groups allocate nothing more.
        var claims = new WinogradClaims();
        var sub = g;
        int tiles = 0;
        long vStride = 0, mStride = 0;
        nint xg = 0, yg = 0;
        Action<int, nint> inputRow = (r, band) => ConvWinograd.InputTransformRows(tr, sub, (float*)xg, r, r + 1, (float*)vp, vStride, (float*)band);
        Action<int> product = xi => Gemm.Sgemm(false, true, tiles, g.O, g.C, 1f, (float*)vp + (xi * vStride), g.C, (float*)up + (xi * uStride), g.C, 0f, (float*)mp + (xi * mStride), g.O, 1);
        Action<int, nint> outputRow = (r, band) => ConvWinograd.OutputTransformRows(tr, sub, (float*)mp, mStride, r, r + 1, (float*)yg, beta, (float*)band);
        for (int n0 = 0; n0 < g.N; n0 += groupImages)
        {
            int count = Math.Min(groupImages, g.N - n0), rows = ConvWinograd.RowItems(g, tr.M, count);
            tiles = count * perImage;
            sub = g with { N = count };
            vStride = WinogradLegacyTransforms ? (long)tiles * g.C : b.VStride;
            mStride = WinogradLegacyTransforms ? (long)tiles * g.O : b.MStride;
            xg = xp + (nint)((long)n0 * g.C * g.HW * sizeof(float));
            yg = yp + (nint)((long)n0 * g.O * g.P * sizeof(float));
            if (WinogradLegacyTransforms) CpuParallel.For(tiles, Math.Max(1, 4096 / g.C), (t0, t1) => ConvWinograd.InputTransform(tr, sub, (float*)xg, (int)t0, (int)t1, (float*)vp, vStride));
            else claims.Rows(rows, bandp, bandFloats, inputRow);
            WinogradPhase(2, ref t);
            claims.Points(points, product);
            WinogradPhase(3, ref t);
            if (WinogradLegacyTransforms) CpuParallel.For(tiles, Math.Max(1, 4096 / g.O), (t0, t1) => ConvWinograd.OutputTransform(tr, sub, (float*)mp, mStride, (int)t0, (int)t1, (float*)yg, beta));
            else claims.Rows(rows, bandp, bandFloats, outputRow);
            WinogradPhase(4, ref t);
        }
    }

    /// <summary>
    /// dw += Σ over tiles of the 3 x 3 correlation of each input tile with its output-gradient tile, by Winograd: per group
    /// V = Bᵀ d B and Mh = A dY Aᵀ, then α² GEMMs dU[ξ] (O x C) (+)= Mh[ξ]ᵀ (O x tiles) · V[ξ] (tiles x C), groups in
    /// order; finally dw = Gᵀ dU G + beta·dw. The GEMMs thread over points, so the sums run in one order for any thread count.
    /// </summary>
    private void WinogradWeightGrad(ConvGeometry g, int tile, float* x, float* dy, float* dw, float dwBeta)
    {
        var tr = WinogradTransform.ForTile(tile);
        int points = tr.Points, perImage = ConvWinograd.TileRows(g, tr.M) * ConvWinograd.TileCols(g, tr.M);
        int groupImages = WinogradGroupImages(g, tr.M), groupTiles = groupImages * perImage;
        var b = WinogradBuffers.For(g, tr, groupTiles);
        long t = Stopwatch.GetTimestamp();
        using var ws = Tensor.Empty(new Shape(checked((int)b.Floats)), DType.Float32, this);
        WinogradPhase(0, ref t);
        nint up = (nint)Ptr<float>(ws), vp = up + (nint)(b.VOffset * sizeof(float)), mp = up + (nint)(b.MOffset * sizeof(float)), bandp = up + (nint)(b.BandOffset * sizeof(float));
        nint xp = (nint)x, dyp = (nint)dy, dwp = (nint)dw;
        long uStride = b.UStride, bandFloats = b.BandFloats;
        var claims = new WinogradClaims();
        var sub = g;
        int tiles = 0;
        long vStride = 0, mStride = 0;
        nint xg = 0, dyg = 0;
        float beta = 0f;
        Action<int, nint> inputRows = (r, band) =>
        {
            ConvWinograd.InputTransformRows(tr, sub, (float*)xg, r, r + 1, (float*)vp, vStride, (float*)band);
            ConvWinograd.OutputGradTransformRows(tr, sub, (float*)dyg, r, r + 1, (float*)mp, mStride, (float*)band);
        };
        Action<int> product = xi => Gemm.Sgemm(true, false, g.O, g.C, tiles, 1f, (float*)mp + (xi * mStride), g.O, (float*)vp + (xi * vStride), g.C, beta, (float*)up + (xi * uStride), g.C, 1);
        for (int n0 = 0; n0 < g.N; n0 += groupImages)
        {
            int count = Math.Min(groupImages, g.N - n0), rows = ConvWinograd.RowItems(g, tr.M, count);
            tiles = count * perImage;
            sub = g with { N = count };
            vStride = WinogradLegacyTransforms ? (long)tiles * g.C : b.VStride;
            mStride = WinogradLegacyTransforms ? (long)tiles * g.O : b.MStride;
            xg = xp + (nint)((long)n0 * g.C * g.HW * sizeof(float));
            dyg = dyp + (nint)((long)n0 * g.O * g.P * sizeof(float));
            beta = n0 == 0 ? 0f : 1f;
            if (WinogradLegacyTransforms)
            {
                CpuParallel.For(tiles, Math.Max(1, 2048 / (g.C + g.O)), (t0, t1) =>
                {
                    ConvWinograd.InputTransform(tr, sub, (float*)xg, (int)t0, (int)t1, (float*)vp, vStride);
                    ConvWinograd.OutputGradTransform(tr, sub, (float*)dyg, (int)t0, (int)t1, (float*)mp, mStride);
                });
            }
            else
            {
                claims.Rows(rows, bandp, bandFloats, inputRows);
            }

            WinogradPhase(2, ref t);
            claims.Points(points, product);
            WinogradPhase(3, ref t);
        }

        CpuParallel.For(g.O, Math.Max(1, 1024 / g.C), (o0, o1) => ConvWinograd.FilterGradTransform(tr, (float*)up, g.C, uStride, (float*)dwp, dwBeta, (int)o0, (int)o1));
        WinogradPhase(4, ref t);
    }
}
