using System.Globalization;
using Sdp.Kernels.Cuda;

namespace Sdp.Measure;

/// <summary>
/// `sdp bench kernels --device cuda`: the SDP kernels of kernels.cu against their dense baselines, timed in the
/// same run on the same stream with CUDA events (median of the samples, after one warm-up launch).
/// <list type="bullet">
/// <item>Masked matmuls (§1) against cuBLAS cublasSgemm at the same precision (fp32 inputs and accumulation,
/// CUBLAS_DEFAULT_MATH: no TF32) on the dense problem: ratio = t_masked / (d · t_dense), target ≤ 1.15 for
/// d ≥ 0.25 and sizes 2048–8192 on an H100/H200.</item>
/// <item>Masked gradient accumulation (§2 sdp_slice_copy_f32: a compact gradient added into the held rows of a
/// full bucket, ÷|H|) against cuMemcpyDtoDAsync of the compact bytes: effective bandwidth (bytes read and
/// written) as a fraction of the copy's, target ≥ 0.85.</item>
/// </list>
/// On the emulated device the times are those of the CPU emulation and say nothing about a GPU.
/// </summary>
public static unsafe class CudaKernelBench
{
    public static readonly int[] DefaultSizes = [2048, 4096, 8192];
    public static readonly int[] EmulatedSizes = [128];
    public static readonly double[] DefaultDensities = [0.25, 0.5, 0.75, 1.0];

    /// <summary>The masked GEMMs benchmarked: forward (row- and column-masked) and the compact weight gradients.</summary>
    public static readonly string[] MaskedKernels = ["sdp_linear_rows_forward", "sdp_linear_cols_forward", "sdp_weight_grad_rows", "sdp_weight_grad_cols"];

    public static void Run(TextWriter output, CudaContext context, IReadOnlyList<int> sizes, IReadOnlyList<double> densities, int samples)
    {
        var inv = CultureInfo.InvariantCulture;
        bool emulated = context.Api.Implementation == CudaImplementation.Emulated;
        var module = CudaKernels.Load(context);
        using var stream = CudaStream.Create(context);
        using var blas = CublasHandle.Create(context);
        blas.SetStream(stream);
        blas.SetMathMode(CublasMath.Default);
        output.WriteLine($"device    {context.Name} (cuda:{context.Device}, compute capability {CudaKernels.ComputeCapability(context)}){(emulated ? "; EMULATED: times measure the CPU emulation, not a GPU" : "")}");
        output.WriteLine($"baseline  cuBLAS {blas.Version} cublasSgemm, fp32 in/out, CUBLAS_DEFAULT_MATH (no TF32), column-major transposes as the backend issues them; same stream, events, median of {samples} after 1 warm-up");
        output.WriteLine($"masked    kernels.cu §1, fp32 FMA, 128x128 tiles; held units a random sorted subset of density d");
        output.WriteLine();
        output.WriteLine(string.Create(inv, $"{"kernel",-26} {"n",6} {"d",5} {"dense ms",10} {"masked ms",10} {"ratio",7}  (masked / (d·dense); target <= 1.15)"));
        var rng = new Random(1);
        foreach (int n in sizes)
        {
            using var x = Filled(context, rng, (long)n * n);
            using var w = Filled(context, rng, (long)n * n);
            using var y = DeviceBuffer.Allocate(context, (long)n * n * sizeof(float));
            double dense = Median(samples, stream, () => blas.Sgemm(CublasOperation.T, CublasOperation.N, n, n, n, 1f, w, n, x, n, 0f, y, n));
            foreach (double d in densities)
            {
                int k = Math.Max(1, (int)Math.Round(d * n));
                int[] held = [.. Enumerable.Range(0, n).OrderBy(_ => rng.Next()).Take(k).Order()];
                using var idx = DeviceBuffer.Allocate<int>(context, k);
                idx.CopyFrom<int>(held);
                foreach (string kernel in MaskedKernels)
                {
                    var f = module.Function(kernel);
                    var (args, grid) = MaskedLaunch(kernel, x, w, idx, y, n, k);
                    double masked = Median(samples, stream, () => args.Launch(f, grid, new Dim3(256), 0, stream));
                    output.WriteLine(string.Create(inv, $"{kernel,-26} {n,6} {d,5:0.00} {dense,10:F3} {masked,10:F3} {masked / (d * dense),7:F3}"));
                }
            }
        }

        output.WriteLine();
        output.WriteLine(string.Create(inv, $"{"accumulation",-26} {"n",6} {"d",5} {"copy GB/s",10} {"acc GB/s",10} {"ratio",7}  (sdp_slice_copy_f32 += into held rows ÷|H| vs cuMemcpyDtoD; target >= 0.85)"));
        var copy = module.Function("sdp_slice_copy_f32");
        foreach (int n in sizes)
        {
            using var bucket = Filled(context, rng, (long)n * n);
            foreach (double d in densities)
            {
                int k = Math.Max(1, (int)Math.Round(d * n));
                int[] held = [.. Enumerable.Range(0, n).OrderBy(_ => rng.Next()).Take(k).Order()];
                using var idx = DeviceBuffer.Allocate<int>(context, k);
                idx.CopyFrom<int>(held);
                using var compact = Filled(context, rng, (long)k * n);
                using var target = DeviceBuffer.Allocate(context, compact.Bytes);
                long bytes = compact.Bytes;
                double copyMs = Median(samples, stream, () =>
                    context.Api.Check(context.Api.cuMemcpyDtoDAsync_v2(target.Pointer, compact.Pointer, (nuint)bytes, stream.Handle), "cuMemcpyDtoDAsync_v2"));
                long elements = (long)k * n;
                var args = new KernelArgs().Add(compact.Pointer).Add(bucket.Pointer).Add(default(CUdeviceptr)).Add(idx.Pointer)
                    .Add(1L).Add((long)k).Add((long)n).Add((long)k).Add((long)n).Add(0L).Add(0L).Add(1).Add(3f).Add(default(CUdeviceptr));
                uint blocks = (uint)Math.Clamp((elements + 255) / 256, 1, 65535);
                double accMs = Median(samples, stream, () => args.Launch(copy, new Dim3(blocks), new Dim3(256), 0, stream));
                double copyGbs = 2.0 * bytes / (copyMs * 1e6), accGbs = 3.0 * bytes / (accMs * 1e6); // copy: read + write; +=: read both, write one
                output.WriteLine(string.Create(inv, $"{"sdp_slice_copy_f32 (+=)",-26} {n,6} {d,5:0.00} {copyGbs,10:F1} {accGbs,10:F1} {accGbs / copyGbs,7:F3}"));
            }
        }
    }

    /// <summary>Arguments and grid of one masked kernel on n×n operands with k held units (shapes as docs/kernels.md §1).</summary>
    private static (KernelArgs Args, Dim3 Grid) MaskedLaunch(string kernel, DeviceBuffer x, DeviceBuffer w, DeviceBuffer idx, DeviceBuffer y, int n, int k)
    {
        static uint Tiles(int v) => (uint)((v + 127) / 128);
        var a = new KernelArgs();
        switch (kernel)
        {
            case "sdp_linear_rows_forward": // y (n, k) = x (n, n) · W[idx, :]ᵀ
                a.Add(x.Pointer).Add(w.Pointer).Add(idx.Pointer).Add(y.Pointer).Add(n).Add(n).Add(k).Add(0f);
                return (a, new Dim3(Tiles(k), Tiles(n)));
            case "sdp_linear_cols_forward": // y (n, n) = x' (n, k) · W[:, idx]ᵀ, x' compact
                a.Add(x.Pointer).Add(w.Pointer).Add(idx.Pointer).Add(y.Pointer).Add(n).Add(n).Add(n).Add(k).Add(0).Add(0f);
                return (a, new Dim3(Tiles(n), Tiles(n)));
            case "sdp_weight_grad_rows": // dW (k, n) = dy[:, idx]ᵀ · x
                a.Add(x.Pointer).Add(w.Pointer).Add(idx.Pointer).Add(y.Pointer).Add(n).Add(n).Add(n).Add(k).Add(1).Add(0f);
                return (a, new Dim3(Tiles(n), Tiles(k)));
            default: // sdp_weight_grad_cols: dW (n, k) = dyᵀ · x[:, idx]
                a.Add(x.Pointer).Add(w.Pointer).Add(idx.Pointer).Add(y.Pointer).Add(n).Add(n).Add(n).Add(k).Add(1).Add(0f);
                return (a, new Dim3(Tiles(k), Tiles(n)));
        }
    }

    private static DeviceBuffer Filled(CudaContext context, Random rng, long count)
    {
        var host = new float[count];
        for (long i = 0; i < count; i++) host[i] = (float)(rng.NextDouble() * 2 - 1);
        var b = DeviceBuffer.Allocate(context, count * sizeof(float));
        b.CopyFrom<float>(host);
        return b;
    }

    /// <summary>Median milliseconds of <paramref name="samples"/> timed runs of <paramref name="work"/> (queued on <paramref name="stream"/>).</summary>
    private static double Median(int samples, CudaStream stream, Action work)
    {
        using var start = CudaEvent.Create(stream.Context);
        using var stop = CudaEvent.Create(stream.Context);
        work();
        stream.Synchronize();
        var times = new double[samples];
        for (int s = 0; s < samples; s++)
        {
            start.Record(stream);
            work();
            stop.Record(stream);
            stop.Synchronize();
            times[s] = stop.ElapsedSince(start);
        }
        Array.Sort(times);
        return times[samples / 2];
    }
}
