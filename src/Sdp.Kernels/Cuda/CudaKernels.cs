using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;

namespace Sdp.Kernels.Cuda;

/// <summary>The repository's <c>kernels.cu</c>, embedded in this assembly so a packaged build carries it.</summary>
public static class CudaKernels
{
    private static readonly Lazy<string> SourceText = new(() =>
    {
        using var stream = typeof(CudaKernels).Assembly.GetManifestResourceStream("kernels.cu")
            ?? throw new InvalidOperationException("Sdp.Kernels was built without its embedded kernels.cu resource");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    });

    private static readonly ConcurrentDictionary<(CudaImplementation, int), Lazy<CudaModule>> Loaded = new();

    /// <summary>The CUDA source of every custom kernel (NVRTC-compatible; see docs/kernels.md).</summary>
    public static string Source => SourceText.Value;

    /// <summary>Compiles <see cref="Source"/> for <paramref name="context"/>'s device (no disk cache).</summary>
    public static CudaModule Compile(CudaContext context) => CudaModule.Compile(context, Source, "kernels.cu", ArchitectureOptions(context));

    /// <summary>
    /// The kernels module of <paramref name="context"/>'s device, compiled once per process and device and shared
    /// by every backend on it (it lives as long as the process). On a real device NVRTC's PTX is cached on disk
    /// under <see cref="CacheDirectory"/>, keyed by a hash of the source, the options, the NVRTC library and the
    /// architecture; the emulated device caches its compiled shared object itself.
    /// </summary>
    public static CudaModule Load(CudaContext context) =>
        Loaded.GetOrAdd((context.Api.Implementation, context.Device), _ => new Lazy<CudaModule>(() => LoadUncached(context))).Value;

    /// <summary><c>SDP_KERNEL_CACHE</c>, else <c>$XDG_CACHE_HOME/sdp/kernels</c>, else <c>~/.cache/sdp/kernels</c>.</summary>
    public static string CacheDirectory
    {
        get
        {
            string? dir = Environment.GetEnvironmentVariable("SDP_KERNEL_CACHE");
            if (!string.IsNullOrEmpty(dir)) return dir;
            string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            string root = !string.IsNullOrEmpty(xdg) ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
            return Path.Combine(root, "sdp", "kernels");
        }
    }

    /// <summary>The file the PTX for <paramref name="context"/> is cached in (real devices only).</summary>
    public static string CachePath(CudaContext context)
    {
        string[] options = ArchitectureOptions(context);
        string key = string.Join("\n", [Source, .. options, context.Api.NvrtcPath, NvrtcVersion(context.Api)]);
        string hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)))[..20];
        return Path.Combine(CacheDirectory, $"kernels-{hash}-sm_{ComputeCapability(context)}.ptx");
    }

    /// <summary>The compute capability as digits, e.g. "90" for an H100 or H200.</summary>
    public static string ComputeCapability(CudaContext context) =>
        $"{context.Attribute(CUdeviceAttribute.ComputeCapabilityMajor)}{context.Attribute(CUdeviceAttribute.ComputeCapabilityMinor)}";

    private static string[] ArchitectureOptions(CudaContext context) =>
        context.Api.Implementation == CudaImplementation.Real ? [$"--gpu-architecture=compute_{ComputeCapability(context)}", "-std=c++17"] : [];

    private static unsafe string NvrtcVersion(CudaApi api)
    {
        int major, minor;
        return api.nvrtcVersion(&major, &minor) == NvrtcResult.Success ? $"{major}.{minor}" : "unknown";
    }

    private static CudaModule LoadUncached(CudaContext context)
    {
        if (context.Api.Implementation != CudaImplementation.Real) return Compile(context);
        string path = CachePath(context);
        if (File.Exists(path)) return CudaModule.Load(context, File.ReadAllBytes(path));
        using var program = NvrtcProgram.Create(context.Api, Source, "kernels.cu");
        program.Compile(ArchitectureOptions(context));
        byte[] ptx = program.GetPtx();
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            string temp = $"{path}.{Environment.ProcessId}.tmp";
            File.WriteAllBytes(temp, ptx);
            File.Move(temp, path, overwrite: true); // atomic: a concurrent reader sees the whole file or none
        }
        catch (IOException) { } // a read-only or full cache only costs the next process a compile
        catch (UnauthorizedAccessException) { }
        return CudaModule.Load(context, ptx);
    }
}
