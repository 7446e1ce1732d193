using System.Runtime.InteropServices;

namespace Sdp.Kernels.Cuda;

/// <summary>
/// Finds and loads the CUDA entry points. <c>SDP_CUDA</c> chooses: <c>auto</c> (default: the NVIDIA
/// driver when it loads and reports a device, else the emulated device), <c>emu</c>, or <c>real</c>.
/// Each implementation's libraries are loaded once per process; both tables may be loaded side by side.
/// Nothing is loaded until first asked, so CPU-only use never touches these libraries.
/// </summary>
public static unsafe class Cuda
{
    private static readonly Lock Gate = new();
    private static readonly Dictionary<CudaImplementation, (CudaApi? Api, string Why)> Loaded = [];

    private static readonly string[] DriverNames = ["libcuda.so.1", "libcuda.so"];
    private static readonly string[] NvrtcNames = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];
    private static readonly string[] CublasNames = ["libcublas.so.13", "libcublas.so.12", "libcublas.so"];
    private static readonly string[] NcclNames = ["libnccl.so.2", "libnccl.so"];

    /// <summary>cuBLAS for <paramref name="api"/>'s implementation: the emulator's own exports, or libcublas.so.13/.12
    /// found like the driver. Prefer <see cref="CudaApi.Cublas"/>, which loads this once.</summary>
    public static CublasApi LoadCublas(CudaApi api)
    {
        if (api.Implementation == CudaImplementation.Emulated) return new CublasApi(api, api.DriverHandle, api.DriverPath);
        return TryLoadFirst(CublasNames, out nint h, out string path)
            ? new CublasApi(api, h, path)
            : throw new DllNotFoundException("cuBLAS (libcublas.so.13/.12) was not found in CUDA_HOME, LD_LIBRARY_PATH or pip's nvidia/*/lib");
    }

    /// <summary>NCCL for <paramref name="api"/>'s implementation: the emulator's own exports, or libnccl.so.2.
    /// Prefer <see cref="CudaApi.Nccl"/>, which loads this once.</summary>
    public static NcclApi LoadNccl(CudaApi api)
    {
        if (api.Implementation == CudaImplementation.Emulated) return new NcclApi(api, api.DriverHandle, api.DriverPath);
        return TryLoadFirst(NcclNames, out nint h, out string path)
            ? new NcclApi(api, h, path)
            : throw new DllNotFoundException("NCCL (libnccl.so.2) was not found in CUDA_HOME, LD_LIBRARY_PATH or pip's nvidia/*/lib");
    }

    /// <summary>The table <c>SDP_CUDA</c> asks for (see the class summary); throws when that is unavailable.</summary>
    public static CudaApi Load()
    {
        string mode = (Environment.GetEnvironmentVariable("SDP_CUDA") ?? "auto").Trim().ToLowerInvariant();
        return mode switch
        {
            "emu" => Load(CudaImplementation.Emulated),
            "real" => Load(CudaImplementation.Real),
            "auto" or "" or "both" => TryLoad(CudaImplementation.Real, out _) ?? Load(CudaImplementation.Emulated),
            _ => throw new ArgumentException($"SDP_CUDA={mode}: expected auto, emu or real"),
        };
    }

    public static CudaApi Load(CudaImplementation implementation) =>
        TryLoad(implementation, out string why) ?? throw new DllNotFoundException($"CUDA ({implementation}) is not available: {why}");

    /// <summary>The table for <paramref name="implementation"/>, or null with the reason in <paramref name="why"/>.
    /// The real one counts only when cuInit succeeds and reports at least one device.</summary>
    public static CudaApi? TryLoad(CudaImplementation implementation, out string why)
    {
        lock (Gate)
        {
            if (!Loaded.TryGetValue(implementation, out var entry))
            {
                CudaApi? api = implementation == CudaImplementation.Real ? LoadReal(out why) : LoadEmulated(out why);
                Loaded[implementation] = entry = (api, why);
            }
            why = entry.Why;
            return entry.Api;
        }
    }

    private static CudaApi? LoadEmulated(out string why)
    {
        string? path = EmulatorPath();
        if (path is null)
        {
            why = $"libcudaemu.so was not found (looked at {string.Join(", ", EmulatorCandidates())}; it is built on Linux by the solution build and shipped for linux-x64 in the Sdp.Kernels package; SDP_CUDAEMU_LIB names another)";
            return null;
        }
        nint h = NativeLibrary.Load(path);
        var api = new CudaApi(CudaImplementation.Emulated, h, path, h, path);
        api.Check(api.cuInit(0));
        why = "";
        return api;
    }

    private static CudaApi? LoadReal(out string why)
    {
        if (!TryLoadFirst(DriverNames, out nint driver, out string driverPath))
        {
            why = "libcuda.so.1 (the NVIDIA driver) was not found";
            return null;
        }
        if (!TryLoadFirst(NvrtcNames, out nint nvrtc, out string nvrtcPath))
        {
            why = $"the driver is at {driverPath} but NVRTC (libnvrtc.so.13/.12) was not found in CUDA_HOME, LD_LIBRARY_PATH or pip's nvidia/*/lib";
            return null;
        }
        var api = new CudaApi(CudaImplementation.Real, driver, driverPath, nvrtc, nvrtcPath);
        CUresult init = api.cuInit(0);
        int count = 0;
        if (init != CUresult.Success || api.cuDeviceGetCount(&count) != CUresult.Success || count == 0)
        {
            why = init != CUresult.Success ? $"cuInit failed: {api.ErrorName(init)}" : "the driver reports no device";
            return null;
        }
        why = "";
        return api;
    }

    /// <summary>libcudaemu.so (with its cudaemu.h beside it): <c>SDP_CUDAEMU_LIB</c>, else the first found of
    /// <c>libcudaemu.so</c> and <c>runtimes/linux-x64/native/libcudaemu.so</c> under this assembly's folder and
    /// under the application's folder. These cover a build from the repository (the library beside the
    /// assemblies), a portable app referencing the Sdp.Kernels package (NuGet copies the native asset to
    /// <c>runtimes/linux-x64/native/</c> of its output), a RID-specific publish (flattened beside the app) and the
    /// <c>sdp</c> tool.</summary>
    public static string? EmulatorPath()
    {
        string? env = Environment.GetEnvironmentVariable("SDP_CUDAEMU_LIB");
        if (!string.IsNullOrEmpty(env)) return File.Exists(env) ? Path.GetFullPath(env) : null;
        foreach (string p in EmulatorCandidates())
            if (File.Exists(p)) return Path.GetFullPath(p);
        return null;
    }

    /// <summary>Where <see cref="EmulatorPath"/> looks, in order (without <c>SDP_CUDAEMU_LIB</c>).</summary>
    public static IEnumerable<string> EmulatorCandidates()
    {
        string native = Path.Combine("runtimes", $"linux-{RuntimeInformation.OSArchitecture.ToString().ToLowerInvariant()}", "native");
        var dirs = new List<string>();
        foreach (string? dir in new[] { Path.GetDirectoryName(typeof(Cuda).Assembly.Location), AppContext.BaseDirectory })
        {
            if (string.IsNullOrEmpty(dir)) continue;
            string full = Path.GetFullPath(dir);
            if (!dirs.Contains(full)) dirs.Add(full);
        }
        foreach (string dir in dirs) yield return Path.Combine(dir, "libcudaemu.so");
        foreach (string dir in dirs) yield return Path.Combine(dir, native, "libcudaemu.so");
    }

    /// <summary>Folders searched for the real libraries after the loader's own search (which covers
    /// LD_LIBRARY_PATH and ldconfig by soname): CUDA_HOME/CUDA_PATH, /usr/local/cuda, each
    /// LD_LIBRARY_PATH entry (for versioned names) and the <c>nvidia/*/lib</c> folders of pip CUDA wheels.</summary>
    public static IEnumerable<string> SearchDirectories()
    {
        foreach (string var in new[] { "CUDA_HOME", "CUDA_PATH" })
        {
            string? root = Environment.GetEnvironmentVariable(var);
            if (string.IsNullOrEmpty(root)) continue;
            yield return Path.Combine(root, "lib64");
            yield return Path.Combine(root, "lib");
        }
        yield return "/usr/local/cuda/lib64";
        foreach (string dir in (Environment.GetEnvironmentVariable("LD_LIBRARY_PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
            yield return dir;
        foreach (string dir in PipNvidiaDirectories()) yield return dir;
    }

    private static IEnumerable<string> PipNvidiaDirectories()
    {
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        var libRoots = new List<string> { Path.Combine(home, ".local", "lib"), "/usr/local/lib", "/usr/lib" };
        foreach (string var in new[] { "VIRTUAL_ENV", "CONDA_PREFIX" })
        {
            string? p = Environment.GetEnvironmentVariable(var);
            if (!string.IsNullOrEmpty(p)) libRoots.Add(Path.Combine(p, "lib"));
        }
        foreach (string root in libRoots.Where(Directory.Exists))
        {
            foreach (string python in SafeDirectories(root, "python3*"))
            {
                foreach (string packages in new[] { "site-packages", "dist-packages" })
                {
                    string nvidia = Path.Combine(python, packages, "nvidia");
                    if (!Directory.Exists(nvidia)) continue;
                    foreach (string lib in SafeDirectories(nvidia, "*").Select(d => Path.Combine(d, "lib")).Where(Directory.Exists))
                        yield return lib;
                }
            }
        }
    }

    private static string[] SafeDirectories(string dir, string pattern)
    {
        try { return Directory.GetDirectories(dir, pattern); }
        catch (IOException) { return []; }
        catch (UnauthorizedAccessException) { return []; }
    }

    private static bool TryLoadFirst(string[] names, out nint handle, out string path)
    {
        foreach (string name in names)
        {
            if (NativeLibrary.TryLoad(name, out handle)) { path = name; return true; }
        }
        foreach (string dir in SearchDirectories())
        {
            // A toolkit's lib64/stubs/libcuda.so only fails every call; it is never a driver.
            if (dir.Contains("stubs", StringComparison.Ordinal)) continue;
            foreach (string name in names)
            {
                string p = Path.Combine(dir, name);
                if (File.Exists(p) && NativeLibrary.TryLoad(p, out handle)) { path = p; return true; }
            }
        }
        handle = 0;
        path = "";
        return false;
    }
}
