using System.Globalization;
using Sdp.Engine.Memory;
using Sdp.Engine.Profiling;

namespace Sdp.Models.Training;

/// <summary>
/// Where a run's steps went (<see cref="TrainerOptions.Profile"/>): each phase's wall time and each CPU kernel's
/// time per step, summed over this process's workers, with the process's garbage collections and managed
/// allocation over the same steps. The first step is warm-up (JIT, first allocations) and is left out.
/// </summary>
public sealed class TrainingProfile
{
    private readonly StepProfile[] _workers;
    private readonly List<double> _stepMs = [];
    private bool _warmUp = true;
    private TimeSpan _gcPauseAtStart;
    private long _allocatedAtStart;
    private int[] _collectionsAtStart = [];
    private TimeSpan _gcPauseAtEnd;
    private long _allocatedAtEnd;
    private int[] _collectionsAtEnd = [];

    public TrainingProfile(StepProfile[] workers)
    {
        _workers = workers;
        MarkStart();
    }

    /// <summary>Steps measured (every step after the first).</summary>
    public long Steps => _stepMs.Count;

    /// <summary>This process's workers' profiles, by local index.</summary>
    public IReadOnlyList<StepProfile> Workers => _workers;

    /// <summary>Called by the trainer after each step with its wall time.</summary>
    internal void StepDone(double stepMs)
    {
        if (_warmUp)
        {
            _warmUp = false;
            foreach (var w in _workers) w.Reset();
            MarkStart();
            return;
        }
        _stepMs.Add(stepMs);
        // Read at the end of each measured step, so what runs after the last one (evaluation, saving) is not counted.
        (_gcPauseAtEnd, _allocatedAtEnd, _collectionsAtEnd) = GcCounters();
    }

    private static (TimeSpan Pause, long Allocated, int[] Collections) GcCounters() =>
        (GC.GetTotalPauseDuration(), GC.GetTotalAllocatedBytes(precise: false), [.. Enumerable.Range(0, GC.MaxGeneration + 1).Select(GC.CollectionCount)]);

    private void MarkStart() => (_gcPauseAtStart, _allocatedAtStart, _collectionsAtStart) = GcCounters();

    /// <summary>The table `sdp train --profile` prints: phases, the kernels that took the most time, GC and allocation, and what timing cost.</summary>
    public IEnumerable<string> Report(int topKernels = 15)
    {
        if (Steps == 0)
        {
            yield return "profile: no step after the warm-up step was measured (run at least 2 steps)";
            yield break;
        }
        double PerStep(TimeSpan t) => t.TotalMilliseconds / Steps;
        string Ms(double ms) => ms.ToString("F2", CultureInfo.InvariantCulture);
        var kernels = _workers.SelectMany(w => w.Kernels()).GroupBy(k => (k.Phase, k.Kernel))
            .Select(g => new KernelTime(g.Key.Phase, g.Key.Kernel, TimeSpan.FromTicks(g.Sum(k => k.Time.Ticks)), g.Sum(k => k.Calls))).ToList();
        var phases = Enum.GetValues<StepPhase>().Where(p => p != StepPhase.None).ToList();
        double phaseTotal = phases.Sum(p => _workers.Sum(w => PerStep(w.PhaseTime(p))));
        string workers = _workers.Length == 1 ? "one worker" : $"{_workers.Length} workers' times summed";
        var sorted = _stepMs.Order().ToArray();
        double Quantile(double q) => sorted[(int)Math.Round(q * (sorted.Length - 1))];
        double median = Quantile(0.5);
        yield return $"profile: {Steps} steps after the warm-up step, {workers}; the step's wall time: mean {Ms(sorted.Average())} ms, " +
                     $"median {Ms(median)} ms, p10–p90 {Ms(Quantile(0.1))}–{Ms(Quantile(0.9))} ms (spread {Percent(Quantile(0.9) - Quantile(0.1), median)} of the median)";
        yield return $"  {"phase",-10} {"ms/step",10} {"in kernels",11} {"outside",9} {"share",6}";
        foreach (var p in phases)
        {
            double wall = _workers.Sum(w => PerStep(w.PhaseTime(p)));
            double inKernels = kernels.Where(k => k.Phase == p).Sum(k => PerStep(k.Time));
            yield return $"  {p.ToString().ToLowerInvariant(),-10} {Ms(wall),10} {Ms(inKernels),11} {Ms(wall - inKernels),9} {Percent(wall, phaseTotal),6}";
        }
        yield return $"  kernels (top {Math.Min(topKernels, kernels.Count)} of {kernels.Count} by time; a kernel's share is of all phases):";
        yield return $"  {"kernel",-26} {"phase",-10} {"ms/step",10} {"calls/step",11} {"µs/call",9} {"share",6}";
        foreach (var k in kernels.OrderByDescending(k => k.Time).Take(topKernels))
        {
            double ms = PerStep(k.Time);
            double calls = (double)k.Calls / Steps;
            yield return $"  {k.Kernel,-26} {k.Phase.ToString().ToLowerInvariant(),-10} {Ms(ms),10} {calls.ToString("F1", CultureInfo.InvariantCulture),11} {(ms * 1000 / calls).ToString("F1", CultureInfo.InvariantCulture),9} {Percent(ms, phaseTotal),6}";
        }
        var collections = _collectionsAtEnd.Select((c, g) => c - _collectionsAtStart[g]).ToArray();
        double pauseMs = (_gcPauseAtEnd - _gcPauseAtStart).TotalMilliseconds;
        long allocated = _allocatedAtEnd - _allocatedAtStart;
        yield return $"  gc: {string.Join(", ", collections.Select((c, g) => $"gen{g} {c}"))} collections, paused {Ms(pauseMs)} ms in all ({Ms(pauseMs / Steps)} ms/step); " +
                     $"managed allocation {MemorySnapshot.FormatBytes(allocated / Steps)} per step (process-wide, outside tensor storage)";
        double callsPerStep = kernels.Sum(k => (double)k.Calls) / Steps;
        var perCall = ProfilingBackend.OverheadPerCall();
        double overheadMs = callsPerStep * perCall.TotalMilliseconds;
        yield return $"  timing cost: {callsPerStep.ToString("F0", CultureInfo.InvariantCulture)} kernel calls/step × {(perCall.TotalMicroseconds * 1000).ToString("F0", CultureInfo.InvariantCulture)} ns ≈ {Ms(overheadMs)} ms/step ({Percent(overheadMs, phaseTotal)} of the phases' time)";
    }

    private static string Percent(double part, double whole) => whole > 0 ? (part / whole).ToString("P1", CultureInfo.InvariantCulture).Replace(" ", "", StringComparison.Ordinal) : "-";
}
