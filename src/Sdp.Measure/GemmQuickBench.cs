using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Sdp.Kernels.Cpu;

namespace Sdp.Measure;

/// <summary>One cell of the quick GEMM benchmark: square row-major C = A·B in float32. The paired ratios are OpenBLAS's
/// time over Sdp's in each interleaved sample pair: a load that comes and goes (CPU steal on a VM) hits both of a pair
/// alike, so their median is steadier than the ratio of the two medians.</summary>
public sealed record GemmBenchRow(int N, int Threads, double SdpGflops, double OpenBlasGflops, double PairedRatioMedian, double PairedRatioMin, double PairedRatioMax)
{
    /// <summary>Sdp throughput relative to OpenBLAS (1.0 = parity), from the two medians.</summary>
    public double Ratio => SdpGflops / OpenBlasGflops;
}

/// <summary>
/// Quick Sdp-vs-OpenBLAS SGEMM comparison (the `sdp bench gemm` command). For every (n, threads) cell both libraries
/// run on the same buffers, warmed up, then timed in interleaved samples (Sdp, OpenBLAS, Sdp, ...) with a short pause
/// between samples so neither library's spinning worker threads steal time from the other; the median sample is kept.
/// </summary>
public static unsafe class GemmQuickBench
{
    public static IReadOnlyList<int> DefaultSizes { get; } = [512, 1024, 2048];

    public static IReadOnlyList<int> DefaultThreadCounts { get; } = [1, 2];

    /// <summary>Runs the benchmark and prints a table to <paramref name="output"/>.</summary>
    /// <param name="output">Where the table (and progress-free result lines) go.</param>
    /// <param name="sizes">Matrix sizes n (defaults to 512, 1024, 2048).</param>
    /// <param name="threadCounts">Thread counts (defaults to 1, 2).</param>
    /// <param name="secondsPerCell">Approximate timed seconds per library per cell.</param>
    /// <param name="samples">Timed samples per library per cell (the median is reported).</param>
    public static IReadOnlyList<GemmBenchRow> Run(TextWriter output, int[]? sizes = null, int[]? threadCounts = null, double secondsPerCell = 0.6, int samples = 5)
    {
        ArgumentNullException.ThrowIfNull(output);
        sizes ??= [.. DefaultSizes];
        threadCounts ??= [.. DefaultThreadCounts];
        ArgumentOutOfRangeException.ThrowIfLessThan(samples, 1);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(secondsPerCell);
        foreach (int s in sizes)
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(s, 1, nameof(sizes));
        }

        foreach (int t in threadCounts)
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(t, 1, nameof(threadCounts));
        }

        OpenBlas.EnsureLoaded();
        output.WriteLine($"SGEMM C = A·B (row-major, float32). Sdp kernel: {Gemm.KernelName}");
        output.WriteLine($"baseline  {OpenBlas.Describe()}");
        output.WriteLine($"          {OpenBlasCoreCheck.Current().Describe()}");
        output.WriteLine($"{samples} interleaved samples per library per cell; ratio = Sdp / OpenBLAS GFLOP/s of the medians; paired = median (min-max) of the per-pair ratios");
        output.WriteLine($"{"n",6} {"threads",8} {"sdp GFLOP/s",12} {"openblas GFLOP/s",17} {"ratio",7} {"paired",20}");

        var rows = new List<GemmBenchRow>();
        foreach (int n in sizes)
        {
            using var mats = new SquareMatrices(n);
            foreach (int t in threadCounts)
            {
                GemmBenchRow row = RunCell(mats, t, secondsPerCell, samples);
                rows.Add(row);
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{row.N,6} {row.Threads,8} {row.SdpGflops,12:F1} {row.OpenBlasGflops,17:F1} {row.Ratio,7:F2} {$"{row.PairedRatioMedian:F2} ({row.PairedRatioMin:F2}-{row.PairedRatioMax:F2})",20}"));
            }
        }

        return rows;
    }

    private static GemmBenchRow RunCell(SquareMatrices mats, int threads, double secondsPerCell, int samples)
    {
        int n = mats.N;
        void Sdp() => Gemm.Sgemm(false, false, n, n, n, 1f, mats.A, n, mats.B, n, 0f, mats.C, n, threads);
        void Blas() => OpenBlas.Sgemm(false, false, n, n, n, 1f, mats.A, n, mats.B, n, 0f, mats.C2, n);

        OpenBlas.SetNumThreads(threads);

        // Warm-up (JIT tiers, thread pool, packing buffers, OpenBLAS threads) and a sanity check of the result.
        double tSdp = TimeCalls(Sdp, 1);
        double tBlas = TimeCalls(Blas, 1);
        tSdp = Math.Min(tSdp, TimeCalls(Sdp, 1));
        tBlas = Math.Min(tBlas, TimeCalls(Blas, 1));
        CheckAgreement(mats);

        int repsSdp = Math.Max(1, (int)(secondsPerCell / samples / tSdp));
        int repsBlas = Math.Max(1, (int)(secondsPerCell / samples / tBlas));
        var sdp = new double[samples];
        var blas = new double[samples];
        for (int s = 0; s < samples; s++)
        {
            Pause();
            sdp[s] = TimeCalls(Sdp, repsSdp);
            Pause();
            blas[s] = TimeCalls(Blas, repsBlas);
        }

        double flops = 2.0 * n * n * n;
        var paired = new double[samples];
        for (int s = 0; s < samples; s++) paired[s] = blas[s] / sdp[s];
        return new GemmBenchRow(n, threads, flops / Median(sdp) / 1e9, flops / Median(blas) / 1e9, Median(paired), paired.Min(), paired.Max());
    }

    /// <summary>Lets the other library's worker threads go idle (OpenBLAS spins for a while after each call).</summary>
    private static void Pause() => Thread.Sleep(200);

    private static double TimeCalls(Action call, int reps)
    {
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < reps; i++)
        {
            call();
        }

        return Stopwatch.GetElapsedTime(start).TotalSeconds / reps;
    }

    private static double Median(double[] xs)
    {
        double[] s = [.. xs];
        Array.Sort(s);
        return s.Length % 2 == 1 ? s[s.Length / 2] : 0.5 * (s[(s.Length / 2) - 1] + s[s.Length / 2]);
    }

    private static void CheckAgreement(SquareMatrices mats)
    {
        long len = (long)mats.N * mats.N;
        double maxDiff = 0;
        for (long i = 0; i < len; i++)
        {
            maxDiff = Math.Max(maxDiff, Math.Abs(mats.C[i] - mats.C2[i]));
        }

        // Entries are sums of n products of values in [-1, 1]; float32 rounding stays far below this bound.
        double bound = 1e-5 * mats.N;
        if (!(maxDiff <= bound))
        {
            throw new InvalidOperationException($"Sdp and OpenBLAS disagree at n={mats.N}: max |diff| = {maxDiff} > {bound}");
        }
    }

    /// <summary>64-byte aligned n x n operands filled with reproducible values in [-1, 1].</summary>
    internal sealed class SquareMatrices : IDisposable
    {
        public SquareMatrices(int n)
        {
            N = n;
            nuint bytes = (nuint)n * (nuint)n * sizeof(float);
            A = (float*)NativeMemory.AlignedAlloc(bytes, 64);
            B = (float*)NativeMemory.AlignedAlloc(bytes, 64);
            C = (float*)NativeMemory.AlignedAlloc(bytes, 64);
            C2 = (float*)NativeMemory.AlignedAlloc(bytes, 64);
            var rng = new Random(1234 + n);
            for (long i = 0; i < (long)n * n; i++)
            {
                A[i] = (float)((rng.NextDouble() * 2) - 1);
                B[i] = (float)((rng.NextDouble() * 2) - 1);
                C[i] = 0;
                C2[i] = 0;
            }
        }

        public int N { get; }

        public float* A { get; }

        public float* B { get; }

        public float* C { get; }

        public float* C2 { get; }

        public void Dispose()
        {
            NativeMemory.AlignedFree(A);
            NativeMemory.AlignedFree(B);
            NativeMemory.AlignedFree(C);
            NativeMemory.AlignedFree(C2);
        }
    }
}
