using System.CommandLine;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Sdp.Engine.Backends.Cpu;

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
            // Which CUDA entry points Sdp's bindings would use (SDP_CUDA=auto|emu|real).
            var real = Sdp.Kernels.Cuda.Cuda.TryLoad(Sdp.Kernels.Cuda.CudaImplementation.Real, out string whyNotReal);
            var emulated = Sdp.Kernels.Cuda.Cuda.EmulatorPath();
            Console.WriteLine($"{"CUDA (real)",-26} {(real is null ? "no: " + whyNotReal : real.ToString())}");
            Console.WriteLine($"{"CUDA (emulated device)",-26} {(emulated is null ? "not built (libcudaemu.so missing)" : emulated)}");
            return 0;
        });
        return cmd;
    }

    private static string Flag(bool on) => on ? "yes" : "no";
}
