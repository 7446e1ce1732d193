using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Engine.Optim;

namespace Sdp.Models.Checkpoints;

/// <summary>
/// The parts of a training run's state that are neither tensors nor optimizer settings, as saved in a
/// training checkpoint's state.json. <see cref="DataLoader"/> and <see cref="Options"/> are opaque to
/// the checkpoint: whatever JSON object the caller supplies comes back unchanged.
/// </summary>
public sealed class TrainingState
{
    /// <summary>Completed training steps.</summary>
    public long Step { get; init; }

    /// <summary>The step index the learning-rate schedule is evaluated at next (usually the optimizer's StepCount).</summary>
    public long LrSchedulePosition { get; init; }

    /// <summary>Every random generator's <see cref="Rng.State"/> by a name of the caller's choosing ("init", "data", "dropout").</summary>
    public IReadOnlyDictionary<string, ulong[]> RngStates { get; init; } = new Dictionary<string, ulong[]>();

    /// <summary>Where the data loader is (epoch, batch, shuffle order...), as the loader describes itself.</summary>
    public JsonObject? DataLoader { get; init; }

    /// <summary>The training options the run was started with.</summary>
    public JsonObject? Options { get; init; }

    /// <summary>The losses the trainer's spike detector remembers, oldest first (null: it keeps none), so a resumed run judges spikes as the uninterrupted one.</summary>
    public IReadOnlyList<double>? LossWindow { get; init; }
}

/// <summary>
/// An optimizer's kind, learning rate, step count and hyperparameters, as saved in a training
/// checkpoint, from which the same optimizer can be rebuilt before its state is loaded.
/// Hyperparameter keys: AdamW "beta1", "beta2", "eps", "weight_decay"; Sgd "momentum", "dampening",
/// "nesterov" (1 or 0), "weight_decay".
/// </summary>
public sealed record OptimizerSnapshot(string Kind, double LearningRate, long StepCount, IReadOnlyDictionary<string, double> Hyperparameters)
{
    public static OptimizerSnapshot Of(Optimizer optimizer)
    {
        ArgumentNullException.ThrowIfNull(optimizer);
        return optimizer switch
        {
            AdamW a => new OptimizerSnapshot(nameof(AdamW), a.LearningRate, a.StepCount, new Dictionary<string, double>
            {
                ["beta1"] = a.Beta1,
                ["beta2"] = a.Beta2,
                ["eps"] = a.Eps,
                ["weight_decay"] = a.WeightDecay,
            }),
            Sgd s => new OptimizerSnapshot(nameof(Sgd), s.LearningRate, s.StepCount, new Dictionary<string, double>
            {
                ["momentum"] = s.Momentum,
                ["dampening"] = s.Dampening,
                ["nesterov"] = s.Nesterov ? 1 : 0,
                ["weight_decay"] = s.WeightDecay,
            }),
            _ => throw new NotSupportedException($"training checkpoints support AdamW and Sgd, not {optimizer.GetType().Name}"),
        };
    }

    /// <summary>
    /// A new optimizer of this kind over <paramref name="parameters"/> with these hyperparameters and
    /// learning rate; its state and step count are restored by <see cref="TrainingCheckpoint.Load"/>.
    /// </summary>
    public Optimizer Create(IReadOnlyList<Tensor> parameters) => Kind switch
    {
        nameof(AdamW) => new AdamW(parameters, LearningRate, Get("beta1"), Get("beta2"), Get("eps"), Get("weight_decay")),
        nameof(Sgd) => new Sgd(parameters, LearningRate, Get("momentum"), Get("dampening"), Get("nesterov") != 0, Get("weight_decay")),
        _ => throw new NotSupportedException($"training checkpoints support AdamW and Sgd, not {Kind}"),
    };

    private double Get(string key)
        => Hyperparameters.TryGetValue(key, out var v) ? v : throw new KeyNotFoundException($"{Kind} snapshot has no hyperparameter '{key}'");

    /// <summary>
    /// Why <see cref="Create"/> and a checkpoint load would refuse this snapshot (a kind other than AdamW or Sgd, a
    /// hyperparameter missing or out of the optimizer's range, a learning rate that is not finite and &gt;= 0, a negative
    /// step count), in one line; null when they would not. Readers of saved snapshots call it, so a bad value is reported
    /// against the file it came from.
    /// </summary>
    public string? Problem()
    {
        string[]? keys = Kind switch
        {
            nameof(AdamW) => ["beta1", "beta2", "eps", "weight_decay"],
            nameof(Sgd) => ["momentum", "dampening", "nesterov", "weight_decay"],
            _ => null,
        };
        if (keys is null) return $"kind '{Kind}' is not {nameof(AdamW)} or {nameof(Sgd)}";
        foreach (string key in keys)
        {
            if (!Hyperparameters.ContainsKey(key)) return $"{Kind} hyperparameter '{key}' is missing";
        }
        if (StepCount < 0) return $"step count {StepCount} is negative";
        if (Kind == nameof(Sgd) && Get("nesterov") is not (0 or 1)) return $"Sgd hyperparameter 'nesterov' is {Get("nesterov")}, expected 1 (on) or 0 (off)";
        try
        {
            Optimizer.CheckLearningRate(LearningRate, Kind);
            if (Kind == nameof(AdamW)) AdamW.CheckHyperparameters(Get("beta1"), Get("beta2"), Get("eps"), Get("weight_decay"));
            else Sgd.CheckHyperparameters(Get("momentum"), Get("dampening"), Get("nesterov") != 0, Get("weight_decay"));
        }
        catch (ArgumentException e)
        {
            // One line: the rule, without the runtime's "(Parameter 'x')" and "Actual value was" lines, and the value.
            string rule = e.Message.Split('\n')[0];
            if (e.ParamName is { } name && rule.IndexOf($" (Parameter '{name}')", StringComparison.Ordinal) is var at and >= 0) rule = rule[..at];
            return e is ArgumentOutOfRangeException { ActualValue: { } value } ? $"{rule}, got {value}" : rule;
        }
        return null;
    }
}

/// <summary>What a training checkpoint holds besides the tensors.</summary>
public sealed record TrainingCheckpointInfo(string Directory, TrainingState State, OptimizerSnapshot Optimizer, string? ModelConfig);
