using System.Numerics;
using System.Numerics.Tensors;

namespace Sdp.Kernels.Cpu;

/// <summary>
/// Masked (index-aware) SGEMMs for Subnetwork Data Parallelism, row-major float32. A worker holds the units
/// <c>idx</c> (sorted, strictly increasing, density d = |idx| / N) of a weight's rows or columns; each call runs the
/// packed <see cref="Gemm"/> driver on the compact shape and gathers the held rows/columns of the full weight inside
/// panel packing (no gathered copy of the weight is materialised), scattering into a full output where asked, so the
/// cost is about d × the dense call with the same microkernel. Indices are validated once per call.
/// </summary>
public static unsafe class MaskedGemm
{
    /// <summary>
    /// Row-masked Linear forward: C[m, |idx|] = alpha · A[m, k] · W[idx, :]ᵀ + beta · C, with W stored (wRows x k, row
    /// stride ldw) and a compact output (column j of C is unit idx[j]). beta == 0 means C is not read.
    /// </summary>
    public static void SgemmGatherB(int m, int k, float* a, int lda, float* w, int ldw, int wRows, ReadOnlySpan<int> idx, float* c, int ldc, float alpha = 1f, float beta = 0f, int threads = 0)
    {
        const string Op = nameof(SgemmGatherB);
        CheckIdx(Op, idx, wRows);
        Check(Op, m >= 0 && k >= 0, $"m = {m}, k = {k} must be non-negative");
        Check(Op, lda >= Math.Max(1, k) && ldw >= Math.Max(1, k) && ldc >= Math.Max(1, idx.Length), $"strides lda = {lda}, ldw = {ldw} must be >= k = {k} and ldc = {ldc} >= |idx| = {idx.Length}");
        fixed (int* ix = idx)
        {
            var g = new GemmArgs<float>
            {
                TransA = false, TransB = true, M = m, N = idx.Length, K = k, Alpha = alpha, Beta = beta,
                A = a, B = w, C = c, Lda = lda, Ldb = ldw, Ldc = ldc, GatherBN = ix,
            };
            Dispatch(in g, threads);
        }
    }

    /// <summary>
    /// Column-masked Linear forward (input units held): C[m, n] = alpha · A[m, |idx|] · W[:, idx]ᵀ + beta · C, with compact
    /// activations A (column p is unit idx[p]) and W stored (n x wCols, row stride ldw). beta == 0 means C is not read.
    /// </summary>
    public static void SgemmGatherK(int m, int n, float* a, int lda, float* w, int ldw, int wCols, ReadOnlySpan<int> idx, float* c, int ldc, float alpha = 1f, float beta = 0f, int threads = 0)
    {
        const string Op = nameof(SgemmGatherK);
        CheckIdx(Op, idx, wCols);
        Check(Op, m >= 0 && n >= 0, $"m = {m}, n = {n} must be non-negative");
        Check(Op, lda >= Math.Max(1, idx.Length) && ldw >= Math.Max(1, wCols) && ldc >= Math.Max(1, n), $"strides lda = {lda} (>= |idx| = {idx.Length}), ldw = {ldw} (>= wCols = {wCols}), ldc = {ldc} (>= n = {n})");
        fixed (int* ix = idx)
        {
            var g = new GemmArgs<float>
            {
                TransA = false, TransB = true, M = m, N = n, K = idx.Length, Alpha = alpha, Beta = beta,
                A = a, B = w, C = c, Lda = lda, Ldb = ldw, Ldc = ldc, GatherBK = ix,
            };
            Dispatch(in g, threads);
        }
    }

    /// <summary>
    /// Row-masked weight gradient: dW[idx, :] = alpha · dY[:, idx]ᵀ · X + beta · dW[idx, :] (beta = 1 accumulates).
    /// X is (tokens x inDim, stride ldx). dY is (tokens x outDim) when <paramref name="dyFull"/> (its held columns are
    /// gathered while packing), else compact (tokens x |idx|). dW is the full (outDim x inDim) gradient when
    /// <paramref name="dwFull"/> (only the held rows are written; the others are untouched), else compact (|idx| x inDim).
    /// </summary>
    public static void SgemmWeightGradRows(int tokens, int inDim, float* dy, int lddy, bool dyFull, float* x, int ldx, ReadOnlySpan<int> idx, int outDim, float* dw, int lddw, bool dwFull, float alpha = 1f, float beta = 1f, int threads = 0)
    {
        const string Op = nameof(SgemmWeightGradRows);
        CheckIdx(Op, idx, outDim);
        Check(Op, tokens >= 0 && inDim >= 0, $"tokens = {tokens}, inDim = {inDim} must be non-negative");
        Check(Op, lddy >= Math.Max(1, dyFull ? outDim : idx.Length) && ldx >= Math.Max(1, inDim) && lddw >= Math.Max(1, inDim), $"strides lddy = {lddy}, ldx = {ldx}, lddw = {lddw} too small (outDim = {outDim}, |idx| = {idx.Length}, inDim = {inDim})");
        fixed (int* ix = idx)
        {
            var g = new GemmArgs<float>
            {
                TransA = true, TransB = false, M = idx.Length, N = inDim, K = tokens, Alpha = alpha, Beta = beta,
                A = dy, B = x, C = dw, Lda = lddy, Ldb = ldx, Ldc = lddw,
                GatherA = dyFull ? ix : null, ScatterRows = dwFull ? ix : null,
            };
            Dispatch(in g, threads);
        }
    }

    /// <summary>
    /// Column-masked weight gradient: dW[:, idx] = alpha · dYᵀ · X[:, idx] + beta · dW[:, idx] (beta = 1 accumulates).
    /// dY is (tokens x outDim, stride lddy). X is (tokens x inDim) when <paramref name="xFull"/> (held columns gathered
    /// while packing), else compact (tokens x |idx|). dW is the full (outDim x inDim) gradient when
    /// <paramref name="dwFull"/> (only held columns written), else compact (outDim x |idx|).
    /// </summary>
    public static void SgemmWeightGradCols(int tokens, int outDim, float* dy, int lddy, float* x, int ldx, bool xFull, ReadOnlySpan<int> idx, int inDim, float* dw, int lddw, bool dwFull, float alpha = 1f, float beta = 1f, int threads = 0)
    {
        const string Op = nameof(SgemmWeightGradCols);
        CheckIdx(Op, idx, inDim);
        Check(Op, tokens >= 0 && outDim >= 0, $"tokens = {tokens}, outDim = {outDim} must be non-negative");
        Check(Op, lddy >= Math.Max(1, outDim) && ldx >= Math.Max(1, xFull ? inDim : idx.Length) && lddw >= Math.Max(1, dwFull ? inDim : idx.Length), $"strides lddy = {lddy}, ldx = {ldx}, lddw = {lddw} too small (outDim = {outDim}, |idx| = {idx.Length}, inDim = {inDim})");
        fixed (int* ix = idx)
        {
            var g = new GemmArgs<float>
            {
                TransA = true, TransB = false, M = outDim, N = idx.Length, K = tokens, Alpha = alpha, Beta = beta,
                A = dy, B = x, C = dw, Lda = lddy, Ldb = ldx, Ldc = lddw,
                GatherBN = xFull ? ix : null, ScatterCols = dwFull ? ix : null,
            };
            Dispatch(in g, threads);
        }
    }

    /// <summary>
    /// Holder-masked average of worker gradients of one (rows x cols) weight, units being rows (or columns when
    /// <paramref name="unitsAreColumns"/>): dst = Σᵢ mᵢ ⊙ gᵢ / n(u), where mᵢ selects worker i's held units idxᵢ and n(u) is
    /// the number of workers holding unit u (units no worker holds get 0). Each gᵢ is a full, contiguous (rows x cols)
    /// array; its unheld entries are never read into the sum (garbage/NaN there is ignored). Sums run over workers in
    /// order, so the result is deterministic. dst may not alias a gᵢ.
    /// </summary>
    public static void MaskedAverage(ReadOnlySpan<nint> workerGrads, ReadOnlySpan<int[]> workerIdx, int rows, int cols, bool unitsAreColumns, float* dst)
    {
        const string Op = nameof(MaskedAverage);
        Check(Op, workerGrads.Length == workerIdx.Length, $"{workerGrads.Length} gradients but {workerIdx.Length} index sets");
        Check(Op, rows >= 0 && cols >= 0, $"rows = {rows}, cols = {cols} must be non-negative");
        int units = unitsAreColumns ? cols : rows;
        int workers = workerGrads.Length;
        var counts = new int[units];
        foreach (int[] ix in workerIdx)
        {
            ArgumentNullException.ThrowIfNull(ix, nameof(workerIdx));
            CheckIdx(Op, ix, units);
            foreach (int u in ix)
            {
                counts[u]++;
            }
        }

        var inv = new float[units];
        for (int u = 0; u < units; u++)
        {
            inv[u] = counts[u] == 0 ? 0f : 1f / counts[u];
        }

        nint[] g = workerGrads.ToArray();
        if (!unitsAreColumns)
        {
            // holder lists per unit in worker order
            var holders = new List<int>[units];
            for (int i = 0; i < workers; i++)
            {
                foreach (int u in workerIdx[i])
                {
                    (holders[u] ??= []).Add(i);
                }
            }

            nint d0 = (nint)dst;
            Parallel.For(0, rows, new ParallelOptions { MaxDegreeOfParallelism = Gemm.MaxThreads }, r =>
            {
                var row = new Span<float>((float*)d0 + ((nint)r * cols), cols);
                row.Clear();
                if (holders[r] is { } hs)
                {
                    foreach (int i in hs)
                    {
                        var src = new ReadOnlySpan<float>((float*)g[i] + ((nint)r * cols), cols);
                        TensorPrimitives.Add(row, src, row);
                    }

                    TensorPrimitives.Multiply(row, inv[r], row);
                }
            });
            return;
        }

        // Column units: per worker an all-ones/zero lane mask over the columns, applied with a vector select.
        var masks = new int[workers][];
        for (int i = 0; i < workers; i++)
        {
            masks[i] = new int[cols];
            foreach (int u in workerIdx[i])
            {
                masks[i][u] = -1;
            }
        }

        nint dp = (nint)dst;
        Parallel.For(0, rows, new ParallelOptions { MaxDegreeOfParallelism = Gemm.MaxThreads }, r =>
        {
            float* row = (float*)dp + ((nint)r * cols);
            new Span<float>(row, cols).Clear();
            int vw = Vector<float>.Count;
            for (int i = 0; i < workers; i++)
            {
                float* src = (float*)g[i] + ((nint)r * cols);
                fixed (int* mk = masks[i])
                {
                    int j = 0;
                    for (; j + vw <= cols; j += vw)
                    {
                        var m = Vector.Load(mk + j);
                        var acc = Vector.Load(row + j) + Vector.ConditionalSelect(m, Vector.Load(src + j), Vector<float>.Zero);
                        acc.Store(row + j);
                    }

                    for (; j < cols; j++)
                    {
                        if (mk[j] != 0)
                        {
                            row[j] += src[j];
                        }
                    }
                }
            }

            TensorPrimitives.Multiply(new ReadOnlySpan<float>(row, cols), inv, new Span<float>(row, cols));
        });
    }

    // --- helpers ---------------------------------------------------------------------------------------------

    private static void Dispatch(in GemmArgs<float> g, int threads)
    {
        if (g.M == 0 || g.N == 0)
        {
            return;
        }

        if (g.C == null || (g.K > 0 && g.Alpha != 0f && (g.A == null || g.B == null)))
        {
            throw new ArgumentNullException(g.C == null ? "c" : "a/b", "MaskedGemm: null operand pointer");
        }

        if (g.K == 0 || g.Alpha == 0f)
        {
            ScaleOutput(in g);
            return;
        }

        GemmArgs<float> h = g;

        // An adjacent run of gathered units (d = 1, or a block-structured mask) is a plain offset operand: the dense
        // packers copy it without per-element indexing.
        if (h.GatherA != null && IsRun(h.GatherA, h.M))
        {
            h.A += h.GatherA[0]; // GatherA only comes with TransA: a column offset of A
            h.GatherA = null;
        }

        if (h.GatherBN != null && IsRun(h.GatherBN, h.N))
        {
            h.B += h.TransB ? (nint)h.GatherBN[0] * h.Ldb : h.GatherBN[0];
            h.GatherBN = null;
        }

        if (h.GatherBK != null && IsRun(h.GatherBK, h.K))
        {
            h.B += h.GatherBK[0]; // GatherBK only comes with TransB: a column offset of B
            h.GatherBK = null;
        }

        if (h.ScatterRows != null && h.ScatterRows[h.M - 1] - h.ScatterRows[0] == h.M - 1)
        {
            h.C += (nint)h.ScatterRows[0] * h.Ldc; // an adjacent run of rows: a plain strided output
            h.ScatterRows = null;
        }

        if (h.ScatterCols != null && h.ScatterCols[h.N - 1] - h.ScatterCols[0] == h.N - 1)
        {
            h.C += h.ScatterCols[0];
            h.ScatterCols = null;
        }

        if ((h.ScatterRows != null) != (h.ScatterCols != null) && h.K > StagedMinK && StagingOverride != false)
        {
            RunStaged(in h, threads);
            return;
        }

        Gemm.Run(in h, threads);
    }

    private static bool IsRun(int* idx, int count) => idx[count - 1] - idx[0] == count - 1;

    /// <summary>Depth from which a scattered output is staged compactly (below, each tile is scattered once anyway).</summary>
    internal static int StagedMinK { get; set; } = 256;

    /// <summary>Test hook: false disables staging (per-microtile scatter only), true stages any K.</summary>
    internal static bool? StagingOverride { get; set; }

    /// <summary>Elements of the compact staging buffer (8 MiB of float32: row chunks of a 2048-wide output are 1024 tall, so B is re-packed rarely).</summary>
    internal static int StagingElements { get; set; } = 1 << 21;

    /// <summary>
    /// Scattered output over a deep K: scattering every microtile once per KC slice would read and write the scattered
    /// C lines once per slice, so instead the output is accumulated in a compact stage (in bounded chunks of C rows for a
    /// row scatter, C columns for a column scatter) and scattered once: C[map] = (Σ over K slices) + beta · C[map]. The
    /// driver scatters each block of the stage as soon as its last K slice is done (<see cref="GemmArgs{T}.Stage"/>),
    /// on the thread that computed it, instead of a separate pass over the chunk.
    /// </summary>
    private static void RunStaged(in GemmArgs<float> g, int threads)
    {
        bool rowsMode = g.ScatterRows != null;
        int other = rowsMode ? g.N : g.M;
        int chunk = Math.Max(64, StagingElements / Math.Max(1, other));
        chunk = Math.Min(chunk, rowsMode ? g.M : g.N);
        float* stage = (float*)GemmWorkspace.AcquireStage((nuint)chunk * (nuint)other * sizeof(float));
        int total = rowsMode ? g.M : g.N;
        for (int s0 = 0; s0 < total; s0 += chunk)
        {
            int len = Math.Min(chunk, total - s0);
            GemmArgs<float> sub = g;
            sub.Stage = stage;
            if (rowsMode)
            {
                sub.M = len;
                sub.Lds = g.N;
                sub.ScatterRows = g.ScatterRows + s0;
                if (g.GatherA != null)
                {
                    sub.GatherA = g.GatherA + s0;
                }
                else
                {
                    sub.A = g.TransA ? g.A + s0 : g.A + ((nint)s0 * g.Lda);
                }
            }
            else
            {
                sub.N = len;
                sub.Lds = len;
                sub.ScatterCols = g.ScatterCols + s0;
                if (g.GatherBN != null)
                {
                    sub.GatherBN = g.GatherBN + s0;
                }
                else
                {
                    sub.B = g.TransB ? g.B + ((nint)s0 * g.Ldb) : g.B + s0;
                }
            }

            Gemm.Run(in sub, threads);
        }
    }

    /// <summary>C[map(i), map(j)] *= beta (beta == 0 writes zeros without reading).</summary>
    private static void ScaleOutput(in GemmArgs<float> g)
    {
        if (g.Beta == 1f)
        {
            return;
        }

        for (int i = 0; i < g.M; i++)
        {
            float* row = g.C + ((g.ScatterRows != null ? g.ScatterRows[i] : i) * g.Ldc);
            for (int j = 0; j < g.N; j++)
            {
                float* d = row + (g.ScatterCols != null ? g.ScatterCols[j] : j);
                *d = g.Beta == 0f ? 0f : g.Beta * *d;
            }
        }
    }

    private static void Check(string op, bool ok, string message)
    {
        if (!ok)
        {
            throw new ArgumentException($"MaskedGemm.{op}: {message}");
        }
    }

    /// <summary>Index sets must be strictly increasing and inside [0, n).</summary>
    private static void CheckIdx(string op, ReadOnlySpan<int> idx, int n)
    {
        Check(op, n >= 0, $"unit count {n} must be non-negative");
        int prev = -1;
        for (int i = 0; i < idx.Length; i++)
        {
            int v = idx[i];
            if (v <= prev || v >= n)
            {
                throw new ArgumentException($"MaskedGemm.{op}: idx[{i}] = {v} must be strictly increasing and in [0, {n}) (|idx| = {idx.Length})");
            }

            prev = v;
        }
    }
}
