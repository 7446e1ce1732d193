using System.Diagnostics;
using System.Globalization;
using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Subnetworks;

namespace Sdp.Models.Training;

/// <summary>
/// What one worker trains: DP (<see cref="Level"/> null: the dense model, everything held) or an SDP variant, a
/// subnetwork level and masking at coverage <see cref="Coverage"/>.
/// </summary>
public readonly record struct StepVariant(SubnetLevel? Level, Masking Masking, double Coverage)
{
    /// <summary>Standard data parallelism: the dense model.</summary>
    public static StepVariant Dp { get; } = new(null, Masking.Forward, 1);

    public bool IsDp => Level is null;

    /// <summary>"dp", or the level and masking: "neuron, forward", "block, backward".</summary>
    public string Name => Level is null ? "dp" : $"{SubnetworkPlan.LevelName(Level.Value)}, {(Masking == Masking.Forward ? "forward" : "backward")}";

    /// <summary>DP first, then neuron and block level, each with forward and backward masking, each at every coverage.</summary>
    public static IEnumerable<StepVariant> All(IEnumerable<double> coverages)
    {
        ArgumentNullException.ThrowIfNull(coverages);
        var cs = coverages.ToArray();
        yield return Dp;
        foreach (var level in new[] { SubnetLevel.Neuron, SubnetLevel.Block })
            foreach (var masking in new[] { Masking.Forward, Masking.Backward })
                foreach (double c in cs)
                    yield return new StepVariant(level, masking, c);
    }

    /// <summary>"dp", or "neuron fwd C=0.5" (what a benchmark table shows as the parameter's value).</summary>
    public override string ToString() => Level is null ? "dp"
        : string.Create(CultureInfo.InvariantCulture, $"{SubnetworkPlan.LevelName(Level.Value)} {(Masking == Masking.Forward ? "fwd" : "bwd")} C={Coverage:0.###}");
}

/// <summary>
/// One worker's training step (forward, backward, AdamW update) prepared to run by itself: worker 0 of a W-worker
/// plan for an SDP variant, or the dense model for DP. Workers of an in-process run are threads sharing the cores,
/// so their step times say little about one worker's work; this runs worker 0's step alone on all the threads,
/// without the gradient sync (a memory copy in one process). Under forward masking the worker runs its
/// subnetwork; under backward masking the dense model with gradients only for its held slices. `sdp bench step`
/// and the BenchmarkDotNet step suite both time this.
/// </summary>
public sealed class IsolatedWorkerStep : IDisposable
{
    private readonly MemoryAccount _account;
    private readonly IBackend _device;
    private readonly ITrainable _model;
    private readonly AdamW _optimizer;
    private readonly IBatchSource _data;

    private IsolatedWorkerStep(MemoryAccount account, IBackend device, ITrainable model, AdamW optimizer, IBatchSource data, StepVariant variant, double heldFraction)
        => (_account, _device, _model, _optimizer, _data, Variant, HeldFraction) = (account, device, model, optimizer, data, variant, heldFraction);

    public StepVariant Variant { get; }

    /// <summary>The worker's share d of the model's parameters (1 for DP).</summary>
    public double HeldFraction { get; }

    /// <summary>The account charged with the worker's model, optimizer state and every step's tensors.</summary>
    public MemoryAccount Account => _account;

    /// <summary>
    /// Builds worker 0's model and optimizer for <paramref name="variant"/>. <paramref name="model"/> must be cut at the
    /// variant's level (any level for DP, whose worker builds the dense model); <paramref name="data"/> is the worker's
    /// batches, read one per step. Everything lives and runs on <paramref name="device"/> (default: <see cref="DeviceScope.Current"/>).
    /// </summary>
    public static IsolatedWorkerStep Create(SubnetworkModel model, StepVariant variant, int workers, IBatchSource data, ulong planSeed = 0, IBackend? device = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(data);
        if (variant.Level is { } level && model.Units.Level != level)
            throw new ArgumentException($"IsolatedWorkerStep: the variant is {SubnetworkPlan.LevelName(level)} level but the model's units are {SubnetworkPlan.LevelName(model.Units.Level)} level");
        var layout = variant.IsDp ? null : new WorkerLayout(model.Units, SubnetworkPlan.Create(model.Units, workers, variant.Coverage, planSeed), 0);
        double held = HeldFractionOf(model.Units, variant, workers, planSeed);
        device ??= DeviceScope.Current;
        var account = new MemoryAccount($"isolated worker ({variant})");
        using var active = account.Activate();
        using var onDevice = DeviceScope.Use(device);
        bool forward = layout is not null && variant.Masking == Masking.Forward;
        ITrainable built;
        using (MemoryAccount.Use(MemoryCategory.Parameters)) built = model.Build(forward ? layout!.HeldUnits : null);
        try
        {
            IReadOnlyList<Tensor> trained = layout is not null && !forward
                ? SubnetworkTensors.ApplyBackwardMasking(built.Module, layout)
                : [.. built.Module.Parameters().Where(t => t.RequiresGrad)];
            return new IsolatedWorkerStep(account, device, built, new AdamW(trained, 1e-4), data, variant, held);
        }
        catch
        {
            built.Dispose();
            throw;
        }
    }

    /// <summary>Worker 0's share d of the parameters of a model with <paramref name="units"/> under <paramref name="variant"/> (1 for DP), from the plan alone.</summary>
    public static double HeldFractionOf(MaskableUnits units, StepVariant variant, int workers, ulong planSeed = 0)
    {
        ArgumentNullException.ThrowIfNull(units);
        if (variant.IsDp) return 1;
        var plan = SubnetworkPlan.Create(units, workers, variant.Coverage, planSeed);
        return plan.HeldParams(0) / (double)plan.TotalParams;
    }

    /// <summary>One step: the next batch, forward, backward, AdamW update, gradients dropped. Returns the loss.</summary>
    public double Run()
    {
        using var active = _account.Activate();
        using var onDevice = DeviceScope.Use(_device);
        double loss;
        using (TensorScope.Begin())
        {
            var (inputs, targets) = _data.NextBatch();
            var lossTensor = _model.Loss(inputs, targets);
            loss = lossTensor.Item();
            lossTensor.Backward();
        }
        _optimizer.Step();
        _optimizer.ZeroGrad();
        return loss;
    }

    /// <summary>The median milliseconds of <paramref name="samples"/> steps after <paramref name="warmup"/> untimed ones (JIT tiers, packing buffers, optimizer state).</summary>
    public double MedianMs(int samples, int warmup = 2)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(samples, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(warmup);
        for (int s = 0; s < warmup; s++) Run();
        var ms = new double[samples];
        for (int s = 0; s < samples; s++)
        {
            long start = Stopwatch.GetTimestamp();
            Run();
            ms[s] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
        Array.Sort(ms);
        return ms[samples / 2];
    }

    public void Dispose()
    {
        using var active = _account.Activate();
        _optimizer.Dispose();
        _model.Dispose();
    }
}
