using System.Diagnostics;

namespace Sdp.Engine.Profiling;

/// <summary>The parts of a training step a worker's time is split into.</summary>
public enum StepPhase
{
    /// <summary>Outside any step (setup, evaluation, saving): kernels there are not recorded.</summary>
    None,

    /// <summary>Reading the next batch onto the device.</summary>
    Data,

    /// <summary>The forward pass and its loss.</summary>
    Forward,

    /// <summary>The backward pass over the tape.</summary>
    Backward,

    /// <summary>Gradient synchronisation, the global gradient norm, buffer sync and unit refresh: everything that talks to other workers.</summary>
    Sync,

    /// <summary>Clipping, the optimizer update and zeroing the gradients.</summary>
    Optimizer,
}

/// <summary>Time spent in one kernel (an <see cref="Backends.IBackend"/> member) during one phase.</summary>
public sealed record KernelTime(StepPhase Phase, string Kernel, TimeSpan Time, long Calls);

/// <summary>
/// One worker's time per step phase, and per kernel within each phase (kernels are timed by a
/// <see cref="ProfilingBackend"/> on the worker's device). Used from the worker's own thread only.
/// </summary>
public sealed class StepProfile
{
    private static readonly StepPhase[] Phases = Enum.GetValues<StepPhase>();

    private readonly long[] _phaseTicks = new long[Phases.Length];
    private readonly Dictionary<string, Accumulator>[] _kernels = [.. Phases.Select(_ => new Dictionary<string, Accumulator>(ReferenceEqualityComparer.Instance as IEqualityComparer<string>))];

    private sealed class Accumulator
    {
        public long Ticks;
        public long Calls;
    }

    /// <summary>The phase the worker is in now; kernels are charged to it.</summary>
    public StepPhase Current { get; private set; }

    /// <summary>Enters <paramref name="phase"/> until the scope is disposed (then the previous phase is current again).</summary>
    public PhaseScope Enter(StepPhase phase)
    {
        var scope = new PhaseScope(this, Current, Stopwatch.GetTimestamp());
        Current = phase;
        return scope;
    }

    /// <summary>Enters <paramref name="phase"/> on <paramref name="profile"/>, or does nothing when there is none (profiling off).</summary>
    public static PhaseScope Enter(StepProfile? profile, StepPhase phase) => profile?.Enter(phase) ?? default;

    /// <summary>Ends a phase begun by <see cref="Enter(StepPhase)"/>.</summary>
    public readonly struct PhaseScope(StepProfile? profile, StepPhase previous, long started) : IDisposable
    {
        public void Dispose()
        {
            if (profile is null) return;
            profile._phaseTicks[(int)profile.Current] += Stopwatch.GetTimestamp() - started;
            profile.Current = previous;
        }
    }

    /// <summary>Charges <paramref name="ticks"/> (<see cref="Stopwatch"/> ticks) of <paramref name="kernel"/> to the current phase (kernel names are compared by reference: pass <c>nameof</c> constants).</summary>
    internal void AddKernel(string kernel, long ticks)
    {
        if (Current == StepPhase.None) return;
        var kernels = _kernels[(int)Current];
        if (!kernels.TryGetValue(kernel, out var sum)) kernels.Add(kernel, sum = new Accumulator());
        sum.Ticks += ticks;
        sum.Calls++;
    }

    /// <summary>Wall time spent in <paramref name="phase"/> so far.</summary>
    public TimeSpan PhaseTime(StepPhase phase) => Stopwatch.GetElapsedTime(0, _phaseTicks[(int)phase]);

    /// <summary>Every (phase, kernel) with its time and calls so far.</summary>
    public IReadOnlyList<KernelTime> Kernels()
        => [.. Phases.SelectMany(p => _kernels[(int)p].Select(k => new KernelTime(p, k.Key, Stopwatch.GetElapsedTime(0, k.Value.Ticks), k.Value.Calls)))];

    /// <summary>Forgets everything measured (after warm-up steps).</summary>
    public void Reset()
    {
        Array.Clear(_phaseTicks);
        foreach (var k in _kernels) k.Clear();
    }
}
