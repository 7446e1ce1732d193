using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Engine.Memory;
using Sdp.Models.Checkpoints;

namespace Sdp.Models.Training;

/// <summary>What a step does when its loss or gradient norm is not finite.</summary>
public enum NonFinitePolicy
{
    /// <summary>Stop the run with a <see cref="NonFiniteException"/> and a diagnostic record; nothing is updated or saved.</summary>
    Abort,

    /// <summary>Skip the update (no optimizer step) and go on with the next batch.</summary>
    Skip,
}

/// <summary>What a worker did with its step; every worker of a run decides the same, from values they all hold.</summary>
internal enum StepDecision
{
    Update,
    SkipNonFinite,
    SkipSpike,
    Abort,
}

/// <summary>A tensor that holds NaN or infinite values: whose it is, what it is ("data", "weight", "gradient"), and how many.</summary>
public sealed record NonFiniteTensor(int Worker, string Kind, string Name, long NonFinite, long Elements, double FirstValue)
{
    /// <summary>What a non-finite tensor can be, in causal order.</summary>
    public static readonly string[] Kinds = ["data", "weight", "gradient"];

    /// <summary>Tensors read per category at most: the first ones in module order are the ones that matter.</summary>
    private const int Limit = 8;

    /// <summary>The floating-point tensors of <paramref name="tensors"/> with a non-finite element (copied to the host: only after a failure).</summary>
    internal static List<NonFiniteTensor> Find(int worker, string kind, IEnumerable<(string Name, Tensor Tensor)> tensors)
    {
        var found = new List<NonFiniteTensor>();
        foreach (var (name, t) in tensors)
        {
            if (!t.DType.IsFloatingPoint()) continue;
            var values = t.ToDoubles();
            int first = Array.FindIndex(values, v => !double.IsFinite(v));
            if (first < 0) continue;
            found.Add(new NonFiniteTensor(worker, kind, name, values.LongCount(v => !double.IsFinite(v)), values.Length, values[first]));
            if (found.Count == Limit) break;
        }
        return found;
    }

    public override string ToString()
        => string.Create(CultureInfo.InvariantCulture, $"worker {Worker} {Kind} {Name} ({NonFinite} of {Elements} elements non-finite, first {FirstValue})");
}

/// <summary>
/// llm.c's outlier detector (<c>llmc/outlier_detector.h</c>): the z-score of a value against the mean and standard
/// deviation of the last N values, the new one included; NaN until N values have been seen. Only finite values enter.
/// </summary>
public sealed class LossSpikeDetector
{
    private readonly double[] _window;
    private int _count;
    private int _next;

    public LossSpikeDetector(int window)
    {
        if (window < 2) throw new ArgumentException($"loss spike detector: the window must hold at least 2 losses, got {window}");
        _window = new double[window];
    }

    /// <summary>The remembered values, oldest first.</summary>
    public IReadOnlyList<double> Values => [.. Enumerable.Range(0, _count).Select(i => _window[(_next - _count + i + _window.Length) % _window.Length])];

    /// <summary>Forgets everything, then remembers <paramref name="values"/> (oldest first; beyond the window, the newest).</summary>
    public void Restore(IEnumerable<double> values)
    {
        (_count, _next) = (0, 0);
        foreach (double v in values.TakeLast(_window.Length))
        {
            _window[_next] = v;
            _next = (_next + 1) % _window.Length;
            _count++;
        }
    }

    /// <summary>Adds <paramref name="value"/> and returns its z-score (NaN while the window fills, 0 when all values are equal).</summary>
    public double Update(double value)
    {
        _window[_next] = value;
        _next = (_next + 1) % _window.Length;
        if (_count < _window.Length && ++_count < _window.Length) return double.NaN;
        double mean = _window.Average();
        double variance = _window.Sum(v => (v - mean) * (v - mean)) / _window.Length;
        return variance == 0 ? 0 : (value - mean) / Math.Sqrt(variance);
    }
}

/// <summary>A run stopped because a step's loss or gradient norm was not finite (<see cref="NonFinitePolicy.Abort"/>).</summary>
public sealed class NonFiniteException(string message, long step, string? recordPath) : Exception(message)
{
    /// <summary>The step that failed (1-based; the completed steps before it stay as they were).</summary>
    public long Step { get; } = step;

    /// <summary>The diagnostic record written, or null.</summary>
    public string? RecordPath { get; } = recordPath;
}

/// <summary>JSON has no NaN or infinities: such values are written as the strings "NaN", "Infinity", "-Infinity" (Python's float() reads them).</summary>
public static class JsonNumbers
{
    public static JsonNode Of(double value) => double.IsFinite(value) ? JsonValue.Create(value) : JsonValue.Create(value.ToString(CultureInfo.InvariantCulture));
}

/// <summary>A worker's accounted memory passed <see cref="TrainerOptions.MaxMemoryBytes"/>; every worker's account is attached.</summary>
public sealed class MemoryBudgetExceededException(string message, long step, long budget, IReadOnlyList<MemorySnapshot> workers) : Exception(message)
{
    /// <summary>The step after which the budget was found passed.</summary>
    public long Step { get; } = step;

    public long Budget { get; } = budget;

    /// <summary>Every worker's account (current and peak bytes per category), by worker.</summary>
    public IReadOnlyList<MemorySnapshot> Workers { get; } = workers;
}

/// <summary>The trainer's handling of non-finite values, loss spikes and memory budgets.</summary>
public sealed partial class Trainer
{
    /// <summary>Steps whose update was skipped (non-finite values under <see cref="NonFinitePolicy.Skip"/>, or loss spikes).</summary>
    public long SkippedSteps { get; private set; }

    /// <summary>The last checkpoint saved or resumed from, and its step; null before there is one.</summary>
    public (string Path, long Step)? LastCheckpoint { get; private set; }

    /// <summary>
    /// Stops the run when any worker's accounted peak passed the budget: every process holds every worker's account
    /// after the step's exchange, so every process stops at the same step.
    /// </summary>
    private void CheckMemoryBudget(WorkerStepResult[] results)
    {
        if (_options.MaxMemoryBytes is not { } budget) return;
        int worst = Array.FindIndex(results, r => r.Memory.PeakTotal > budget);
        if (worst < 0) return;
        var memory = results.Select(r => r.Memory).ToList();
        var peak = memory[worst];
        var largest = Enum.GetValues<MemoryCategory>().MaxBy(peak.PeakBytes);
        throw new MemoryBudgetExceededException(
            $"step {Step}: worker {worst}'s accounted memory peaked at {MemorySnapshot.FormatBytes(peak.PeakTotal)}, over the budget of {MemorySnapshot.FormatBytes(budget)} per worker (largest category: {largest}, {MemorySnapshot.FormatBytes(peak.PeakBytes(largest))})",
            Step, budget, memory);
    }

    private static string? SkipReason(StepDecision decision) => decision switch
    {
        StepDecision.SkipNonFinite => "non-finite",
        StepDecision.SkipSpike => "spike",
        _ => null,
    };

    /// <summary>
    /// Writes the diagnostic record of a step that went non-finite (when <see cref="TrainerOptions.DiagnosticsPath"/> is
    /// set) and returns the exception that stops the run, its message one line.
    /// </summary>
    private NonFiniteException AbortOnNonFinite(WorkerStepResult[] results, double lr)
    {
        long step = Step + 1;
        var local = _workers.Select(w => results[w.Rank]).ToList();
        // Causes before effects: bad data or weights make bad gradients, which the gradient sync spreads to other holders.
        var found = local.SelectMany(r => r.NonFinite ?? []).OrderBy(f => Array.IndexOf(NonFiniteTensor.Kinds, f.Kind)).ToList();
        // Weights that are not finite now were saved by a checkpoint of the step just completed: the good one is the
        // newest kept before it (--keep-last), if any.
        bool badWeightsSaved = LastCheckpoint?.Step == Step && found.Any(f => f.Kind == "weight");
        var good = !badWeightsSaved ? LastCheckpoint
            : LastCheckpoint is { } saved && SdpCheckpoint.History(saved.Path).FirstOrDefault(h => h.Step < Step) is { Directory: not null } kept ? (kept.Directory, kept.Step) : null;
        var record = new JsonObject
        {
            ["step"] = step,
            ["reason"] = "the loss or the gradient norm is not finite",
            ["learning_rate"] = lr,
            ["grad_norm"] = JsonNumbers.Of(local[0].Norm),
            ["losses"] = new JsonArray([.. _workers.Select(w => new JsonObject { ["worker"] = w.Rank, ["loss"] = JsonNumbers.Of(results[w.Rank].Loss) })]),
            ["non_finite_tensors"] = new JsonArray([.. found.Select(f => new JsonObject
            {
                ["worker"] = f.Worker, ["kind"] = f.Kind, ["name"] = f.Name, ["non_finite"] = f.NonFinite, ["elements"] = f.Elements, ["first"] = JsonNumbers.Of(f.FirstValue),
            })]),
            ["last_checkpoint"] = LastCheckpoint is { } c ? new JsonObject { ["path"] = c.Path, ["step"] = c.Step, ["holds_these_weights"] = badWeightsSaved } : null,
            ["last_good_checkpoint"] = good is { } g ? new JsonObject { ["path"] = g.Path, ["step"] = g.Step } : null,
        };
        string? path = _options.DiagnosticsPath;
        if (path is not null)
            AtomicFile.Write(path, stream => JsonSerializer.Serialize(stream, record, new JsonSerializerOptions { WriteIndented = true }));
        var badLosses = _workers.Where(w => !double.IsFinite(results[w.Rank].Loss)).Select(w => $"worker {w.Rank} loss {results[w.Rank].Loss.ToString(CultureInfo.InvariantCulture)}").ToList();
        string cause = found.Count > 0 ? $"first non-finite tensor: {found[0]}"
            : badLosses.Count > 0 ? string.Join(", ", badLosses)
            : "another process's worker went non-finite";
        string checkpoint = good is { } best ? $"last good checkpoint: {best.Path} (step {best.Step})"
            : badWeightsSaved ? $"no good checkpoint: {LastCheckpoint!.Value.Path} (step {Step}) holds these weights"
            : "no checkpoint saved yet";
        string where = path is null ? "" : $"; record: {path}";
        return new NonFiniteException($"step {step}: the loss or gradient norm is not finite ({cause}); {checkpoint}{where}", step, path);
    }
}
