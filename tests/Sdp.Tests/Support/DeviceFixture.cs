using Sdp.Engine;
using Sdp.Engine.Backends;

namespace Sdp.Tests.Support;

/// <summary>
/// Base of fixtures that run once per backend ([TestFixtureSource(typeof(Backends), nameof(Backends.All))]):
/// every test runs with the fixture's backend as the current device, so models, data and optimizer state
/// the test builds without naming a device land there, exactly as they do on a trainer's worker.
/// </summary>
public abstract class DeviceFixture(IBackend backend)
{
    private IDisposable? _scope;

    protected IBackend Backend { get; } = backend;

    [SetUp]
    public void OpenDevice() => _scope = DeviceScope.Use(Backend);

    [TearDown]
    public void CloseDevice()
    {
        _scope?.Dispose();
        _scope = null;
    }
}
