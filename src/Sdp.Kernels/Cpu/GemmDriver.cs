using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.ExceptionServices;
using System.Runtime.Intrinsics.X86;

namespace Sdp.Kernels.Cpu;

/// <summary>Arguments of one GEMM call (or of one thread's share of it). Strides are in elements.</summary>
internal unsafe struct GemmArgs<T> where T : unmanaged
{
    public bool TransA, TransB;
    public int M, N, K;
    public T Alpha, Beta;
    public T* A, B, C;
    public nint Lda, Ldb, Ldc;

    // Index-aware variants (masked GEMM; all null for a plain GEMM). Indices are not bounds-checked here.
    /// <summary>op(A) row i is logical row GatherA[i] of op(A)'s storage (only with TransA: a column gather of A).</summary>
    public int* GatherA;

    /// <summary>op(B) column j is logical column GatherBN[j] (TransB: row GatherBN[j] of B; else column GatherBN[j] of B).</summary>
    public int* GatherBN;

    /// <summary>op(B) row p is logical row GatherBK[p] (only with TransB: column GatherBK[p] of B).</summary>
    public int* GatherBK;

    /// <summary>Row i of C is stored at row ScatterRows[i]; column j of C at column ScatterCols[j].</summary>
    public int* ScatterRows, ScatterCols;

    /// <summary>
    /// Optional with a scatter map over several K slices: C's compact (M x N) image accumulates here (row stride Lds)
    /// over the K slices, and each block is scattered into C (C[map] = block + Beta · C[map]) by the compute item that
    /// finishes its last slice. The sum over K is the same as staging the whole product first and scattering it
    /// afterwards; only the separate pass over the staged output (and its own parallel region) is gone.
    /// </summary>
    public T* Stage;

    /// <summary>Row stride of <see cref="Stage"/> in elements.</summary>
    public nint Lds;

    /// <summary>Packs op(A) and/or op(B) blocks from a layout strides cannot describe (implicit-GEMM convolution); null for a plain GEMM.</summary>
    public IGemmPacker<T>? Packer;

    public readonly bool Indexed => GatherA != null || GatherBN != null || GatherBK != null || ScatterRows != null || ScatterCols != null || Packer != null;
}

/// <summary>
/// GotoBLAS/BLIS-style blocked GEMM over one microkernel:
/// for each NC-wide column block of B, for each KC-deep slice: pack B (KC x NC) into NR-column panels;
/// for each MC-tall row block of A: pack A (MC x KC) into MR-row panels, then sweep NR x MR microtiles.
/// Packing absorbs the transposes, so the microkernel sees a single layout. Multi-threaded calls share each packed
/// B block and hand out (B slice | A block x column range) items dynamically (see <see cref="SharedJob"/>);
/// small single-threaded calls skip blocking (see <see cref="RunSmall"/>).
/// </summary>
internal static unsafe class GemmDriver<T, TK>
    where T : unmanaged, INumber<T>
    where TK : struct, IGemmKernel<T>
{
    // --- threading -----------------------------------------------------------------------------------------

    public static void Run(in GemmArgs<T> g, int threads)
    {
        long work = (long)g.M * g.N * g.K;
        long perThread = Gemm.MinWorkPerThread;
        int t = (int)Math.Clamp(work / Math.Max(1, perThread), 1, threads);
        int tilesM = (g.M + TK.MR - 1) / TK.MR;
        int tilesN = (g.N + TK.NR - 1) / TK.NR;
        t = Math.Min(t, tilesM * tilesN);
        if (t <= 1)
        {
            if (work <= Gemm.SmallWork && g.K <= TK.KC && !g.Indexed)
            {
                RunSmall(in g);
            }
            else
            {
                RunSerial(in g);
            }

            return;
        }

        var job = new SharedJob(in g, t);
        int helpers = Math.Min(t, job.ComputeItemsPerPhase) - 1;
        for (int i = 0; i < helpers; i++)
        {
            ThreadPool.UnsafeQueueUserWorkItem(job, preferLocal: false);
        }

        job.Drain();
        job.WaitAll();
    }

    /// <summary>
    /// One multi-threaded call, as a flat list of work items claimed dynamically by whichever threads take part
    /// (the caller plus pool helpers; a helper that starts late just finds less to do, so a busy pool or a busy core
    /// cannot hold the call hostage). The items of phase (jc, pc) are: first <c>PackItems</c> slices of the shared
    /// packed B block, then one compute item per (MC row block x column range), each packing its A block into its own
    /// thread's workspace and sweeping the microtiles. Dependencies only ever point at items claimed earlier, i.e. at
    /// threads that are already running: a compute item waits for its phase's B packing and for the same C region in
    /// the previous k slice; packing into one of the two B buffers waits for the phase that used it before.
    /// </summary>
    private sealed class SharedJob : IThreadPoolWorkItem
    {
        private readonly GemmArgs<T> _g;
        private readonly int _mc, _kc, _nc, _kBlocks, _jrSplits, _packItems, _compItems, _itemsPerPhase, _totalItems;
        private readonly nint _bufStride; // elements per B buffer
        private readonly T* _bBuffers;     // two KC x NC buffers (double buffering across phases)
        private readonly int[] _packDone, _compDone, _regionDone;
        private readonly ManualResetEventSlim _done = new(false, 64);
        private int _next, _finished;
        private Exception? _error;

        public SharedJob(in GemmArgs<T> g, int threads)
        {
            _g = g;
            int mr = TK.MR, nr = TK.NR;
            // >= 2 compute items per thread and phase for dynamic balancing: first by shrinking the row blocks (down to
            // 4 microtiles), then by splitting columns (each range keeps >= 4 panels; every range re-packs its A block).
            // A short, wide product (M within one row block, many column panels: a convolution's filters against a
            // batch of pixels) splits columns only: every extra row block would stream the whole packed B block from
            // beyond L2 again, while an extra column range only re-packs the small A block.
            int target = 2 * threads;
            int mcMax = Gemm.TuneMC > 0 ? RoundUp(Gemm.TuneMC, mr) : TK.MC;
            _kc = BlockSize(g.K, Gemm.TuneKC > 0 ? Gemm.TuneKC : TK.KC, 1);
            _nc = BlockSize(g.N, Gemm.TuneNC > 0 ? RoundUp(Gemm.TuneNC, nr) : TK.NC, nr);
            bool wide = g.M <= mcMax && _nc / nr >= 4 * target;
            if (!wide)
            {
                mcMax = Math.Min(mcMax, Math.Max(4 * mr, RoundUp((g.M + target - 1) / target, mr)));
            }

            _mc = BlockSize(g.M, mcMax, mr);
            _kBlocks = (g.K + _kc - 1) / _kc;
            int jBlocks = (g.N + _nc - 1) / _nc;
            int icBlocks = (g.M + _mc - 1) / _mc;
            int panels = _nc / nr;

            int want = (target + icBlocks - 1) / icBlocks;
            _jrSplits = Math.Clamp(want, 1, Math.Max(1, panels / 4));
            _compItems = icBlocks * _jrSplits;
            _packItems = Math.Min(threads, panels);
            _itemsPerPhase = _packItems + _compItems;
            int phases = jBlocks * _kBlocks;
            _totalItems = phases * _itemsPerPhase;
            _packDone = new int[phases];
            _compDone = new int[phases];
            _regionDone = new int[phases * _compItems];

            _bufStride = (nint)RoundUp(_kc * _nc * sizeof(T), 64) / sizeof(T);
            _bBuffers = (T*)GemmWorkspace.AcquireShared((nuint)(2 * _bufStride * sizeof(T)));
        }

        public int ComputeItemsPerPhase => _compItems;

        public void Execute() => Drain();

        /// <summary>Claims and runs items until none are left.</summary>
        public void Drain()
        {
            int i;
            while ((i = Interlocked.Increment(ref _next) - 1) < _totalItems)
            {
                int ph = i / _itemsPerPhase, j = i % _itemsPerPhase;
                try
                {
                    if (j < _packItems)
                    {
                        Pack(ph, j);
                    }
                    else
                    {
                        Compute(ph, j - _packItems);
                    }
                }
                catch (Exception e)
                {
                    Interlocked.CompareExchange(ref _error, e, null);
                }
                finally
                {
                    // Completion is published even after a failure so that no other item waits forever.
                    if (j < _packItems)
                    {
                        Interlocked.Increment(ref _packDone[ph]);
                    }
                    else
                    {
                        Volatile.Write(ref _regionDone[(ph * _compItems) + j - _packItems], 1);
                        Interlocked.Increment(ref _compDone[ph]);
                    }

                    if (Interlocked.Increment(ref _finished) == _totalItems)
                    {
                        _done.Set();
                    }
                }
            }
        }

        public void WaitAll()
        {
            if (Volatile.Read(ref _finished) != _totalItems)
            {
                _done.Wait();
            }

            if (_error is not null)
            {
                ExceptionDispatchInfo.Throw(_error);
            }
        }

        private static void WaitFor(ref int counter, int target)
        {
            if (Volatile.Read(ref counter) >= target)
            {
                return;
            }

            var spin = default(SpinWait);
            while (Volatile.Read(ref counter) < target)
            {
                spin.SpinOnce(sleep1Threshold: -1);
            }
        }

        private void Phase(int ph, out int jc, out int ncur, out int pc, out int kcur)
        {
            jc = ph / _kBlocks * _nc;
            ncur = Math.Min(_nc, _g.N - jc);
            pc = ph % _kBlocks * _kc;
            kcur = Math.Min(_kc, _g.K - pc);
        }

        private void Pack(int ph, int slice)
        {
            if (ph >= 2)
            {
                WaitFor(ref _compDone[ph - 2], _compItems); // the buffer's previous users are done
            }

            Phase(ph, out int jc, out int ncur, out int pc, out int kcur);
            int nr = TK.NR;
            int panels = (ncur + nr - 1) / nr;
            int c0 = slice * panels / _packItems * nr;
            int c1 = Math.Min(ncur, (slice + 1) * panels / _packItems * nr);
            if (c1 <= c0)
            {
                return;
            }

            T* dst = _bBuffers + ((ph & 1) * _bufStride) + ((nint)c0 * kcur);
            PackB(in _g, jc + c0, pc, kcur, c1 - c0, dst);
        }

        private void Compute(int ph, int region)
        {
            WaitFor(ref _packDone[ph], _packItems);
            Phase(ph, out int jc, out int ncur, out int pc, out int kcur);
            if (pc > 0)
            {
                WaitFor(ref _regionDone[((ph - 1) * _compItems) + region], 1); // same C region, previous k slice
            }

            int nr = TK.NR;
            int icb = region / _jrSplits, js = region % _jrSplits;
            int ic = icb * _mc;
            int mcur = Math.Min(_mc, _g.M - ic);
            int panels = (ncur + nr - 1) / nr;
            int c0 = js * panels / _jrSplits * nr;
            int c1 = Math.Min(ncur, (js + 1) * panels / _jrSplits * nr);
            if (c1 <= c0 || mcur <= 0)
            {
                return;
            }

            nuint aBytes = (nuint)RoundUp(_mc * _kc * sizeof(T), 64) + 64;
            nuint sBytes = (nuint)RoundUp(TK.MR * nr * sizeof(T), 64);
            byte* ws = GemmWorkspace.Acquire(aBytes + sBytes);
            T* ap = (T*)ws;
            T* scratch = (T*)(ws + aBytes);
            PackA(in _g, ic, pc, mcur, kcur, ap);

            T* bp = _bBuffers + ((ph & 1) * _bufStride) + ((nint)c0 * kcur);
            MacroAt(in _g, ic, jc + c0, mcur, c1 - c0, pc, kcur, ap, bp, scratch);
        }
    }

    // --- single-threaded blocked algorithm -----------------------------------------------------------------

    private static int RoundUp(int x, int q) => (x + q - 1) / q * q;

    /// <summary>Splits <paramref name="total"/> into equal blocks of at most <paramref name="max"/>, rounded up to <paramref name="quantum"/>.</summary>
    private static int BlockSize(int total, int max, int quantum)
    {
        int blocks = (total + max - 1) / max;
        return RoundUp((total + blocks - 1) / blocks, quantum);
    }

    public static void RunSerial(in GemmArgs<T> g)
    {
        int mr = TK.MR, nr = TK.NR;
        int mcMax = Gemm.TuneMC > 0 ? RoundUp(Gemm.TuneMC, mr) : TK.MC;
        int kcMax = Gemm.TuneKC > 0 ? Gemm.TuneKC : TK.KC;
        int ncMax = Gemm.TuneNC > 0 ? RoundUp(Gemm.TuneNC, nr) : TK.NC;
        int mc = BlockSize(g.M, mcMax, mr);
        int kc = BlockSize(g.K, kcMax, 1);
        int nc = BlockSize(g.N, ncMax, nr);

        nuint aBytes = (nuint)RoundUp(mc * kc * sizeof(T), 64) + 64; // + slack: the vector A packer overshoots by 2 elements
        nuint bBytes = (nuint)RoundUp(kc * nc * sizeof(T), 64);
        nuint sBytes = (nuint)RoundUp(mr * nr * sizeof(T), 64);
        byte* ws = GemmWorkspace.Acquire(aBytes + bBytes + sBytes);
        T* ap = (T*)ws;
        T* bp = (T*)(ws + aBytes);
        T* scratch = (T*)(ws + aBytes + bBytes);

        for (int jc = 0; jc < g.N; jc += nc)
        {
            int ncur = Math.Min(nc, g.N - jc);
            for (int pc = 0; pc < g.K; pc += kc)
            {
                int kcur = Math.Min(kc, g.K - pc);
                PackB(in g, jc, pc, kcur, ncur, bp);

                for (int ic = 0; ic < g.M; ic += mc)
                {
                    int mcur = Math.Min(mc, g.M - ic);
                    PackA(in g, ic, pc, mcur, kcur, ap);
                    MacroAt(in g, ic, jc, mcur, ncur, pc, kcur, ap, bp, scratch);
                }
            }
        }
    }

    /// <summary>Packs the (mcur x kcur) block of op(A) at (ic, pc), gathering rows when <see cref="GemmArgs{T}.GatherA"/> is set.</summary>
    private static void PackA(in GemmArgs<T> g, int ic, int pc, int mcur, int kcur, T* ap)
    {
        if (g.Packer is { PacksA: true } packer)
        {
            packer.PackA(ic, pc, mcur, kcur, ap, TK.MR);
        }
        else if (g.GatherA != null)
        {
            PackATGather(g.A + (pc * g.Lda), g.Lda, g.GatherA + ic, mcur, kcur, ap);
        }
        else if (g.TransA)
        {
            PackAT(g.A + (pc * g.Lda) + ic, g.Lda, mcur, kcur, ap);
        }
        else
        {
            PackAN(g.A + (ic * g.Lda) + pc, g.Lda, mcur, kcur, ap);
        }
    }

    /// <summary>Packs the (kcur x ncols) block of op(B) at (pc, j0), through the gather indices when set.</summary>
    private static void PackB(in GemmArgs<T> g, int j0, int pc, int kcur, int ncols, T* dst)
    {
        if (g.Packer is { PacksB: true } packer)
        {
            packer.PackB(pc, j0, kcur, ncols, dst, TK.NR);
        }
        else if (g.GatherBK != null)
        {
            PackBTGatherK(g.B + (j0 * g.Ldb), g.Ldb, g.GatherBK + pc, kcur, ncols, dst);
        }
        else if (g.GatherBN != null)
        {
            if (g.TransB)
            {
                PackBTGatherN(g.B + pc, g.Ldb, g.GatherBN + j0, kcur, ncols, dst);
            }
            else
            {
                PackBNGatherN(g.B + (pc * g.Ldb), g.Ldb, g.GatherBN + j0, kcur, ncols, dst);
            }
        }
        else if (g.TransB)
        {
            PackBT(g.B + (j0 * g.Ldb) + pc, g.Ldb, kcur, ncols, dst);
        }
        else
        {
            PackBN(g.B + (pc * g.Ldb) + j0, g.Ldb, kcur, ncols, dst);
        }
    }

    /// <summary>
    /// Runs the macro-kernel for the C block at (ic, jc) and the K slice at pc, scattering rows/columns when the args ask
    /// for it (through the stage when there is one).
    /// </summary>
    private static void MacroAt(in GemmArgs<T> g, int ic, int jc, int mc, int nc, int pc, int kc, T* ap, T* bp, T* scratch)
    {
        T beta = pc == 0 ? g.Beta : T.One;
        if (g.Stage != null)
        {
            MacroStaged(in g, ic, jc, mc, nc, pc, kc, ap, bp, scratch);
            return;
        }

        if (g.ScatterRows == null && g.ScatterCols == null)
        {
            Macro(mc, nc, kc, ap, bp, g.C + (ic * g.Ldc) + jc, g.Ldc, g.Alpha, beta, scratch);
            return;
        }

        int mr = TK.MR, nr = TK.NR;
        int* rows = g.ScatterRows, cols = g.ScatterCols;
        for (int jr = 0; jr < nc; jr += nr)
        {
            T* pb = bp + ((nint)jr * kc);
            int ncur = Math.Min(nr, nc - jr);
            int j0 = jc + jr;
            int col0 = cols != null ? cols[j0] : j0;
            bool colsRun = cols == null || cols[j0 + ncur - 1] - col0 == ncur - 1; // the tile's columns are adjacent in C
            for (int ir = 0; ir < mc; ir += mr)
            {
                T* pa = ap + ((nint)ir * kc);
                int mcur = Math.Min(mr, mc - ir);
                int i0 = ic + ir;
                int row0 = rows != null ? rows[i0] : i0;
                bool rowsRun = rows == null || rows[i0 + mcur - 1] - row0 == mcur - 1;
                if (colsRun && rowsRun)
                {
                    // The tile maps onto a dense C tile: no scatter needed.
                    T* cc = g.C + (row0 * g.Ldc) + col0;
                    if (mcur == mr && ncur == nr)
                    {
                        TK.Run(kc, pa, pb, cc, g.Ldc, g.Alpha, beta);
                    }
                    else
                    {
                        Edge(kc, pa, pb, cc, g.Ldc, g.Alpha, beta, mcur, ncur, scratch);
                    }

                    continue;
                }

                if (Sse.IsSupported)
                {
                    // Like the microkernel does for in-place tiles: start fetching the C lines this tile will update.
                    int cFirst = colsRun ? col0 : cols![j0], cLast = colsRun ? col0 + ncur - 1 : cols![j0 + ncur - 1];
                    for (int i = 0; i < mcur; i++)
                    {
                        T* crow = g.C + ((rows != null ? rows[i0 + i] : i0 + i) * g.Ldc);
                        for (int q = cFirst; q <= cLast; q += 64 / sizeof(T))
                        {
                            Sse.Prefetch0(crow + q);
                        }

                        Sse.Prefetch0(crow + cLast);
                    }
                }

                TK.Run(kc, pa, pb, scratch, nr, g.Alpha, T.Zero);
                ScatterTile(g.C, g.Ldc, rows, colsRun ? null : cols, scratch, nr, i0, colsRun ? col0 : j0, beta, mcur, ncur);
            }
        }
    }

    /// <summary>
    /// The C block at (ic, jc) through <see cref="GemmArgs{T}.Stage"/>: every K slice accumulates into the stage exactly
    /// as a plain GEMM into a compact C would (the first with beta = 0), and the item that finishes the block's last slice
    /// scatters the block right away, row by row (so the hardware prefetcher streams the C lines; scattering each
    /// microtile from L1 instead measured 2-3% slower at n = 1024, the scattered C lines arriving too late), while other
    /// threads keep computing.
    /// </summary>
    private static void MacroStaged(in GemmArgs<T> g, int ic, int jc, int mc, int nc, int pc, int kc, T* ap, T* bp, T* scratch)
    {
        T* stage = g.Stage + (ic * g.Lds) + jc;
        Macro(mc, nc, kc, ap, bp, stage, g.Lds, g.Alpha, pc == 0 ? T.Zero : T.One, scratch);
        if (pc + kc == g.K)
        {
            ScatterTile(g.C, g.Ldc, g.ScatterRows, g.ScatterCols, stage, g.Lds, ic, jc, g.Beta, mc, nc);
        }
    }

    /// <summary>
    /// C[row(i0 + i), col(j0 + j)] = tile[i, j] + beta * C[...] for an (mcur x ncur) tile (row stride
    /// <paramref name="lds"/>), where row(x) = rows[x] (x when rows is null) and col(x) = cols[x] (x when cols is null).
    /// </summary>
    private static void ScatterTile(T* c, nint ldc, int* rows, int* cols, T* tile, nint lds, int i0, int j0, T beta, int mcur, int ncur)
    {
        int vw = Vector<T>.Count;
        var vb = new Vector<T>(beta);
        for (int i = 0; i < mcur; i++)
        {
            T* src = tile + (i * lds);
            T* dst = c + ((rows != null ? rows[i0 + i] : i0 + i) * ldc);
            if (cols == null)
            {
                dst += j0;
                int j = 0;
                if (beta == T.Zero)
                {
                    for (; j + vw <= ncur; j += vw)
                    {
                        Vector.Store(Vector.Load(src + j), dst + j);
                    }

                    for (; j < ncur; j++)
                    {
                        dst[j] = src[j];
                    }
                }
                else if (beta == T.One)
                {
                    for (; j + vw <= ncur; j += vw)
                    {
                        Vector.Store(Vector.Load(src + j) + Vector.Load(dst + j), dst + j);
                    }

                    for (; j < ncur; j++)
                    {
                        dst[j] += src[j];
                    }
                }
                else
                {
                    for (; j + vw <= ncur; j += vw)
                    {
                        Vector.Store(Vector.Load(src + j) + (vb * Vector.Load(dst + j)), dst + j);
                    }

                    for (; j < ncur; j++)
                    {
                        dst[j] = src[j] + (beta * dst[j]);
                    }
                }
            }
            else
            {
                int* cj = cols + j0;
                if (beta == T.Zero)
                {
                    for (int j = 0; j < ncur; j++)
                    {
                        dst[cj[j]] = src[j];
                    }
                }
                else if (beta == T.One)
                {
                    for (int j = 0; j < ncur; j++)
                    {
                        dst[cj[j]] += src[j];
                    }
                }
                else
                {
                    for (int j = 0; j < ncur; j++)
                    {
                        T* d = dst + cj[j];
                        *d = src[j] + (beta * *d);
                    }
                }
            }
        }
    }

    private static void Macro(int mc, int nc, int kc, T* ap, T* bp, T* c, nint ldc, T alpha, T beta, T* scratch)
    {
        int mr = TK.MR, nr = TK.NR;
        for (int jr = 0; jr < nc; jr += nr)
        {
            T* pb = bp + (nint)jr * kc;
            int ncur = Math.Min(nr, nc - jr);
            for (int ir = 0; ir < mc; ir += mr)
            {
                T* pa = ap + (nint)ir * kc;
                T* cc = c + ir * ldc + jr;
                int mcur = Math.Min(mr, mc - ir);
                if (mcur == mr && ncur == nr)
                {
                    TK.Run(kc, pa, pb, cc, ldc, alpha, beta);
                }
                else
                {
                    Edge(kc, pa, pb, cc, ldc, alpha, beta, mcur, ncur, scratch);
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void Edge(int kc, T* pa, T* pb, T* c, nint ldc, T alpha, T beta, int mcur, int ncur, T* scratch)
    {
        TK.Run(kc, pa, pb, scratch, TK.NR, alpha, T.Zero);
        StoreTile(scratch, c, ldc, beta, mcur, ncur);
    }

    /// <summary>C[0..mcur, 0..ncur] = tile + beta * C, where tile (row stride NR) already holds alpha * A·B.</summary>
    private static void StoreTile(T* scratch, T* c, nint ldc, T beta, int mcur, int ncur)
    {
        int nr = TK.NR;
        for (int i = 0; i < mcur; i++)
        {
            T* src = scratch + i * nr;
            T* dst = c + i * ldc;
            if (beta == T.Zero)
            {
                for (int j = 0; j < ncur; j++)
                {
                    dst[j] = src[j];
                }
            }
            else
            {
                for (int j = 0; j < ncur; j++)
                {
                    dst[j] = src[j] + beta * dst[j];
                }
            }
        }
    }

    // --- small problems: no blocking, operands used in place where the layout allows -------------------------

    /// <summary>
    /// Single pass over k (k &lt;= KC) for problems that sit in cache anyway: A is read in place (any transpose) and
    /// B in place when not transposed; only ragged edge panels (and Bᵀ) are packed.
    /// </summary>
    private static void RunSmall(in GemmArgs<T> g)
    {
        int mr = TK.MR, nr = TK.NR, k = g.K;
        int nPanels = (g.N + nr - 1) / nr;
        nuint bBytes = g.TransB ? (nuint)RoundUp(nPanels * nr * k * sizeof(T), 64) : (nuint)RoundUp(nr * k * sizeof(T), 64);
        nuint aBytes = (nuint)RoundUp(mr * k * sizeof(T), 64) + 64;
        nuint sBytes = (nuint)RoundUp(mr * nr * sizeof(T), 64);
        byte* ws = GemmWorkspace.Acquire(aBytes + bBytes + sBytes);
        T* aEdge = (T*)ws;
        T* bBuf = (T*)(ws + aBytes);
        T* scratch = (T*)(ws + aBytes + bBytes);

        nint rsa = g.TransA ? 1 : g.Lda, csa = g.TransA ? g.Lda : 1;
        int mFull = g.M / mr * mr;
        if (mFull < g.M)
        {
            if (g.TransA)
            {
                PackAT(g.A + mFull, g.Lda, g.M - mFull, k, aEdge);
            }
            else
            {
                PackAN(g.A + mFull * g.Lda, g.Lda, g.M - mFull, k, aEdge);
            }
        }

        if (g.TransB)
        {
            PackBT(g.B, g.Ldb, k, g.N, bBuf);
        }

        for (int jr = 0; jr < g.N; jr += nr)
        {
            int ncur = Math.Min(nr, g.N - jr);
            T* pb;
            nint rsb = nr;
            if (g.TransB)
            {
                pb = bBuf + (nint)jr * k;
            }
            else if (ncur == nr)
            {
                pb = g.B + jr;
                rsb = g.Ldb;
            }
            else
            {
                PackBN(g.B + jr, g.Ldb, k, ncur, bBuf);
                pb = bBuf;
            }

            for (int ir = 0; ir < g.M; ir += mr)
            {
                T* cc = g.C + ir * g.Ldc + jr;
                bool fullRows = ir < mFull;
                T* pa = fullRows ? (g.TransA ? g.A + ir : g.A + ir * g.Lda) : aEdge;
                nint ra = fullRows ? rsa : 1, ca = fullRows ? csa : mr;
                if (fullRows && ncur == nr)
                {
                    TK.RunStrided(k, pa, ra, ca, pb, rsb, cc, g.Ldc, g.Alpha, g.Beta);
                }
                else
                {
                    TK.RunStrided(k, pa, ra, ca, pb, rsb, scratch, nr, g.Alpha, T.Zero);
                    StoreTile(scratch, cc, g.Ldc, g.Beta, Math.Min(mr, g.M - ir), ncur);
                }
            }
        }
    }

    // --- packing -------------------------------------------------------------------------------------------
    // Packed A block: panel q (rows q*MR..) at ap + q*MR*kc, element (r, p) at [p*MR + r], zero-padded rows.
    // Packed B block: panel q (cols q*NR..) at bp + q*NR*kc, element (p, j) at [p*NR + j], zero-padded columns.

    /// <summary>Packs A (mc x kc, row stride lda) into MR-row panels.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackAN(T* a, nint lda, int mc, int kc, T* dst)
    {
        int mr = TK.MR;
        for (int ir = 0; ir < mc; ir += mr, dst += (nint)mr * kc)
        {
            int rows = Math.Min(mr, mc - ir);
            T* a0 = a + ir * lda;
            if (typeof(T) == typeof(float) && mr == 6 && rows == 6 && Avx.IsSupported)
            {
                GemmPack.PackA6Float((float*)a0, lda, kc, (float*)dst);
            }
            else if (mr == 6 && rows == 6)
            {
                T* a1 = a0 + lda, a2 = a1 + lda, a3 = a2 + lda, a4 = a3 + lda, a5 = a4 + lda;
                T* d = dst;
                for (int p = 0; p < kc; p++, d += 6)
                {
                    d[0] = a0[p];
                    d[1] = a1[p];
                    d[2] = a2[p];
                    d[3] = a3[p];
                    d[4] = a4[p];
                    d[5] = a5[p];
                }
            }
            else
            {
                for (int p = 0; p < kc; p++)
                {
                    T* d = dst + p * mr;
                    for (int r = 0; r < rows; r++)
                    {
                        d[r] = a0[r * lda + p];
                    }

                    for (int r = rows; r < mr; r++)
                    {
                        d[r] = T.Zero;
                    }
                }
            }
        }
    }

    /// <summary>
    /// Packs op(A) = Aᵀ where A is stored kc x mc (row stride lda) into MR-row panels, in strips of
    /// <see cref="PackRows"/> rows of A: each strip's lines are fetched once (row by row, in address order) and reused
    /// from L1 by every panel, while each panel receives one short contiguous run. Walking all kc rows per panel would
    /// stride down a new page per row; writing every panel per row would spread the stores over MC/MR lines that alias
    /// the same L1 sets.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackAT(T* a, nint lda, int mc, int kc, T* dst)
    {
        int mr = TK.MR;
        nint panelStride = (nint)mr * kc;
        for (int p0 = 0; p0 < kc; p0 += PackRows)
        {
            int pn = Math.Min(PackRows, kc - p0);
            T* sRow = a + (p0 * lda);
            T* dRow = dst + ((nint)p0 * mr);
            for (int ir = 0; ir < mc; ir += mr, dRow += panelStride)
            {
                int rows = Math.Min(mr, mc - ir);
                T* s = sRow + ir;
                T* d = dRow;
                if (mr == 6 && rows == 6)
                {
                    for (int p = 0; p < pn; p++, s += lda, d += 6)
                    {
                        d[0] = s[0];
                        d[1] = s[1];
                        d[2] = s[2];
                        d[3] = s[3];
                        d[4] = s[4];
                        d[5] = s[5];
                    }
                }
                else
                {
                    for (int p = 0; p < pn; p++, s += lda, d += mr)
                    {
                        for (int r = 0; r < rows; r++)
                        {
                            d[r] = s[r];
                        }

                        for (int r = rows; r < mr; r++)
                        {
                            d[r] = T.Zero;
                        }
                    }
                }
            }
        }
    }

    /// <summary>Rows of the source per strip in the strip-wise packers (see <see cref="PackAT"/>).</summary>
    private const int PackRows = 8;

    /// <summary>
    /// Packs B (kc x nc, row stride ldb) into NR-column panels, in strips of <see cref="PackRows"/> rows of B (see
    /// <see cref="PackAT"/>): each strip is read row by row in address order and each panel gets one contiguous run.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackBN(T* b, nint ldb, int kc, int nc, T* dst)
    {
        int nr = TK.NR;
        nint panelStride = (nint)nr * kc;
        for (int p0 = 0; p0 < kc; p0 += PackRows)
        {
            int pn = Math.Min(PackRows, kc - p0);
            T* sRow = b + (p0 * ldb);
            T* dRow = dst + ((nint)p0 * nr);
            for (int jr = 0; jr < nc; jr += nr, dRow += panelStride)
            {
                int cols = Math.Min(nr, nc - jr);
                T* s = sRow + jr;
                T* d = dRow;
                if (cols == nr)
                {
                    for (int p = 0; p < pn; p++, s += ldb, d += nr)
                    {
                        Unsafe.CopyBlockUnaligned(d, s, (uint)(TK.NR * sizeof(T)));
                    }
                }
                else
                {
                    for (int p = 0; p < pn; p++, s += ldb, d += nr)
                    {
                        for (int j = 0; j < cols; j++)
                        {
                            d[j] = s[j];
                        }

                        for (int j = cols; j < nr; j++)
                        {
                            d[j] = T.Zero;
                        }
                    }
                }
            }
        }
    }

    /// <summary>Packs op(B) = Bᵀ where B is stored nc x kc (row stride ldb) into NR-column panels.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackBT(T* b, nint ldb, int kc, int nc, T* dst)
    {
        int nr = TK.NR;
        for (int jr = 0; jr < nc; jr += nr, dst += (nint)nr * kc)
        {
            int cols = Math.Min(nr, nc - jr);
            int j0 = 0;
            if (typeof(T) == typeof(float) && Avx.IsSupported)
            {
                for (; j0 + 8 <= cols; j0 += 8)
                {
                    GemmPack.PackBT8Float((float*)(b + (jr + j0) * ldb), ldb, kc, (float*)(dst + j0), nr);
                }
            }

            for (int j = j0; j < cols; j++)
            {
                T* s = b + (jr + j) * ldb;
                T* d = dst + j;
                for (int p = 0; p < kc; p++, d += nr)
                {
                    *d = s[p];
                }
            }

            for (int j = cols; j < nr; j++)
            {
                T* d = dst + j;
                for (int p = 0; p < kc; p++, d += nr)
                {
                    *d = T.Zero;
                }
            }
        }
    }

    // --- gather packers (masked GEMM) ---------------------------------------------------------------------------

    /// <summary>
    /// Packs op(A) = Aᵀ restricted to columns idx[0..mc) of A (A stored kc x *, row stride lda) into MR-row panels, in
    /// strips of <see cref="PackRows"/> rows like <see cref="PackAT"/>: the held columns of a strip lie in |span| / d
    /// columns per row, which a per-panel walk down all kc rows would fetch from beyond L2 once per panel.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackATGather(T* a, nint lda, int* idx, int mc, int kc, T* dst)
    {
        int mr = TK.MR;
        nint panelStride = (nint)mr * kc;
        for (int p0 = 0; p0 < kc; p0 += PackRows)
        {
            int pn = Math.Min(PackRows, kc - p0);
            T* sRow = a + (p0 * lda);
            T* dRow = dst + ((nint)p0 * mr);
            for (int ir = 0; ir < mc; ir += mr, dRow += panelStride)
            {
                int rows = Math.Min(mr, mc - ir);
                int* ix = idx + ir;
                T* s = sRow;
                T* d = dRow;
                if (mr == 6 && rows == 6)
                {
                    nint c0 = ix[0], c1 = ix[1], c2 = ix[2], c3 = ix[3], c4 = ix[4], c5 = ix[5];
                    for (int p = 0; p < pn; p++, s += lda, d += 6)
                    {
                        d[0] = s[c0];
                        d[1] = s[c1];
                        d[2] = s[c2];
                        d[3] = s[c3];
                        d[4] = s[c4];
                        d[5] = s[c5];
                    }
                }
                else
                {
                    for (int p = 0; p < pn; p++, s += lda, d += mr)
                    {
                        for (int r = 0; r < rows; r++)
                        {
                            d[r] = s[ix[r]];
                        }

                        for (int r = rows; r < mr; r++)
                        {
                            d[r] = T.Zero;
                        }
                    }
                }
            }
        }
    }

    /// <summary>Packs op(B) = Bᵀ restricted to rows idx[0..nc) of B (row j of B holds column j of op(B), starting at column pc) into NR-column panels.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackBTGatherN(T* b, nint ldb, int* idx, int kc, int nc, T* dst)
    {
        int nr = TK.NR;
        for (int jr = 0; jr < nc; jr += nr, dst += (nint)nr * kc)
        {
            int cols = Math.Min(nr, nc - jr);
            int j0 = 0;
            if (typeof(T) == typeof(float) && Avx.IsSupported)
            {
                for (; j0 + 8 <= cols; j0 += 8)
                {
                    int* ix = idx + jr + j0;
                    GemmPack.PackBT8FloatRows(
                        (float*)(b + (ix[0] * ldb)), (float*)(b + (ix[1] * ldb)), (float*)(b + (ix[2] * ldb)), (float*)(b + (ix[3] * ldb)),
                        (float*)(b + (ix[4] * ldb)), (float*)(b + (ix[5] * ldb)), (float*)(b + (ix[6] * ldb)), (float*)(b + (ix[7] * ldb)),
                        kc, (float*)(dst + j0), nr);
                }
            }

            for (int j = j0; j < cols; j++)
            {
                T* s = b + (idx[jr + j] * ldb);
                T* d = dst + j;
                for (int p = 0; p < kc; p++, d += nr)
                {
                    *d = s[p];
                }
            }

            for (int j = cols; j < nr; j++)
            {
                T* d = dst + j;
                for (int p = 0; p < kc; p++, d += nr)
                {
                    *d = T.Zero;
                }
            }
        }
    }

    /// <summary>
    /// Packs op(B) = B (kc x *, row stride ldb) restricted to columns idx[0..nc) into NR-column panels, in strips of
    /// <see cref="PackRows"/> rows (see <see cref="PackATGather"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackBNGatherN(T* b, nint ldb, int* idx, int kc, int nc, T* dst)
    {
        int nr = TK.NR;
        nint panelStride = (nint)nr * kc;
        bool vec = typeof(T) == typeof(float) && Avx2.IsSupported;
        for (int p0 = 0; p0 < kc; p0 += PackRows)
        {
            int pn = Math.Min(PackRows, kc - p0);
            T* sRow = b + (p0 * ldb);
            T* dRow = dst + ((nint)p0 * nr);
            for (int jr = 0; jr < nc; jr += nr, dRow += panelStride)
            {
                int cols = Math.Min(nr, nc - jr);
                int vcols = vec ? cols / 8 * 8 : 0;
                int* ix = idx + jr;
                T* s = sRow;
                T* d = dRow;
                for (int p = 0; p < pn; p++, s += ldb, d += nr)
                {
                    int j = 0;
                    for (; j < vcols; j += 8)
                    {
                        GemmPack.Gather8Float((float*)s, ix + j, (float*)(d + j));
                    }

                    for (; j < cols; j++)
                    {
                        d[j] = s[ix[j]];
                    }

                    for (; j < nr; j++)
                    {
                        d[j] = T.Zero;
                    }
                }
            }
        }
    }

    /// <summary>
    /// Packs op(B) = Bᵀ restricted to rows idx[0..kc) of op(B), i.e. columns idx[p] of B (nc rows from b, row stride ldb),
    /// into NR-column panels: dst[p*NR + j] = b[j*ldb + idx[p]].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackBTGatherK(T* b, nint ldb, int* idx, int kc, int nc, T* dst)
    {
        int nr = TK.NR;
        for (int jr = 0; jr < nc; jr += nr, dst += (nint)nr * kc)
        {
            int cols = Math.Min(nr, nc - jr);
            int j0 = 0;
            if (typeof(T) == typeof(float) && Avx2.IsSupported)
            {
                for (; j0 + 8 <= cols; j0 += 8)
                {
                    GemmPack.PackBT8FloatGatherK((float*)(b + ((jr + j0) * ldb)), ldb, idx, kc, (float*)(dst + j0), nr);
                }
            }

            for (int j = j0; j < cols; j++)
            {
                T* s = b + ((jr + j) * ldb);
                T* d = dst + j;
                for (int p = 0; p < kc; p++, d += nr)
                {
                    *d = s[idx[p]];
                }
            }

            for (int j = cols; j < nr; j++)
            {
                T* d = dst + j;
                for (int p = 0; p < kc; p++, d += nr)
                {
                    *d = T.Zero;
                }
            }
        }
    }
}
