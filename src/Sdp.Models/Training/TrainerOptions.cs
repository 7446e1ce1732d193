using System.Diagnostics;
using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Models.Checkpoints;
using Sdp.Models.Data;

namespace Sdp.Models.Training;

/// <summary>How long to train and what to do along the way.</summary>
public sealed record TrainerOptions
{
    public required long Steps { get; init; }

    public required ILrSchedule Schedule { get; init; }

    /// <summary>Global gradient-norm clip; 0 or less disables clipping (the norm is still measured).</summary>
    public double Clip { get; init; }

    /// <summary>
    /// Evaluate every K steps (0 = only at the end, when an evaluation source is given). Every evaluation
    /// reads the same <see cref="EvalBatches"/> batches: the evaluation source is rewound to where it stood
    /// when the trainer was built, so losses at different steps (and in resumed runs) are comparable.
    /// </summary>
    public int EvalEvery { get; init; }

    public int EvalBatches { get; init; } = 8;

    /// <summary>Where to save: a directory gets the full training state, a *.safetensors path the model only.</summary>
    public string? SavePath { get; init; }

    /// <summary>Save every K steps as well as at the end (0 = only at the end).</summary>
    public int SaveEvery { get; init; }

    /// <summary>Opaque options stored in training checkpoints.</summary>
    public JsonObject? RunOptions { get; init; }

    /// <summary>
    /// The loop both trainers share: step until <see cref="Steps"/>, evaluating and saving every K steps as
    /// configured, then evaluating and saving once more at the end.
    /// </summary>
    internal void RunLoop(Func<long> step, Action trainStep, Action? evaluate, Action<string> save)
    {
        while (step() < Steps)
        {
            trainStep();
            long done = step();
            if (evaluate is not null && EvalEvery > 0 && done % EvalEvery == 0 && done < Steps) evaluate();
            if (SavePath is not null && SaveEvery > 0 && done % SaveEvery == 0 && done < Steps) save(SavePath);
        }
        evaluate?.Invoke();
        if (SavePath is not null) save(SavePath);
    }
}

/// <summary>What one optimizer step did.</summary>
public sealed record StepMetrics(long Step, double Loss, double LearningRate, double GradNorm, double StepMs, double ItemsPerSecond, string ItemUnit, MemorySnapshot Memory);

/// <summary>An evaluation over some batches.</summary>
public sealed record EvalMetrics(long Step, double MeanLoss, long Count, double? Accuracy)
{
    public double Perplexity => Math.Exp(MeanLoss);
}

/// <summary>
/// The single-worker training loop: data → loss → backward → clip → step, with scheduled learning
/// rate, periodic evaluation and atomic checkpoints, reporting through events. Every step runs in
/// its own <see cref="TensorScope"/>, so nothing but parameters, gradients and optimizer state
/// survives it, and all allocations are charged to <see cref="Account"/>.
/// </summary>
public sealed class Trainer
{
    private readonly ITrainable _model;
    private readonly Optimizer _optimizer;
    private readonly IBatchSource _train;
    private readonly IBatchSource? _eval;
    private readonly DataLoaderState? _evalStart;
    private readonly TrainerOptions _options;

    public Trainer(ITrainable model, Optimizer optimizer, IBatchSource train, TrainerOptions options, MemoryAccount account, IBatchSource? eval = null)
    {
        if (options.Steps < 0) throw new ArgumentException($"trainer: steps must be >= 0, got {options.Steps}");
        (_model, _optimizer, _train, _options, Account, _eval) = (model, optimizer, train, options, account, eval);
        _evalStart = eval?.State;
    }

    public MemoryAccount Account { get; }

    /// <summary>Completed steps.</summary>
    public long Step { get; private set; }

    public event Action<StepMetrics>? StepCompleted;

    public event Action<EvalMetrics>? Evaluated;

    public event Action<string>? Saved;

    /// <summary>Trains from <see cref="Step"/> up to the configured number of steps.</summary>
    public void Run()
    {
        using var _ = Account.Activate();
        _options.RunLoop(() => Step, () => TrainStep(), _eval is null ? null : () => Evaluated?.Invoke(EvaluateHeldOut(_eval)), Save);
    }

    /// <summary>The periodic evaluation: always the same batches, from where the evaluation source started.</summary>
    private EvalMetrics EvaluateHeldOut(IBatchSource eval)
    {
        eval.State = _evalStart!;
        return Evaluate(eval, _options.EvalBatches);
    }

    public StepMetrics TrainStep()
    {
        using var _ = Account.Activate();
        var clock = Stopwatch.StartNew();
        _optimizer.LearningRate = _options.Schedule.LearningRate(Step);
        double loss, gradNorm;
        long items;
        using (TensorScope.Begin())
        {
            var (inputs, targets) = _train.NextBatch();
            items = _model.ItemsIn(inputs);
            var lossTensor = _model.Loss(inputs, targets);
            loss = lossTensor.Item();
            lossTensor.Backward();
        }
        var parameters = _model.Module.Parameters();
        gradNorm = GradClip.ClipGlobalNorm(parameters, _options.Clip > 0 ? _options.Clip : double.PositiveInfinity);
        // A non-finite gradient would poison the weights and the optimizer moments for good: skip the
        // update (the step still counts, and its NaN/inf grad_norm is reported in the metrics).
        if (double.IsFinite(gradNorm)) _optimizer.Step();
        _optimizer.ZeroGrad();
        Step++;
        double ms = clock.Elapsed.TotalMilliseconds;
        var metrics = new StepMetrics(Step, loss, _optimizer.LearningRate, gradNorm, ms, items / (ms / 1000), _model.ItemUnit, Account.Snapshot());
        StepCompleted?.Invoke(metrics);
        return metrics;
    }

    /// <summary>Mean loss (and accuracy for classifiers) over <paramref name="batches"/> batches, in eval mode.</summary>
    public EvalMetrics Evaluate(IBatchSource data, int batches)
    {
        using var _ = Account.Activate();
        return Evaluate(_model, data, batches, Step);
    }

    /// <summary>Evaluates <paramref name="model"/> with grad mode off and the module in eval mode (restored afterwards).</summary>
    public static EvalMetrics Evaluate(ITrainable model, IBatchSource data, int batches, long step = 0)
    {
        using var noGrad = GradMode.Disable();
        bool wasTraining = model.Module.IsTraining;
        model.Module.Eval();
        try
        {
            double lossSum = 0;
            long count = 0, correct = 0;
            bool classifier = false;
            for (int b = 0; b < batches; b++)
            {
                using var scope = TensorScope.Begin();
                var (inputs, targets) = data.NextBatch();
                var e = model.Evaluate(inputs, targets);
                lossSum += e.LossSum;
                count += e.Count;
                if (e.Correct is { } c)
                {
                    classifier = true;
                    correct += c;
                }
            }
            return new EvalMetrics(step, lossSum / Math.Max(1, count), count, classifier ? correct / (double)Math.Max(1, count) : null);
        }
        finally
        {
            model.Module.Train(wasTraining);
        }
    }

    /// <summary>Writes the model (a *.safetensors path) or the full training state (a directory), atomically.</summary>
    public void Save(string path)
    {
        if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            ModuleCheckpoint.Save(_model.Module, path, new Dictionary<string, string> { [TrainingCheckpoint.ConfigMetadataKey] = _model.ConfigJson });
        }
        else
        {
            var state = new TrainingState
            {
                Step = Step,
                LrSchedulePosition = Step,
                DataLoader = DataStateJson(_train.State),
                Options = _options.RunOptions?.DeepClone().AsObject(),
            };
            TrainingCheckpoint.Save(path, _model.Module, _optimizer, state, _model.ConfigJson);
        }
        Saved?.Invoke(path);
    }

    /// <summary>Restores the model, optimizer, step and data position saved by <see cref="Save"/> in a directory.</summary>
    public TrainingCheckpointInfo Resume(string directory)
    {
        using var _ = Account.Activate();
        var info = TrainingCheckpoint.Load(directory, _model.Module, _optimizer);
        Step = info.State.Step;
        if (info.State.DataLoader is { } data) _train.State = DataStateFromJson(data, directory);
        return info;
    }

    internal static JsonObject DataStateJson(DataLoaderState s) => new() { ["epoch"] = s.Epoch, ["shard"] = s.Shard, ["batch"] = s.Batch };

    internal static DataLoaderState DataStateFromJson(JsonObject o, string where)
    {
        try
        {
            return new DataLoaderState(o["epoch"]!.GetValue<long>(), o["shard"]!.GetValue<int>(), o["batch"]!.GetValue<long>());
        }
        catch (Exception e) when (e is NullReferenceException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"training checkpoint '{where}': state.json data_loader must hold integer epoch, shard and batch");
        }
    }
}
