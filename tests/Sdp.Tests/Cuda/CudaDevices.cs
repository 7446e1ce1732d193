using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// Which CUDA implementations the device test fixtures run on (their <c>[TestFixtureSource]</c>): the
/// emulated device always (category <c>CudaEmu</c>), and the real driver too (category <c>CudaReal</c>),
/// which runs only where <c>SDP_CUDA</c> is <c>real</c> or <c>both</c> and the driver loads with a device;
/// elsewhere that fixture is ignored with "no real CUDA device: &lt;why&gt;". Fixture names read
/// <c>Sdp.Tests.Cuda.KernelTests(Emulated)</c> and <c>Sdp.Tests.Cuda.KernelTests(Real)</c>, so the tests
/// filter by name or by category. <c>build.ps1 gpu-check</c> runs the <c>CudaReal</c> and <c>CudaCross</c>
/// categories on a GPU machine.
/// </summary>
public static class CudaDevices
{
    public const string EmulatedCategory = "CudaEmu";
    public const string RealCategory = "CudaReal";
    public const string CrossCategory = "CudaCross";

    /// <summary>The fixture source: one fixture per implementation, categorised as above.</summary>
    public static IEnumerable<TestFixtureData> Implementations
    {
        get
        {
            yield return Fixture(CudaImplementation.Emulated, EmulatedCategory);
            yield return Fixture(CudaImplementation.Real, RealCategory);
        }
    }

    private static TestFixtureData Fixture(CudaImplementation implementation, string category)
    {
        var data = new TestFixtureData(implementation);
        data.Properties.Add(NUnit.Framework.Internal.PropertyNames.Category, category);
        return data;
    }

    /// <summary><c>SDP_CUDA</c> asks for real-device tests (<c>real</c> or <c>both</c>).</summary>
    public static bool RealRequested => (Environment.GetEnvironmentVariable("SDP_CUDA") ?? "").Trim().ToLowerInvariant() is "real" or "both";

    /// <summary>The real driver's table, or null with the reason (<c>SDP_CUDA</c> not asking for it, or the driver not loading).</summary>
    public static CudaApi? TryReal(out string why)
    {
        if (!RealRequested)
        {
            why = $"SDP_CUDA is '{Environment.GetEnvironmentVariable("SDP_CUDA") ?? ""}'; set SDP_CUDA=real or both to test a real device";
            return null;
        }
        return Sdp.Kernels.Cuda.Cuda.TryLoad(CudaImplementation.Real, out why);
    }

    /// <summary>The table a fixture runs on. The emulated device is part of every Linux build, so not finding it
    /// is a failure; a missing real device ignores the fixture with the reason.</summary>
    public static CudaApi Load(CudaImplementation implementation)
    {
        if (implementation == CudaImplementation.Emulated)
            return Sdp.Kernels.Cuda.Cuda.TryLoad(CudaImplementation.Emulated, out string why) ?? throw new InvalidOperationException($"no emulated CUDA device: {why}");
        CudaApi? real = TryReal(out string whyNot);
        if (real is null) Assert.Ignore($"no real CUDA device: {whyNot}");
        return real!;
    }

    /// <summary>Ignores the test on the real device: it checks what only the emulator reports (a planted bug, the
    /// emulator's own messages), or it would leave a real context unusable (an illegal address) or hang.</summary>
    public static void RequireEmulated(CudaImplementation implementation, string why)
    {
        if (implementation != CudaImplementation.Emulated) Assert.Ignore($"emulator-only: {why}");
    }
}
