using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Memory;
using Sdp.Engine.Nn;
using Sdp.Engine.Subnetworks;

namespace Sdp.Models.Training;

/// <summary>
/// The evaluation rules of SDP runs (<see cref="EvalRule"/>): what is evaluated (the assembled dense model, or
/// the ensemble of the workers' subnetworks) and how (residual branches scaled by their coverage, BatchNorm
/// statistics recalibrated). Rule (b), the training-time inverse scaling, is set on the workers' models here
/// when the trainer is built.
/// </summary>
public sealed partial class Trainer
{
    private EvalRule? _evaluation;

    /// <summary>
    /// The rule every evaluation follows: <see cref="SdpOptions.EvalRule"/>, or its default
    /// (<see cref="EvaluationRules.DefaultFor"/>), with <see cref="EvalRule.Recalibrate"/> whenever
    /// <see cref="TrainerOptions.BnRecalibration"/> gives recalibration batches.
    /// </summary>
    public EvalRule EvaluationRule => _evaluation ?? (_options.BnRecalibration is null ? EvalRule.Dense : EvalRule.Recalibrate);

    /// <summary>Accuracy and loss of every worker's own subnetwork in the last ensemble evaluation (by worker; null before one).</summary>
    public IReadOnlyList<EvalMetrics>? LastSubnetworkMetrics { get; private set; }

    /// <summary>
    /// Resolves and checks the evaluation rule once the workers exist (their models tell what the model can do),
    /// then applies rule (b) to the workers' models. Throws <see cref="ArgumentException"/> naming why a rule
    /// does not fit the run.
    /// </summary>
    private void SetUpEvaluation(JobRank? job)
    {
        var probe = _host ?? _workers[0].Model;
        bool hasBatchNorm = probe.Module.NamedModules().Any(m => m.Module is BatchNorm2d);
        var recalibration = _options.BnRecalibration;
        var rule = Options.EvalRule
            ?? EvaluationRules.DefaultFor(Options.Mode, Options.Level, Options.Masking, hasBatchNorm, probe is IResidualBranches) & (recalibration is null ? ~EvalRule.Recalibrate : ~EvalRule.Dense);
        if (recalibration is not null) rule |= EvalRule.Recalibrate;
        string name = EvaluationRules.Name(rule);
        if (rule.HasFlag(EvalRule.Recalibrate) && recalibration is null)
            throw new ArgumentException($"Trainer: evaluation rule {name} needs the recalibration batches (TrainerOptions.BnRecalibration)");
        if (EvaluationRules.Check(rule, Options.Mode, Options.Level, Options.Masking, hasBatchNorm, probe is IResidualBranches, probe is ILogitModel, job is not null) is { } why)
            throw new ArgumentException($"Trainer: evaluation rule {why}");
        _evaluation = rule;
        if (!rule.HasFlag(EvalRule.InverseScale)) return;
        // Inverted stochastic depth: a branch that is in the forward pass of a fraction p of the workers is
        // scaled by 1/p where it runs, so its expected contribution is that of the dense model's unscaled branch.
        foreach (var worker in _workers)
        {
            var branches = (IResidualBranches)worker.Model;
            for (int g = 0; g < Plan!.Groups.Count; g++)
                foreach (int u in worker.Layout!.HeldUnits[g]) branches.ScaleBranch(Plan.Groups[g].UnitLabel(u), 1.0 / Coverage(g, u));
        }
    }

    /// <summary>p_u: the fraction of the workers holding unit u of group g.</summary>
    private double Coverage(int group, int unit) => Plan!.HoldersOf(group, unit).Count / (double)Options.Workers;

    /// <summary>
    /// Rule (a): every unit's residual branch in <paramref name="dense"/> × its coverage p_u, as stochastic depth
    /// evaluates; disposing the result puts the factors back (the host's model is also the one saved).
    /// </summary>
    private BranchScales ScaleBranchesByCoverage(ITrainable dense)
    {
        var scales = new BranchScales((IResidualBranches)dense);
        for (int g = 0; g < Plan!.Groups.Count; g++)
            for (int u = 0; u < Plan.Groups[g].UnitCount; u++) scales.Set(Plan.Groups[g].UnitLabel(u), Coverage(g, u));
        return scales;
    }

    /// <summary>Branch factors set for a while: each unit's earlier factor comes back on disposal.</summary>
    private sealed class BranchScales(IResidualBranches model) : IDisposable
    {
        private readonly List<(string Unit, double Before)> _set = [];

        public void Set(string unit, double factor)
        {
            _set.Add((unit, model.BranchScale(unit)));
            model.ScaleBranch(unit, factor);
        }

        public void Dispose()
        {
            foreach (var (unit, before) in _set) model.ScaleBranch(unit, before);
            _set.Clear();
        }
    }

    /// <summary>
    /// Rule (d): each batch is read once and run through every worker's subnetwork on its device, in eval mode
    /// (after recalibrating each subnetwork's BatchNorm statistics when the rule says so); the mean of their
    /// logits, on the host's device, is scored. Each subnetwork's own score is kept in <see cref="LastSubnetworkMetrics"/>.
    /// Only the in-process trainer holds every subnetwork; a job's process is refused at construction.
    /// </summary>
    private EvalMetrics EvaluateEnsemble(IBatchSource data, int batches)
    {
        var scorer = (ILogitModel)_workers[0].Model;
        var restore = new List<IDisposable>();
        var wasTraining = _workers.Select(w => w.Model.Module.IsTraining).ToArray();
        try
        {
            if (EvaluationRule.HasFlag(EvalRule.Recalibrate))
            {
                foreach (var w in _workers)
                {
                    using var account = w.Account.Activate();
                    using var onDevice = DeviceScope.Use(w.Device);
                    if (RecalibrateBatchNorm(w.Model, _options.BnRecalibration!) is { } saved) restore.Add(saved);
                }
            }
            foreach (var w in _workers) w.Model.Module.Eval();
            using var noGrad = GradMode.Disable();
            using var active = DenseAccount.Activate();
            using var device = DeviceScope.Use(DenseDevice);
            var ensemble = new BatchEvaluation?[batches];
            var own = _workers.Select(_ => new BatchEvaluation?[batches]).ToArray();
            for (int b = 0; b < batches; b++)
            {
                using var scope = TensorScope.Begin();
                var (inputs, targets) = data.NextBatch();
                Tensor? sum = null;
                for (int i = 0; i < _workers.Length; i++)
                {
                    using var logits = WorkerLogits(_workers[i], inputs, targets, out own[i][b]);
                    sum = sum is null ? logits.Clone() : Ops.Add(sum, logits);
                }
                using var mean = Ops.Scale(sum!, 1.0 / _workers.Length);
                ensemble[b] = scorer.Score(mean, targets);
            }
            LastSubnetworkMetrics = [.. own.Select(results => Sum(results, Step))];
            return Sum(ensemble, Step);
        }
        finally
        {
            for (int i = 0; i < _workers.Length; i++) _workers[i].Model.Module.Train(wasTraining[i]);
            foreach (var saved in restore) saved.Dispose();
        }
    }

    /// <summary>Worker <paramref name="w"/>'s logits on the batch, computed on its device and returned on the current (host) device; <paramref name="own"/>: its own score.</summary>
    private static Tensor WorkerLogits(Worker w, Tensor inputs, Tensor targets, out BatchEvaluation? own)
    {
        var host = DeviceScope.Current;
        var model = (ILogitModel)w.Model;
        Tensor logits;
        using (w.Account.Activate())
        using (DeviceScope.Use(w.Device))
        {
            using var x = inputs.To(w.Device);
            using var y = targets.To(w.Device);
            logits = model.Logits(x);
            own = model.Score(logits, y);
        }
        using (logits)
        using (MemoryAccount.Use(MemoryCategory.Workspace))
        {
            return logits.To(host);
        }
    }
}
