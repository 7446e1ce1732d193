using System.Reflection;
using System.Text.Json;
using Sdp.Cli;

namespace Sdp.Tests.Cli;

/// <summary>
/// The `sdp` tool stays free of the benchmark stack: Sdp.Bench (BenchmarkDotNet, Roslyn, TraceEvent) is a leaf,
/// and `sdp bench` runs on Sdp.Measure. Read from the built sdp.dll and its sdp.deps.json, no publish needed.
/// </summary>
public class ToolDependencyTests
{
    /// <summary>Package and assembly name prefixes that must not reach the tool.</summary>
    private static readonly string[] Forbidden =
        ["BenchmarkDotNet", "Microsoft.CodeAnalysis", "Microsoft.Diagnostics.Tracing.TraceEvent", "Sdp.Bench"];

    private static Assembly Tool => typeof(SdpCli).Assembly;

    private static bool IsForbidden(string name) =>
        Forbidden.Any(f => name.Equals(f, StringComparison.OrdinalIgnoreCase) || name.StartsWith(f + ".", StringComparison.OrdinalIgnoreCase));

    [Test]
    public void DepsJson_ListsNoBenchmarkLibraries()
    {
        string deps = Path.ChangeExtension(Tool.Location, ".deps.json");
        Assert.That(File.Exists(deps), Is.True, $"{deps} was not built next to {Tool.Location}");
        using var doc = JsonDocument.Parse(File.ReadAllText(deps));
        // Keys are "name/version", e.g. "BenchmarkDotNet/0.15.8"; the section holds the whole transitive closure.
        string[] libraries = [.. doc.RootElement.GetProperty("libraries").EnumerateObject().Select(p => p.Name.Split('/')[0])];

        Assert.That(libraries, Does.Contain("Sdp.Measure"), "sanity: the bench tables' library is a dependency of sdp");
        Assert.That(libraries.Where(IsForbidden), Is.Empty, $"{Path.GetFileName(deps)} lists benchmark-only libraries");
    }

    [Test]
    public void ReferencedAssemblies_TransitivelyExcludeBenchmarkDotNet()
    {
        var seen = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        var pending = new Queue<Assembly>([Tool]);
        while (pending.Count > 0)
        {
            foreach (var reference in pending.Dequeue().GetReferencedAssemblies())
            {
                if (reference.Name is not { } name || !seen.Add(name)) continue;
                Assert.That(IsForbidden(name), Is.False, $"sdp references {name} (through {string.Join(", ", seen)})");
                // Framework assemblies are the runtime's, not the tool's; walk only what ships with sdp.
                if (name.StartsWith("System", StringComparison.Ordinal) || name is "mscorlib" or "netstandard") continue;
                pending.Enqueue(Assembly.Load(reference));
            }
        }

        Assert.That(seen, Does.Contain("Sdp.Measure"));
    }
}
