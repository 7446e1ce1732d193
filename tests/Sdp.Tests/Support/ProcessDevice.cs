using NUnit.Framework;
using Sdp.Engine;
using Sdp.Engine.Backends.Cpu;

/// <summary>
/// The test assembly's composition root: tests that do not choose a device create tensors on the CPU,
/// the reference backend. Tests parameterised over <c>Backends.All</c> open their backend explicitly.
/// (No namespace: NUnit applies a global set-up fixture to the whole assembly.)
/// </summary>
[SetUpFixture]
public sealed class ProcessDevice
{
    [OneTimeSetUp]
    public void SelectCpu() => DeviceScope.SetProcessDefault(CpuBackend.Instance);

    [OneTimeTearDown]
    public void Clear() => DeviceScope.SetProcessDefault(null);
}
