using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Backends.Cuda;
using Sdp.Kernels.Cuda;

namespace Sdp.Cli;

/// <summary>
/// What `--device` selects: <c>cpu</c> (the reference backend), <c>cuda</c> (worker w on CUDA device w mod the
/// device count, each worker with its own backend, so its own stream and memory) or <c>cuda:K</c> (every worker
/// on device K). CUDA is the NVIDIA driver when a GPU is found, else the emulated device (SDP_CUDA=auto|emu|real
/// chooses). The host (where an SDP run assembles its dense model) gets a backend of its own on the first device.
/// </summary>
public sealed class DeviceSelection : IDisposable
{
    private readonly List<CudaBackend> _opened = [];

    private DeviceSelection(IBackend host, string spec) => (Host, Spec) = (host, spec);

    public string Spec { get; }

    /// <summary>Where the dense model of an SDP run and the evaluation live.</summary>
    public IBackend Host { get; private set; }

    /// <summary>Worker w's device (CPU: the one reference backend for every worker).</summary>
    public Func<int, IBackend> Worker { get; private set; } = _ => CpuBackend.Instance;

    /// <summary>The line a command prints first when CUDA runs on the emulated device or a real one; null on the CPU.</summary>
    public string? Banner { get; private set; }

    public bool IsCuda => Host is CudaBackend;

    /// <summary>
    /// Opens the devices of <paramref name="spec"/> for <paramref name="workers"/> workers; <paramref name="option"/> names
    /// the option in errors. <paramref name="localRank"/>: this process is one rank of a multi-process job, with that
    /// rank among the job's processes on this node; its one worker and its host share one backend on device
    /// (local rank mod the device count) under <c>cuda</c>.
    /// </summary>
    public static DeviceSelection Open(string spec, int workers, string option = "--device", int? localRank = null)
    {
        spec = spec.Trim().ToLowerInvariant();
        if (spec == "cpu") return new DeviceSelection(CpuBackend.Instance, spec);
        int? pinned = null;
        if (spec.StartsWith("cuda:", StringComparison.Ordinal))
        {
            if (!int.TryParse(spec.AsSpan(5), out int k) || k < 0) throw new UsageException($"{option}: '{spec}' is not cpu, cuda or cuda:K with K a device number");
            pinned = k;
        }
        else if (spec != "cuda")
        {
            throw new UsageException($"{option}: expected cpu, cuda or cuda:K, got '{spec}'");
        }

        CudaApi api;
        try
        {
            api = Sdp.Kernels.Cuda.Cuda.Load();
        }
        catch (Exception e) when (e is DllNotFoundException or ArgumentException or CudaException)
        {
            throw new UsageException($"{option} {spec}: no CUDA device: {e.Message}");
        }
        int count = DeviceCount(api);
        if (pinned >= count) throw new UsageException($"{option} {spec}: the {api} has {count} device(s), numbered from 0");

        var selection = new DeviceSelection(CpuBackend.Instance, spec);
        try
        {
            var workerBackends = new CudaBackend[workers];
            for (int w = 0; w < workers; w++) workerBackends[w] = selection.Track(CudaBackend.Open(pinned ?? (localRank ?? w) % count, api));
            selection.Host = localRank is null ? selection.Track(CudaBackend.Open(pinned ?? 0, api)) : workerBackends[0];
            // One rank of a job runs one worker, whatever its world rank.
            selection.Worker = localRank is null ? w => workerBackends[w] : _ => workerBackends[0];
            string placement = localRank is not null ? $"local rank {localRank} on {workerBackends[0].Device}"
                : pinned is not null || count == 1 || workers == 1
                ? $"{(workers == 1 ? "the worker" : $"all {workers} workers")} on {workerBackends[0].Device}"
                : $"worker w on cuda:(w mod {count})";
            selection.Banner = api.Implementation == CudaImplementation.Emulated
                ? $"device: EMULATED CUDA ({count} emulated devices; kernels.cu compiled as host C++ and run on the CPU, so expect CPU speed): {placement}; no NVIDIA GPU: {WhyNoGpu()}"
                : $"device: CUDA, {workerBackends[0].Context.Name} ({count} device(s)), {placement}";
            return selection;
        }
        catch
        {
            selection.Dispose();
            throw;
        }
    }

    private static unsafe int DeviceCount(CudaApi api)
    {
        int count;
        api.Check(api.cuDeviceGetCount(&count));
        return count;
    }

    private static string WhyNoGpu()
    {
        var real = Sdp.Kernels.Cuda.Cuda.TryLoad(CudaImplementation.Real, out string why);
        return real is null ? why : "SDP_CUDA=emu asks for the emulator";
    }

    private CudaBackend Track(CudaBackend backend)
    {
        _opened.Add(backend);
        return backend;
    }

    public void Dispose()
    {
        foreach (var b in _opened) b.Dispose();
        _opened.Clear();
    }
}
