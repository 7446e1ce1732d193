using Sdp.Engine;
using Sdp.Engine.Backends.Cpu;

namespace Sdp.Tests.Support;

/// <summary>
/// A second backend for the test suite: it runs every kernel through the CPU backend, but owns its tensors
/// (they report it as their backend) and checks on every call that each tensor passed belongs to it, so a
/// code path that silently creates a tensor on another device fails loudly. It also counts device-to-host
/// reads (<see cref="Sdp.Engine.Backends.IBackend.Download{T}"/>, the only way data leaves a backend: no other member returns a value),
/// which is how the tests prove a training step reads the device at most twice.
/// </summary>
public sealed class CountingBackend : CpuBackendDecorator
{
    private long _downloads, _uploads, _calls;

    /// <summary>Device-to-host reads since creation or the last <see cref="ResetCounts"/>.</summary>
    public long Downloads => Interlocked.Read(ref _downloads);

    /// <summary>Host-to-device writes since creation or the last <see cref="ResetCounts"/>.</summary>
    public long Uploads => Interlocked.Read(ref _uploads);

    /// <summary>Kernel calls (every member but allocation and transfers).</summary>
    public long Calls => Interlocked.Read(ref _calls);

    public void ResetCounts()
    {
        Interlocked.Exchange(ref _downloads, 0);
        Interlocked.Exchange(ref _uploads, 0);
        Interlocked.Exchange(ref _calls, 0);
    }

    public override string ToString() => "counting-cpu";

    protected override long Enter(string kernel, params ReadOnlySpan<Tensor?> tensors)
    {
        if (kernel == nameof(Download)) Interlocked.Increment(ref _downloads);
        else if (kernel == nameof(Upload)) Interlocked.Increment(ref _uploads);
        else Interlocked.Increment(ref _calls);
        foreach (var t in tensors) Own(t);
        return 0;
    }

    private void Own(Tensor? t)
    {
        if (t is not null && !ReferenceEquals(t.Storage.Backend, this))
            throw new InvalidOperationException($"{this}: tensor {t.Name ?? "tensor"}{t.Shape} lives on backend {t.Storage.Backend}, not on this one: some code created it on another device");
    }
}
