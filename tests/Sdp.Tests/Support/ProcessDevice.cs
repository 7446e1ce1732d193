using NUnit.Framework;
using Sdp.Engine;
using Sdp.Engine.Backends.Cpu;

/// <summary>
/// The test assembly's composition root: tests that do not choose a device create tensors on the CPU,
/// the reference backend. Tests parameterised over <c>Backends.All</c> open their backend explicitly.
/// Every CPU block the host pool hands out again holds NaN (<see cref="HostMemoryPool.PoisonReusedBlocks"/>), so in
/// every test a kernel that reads an output element it never wrote, or a buffer assumed to start at zero, shows.
/// (No namespace: NUnit applies a global set-up fixture to the whole assembly.)
/// </summary>
[SetUpFixture]
public sealed class ProcessDevice
{
    [OneTimeSetUp]
    public void SelectCpu()
    {
        DeviceScope.SetProcessDefault(CpuBackend.Instance);
        CpuBackend.HostPool.PoisonReusedBlocks = true;
    }

    [OneTimeTearDown]
    public void Clear() => DeviceScope.SetProcessDefault(null);
}
