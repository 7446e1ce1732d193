using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cpu;

namespace Sdp.Tests.Support;

/// <summary>
/// The backends every op, model, trainer and SDP acceptance test runs on: write a test once as a fixture
/// taking an IBackend, and [TestFixtureSource(typeof(Backends), nameof(Backends.All))] runs it per backend.
/// A new backend joins by being yielded here. Float64 gradient checks run on the CPU only; other backends
/// are compared against the CPU backend.
/// </summary>
public static class Backends
{
    public static IEnumerable<TestFixtureData> All()
    {
        yield return new TestFixtureData(CpuBackend.Instance).SetArgDisplayNames("cpu");
        // Proves the code under test is device-generic: it owns its tensors and rejects any from another backend.
        yield return new TestFixtureData(new CountingBackend()).SetArgDisplayNames("counting-cpu");
    }

    public static IBackend Cpu => CpuBackend.Instance;
}
