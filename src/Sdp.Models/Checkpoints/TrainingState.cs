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
}

/// <summary>What a training checkpoint holds besides the tensors.</summary>
public sealed record TrainingCheckpointInfo(string Directory, TrainingState State, OptimizerSnapshot Optimizer, string? ModelConfig);
