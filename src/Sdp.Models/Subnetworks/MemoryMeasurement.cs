using System.Globalization;
using Sdp.Engine;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Data;
using Sdp.Models.Training;

namespace Sdp.Models.Subnetworks;

/// <summary>Peak bytes per category that one measured training step reached on one worker.</summary>
public sealed record MeasuredMemory(CategoryBytes Peaks, long WorkspacePeak, long PeakTotal)
{
    /// <summary>The peaks of a <see cref="MemoryAccount"/> snapshot (what the SDP runtime reports per worker).</summary>
    public static MeasuredMemory From(MemorySnapshot s)
    {
        ArgumentNullException.ThrowIfNull(s);
        return new MeasuredMemory(
            new CategoryBytes(s.PeakBytes(MemoryCategory.Parameters), s.PeakBytes(MemoryCategory.Gradients), s.PeakBytes(MemoryCategory.OptimizerState), s.PeakBytes(MemoryCategory.Activations)),
            s.PeakBytes(MemoryCategory.Workspace), s.PeakTotal);
    }
}

/// <summary>Random inputs of a workload's shape (token ids below the vocabulary, or images and labels).</summary>
public sealed class SyntheticBatches(MemoryWorkload workload, ulong seed = 0) : IBatchSource
{
    private readonly Rng _rng = new(seed);

    public DataLoaderState State { get; set; } = DataLoaderState.Start;

    public (Tensor Inputs, Tensor Targets) NextBatch()
    {
        switch (workload)
        {
            case LlamaWorkload l:
            {
                int n = l.Batch * l.SeqLen;
                var ids = new int[n];
                var targets = new int[n];
                for (int i = 0; i < n; i++) (ids[i], targets[i]) = (_rng.NextInt(l.Config.VocabSize), _rng.NextInt(l.Config.VocabSize));
                var shape = new Shape(l.Batch, l.SeqLen);
                return (Tensor.FromArray(ids, shape), Tensor.FromArray(targets, shape));
            }
            case ResNetWorkload r:
            {
                var shape = new Shape(r.Batch, r.Config.InChannels, r.ImageSize, r.ImageSize);
                var labels = new int[r.Batch];
                for (int i = 0; i < labels.Length; i++) labels[i] = _rng.NextInt(r.Config.NumClasses);
                return (Tensor.Randn(shape, _rng), Tensor.FromArray(labels, new Shape(r.Batch)));
            }
            default:
                throw new ArgumentException($"SyntheticBatches: unsupported workload {workload.GetType().Name}");
        }
    }
}

/// <summary>
/// Runs one real training step (loss, backward, optimizer update through the <see cref="Trainer"/>) in a
/// fresh <see cref="MemoryAccount"/> and reports the peak bytes per category, to compare with
/// <see cref="MemoryModel"/>.
/// </summary>
public static class MemoryMeasurement
{
    /// <summary>The dense model of <paramref name="workload"/> (data parallelism: one worker's step).</summary>
    public static MeasuredMemory MeasureDenseStep(MemoryWorkload workload, OptimizerMemory optimizer, ulong seed = 0)
    {
        ArgumentNullException.ThrowIfNull(workload);
        return MeasureStep(() => Build(workload, seed), new SyntheticBatches(workload, seed), optimizer);
    }

    /// <summary>
    /// One real SDP worker: worker <paramref name="worker"/> of the plan for <paramref name="variant"/> builds
    /// exactly what the <see cref="Trainer"/> gives it (its subnetwork under forward masking; the dense
    /// model with held-slice gradients under backward masking) and runs one step on its own. Communication
    /// is skipped: its buffers are transient workspace, which the model does not cover, and the other
    /// workers need not exist, so a large model is measured one worker at a time.
    /// </summary>
    public static MeasuredMemory MeasureSdpWorker(MemoryWorkload workload, OptimizerMemory optimizer, int workers, SdpVariant variant, int worker)
    {
        ArgumentNullException.ThrowIfNull(workload);
        ArgumentNullException.ThrowIfNull(variant);
        var model = ModelOf(workload, variant.Level, variant.SubnetOptions, variant.Seed);
        var plan = SubnetworkPlan.Create(model.Units, workers, variant.Coverage, variant.Seed);
        var layout = new WorkerLayout(model.Units, plan, worker);
        return MeasureStep(() =>
        {
            if (variant.Masking == Masking.Forward) return model.Build(layout.HeldUnits);
            var dense = model.Build(null);
            SubnetworkTensors.ApplyBackwardMasking(dense.Module, layout);
            return dense;
        }, new SyntheticBatches(workload, variant.Seed), optimizer);
    }

    /// <summary>The dense model of a workload, initialised from <paramref name="seed"/> as training builds it.</summary>
    public static ITrainable Build(MemoryWorkload workload, ulong seed = 0)
    {
        ArgumentNullException.ThrowIfNull(workload);
        return ModelOf(workload, SubnetLevel.Block, new SubnetOptions(), seed).Build(null);
    }

    private static SubnetworkModel ModelOf(MemoryWorkload workload, SubnetLevel level, SubnetOptions options, ulong seed) => workload switch
    {
        LlamaWorkload l => SubnetworkModels.Llama(l.Config, level, options, seed),
        ResNetWorkload r => SubnetworkModels.ResNet18(r.Config, level, options, seed),
        _ => throw new ArgumentException($"MemoryMeasurement: unsupported workload {workload.GetType().Name}"),
    };

    /// <summary>
    /// Builds the model with <paramref name="build"/> inside a fresh account (so its parameters are charged
    /// there), optimizes the parameters that require a gradient, runs one step and returns the peaks.
    /// </summary>
    public static MeasuredMemory MeasureStep(Func<ITrainable> build, IBatchSource data, OptimizerMemory optimizer)
    {
        ArgumentNullException.ThrowIfNull(build);
        ArgumentNullException.ThrowIfNull(data);
        var account = new MemoryAccount("measure");
        using (account.Activate())
        {
            using var model = build();
            var trained = model.Module.Parameters().Where(p => p.RequiresGrad).ToList();
            const double lr = 1e-3;
            using Optimizer opt = optimizer switch
            {
                OptimizerMemory.AdamW => new AdamW(trained, lr),
                OptimizerMemory.SgdMomentum => new Sgd(trained, lr, momentum: 0.9),
                _ => new Sgd(trained, lr),
            };
            using var trainer = new Trainer(model, opt, data, new TrainerOptions { Steps = 1, Schedule = new ConstantSchedule(lr) }, account);
            return MeasuredMemory.From(trainer.TrainStep().Workers[0].Memory);
        }
    }
}

/// <summary>Measured-versus-model tables, shared by `sdp memory --measure` and the SDP runtime.</summary>
public static class MemoryReport
{
    /// <summary>Relative error (measured − model) / model; 0 when both are 0.</summary>
    public static double RelativeError(long model, long measured) => model == 0 ? (measured == 0 ? 0 : double.PositiveInfinity) : (double)(measured - model) / model;

    /// <summary>
    /// One line per category: model bytes, measured peak bytes, relative error; then the total and the
    /// measured workspace peak (not modelled). <paramref name="title"/> heads the table.
    /// </summary>
    public static IReadOnlyList<string> ComparisonTable(string title, CategoryBytes model, MeasuredMemory measured)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(measured);
        var inv = CultureInfo.InvariantCulture;
        var m = measured.Peaks;
        var lines = new List<string> { title, string.Format(inv, "  {0,-16} {1,14} {2,14} {3,9}", "category", "model", "measured", "error") };
        void Row(string name, long a, long b) => lines.Add(string.Format(inv, "  {0,-16} {1,14} {2,14} {3,9}", name, Bytes(a), Bytes(b), Percent(RelativeError(a, b), signed: true)));
        Row("parameters", model.Parameters, m.Parameters);
        Row("gradients", model.Gradients, m.Gradients);
        Row("optimizer", model.OptimizerState, m.OptimizerState);
        Row("activations", model.Activations, m.Activations);
        Row("total (peaks)", model.Total, m.Total);
        lines.Add(string.Format(inv, "  {0,-16} {1,14} {2,14} {3,9}", "workspace", "not modelled", Bytes(measured.WorkspacePeak), ""));
        lines.Add(string.Format(inv, "  {0,-16} {1,14} {2,14} {3,9}", "peak (all)", "", Bytes(measured.PeakTotal), ""));
        return lines;
    }

    /// <summary>Bytes in binary units with two decimals ("12.34 MiB").</summary>
    public static string Bytes(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        double b = bytes;
        int u = 0;
        while (Math.Abs(b) >= 1024 && u < units.Length - 1)
        {
            b /= 1024;
            u++;
        }
        return u == 0 ? string.Create(CultureInfo.InvariantCulture, $"{bytes} B") : string.Create(CultureInfo.InvariantCulture, $"{b:0.00} {units[u]}");
    }

    /// <summary>A fraction as a percentage with one decimal ("31.7%", or "+1.2%" when signed).</summary>
    public static string Percent(double fraction, bool signed = false)
        => double.IsFinite(fraction) ? (fraction * 100).ToString(signed ? "+0.0;-0.0;0.0" : "0.0", CultureInfo.InvariantCulture) + "%" : "n/a";
}
