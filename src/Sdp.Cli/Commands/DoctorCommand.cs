using System.CommandLine;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Memory;
using Sdp.Kernels.Cuda;
using Sdp.Measure;

namespace Sdp.Cli.Commands;

/// <summary>`sdp doctor`: what this machine offers Sdp (SIMD, threads, native libraries).</summary>
public static class DoctorCommand
{
    // Probed by soname; the first that loads is reported.
    private static readonly (string Role, string[] Names)[] NativeLibraries =
    [
        ("OpenBLAS (bench baseline)", ["libopenblas.so.0", "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0", "libblas.so.3"]),
        ("CUDA driver", ["libcuda.so.1", "libcuda.so"]),
        ("NVRTC", ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]),
        ("cuBLAS", ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]),
        ("NCCL", ["libnccl.so.2", "libnccl.so"]),
    ];

    public static Command Create()
    {
        var cmd = new Command("doctor", "Report SIMD features, threads and the native libraries found");
        cmd.SetAction(_ =>
        {
            Console.WriteLine($"runtime        .NET {Environment.Version} on {RuntimeInformation.OSDescription} ({RuntimeInformation.ProcessArchitecture})");
            Console.WriteLine($"cpu threads    {Environment.ProcessorCount}");
            Console.WriteLine($"simd           Vector512 {Flag(Vector512.IsHardwareAccelerated)}, Vector256 {Flag(Vector256.IsHardwareAccelerated)}, " +
                              $"AVX-512F {Flag(Avx512F.IsSupported)}, AVX2 {Flag(Avx2.IsSupported)}, FMA {Flag(Fma.IsSupported)}");
            foreach (string line in BackendReport.Lines(CpuBackend.Instance)) Console.WriteLine(line);
            foreach (var (role, names) in NativeLibraries)
            {
                string? found = names.FirstOrDefault(n => NativeLibrary.TryLoad(n, out nint _));
                Console.WriteLine($"{role,-26} {(found is null ? "not found" : "found: " + found)}");
            }
            foreach (string line in OpenBlasLines()) Console.WriteLine(line);
            // Which CUDA entry points Sdp's bindings use (SDP_CUDA=auto|emu|real), with versions and devices.
            foreach (string line in CudaLines()) Console.WriteLine(line);
            return 0;
        });
        return cmd;
    }

    private static string Flag(bool on) => on ? "yes" : "no";

    /// <summary>
    /// The OpenBLAS build and the core it runs, and whether OPENBLAS_CORETYPE forces a core weaker than this CPU
    /// supports (the `sdp bench gemm` baseline then moves to a child process on the best core).
    /// </summary>
    public static IEnumerable<string> OpenBlasLines()
    {
        if (OpenBlas.IsAvailable)
        {
            var config = OpenBlas.Config;
            yield return $"{"OpenBLAS build",-26} {config.Version ?? "version not reported"}, running core {OpenBlas.CoreName}" +
                         $"{(config.DynamicArch ? " (DYNAMIC_ARCH: chosen at load time)" : "")}; openblas_get_config: \"{config.Raw}\"";
        }
        var check = OpenBlasCoreCheck.Current();
        yield return $"{"OpenBLAS core choice",-26} {check.Describe()}" +
                     (check.ForcesWeaker ? $"; `sdp bench gemm` measures its baseline on {check.BestCore} in a child process (--openblas-core as-set keeps {check.Forced})" : "");
    }

    /// <summary>For the real driver and the emulated device: whether it loads (else why not), library versions, and each device.</summary>
    public static IEnumerable<string> CudaLines()
    {
        string mode = Environment.GetEnvironmentVariable("SDP_CUDA") ?? "auto";
        foreach (var implementation in new[] { CudaImplementation.Real, CudaImplementation.Emulated })
        {
            string label = implementation == CudaImplementation.Real ? "CUDA (real)" : "CUDA (emulated device)";
            var api = Sdp.Kernels.Cuda.Cuda.TryLoad(implementation, out string why);
            if (api is null)
            {
                yield return $"{label,-26} no: {why}";
                continue;
            }
            yield return $"{label,-26} {api}";
            foreach (string line in Describe(api)) yield return $"{"",-26} {line}";
        }
        string chosen;
        try
        {
            chosen = Sdp.Kernels.Cuda.Cuda.Load().Implementation == CudaImplementation.Real ? "the real GPU" : "the emulated device";
        }
        catch (Exception e) when (e is DllNotFoundException or ArgumentException)
        {
            chosen = $"nothing ({e.Message})";
        }
        yield return $"{"--device cuda",-26} uses {chosen} (SDP_CUDA={mode}); compiled kernels are cached in {CudaKernels.CacheDirectory}";
    }

    private static unsafe IEnumerable<string> Describe(CudaApi api)
    {
        var lines = new List<string>();
        int driver, count, major, minor;
        api.Check(api.cuDriverGetVersion(&driver));
        api.Check(api.nvrtcVersion(&major, &minor));
        api.Check(api.cuDeviceGetCount(&count));
        lines.Add($"driver API {driver / 1000}.{driver % 1000 / 10}, NVRTC {major}.{minor}, {count} device(s)");
        lines.Add(Version("cuBLAS", () =>
        {
            using var ctx = CudaContext.Open(api, 0);
            using var blas = CublasHandle.Create(ctx);
            int v = blas.Version;
            return $"{v / 10000}.{v / 100 % 100}.{v % 100} ({api.Cublas.Path})";
        }));
        lines.Add(Version("NCCL", () =>
        {
            int v = api.Nccl.Version;
            return $"{v / 10000}.{v / 100 % 100}.{v % 100} ({api.Nccl.Path})";
        }));
        for (int d = 0; d < count; d++)
        {
            using var ctx = CudaContext.Open(api, d);
            var (free, total) = ctx.MemoryInfo();
            lines.Add($"cuda:{d} {ctx.Name}, compute capability {CudaKernels.ComputeCapability(ctx)}, {ctx.Attribute(CUdeviceAttribute.MultiprocessorCount)} SMs, " +
                      $"{MemorySnapshot.FormatBytes(free)} free of {MemorySnapshot.FormatBytes(total)}");
        }
        return lines;
    }

    private static string Version(string library, Func<string> probe)
    {
        try
        {
            return $"{library} {probe()}";
        }
        catch (Exception e) when (e is DllNotFoundException or CudaException or CublasException or NcclException or EntryPointNotFoundException)
        {
            return $"{library} not usable: {e.Message}";
        }
    }
}
