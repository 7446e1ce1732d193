using System.Diagnostics;
using Sdp.Engine.Backends.Cpu;

namespace Sdp.Engine.Profiling;

/// <summary>
/// The CPU backend with every kernel timed into a worker's <see cref="StepProfile"/>, charged to the phase the
/// worker is in. Tensors made on it are its own, so every op on them is timed. Its cost per kernel is two
/// timestamps and a dictionary lookup (<see cref="OverheadPerCall"/> measures it).
/// </summary>
public sealed class ProfilingBackend(StepProfile profile) : CpuBackendDecorator
{
    public StepProfile Profile { get; } = profile;

    public override string ToString() => "cpu (profiled)";

    protected override long Enter(string kernel, params ReadOnlySpan<Tensor?> tensors) => Stopwatch.GetTimestamp();

    protected override void Exit(string kernel, long started) => Profile.AddKernel(kernel, Stopwatch.GetTimestamp() - started);

    /// <summary>What timing one kernel call costs on this machine: the mean of many empty timed calls.</summary>
    public static TimeSpan OverheadPerCall()
    {
        var probe = new ProfilingBackend(new StepProfile());
        using var phase = probe.Profile.Enter(StepPhase.Forward);
        const int Calls = 20_000;
        long started = Stopwatch.GetTimestamp();
        for (int i = 0; i < Calls; i++) probe.Exit(nameof(Synchronize), probe.Enter(nameof(Synchronize), null, null, null));
        return Stopwatch.GetElapsedTime(started) / Calls;
    }
}
