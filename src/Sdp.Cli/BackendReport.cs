using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Engine.Memory;
using Sdp.Engine.Nn;

namespace Sdp.Cli;

/// <summary>How the CLI prints what a backend reports about itself (<see cref="IBackend.Diagnostics"/>).</summary>
internal static class BackendReport
{
    /// <summary>The backend a module's parameters live on (the current device for a module without any).</summary>
    public static IBackend Of(Module module) => module.Parameters().FirstOrDefault()?.Backend ?? DeviceScope.Current;

    /// <summary>"backend  description", then one "name  value" line per fact, labels padded as `sdp doctor` prints them.</summary>
    public static IEnumerable<string> Lines(IBackend backend)
    {
        var d = backend.Diagnostics;
        yield return $"{"backend",-14} {d.Description}";
        foreach (var (name, value) in d.Facts) yield return $"{name,-14} {value}";
    }

    /// <summary>The run summary's line on memory held per process outside the workers' accounts, e.g.
    /// "GEMM packing buffers (per process, all threads): 1.5 MiB".</summary>
    public static string ProcessWorkspace(Module module)
    {
        var d = Of(module).Diagnostics;
        return $"{d.ProcessWorkspaceLabel}: {MemorySnapshot.FormatBytes(d.ProcessWorkspaceBytes)}";
    }
}
