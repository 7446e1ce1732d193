using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cpu;

namespace Sdp.Tests.Support;

/// <summary>
/// The backends every op test runs on: write a test once as a fixture taking an IBackend, and
/// [TestFixtureSource(typeof(Backends), nameof(Backends.All))] runs it per backend. Float64 gradient
/// checks run on the CPU only; other backends are compared against the CPU backend.
/// </summary>
public static class Backends
{
    public static IEnumerable<TestFixtureData> All()
    {
        yield return new TestFixtureData(CpuBackend.Instance).SetArgDisplayNames("cpu");
    }

    public static IBackend Cpu => CpuBackend.Instance;
}
