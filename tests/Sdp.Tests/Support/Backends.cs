using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Backends.Cuda;
using Sdp.Kernels.Cuda;
using Sdp.Tests.Cuda;

namespace Sdp.Tests.Support;

/// <summary>
/// The backends every op, model, trainer and SDP acceptance test runs on: write a test once as a fixture
/// taking an IBackend, and [TestFixtureSource(typeof(Backends), nameof(Backends.All))] runs it per backend.
/// A new backend joins by being yielded here. Float64 gradient checks run on the CPU only; other backends
/// are compared against the CPU backend.
///
/// The CUDA backend joins twice: on the emulated device (category CudaEmu, always), and on a real GPU
/// (category CudaReal) where <c>SDP_CUDA</c> is real or both and a device is found. <c>SDP_TEST_BACKENDS</c> (comma-separated display names, e.g. "cpu,cuda-emu")
/// narrows the list.
/// </summary>
public static class Backends
{
    private static readonly Lazy<CudaBackend> EmulatedCuda = new(() => CudaBackend.Open(0, Sdp.Kernels.Cuda.Cuda.Load(CudaImplementation.Emulated)));

    private static readonly Lazy<(CudaBackend? Backend, string Why)> RealCuda = new(() =>
    {
        CudaApi? api = CudaDevices.TryReal(out string why);
        return (api is null ? null : CudaBackend.Open(0, api), why);
    });

    public static IEnumerable<TestFixtureData> All()
    {
        var selected = (Environment.GetEnvironmentVariable("SDP_TEST_BACKENDS") ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        bool Wanted(string name, bool byDefault) => selected.Length > 0 ? selected.Contains(name) : byDefault;

        if (Wanted("cpu", true)) yield return new TestFixtureData(CpuBackend.Instance).SetArgDisplayNames("cpu");
        // Proves the code under test is device-generic: it owns its tensors and rejects any from another backend.
        if (Wanted("counting-cpu", true)) yield return new TestFixtureData(new CountingBackend()).SetArgDisplayNames("counting-cpu");
        if (Wanted("cuda-emu", true)) yield return Categorised(new TestFixtureData(EmulatedCuda.Value).SetArgDisplayNames("cuda-emu"), CudaDevices.EmulatedCategory);
        // The real device joins only where SDP_CUDA asks for it and a GPU is found (the CudaDevices fixtures report why not).
        if (Wanted("cuda", true) && RealCuda.Value.Backend is { } real)
            yield return Categorised(new TestFixtureData(real).SetArgDisplayNames("cuda"), CudaDevices.RealCategory);
    }

    private static TestFixtureData Categorised(TestFixtureData data, string category)
    {
        data.Properties.Add(NUnit.Framework.Internal.PropertyNames.Category, category);
        return data;
    }

    public static IBackend Cpu => CpuBackend.Instance;

    /// <summary>The emulated CUDA backend the fixtures share (one per test process).</summary>
    public static CudaBackend Emulated => EmulatedCuda.Value;
}
