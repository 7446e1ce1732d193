using System.Diagnostics;
using System.Globalization;
using Sdp.Kernels.Cpu;

namespace Sdp.Measure;

/// <summary>One cell of the masked-GEMM benchmark: a kernel at size n and density d against the dense full-size GEMM.</summary>
public sealed record MaskedGemmBenchRow(string Kernel, int N, double Density, double MaskedSeconds, double DenseSeconds, double CompactSeconds)
{
    /// <summary>time_masked / (d · time_dense): 1.0 = time exactly proportional to density (target ≤ 1.05).</summary>
    public double Ratio => MaskedSeconds / (Density * DenseSeconds);

    /// <summary>
    /// time_masked / time of the dense SGEMM of the compacted shape (the held units made adjacent): what the masking
    /// itself costs (gathers, scatters), separate from how efficiently the GEMM driver runs the smaller shape.
    /// </summary>
    public double MaskOverhead => MaskedSeconds / CompactSeconds;

    /// <summary>time of the compacted-shape dense SGEMM / (d · time_dense): the small-shape efficiency of the driver.</summary>
    public double ShapeRatio => CompactSeconds / (Density * DenseSeconds);
}

/// <summary>
/// Masked SGEMM vs dense SGEMM (the `sdp bench masked` command). Square problems: tokens = in = out = n, a random held
/// unit set of round(d·n) units. Kernels: fwd-rows (Y[:, idx] = X·W[idx,:]ᵀ, <see cref="MaskedGemm.SgemmGatherB"/>, vs
/// dense X·Wᵀ), fwd-cols (Y = A[:, idx-compact]·W[:, idx]ᵀ, <see cref="MaskedGemm.SgemmGatherK"/>, vs dense X·Wᵀ),
/// dW-rows (dW[idx,:] += dY[:, idx]ᵀ·X into the full dW from the full dY, vs dense dYᵀ·X) and dW-cols
/// (dW[:, idx] += dYᵀ·X[:, idx] into the full dW from the full X, vs dense dYᵀ·X); dW-rows-c and dW-cols-c are the
/// same into a compact dW (|idx| rows or columns), which is what backward masking's held-slice gradients use. Each cell
/// also times the dense SGEMM of the compacted shape (<see cref="CompactCall"/>), which splits the ratio into the
/// masking's own overhead and the driver's small-shape efficiency. Masked, dense and compact samples are interleaved on
/// the same buffers; medians are kept.
/// </summary>
public static unsafe class MaskedGemmBench
{
    public static IReadOnlyList<int> DefaultSizes { get; } = [1024, 2048];

    public static IReadOnlyList<double> DefaultDensities { get; } = [0.25, 0.5, 0.75, 1.0];

    /// <summary>Kernel names (see the class summary).</summary>
    public static IReadOnlyList<string> Kernels { get; } = ["fwd-rows", "fwd-cols", "dW-rows", "dW-cols", "dW-rows-c", "dW-cols-c"];

    /// <summary>Runs the benchmark and prints a table to <paramref name="output"/>.</summary>
    public static IReadOnlyList<MaskedGemmBenchRow> Run(TextWriter output, int[]? sizes = null, double[]? densities = null, int samples = 5, int threads = 0, string[]? kernels = null)
    {
        ArgumentNullException.ThrowIfNull(output);
        kernels ??= [.. Kernels];
        foreach (string k in kernels)
        {
            if (!Kernels.Contains(k))
            {
                throw new ArgumentException($"unknown kernel '{k}' (known: {string.Join(", ", Kernels)})", nameof(kernels));
            }
        }

        sizes ??= [.. DefaultSizes];
        densities ??= [.. DefaultDensities];
        ArgumentOutOfRangeException.ThrowIfLessThan(samples, 1);
        foreach (int s in sizes)
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(s, 1, nameof(sizes));
        }

        foreach (double d in densities)
        {
            if (!(d > 0 && d <= 1))
            {
                throw new ArgumentOutOfRangeException(nameof(densities), d, "densities must be in (0, 1]");
            }
        }

        int t = threads > 0 ? threads : Gemm.MaxThreads;
        output.WriteLine($"Masked SGEMM vs dense SGEMM (row-major float32, square n, {t} threads). Kernel: {Gemm.KernelName}");
        output.WriteLine($"{"kernel",-9} {"n",6} {"d",5} {"masked ms",10} {"dense ms",9} {"compact ms",10} {"masked/(d*dense)",17} {"masked/compact",15} {"compact/(d*dense)",18}");
        var rows = new List<MaskedGemmBenchRow>();
        foreach (int n in sizes)
        {
            using var mats = new GemmQuickBench.SquareMatrices(n); // A = X / dY / compact activations, B = W / X, C = Y / dW
            foreach (string kernel in kernels)
            {
                foreach (double d in densities)
                {
                    int[] idx = HeldUnits(n, d);
                    var row = RunCell(kernel, n, d, MaskedCall(kernel, mats, idx, t), DenseCall(kernel, mats, t), CompactCall(kernel, mats, idx.Length, t), samples);
                    rows.Add(row);
                    output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"{row.Kernel,-9} {row.N,6} {row.Density,5:F2} {row.MaskedSeconds * 1e3,10:F2} {row.DenseSeconds * 1e3,9:F2} {row.CompactSeconds * 1e3,10:F2} {row.Ratio,17:F3} {row.MaskOverhead,15:F3} {row.ShapeRatio,18:F3}"));
                }
            }
        }

        return rows;
    }

    /// <summary>
    /// The dense SGEMM a masked kernel is measured against, on the full n x n problem: Y = X·Wᵀ for the forward kernels,
    /// dW += dYᵀ·X for the weight gradients (A = X or dY, B = W or X, C = Y or dW).
    /// </summary>
    internal static Action DenseCall(string kernel, GemmQuickBench.SquareMatrices mats, int threads)
    {
        int n = mats.N;
        return kernel.StartsWith("fwd", StringComparison.Ordinal)
            ? () => Gemm.Sgemm(false, true, n, n, n, 1f, mats.A, n, mats.B, n, 0f, mats.C, n, threads)
            : () => Gemm.Sgemm(true, false, n, n, n, 1f, mats.A, n, mats.B, n, 1f, mats.C, n, threads);
    }

    /// <summary>
    /// The dense SGEMM of the compacted shape of <paramref name="kernel"/> with <paramref name="units"/> held units: the
    /// same product with the held units adjacent (the first <paramref name="units"/> rows/columns), so no gather or
    /// scatter, into an output of the same layout (full-size dW row stride for dW-rows/dW-cols, compact for -c).
    /// </summary>
    internal static Action CompactCall(string kernel, GemmQuickBench.SquareMatrices mats, int units, int threads)
    {
        int n = mats.N, u = units;
        return kernel switch
        {
            "fwd-rows" => () => Gemm.Sgemm(false, true, n, u, n, 1f, mats.A, n, mats.B, n, 0f, mats.C, n, threads),
            "fwd-cols" => () => Gemm.Sgemm(false, true, n, n, u, 1f, mats.A, n, mats.B, n, 0f, mats.C, n, threads),
            "dW-rows" or "dW-rows-c" => () => Gemm.Sgemm(true, false, u, n, n, 1f, mats.A, n, mats.B, n, 1f, mats.C, n, threads),
            "dW-cols" => () => Gemm.Sgemm(true, false, n, u, n, 1f, mats.A, n, mats.B, n, 1f, mats.C, n, threads),
            "dW-cols-c" => () => Gemm.Sgemm(true, false, n, u, n, 1f, mats.A, n, mats.B, n, 1f, mats.C, u, threads),
            _ => throw new ArgumentException($"unknown kernel '{kernel}' (known: {string.Join(", ", Kernels)})", nameof(kernel)),
        };
    }

    /// <summary>The masked kernel <paramref name="kernel"/> (see the class summary) on the held units <paramref name="idx"/> of the n x n operands.</summary>
    internal static Action MaskedCall(string kernel, GemmQuickBench.SquareMatrices mats, int[] idx, int threads)
    {
        int n = mats.N;
        return kernel switch
        {
            "fwd-rows" => () => MaskedGemm.SgemmGatherB(n, n, mats.A, n, mats.B, n, n, idx, mats.C, n, threads: threads),
            "fwd-cols" => () => MaskedGemm.SgemmGatherK(n, n, mats.A, n, mats.B, n, n, idx, mats.C, n, threads: threads),
            "dW-rows" => () => MaskedGemm.SgemmWeightGradRows(n, n, mats.A, n, true, mats.B, n, idx, n, mats.C, n, true, threads: threads),
            "dW-cols" => () => MaskedGemm.SgemmWeightGradCols(n, n, mats.A, n, mats.B, n, true, idx, n, mats.C, n, true, threads: threads),
            "dW-rows-c" => () => MaskedGemm.SgemmWeightGradRows(n, n, mats.A, n, true, mats.B, n, idx, n, mats.C, n, false, threads: threads),
            "dW-cols-c" => () => MaskedGemm.SgemmWeightGradCols(n, n, mats.A, n, mats.B, n, true, idx, n, mats.C, idx.Length, false, threads: threads),
            _ => throw new ArgumentException($"unknown kernel '{kernel}' (known: {string.Join(", ", Kernels)})", nameof(kernel)),
        };
    }

    /// <summary>A reproducible random held-unit set: round(d·n) of the n units, ascending (the same for a given n and d).</summary>
    public static int[] HeldUnits(int n, double density) => RandIdx(new Random(n + (int)(density * 1000)), n, density);

    private static MaskedGemmBenchRow RunCell(string kernel, int n, double density, Action masked, Action dense, Action compact, int samples)
    {
        masked();
        dense();
        compact();
        var tm = new double[samples];
        var td = new double[samples];
        var tc = new double[samples];
        for (int s = 0; s < samples; s++)
        {
            td[s] = Time(dense);
            tm[s] = Time(masked);
            tc[s] = Time(compact);
        }

        int units = (int)Math.Round(density * n);
        return new MaskedGemmBenchRow(kernel, n, (double)units / n, Median(tm), Median(td), Median(tc));
    }

    private static double Time(Action call)
    {
        long start = Stopwatch.GetTimestamp();
        call();
        return Stopwatch.GetElapsedTime(start).TotalSeconds;
    }

    private static double Median(double[] xs)
    {
        double[] s = [.. xs];
        Array.Sort(s);
        return s.Length % 2 == 1 ? s[s.Length / 2] : 0.5 * (s[(s.Length / 2) - 1] + s[s.Length / 2]);
    }

    private static int[] RandIdx(Random r, int n, double d)
    {
        int cnt = (int)Math.Round(d * n);
        int[] all = [.. Enumerable.Range(0, n)];
        r.Shuffle(all);
        return [.. all.Take(cnt).Order()];
    }
}
