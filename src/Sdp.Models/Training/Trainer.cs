using Sdp.Engine.Backends.Cuda;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Distributed;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Memory;
using Sdp.Engine.Profiling;
using Sdp.Engine.Nn;
using Sdp.Engine.Optim;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Checkpoints;
using Sdp.Models.Data;
using Sdp.Models.Subnetworks;

namespace Sdp.Models.Training;

/// <summary>
/// The training loop: W workers (one by default), data parallel (DP) or subnetwork data parallel (SDP, method
/// reference §2.5), with a scheduled learning rate, gradient clipping, periodic evaluation and atomic
/// checkpoints, reporting through events. Each worker has its own model copy (its subnetwork under forward
/// masking; the dense model with held-slice gradients under backward masking), optimizer over what it holds,
/// data stream and <see cref="MemoryAccount"/>; workers talk through an <see cref="InProcessCommunicator"/>,
/// one thread each (a single worker runs on the caller's thread). A step on every worker:
/// <code>
/// loss = L(subnetwork; own batch); backward              // dW only for held units
/// ĝ_u = mean of g_u over u's holders                      // one all-reduce per holder-set bucket
/// ‖ĝ‖² = all-reduce Σ_held ‖ĝ_u‖² / |H_u|; clip          // each parameter counted once (A14)
/// optimizer step on held parameters                       // weight decay once per parameter (A15)
/// BatchNorm buffers: mean over holders
/// backward masking: unheld units ← their lowest holder   // broadcast (§2.6 B1)
/// </code>
/// DP is the same loop with every tensor shared, and one DP worker is plain single-process training: there
/// is nothing to average, and the norm and clipping are <see cref="GradClip.ClipGlobalNorm"/>'s, bit for bit
/// (A5). Every step runs in its own <see cref="TensorScope"/>, so nothing but parameters, gradients and
/// optimizer state survives it. In DP every worker holds the same weights, so worker 0's model is the dense
/// model that is evaluated and saved; SDP keeps a dense copy on the host (its own account), assembled from
/// the holders for evaluation and saving (A18).
/// <para>
/// Two ways in: a <see cref="SubnetworkModel"/> with <see cref="SdpOptions"/>, from which the trainer builds
/// and owns every worker's model and optimizer; or one already-built model with its optimizer (W = 1 DP),
/// which stay the caller's.
/// </para>
/// </summary>
public sealed partial class Trainer : IDisposable
{
    private readonly SubnetworkModel? _model;
    private readonly TrainerOptions _options;
    private readonly IBatchSource? _eval;
    private readonly DataLoaderState? _evalStart;
    private readonly Worker[] _workers;

    /// <summary>SDP: the dense model, assembled from the holders. DP has none: worker 0's model is the dense model.</summary>
    private readonly ITrainable? _host;

    /// <summary>Where the host's dense model lives: the device current when the trainer was built.</summary>
    private readonly IBackend _hostDevice;

    /// <summary>Trains W workers built from <paramref name="model"/>.</summary>
    /// <param name="model">The model and its maskable units.</param>
    /// <param name="sdp">Workers, mode, level, masking, coverage.</param>
    /// <param name="optimizer">Makes a worker's optimizer over the parameters it trains.</param>
    /// <param name="trainData">Worker w's training batches (worker 0 of 1: single-process training's).</param>
    /// <param name="options">Steps, schedule, clipping, evaluation and saving.</param>
    /// <param name="eval">Held-out batches, evaluated on the dense model.</param>
    /// <param name="devices">
    /// Worker w's device: its model, optimizer state, batches and every step's tensors live there (later,
    /// worker w is GPU w). Null puts every worker on the device current where the trainer is built
    /// (<see cref="DeviceScope.Current"/>), which is also where the host's dense model always lives.
    /// </param>
    /// <param name="job">
    /// This process is one rank of a multi-process job (<see cref="JobRank"/>): it runs worker
    /// <c>job.Processes.Rank</c> only, of <see cref="SdpOptions.Workers"/> = the job's size, and takes part in the
    /// job's collectives. Null: every worker runs here, one thread each.
    /// </param>
    public Trainer(SubnetworkModel model, SdpOptions sdp, Func<IReadOnlyList<Tensor>, Optimizer> optimizer, Func<int, IBatchSource> trainData, TrainerOptions options, IBatchSource? eval = null,
        Func<int, IBackend>? devices = null, JobRank? job = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(sdp);
        ArgumentNullException.ThrowIfNull(optimizer);
        ArgumentNullException.ThrowIfNull(trainData);
        ArgumentNullException.ThrowIfNull(options);
        if (sdp.Workers < 1) throw new ArgumentException($"Trainer: workers must be at least 1, got {sdp.Workers}");
        (_model, Options, _options, _eval) = (model, sdp, CheckSteps(options), eval);
        _evalStart = eval?.State;
        _job = job?.CheckFits(sdp.Workers);
        int[] local = job is null ? [.. Enumerable.Range(0, sdp.Workers)] : [job.Processes.Rank];
        var workerDevices = local.Select(w => devices?.Invoke(w) ?? DeviceScope.Current).ToArray();
        if (options.Profile)
        {
            workerDevices = [.. workerDevices.Select((d, i) => d is CpuBackend ? new ProfilingBackend(new StepProfile()) : throw new ArgumentException(
                $"Trainer: profiling times CPU kernels, but worker {local[i]} runs on {d}"))];
            Profile = new TrainingProfile([.. workerDevices.Cast<ProfilingBackend>().Select(d => d.Profile)]);
        }
        // A process of a job keeps its dense model on its worker's device, where the job's collectives assemble it.
        _hostDevice = job is null ? DeviceScope.Current : workerDevices[0];
        // Through the data communicator: NCCL's Abort releases its communicators (ncclCommAbort) before MPI_Abort.
        _watchdog = job is null ? null : new Watchdog(sdp.CollectiveTimeout, reason => job.Communicator.Abort(reason));
        using var setup = Watch("setting up the workers");

        if (sdp.Mode == ParallelMode.Sdp)
        {
            if (model.Units.TensorBindings.Count == 0) throw new ArgumentException("Trainer: SDP needs the model's unit bindings (MaskableUnits.Bindings is empty)");
            Plan = SubnetworkPlan.Create(model.Units, sdp.Workers, sdp.Coverage, sdp.PlanSeed);
            HostAccount = new MemoryAccount("host");
            using (HostAccount.Activate())
            using (DeviceScope.Use(_hostDevice))
            using (MemoryAccount.Use(MemoryCategory.Parameters))
            {
                _host = model.Build(null);
            }
        }
        ICommunicator[] comms;
        if (job is null)
        {
            comms = CreateCommunicators(workerDevices, sdp.CollectiveTimeout);
        }
        else
        {
            comms = [job.Communicator];
            CommunicatorKind = job.Communicator is NcclCommunicator ? "NCCL, one process per worker" : "MPI, one process per worker";
        }
        _workers = new Worker[local.Length];
        try
        {
            // Every worker starts from rank 0's weights whatever the factory does (SDP: the host's; DP: worker 0's).
            if (_host is not null) BroadcastFromRankZero(_host.Module);
            for (int i = 0; i < local.Length; i++) _workers[i] = CreateWorker(local[i], workerDevices[i], comms[i], optimizer, trainData);
            if (_host is null) BroadcastFromRankZero(_workers[0].Model.Module);
            SetUpEvaluation(job);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>
    /// NCCL when every worker has a CUDA device of its own (one process driving several GPUs, or several emulated
    /// devices); otherwise the in-process communicator, which reduces across devices through peer copies (CPU
    /// workers, or several workers sharing one GPU).
    /// </summary>
    private ICommunicator[] CreateCommunicators(IBackend[] workerDevices, TimeSpan timeout)
    {
        if (workerDevices.Length > 1 && workerDevices.All(d => d is CudaBackend))
        {
            var cuda = workerDevices.Cast<CudaBackend>().ToArray();
            CommunicatorKind = NcclCommunicator.WhyNot(cuda) is { } why ? $"in-process ({why})" : "NCCL";
            if (CommunicatorKind == "NCCL") return NcclCommunicator.Create(cuda, timeout);
        }
        return InProcessCommunicator.Create(workerDevices.Length, timeout);
    }

    /// <summary>Where this process's workers spent their steps (<see cref="TrainerOptions.Profile"/>), or null when not profiling.</summary>
    public TrainingProfile? Profile { get; }

    /// <summary>How the workers exchange gradients: "in-process", "NCCL", or "in-process (why not NCCL)".</summary>
    public string CommunicatorKind { get; private set; } = "in-process";

    /// <summary>
    /// Trains one already-built model (W = 1 DP: single-process training). The model and the optimizer stay the
    /// caller's: the trainer neither copies nor disposes them, and <see cref="Resume"/> loads into them.
    /// </summary>
    /// <param name="model">The model; its parameters should be the optimizer's (or a superset, for frozen ones).</param>
    /// <param name="optimizer">The optimizer over the parameters to train.</param>
    /// <param name="train">Training batches.</param>
    /// <param name="options">Steps, schedule, clipping, evaluation and saving.</param>
    /// <param name="account">
    /// Charged with everything a step allocates (gradients, activations, optimizer state, workspace) and with
    /// evaluation; build the model under it (<see cref="MemoryAccount.Activate"/>) to have its parameters counted too.
    /// </param>
    /// <param name="eval">Held-out batches for the periodic evaluation.</param>
    public Trainer(ITrainable model, Optimizer optimizer, IBatchSource train, TrainerOptions options, MemoryAccount account, IBatchSource? eval = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(optimizer);
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(account);
        if (options.Profile) throw new ArgumentException("Trainer: profiling needs the trainer to build the model on a profiled device (the SubnetworkModel constructor)");
        (Options, _options, _eval) = (new SdpOptions(), CheckSteps(options), eval);
        _evalStart = eval?.State;
        // The model was built where it will train: its parameters name the device.
        _hostDevice = model.Module.Parameters().FirstOrDefault()?.Backend ?? DeviceScope.Current;
        using var active = account.Activate();
        using var device = DeviceScope.Use(_hostDevice);
        _workers = [Equip(0, null, model, optimizer, account, _hostDevice, InProcessCommunicator.Create(1)[0], train, owned: false)];
    }

    private static TrainerOptions CheckSteps(TrainerOptions options)
        => options.Steps >= 0 ? options : throw new ArgumentException($"Trainer: steps must be >= 0, got {options.Steps}");

    public SdpOptions Options { get; }

    /// <summary>The subnetwork plan (null in DP mode).</summary>
    public SubnetworkPlan? Plan { get; }

    /// <summary>SDP: charged with the host's dense model (initialisation, assembly, evaluation, saving), not with any worker. Null in DP, which keeps no host copy.</summary>
    public MemoryAccount? HostAccount { get; }

    /// <summary>Worker w's memory account.</summary>
    public MemoryAccount WorkerAccount(int worker) => Local(worker).Account;

    /// <summary>Worker w's model (its subnetwork under forward masking).</summary>
    public ITrainable WorkerModel(int worker) => Local(worker).Model;

    /// <summary>Worker w's optimizer.</summary>
    public Optimizer WorkerOptimizer(int worker) => Local(worker).Optimizer;

    /// <summary>Worker w's layout (null in DP mode).</summary>
    public WorkerLayout? WorkerLayout(int worker) => Local(worker).Layout;

    /// <summary>Collectives and bytes per step of the gradient sync alone (A20), per worker.</summary>
    public (int Collectives, double Bytes) GradientSyncCost(int worker) => (Local(worker).GradSync.CollectivesPerStep, Local(worker).GradSync.BytesPerStep);

    /// <summary>Worker w's communication counters (collectives, bytes, groups created).</summary>
    public CommStats WorkerCommStats(int worker) => Local(worker).Comm.Stats;

    /// <summary>Backward masking: parameter and buffer elements worker w receives per step from the holders of the units it lacks (0 otherwise).</summary>
    public long RefreshElementsReceived(int worker) => Local(worker).Refresh?.ElementsReceived ?? 0;

    /// <summary>The workers this process runs: all of them, or its own rank in a multi-process job.</summary>
    public IReadOnlyList<int> LocalWorkers => [.. _workers.Select(w => w.Rank)];

    private Worker Local(int worker)
        => _workers.FirstOrDefault(w => w.Rank == worker)
            ?? throw new ArgumentOutOfRangeException(nameof(worker), worker, $"Trainer: worker {worker} is not run by this process (it runs {string.Join(", ", LocalWorkers)} of {Options.Workers})");

    /// <summary>Completed steps.</summary>
    public long Step { get; private set; }

    public event Action<StepMetrics>? StepCompleted;

    public event Action<EvalMetrics>? Evaluated;

    public event Action<string>? Saved;

    /// <summary>
    /// Builds worker <paramref name="rank"/>'s model in its own account: its subnetwork (forward masking) or
    /// the dense model, with its weights copied from the host's dense model (SDP) or from worker 0 (DP), so
    /// every worker starts from the same weights whatever the factory does.
    /// </summary>
    private Worker CreateWorker(int rank, IBackend device, ICommunicator comm, Func<IReadOnlyList<Tensor>, Optimizer> makeOptimizer, Func<int, IBatchSource> trainData)
    {
        var account = new MemoryAccount($"worker {rank}");
        using var active = account.Activate();
        using var onDevice = DeviceScope.Use(device);
        var data = trainData(rank);
        var layout = Plan is null ? null : new WorkerLayout(_model!.Units, Plan, rank);
        bool forward = layout is not null && Options.Masking == Masking.Forward;
        ITrainable model;
        using (MemoryAccount.Use(MemoryCategory.Parameters))
        {
            model = _model!.Build(forward ? layout!.HeldUnits : null);
        }
        Optimizer? optimizer = null;
        try
        {
            if (forward) RequireSharedTensors(model, layout!);
            var source = _host ?? (rank > 0 && _workers[0] is { } first ? first.Model : null);
            if (source is not null) SubnetworkTensors.CopyFromDense(source.Module, model.Module, layout);
            var trained = layout is not null && !forward
                ? SubnetworkTensors.ApplyBackwardMasking(model.Module, layout)
                : [.. model.Module.NamedParameters().Select(p => p.Tensor).Where(t => t.RequiresGrad)];
            if (trained.Count == 0) throw new ArgumentException($"Trainer: worker {rank} trains no parameter");
            optimizer = makeOptimizer(trained);
            return Equip(rank, layout, model, optimizer, account, device, comm, data, owned: true);
        }
        catch
        {
            optimizer?.Dispose();
            model.Dispose();
            throw;
        }
    }

    /// <summary>A worker around its model and optimizer: the gradient sync over the optimizer's parameters, the buffer sync and (backward masking) the refresh.</summary>
    private Worker Equip(int rank, WorkerLayout? layout, ITrainable model, Optimizer optimizer, MemoryAccount account, IBackend device, ICommunicator comm, IBatchSource data, bool owned)
    {
        var trained = optimizer.Parameters;
        if (trained.Count == 0) throw new ArgumentException($"Trainer: worker {rank} trains no parameter");
        var names = new Dictionary<Tensor, string>(ReferenceEqualityComparer.Instance);
        foreach (var (name, p) in model.Module.NamedParameters()) names[p] = name;
        var gradEntries = trained.Select(p => names.TryGetValue(p, out var name) ? Entry(layout, name, p, SyncTarget.Gradient)
            : throw new ArgumentException($"Trainer: optimizer parameter {p.Name ?? "(unnamed)"} {p.Shape} is not a parameter of the model")).OfType<SyncParameter>().ToList();
        var buffers = model.Module.NamedBuffers().Where(b => b.Tensor.DType.IsFloatingPoint()).ToList();
        var bufferEntries = buffers.Select(b => Entry(layout, b.Name, b.Tensor, SyncTarget.Value)).OfType<SyncParameter>().ToList();
        UnitRefresh? refresh = null;
        if (layout is not null && Options.Masking == Masking.Backward)
        {
            var all = model.Module.NamedParameters().Concat(buffers).Select(t => layout.SyncEntry(t.Name, t.Tensor, SyncTarget.Value)).OfType<SyncParameter>().ToList();
            refresh = new UnitRefresh(all, comm, Options.BucketBytes);
        }
        // Every worker creates the groups of every holder set of the plan, in the same order (collective).
        var groups = new HolderGroups(comm, Plan is null ? [] : Enumerable.Range(0, Plan.Groups.Count).SelectMany(g => Enumerable.Range(0, Plan.Groups[g].UnitCount).Select(u => Plan.HoldersOf(g, u))));
        var gradSync = new HolderGroupedSync(gradEntries, groups, Options.BucketBytes);
        var bufferSync = bufferEntries.Count == 0 ? null : new HolderGroupedSync(bufferEntries, groups, Options.BucketBytes, SyncTarget.Value);
        return new Worker(rank, layout, model, optimizer, account, device, comm, data, groups, gradSync, bufferSync, refresh, owned, ownsComm: _job is null)
        {
            Spikes = _options.SkipSpikes > 0 ? new LossSpikeDetector(_options.SpikeWindow) : null,
        };
    }

    /// <summary>
    /// Every worker must have every shared tensor, or the shared gradient buckets would differ between
    /// workers. A subnetwork drops a shared pre-norm when it holds no unit of the sub-block behind it
    /// (e.g. no attention head of a layer with --mask-heads); such plans are refused, naming the cause.
    /// </summary>
    private void RequireSharedTensors(ITrainable model, WorkerLayout layout)
    {
        var present = SubnetworkTensors.Named(model.Module);
        foreach (var name in SubnetworkTensors.Named(_host!.Module).Keys)
        {
            if (layout.BindingOf(name) is not null || present.ContainsKey(name)) continue;
            var units = _model!.Units;
            var empty = Enumerable.Range(0, units.Groups.Count).Where(g => layout.HeldUnits[g].Length == 0).Select(g => units.Groups[g].Name).ToList();
            throw new ArgumentException(
                $"Trainer: worker {layout.Worker} holds no unit of {string.Join(", ", empty.DefaultIfEmpty("some group"))}, so its subnetwork lacks the shared tensor {name}; " +
                $"choose workers and coverage so that every worker holds at least one unit of every group (each group has {string.Join("/", units.Groups.Select(g => g.UnitCount).Distinct())} units, W = {Options.Workers}, C = {Options.Coverage})");
        }
    }

    private static SyncParameter? Entry(WorkerLayout? layout, string name, Tensor t, SyncTarget target)
        => layout is null ? new SyncParameter(t) : layout.SyncEntry(name, t, target);

    /// <summary>Trains from <see cref="Step"/> up to the configured number of steps, evaluating and saving as configured.</summary>
    public void Run()
    {
        _options.RunLoop(() => Step, () => TrainStep(), _eval is null ? null : batches => Evaluated?.Invoke(EvaluateHeldOut(_eval, batches)), Save);
    }

    /// <summary>One synchronous step of every worker.</summary>
    public StepMetrics TrainStep()
    {
        using var watch = Watch($"step {Step + 1}");
        var clock = Stopwatch.StartNew();
        double lr = _options.Schedule.LearningRate(Step);
        var results = new WorkerStepResult[Options.Workers];
        OnEveryWorker(w => results[w.Rank] = w.Step(lr, _options));
        // Every worker decided alike, from the all-reduced norm (and mean loss): this process's first worker speaks for all.
        var decision = results[_workers[0].Rank].Decision;
        if (decision == StepDecision.Abort) throw AbortOnNonFinite(results, lr);
        if (decision != StepDecision.Update) SkippedSteps++;
        Step++;
        // Every process learns every worker's result (a job's processes each ran one).
        results = ExchangeStepResults(results);
        CheckMemoryBudget(results);
        double ms = clock.Elapsed.TotalMilliseconds;
        double loss = 0;
        long items = 0;
        foreach (var r in results)
        {
            loss += r.Loss;
            items += r.Items;
        }
        loss /= results.Length;
        var perWorker = results.Select((r, w) => new WorkerStepMetrics(w, r.Loss, r.Memory, r.Bytes, r.Collectives)).ToArray();
        Profile?.StepDone(ms);
        var metrics = new StepMetrics(Step, loss, lr, results[0].Norm, ms, items / (ms / 1000), _workers[0].Model.ItemUnit, perWorker)
        {
            Skipped = SkipReason(decision), SkippedSteps = SkippedSteps,
        };
        StepCompleted?.Invoke(metrics);
        return metrics;
    }

    /// <summary>
    /// The dense model: in SDP the host's copy, assembled from the holders (A18); in DP worker 0's model itself
    /// (every worker holds the same weights). Owned by the trainer, or by the caller who built it.
    /// </summary>
    public ITrainable AssembleDense()
    {
        if (_host is null) return _workers[0].Model;
        using var watch = Watch("assembling the dense model");
        using var active = HostAccount!.Activate();
        using var device = DeviceScope.Use(_hostDevice);
        SubnetworkTensors.AssembleDense(_host.Module, [.. _workers.Select(w => w.Model.Module)], [.. _workers.Select(w => w.Layout!)]);
        // A process of a job assembled its own workers' units (the rest −0.0): the job's sum is the whole model.
        if (_job is not null)
        {
            foreach (var (_, t) in SubnetworkTensors.Named(_host.Module)) _job.Communicator.World.AllReduceSum(t);
            _host.Module.TensorsReplaced();
        }
        return _host;
    }

    /// <summary>The account the dense model is charged to: the host's in SDP, worker 0's in DP.</summary>
    private MemoryAccount DenseAccount => HostAccount ?? _workers[0].Account;

    /// <summary>The device the dense model lives on: the host's in SDP, worker 0's in DP.</summary>
    private IBackend DenseDevice => _host is null ? _workers[0].Device : _hostDevice;

    /// <summary>
    /// Mean loss (and accuracy for classifiers) over <paramref name="batches"/> batches, in eval mode, under
    /// <see cref="EvaluationRule"/>: of the dense model (its residual branches scaled by their coverage, its
    /// BatchNorm statistics recalibrated, as the rule says), or of the ensemble of the workers' subnetworks.
    /// </summary>
    public EvalMetrics Evaluate(IBatchSource data, int batches)
    {
        using var watch = Watch($"the evaluation at step {Step}");
        var rule = EvaluationRule;
        if (rule.HasFlag(EvalRule.Ensemble)) return EvaluateEnsemble(data, batches);
        var dense = AssembleDense();
        using var active = DenseAccount.Activate();
        using var device = DeviceScope.Use(DenseDevice);
        // Scaled first, so a recalibration measures the statistics of the model that is evaluated.
        using var scaled = rule.HasFlag(EvalRule.Scale) ? ScaleBranchesByCoverage(dense) : null;
        using var recalibrated = rule.HasFlag(EvalRule.Recalibrate) ? RecalibrateBatchNorm(dense, _options.BnRecalibration!) : null;
        if (_job is null) return Evaluate(dense, data, batches, Step);
        // A job shares the batches out (batch b to rank b mod W) and adds the results up in batch order, as one process would.
        var mine = EvaluateBatches(dense, data, batches, b => b % Options.Workers == _job.Processes.Rank);
        return Sum(GatherBatchResults(mine), Step);
    }

    /// <summary>Evaluates <paramref name="model"/> with grad mode off and the module in eval mode (restored afterwards).</summary>
    public static EvalMetrics Evaluate(ITrainable model, IBatchSource data, int batches, long step = 0)
        => Sum(EvaluateBatches(model, data, batches, _ => true), step);

    /// <summary>
    /// Reads <paramref name="batches"/> batches and evaluates those <paramref name="mine"/> picks (null for the others),
    /// with grad mode off and the module in eval mode (restored afterwards).
    /// </summary>
    private static BatchEvaluation?[] EvaluateBatches(ITrainable model, IBatchSource data, int batches, Func<int, bool> mine)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(data);
        using var noGrad = GradMode.Disable();
        bool wasTraining = model.Module.IsTraining;
        model.Module.Eval();
        try
        {
            var results = new BatchEvaluation?[batches];
            for (int b = 0; b < batches; b++)
            {
                using var scope = TensorScope.Begin();
                var (inputs, targets) = data.NextBatch();
                if (mine(b)) results[b] = model.Evaluate(inputs, targets);
            }
            return results;
        }
        finally
        {
            model.Module.Train(wasTraining);
        }
    }

    /// <summary>Mean loss (and accuracy) over the batches, added up in batch order.</summary>
    private static EvalMetrics Sum(IEnumerable<BatchEvaluation?> batches, long step)
    {
        double lossSum = 0;
        long count = 0, correct = 0;
        bool classifier = false;
        foreach (var e in batches)
        {
            if (e is not { } batch) continue;
            lossSum += batch.LossSum;
            count += batch.Count;
            if (batch.Correct is { } c)
            {
                classifier = true;
                correct += c;
            }
        }
        return new EvalMetrics(step, lossSum / Math.Max(1, count), count, classifier ? correct / (double)Math.Max(1, count) : null);
    }

    private EvalMetrics EvaluateHeldOut(IBatchSource eval, int batches)
    {
        eval.State = _evalStart!;
        return Evaluate(eval, batches);
    }

    /// <summary>
    /// Re-estimates the dense model's BatchNorm running statistics as update_bn does (see
    /// <see cref="BatchNormRecalibration"/>): reset, then forward passes in training mode without gradients
    /// with a cumulative average (momentum null), so the running mean and variance end as the mean of the
    /// batches' means and unbiased variances. The data source is put back where it stood. Disposing the
    /// result puts the model's own buffers back, so evaluation changes nothing (in DP the dense model is
    /// worker 0's, whose statistics training continues from); null when the model has no BatchNorm.
    /// </summary>
    private static IDisposable? RecalibrateBatchNorm(ITrainable dense, BatchNormRecalibration recalibration)
    {
        var norms = dense.Module.NamedModules().Select(m => m.Module).OfType<BatchNorm2d>().ToList();
        if (norms.Count == 0) return null;
        var saved = new BufferSnapshot(dense.Module);
        var data = recalibration.Data;
        var position = data.State;
        var momenta = norms.Select(n => n.Momentum).ToList();
        using var noGrad = GradMode.Disable();
        bool wasTraining = dense.Module.IsTraining;
        try
        {
            foreach (var norm in norms)
            {
                norm.ResetRunningStats();
                norm.Momentum = null;
            }
            dense.Module.Train();
            for (int b = 0; b < recalibration.Batches; b++)
            {
                using var scope = TensorScope.Begin();
                var (inputs, targets) = data.NextBatch();
                using var loss = dense.Loss(inputs, targets);
            }
        }
        catch
        {
            saved.Dispose();
            throw;
        }
        finally
        {
            for (int i = 0; i < norms.Count; i++) norms[i].Momentum = momenta[i];
            dense.Module.Train(wasTraining);
            data.State = position;
        }
        return saved;
    }

    /// <summary>Copies of a module's buffers (workspace), written back into them on disposal.</summary>
    private sealed class BufferSnapshot : IDisposable
    {
        private readonly Module _module;
        private readonly List<(Tensor Target, Tensor Copy)> _copies = [];

        public BufferSnapshot(Module module)
        {
            _module = module;
            using var workspace = MemoryAccount.Use(MemoryCategory.Workspace);
            foreach (var (_, t) in module.NamedBuffers())
            {
                var copy = Tensor.Empty(t.Shape, t.DType, t.Backend);
                t.Backend.Copy(t, copy);
                _copies.Add((t, copy));
            }
        }

        public void Dispose()
        {
            foreach (var (target, copy) in _copies)
            {
                target.Backend.Copy(copy, target);
                copy.Dispose();
            }
            if (_copies.Count > 0) _module.TensorsReplaced(); // host-side state (BatchNorm's counter) follows the restored tensors
            _copies.Clear();
        }
    }

    /// <summary>
    /// Saves atomically: a *.safetensors path gets the dense model (config in the metadata); a directory gets
    /// the full training state (<see cref="SdpCheckpoint"/>: the dense model, every worker's model, optimizer
    /// state and data position), from which <see cref="Resume"/> continues. In a multi-process job every process
    /// calls it: each writes its worker's part, rank 0 the dense model and sdp.json (see <see cref="SdpCheckpoint"/>),
    /// so the directory must be on a file system every process sees.
    /// </summary>
    public void Save(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        using var watch = Watch($"saving {path} at step {Step}");
        var dense = AssembleDense();
        using var active = DenseAccount.Activate();
        using var device = DeviceScope.Use(DenseDevice);
        if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            if (_job is null || _job.Processes.Rank == 0)
                ModuleCheckpoint.Save(dense.Module, path, new Dictionary<string, string> { [TrainingCheckpoint.ConfigMetadataKey] = dense.ConfigJson });
            _job?.Processes.Barrier();
        }
        else
        {
            var workers = _workers.Select(w => (w.Rank, new SdpCheckpoint.WorkerState(w.Model.Module, w.Optimizer, new TrainingState
            {
                Step = Step, LrSchedulePosition = Step, DataLoader = DataStateJson(w.Data.State), Options = _options.RunOptions?.DeepClone().AsObject(),
                LossWindow = w.Spikes?.Values,
            }))).ToList();
            SdpCheckpoint.Save(path, dense.Module, dense.ConfigJson, Step, Describe(), workers, _job?.Processes, _options.KeepLast);
        }
        LastCheckpoint = (path, Step);
        Saved?.Invoke(path);
    }

    /// <summary>
    /// Continues the run saved in <paramref name="directory"/> by <see cref="Save"/>: every worker's weights,
    /// optimizer state and data position, and the step. The saved run must have this trainer's workers,
    /// mode, level, masking, coverage and plan seed (the plan, and so every compact tensor, follows from them).
    /// A one-worker DP run also continues the single-worker training state of an earlier Sdp version.
    /// </summary>
    public void Resume(string directory)
    {
        var saved = SdpCheckpoint.ReadInfo(directory);
        var expected = Describe();
        if (saved.Run != expected)
        {
            throw new ArgumentException(SdpCheckpoint.IsSingleWorkerState(saved.Directory)
                ? $"training checkpoint '{saved.Directory}' is a single-worker training state from an earlier Sdp version; it resumes only into a run of one worker in DP mode, but this run has {expected}"
                : $"training checkpoint '{saved.Directory}' was saved by a run with {saved.Run}, but this run has {expected}; resume with the same options");
        }
        foreach (var worker in _workers)
        {
            using var active = worker.Account.Activate();
            using var device = DeviceScope.Use(worker.Device);
            string dir = SdpCheckpoint.WorkerCheckpoint(saved.Directory, worker.Rank);
            var info = TrainingCheckpoint.Load(dir, worker.Model.Module, worker.Optimizer);
            if (info.State.Step != saved.Step) throw new InvalidDataException($"training checkpoint '{dir}': step {info.State.Step}, but the run saved step {saved.Step}");
            if (info.State.DataLoader is { } data)
            {
                var position = DataStateFromJson(data, dir);
                try
                {
                    worker.Data.State = position;
                }
                catch (ArgumentException e)
                {
                    // The loader refuses a position outside its data: that is the state file's fault, so name it.
                    throw new InvalidDataException($"training checkpoint '{Path.Combine(dir, TrainingCheckpoint.StateFileName)}': data_loader {position} does not fit this run's data: {e.Message}", e);
                }
            }
            worker.Spikes?.Restore(info.State.LossWindow ?? []);
        }
        Step = saved.Step;
        LastCheckpoint = (saved.Directory, Step);
    }

    private static JsonObject DataStateJson(DataLoaderState s) => new() { ["epoch"] = s.Epoch, ["shard"] = s.Shard, ["batch"] = s.Batch };

    private static DataLoaderState DataStateFromJson(JsonObject o, string where)
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

    private SdpCheckpoint.RunDescription Describe() => Plan is null
        ? SdpCheckpoint.RunDescription.Dp(Options.Workers)
        : new(Options.Workers, "sdp", SubnetworkPlan.LevelName(Options.Level), Options.Masking == Masking.Forward ? "forward" : "backward", Options.Coverage, Options.PlanSeed);

    /// <summary>
    /// Runs <paramref name="work"/> on every worker at once, each on its own long-lived thread (collectives
    /// need all of them running; the tape and the GEMM packing buffers are per thread, so a worker keeps
    /// its thread). A single worker waits for nobody and runs on the caller's thread, as single-process
    /// training does, and its failure is rethrown as it is. Of several workers, one that fails aborts the group, so
    /// the others stop waiting at their collectives; the failure is thrown as a <see cref="WorkerFailedException"/>
    /// naming the worker (a worker's timeout or abort is reported only when nothing else failed).
    /// </summary>
    private void OnEveryWorker(Action<Worker> work)
    {
        void RunOn(int index)
        {
            var w = _workers[index];
            using var active = w.Account.Activate();
            using var device = DeviceScope.Use(w.Device);
            try
            {
                work(w);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                w.Comm.Abort($"worker {w.Rank} failed: {e.Message}");
                throw;
            }
        }
        if (_workers.Length == 1)
        {
            RunOn(0);
            return;
        }
        _threads ??= new WorkerThreads(_workers.Length);
        var errors = _threads.Run(RunOn);
        int failed = Array.FindIndex(errors, e => e is not null and not TimeoutException and not OperationCanceledException);
        if (failed < 0) failed = Array.FindIndex(errors, e => e is not null);
        if (failed >= 0) throw new WorkerFailedException(_workers[failed].Rank, errors[failed]!);
    }

    private WorkerThreads? _threads;

    public void Dispose()
    {
        _threads?.Dispose();
        foreach (var w in _workers) w?.Dispose();
        _host?.Dispose();
        _watchdog?.Dispose();
    }

    /// <summary>One worker's model, optimizer, data, account and communication; <paramref name="owned"/>: the trainer built the model and optimizer and disposes them.</summary>
    private sealed class Worker(int rank, WorkerLayout? layout, ITrainable model, Optimizer optimizer, MemoryAccount account, IBackend device, ICommunicator comm, IBatchSource data,
        HolderGroups groups, HolderGroupedSync gradSync, HolderGroupedSync? bufferSync, UnitRefresh? refresh, bool owned, bool ownsComm) : IDisposable
    {
        public int Rank { get; } = rank;

        /// <summary>The worker's device, current on its thread whenever it works.</summary>
        public IBackend Device { get; } = device;

        public WorkerLayout? Layout { get; } = layout;

        public ITrainable Model { get; } = model;

        public Optimizer Optimizer { get; } = optimizer;

        public MemoryAccount Account { get; } = account;

        public IBatchSource Data { get; } = data;

        public HolderGroupedSync GradSync { get; } = gradSync;

        public UnitRefresh? Refresh { get; } = refresh;

        public ICommunicator Comm { get; } = comm;

        /// <summary>Watches the mean loss for spikes (--skip-spikes); null when spikes are not skipped.</summary>
        public LossSpikeDetector? Spikes { get; init; }

        /// <summary>Times this phase of the step when the worker's device is profiled.</summary>
        private StepProfile.PhaseScope Phase(StepPhase phase) => StepProfile.Enter((Device as ProfilingBackend)?.Profile, phase);

        /// <summary>
        /// Forward, backward, gradient sync, the update decision (<see cref="Decide"/>), clipping, update, buffer sync and
        /// (backward masking) refresh. A step that is not applied still syncs buffers and refreshes, so every worker
        /// reaches the same collectives whatever it decided.
        /// </summary>
        public WorkerStepResult Step(double lr, TrainerOptions options)
        {
            var before = Comm.Stats.Clone();
            Optimizer.LearningRate = lr;
            double loss;
            long items;
            List<NonFiniteTensor>? found = null;
            using (TensorScope.Begin())
            {
                Tensor inputs, targets, lossTensor;
                using (Phase(StepPhase.Data)) (inputs, targets) = Data.NextBatch();
                items = Model.ItemsIn(inputs);
                using (Phase(StepPhase.Forward))
                {
                    lossTensor = Model.Loss(inputs, targets);
                    loss = lossTensor.Item();
                }
                // The batch is gone after this scope: look at it now, only when the loss already failed.
                if (!double.IsFinite(loss)) found = NonFiniteTensor.Find(Rank, "data", [("inputs", inputs)]);
                using (Phase(StepPhase.Backward)) lossTensor.Backward();
            }
            double norm;
            StepDecision decision;
            using (Phase(StepPhase.Sync))
            {
                GradSync.Synchronize();
                norm = Math.Sqrt(SquaredGradNorm(loss));
                decision = Decide(norm, loss, options);
            }
            var parameters = Optimizer.Parameters;
            using (Phase(StepPhase.Optimizer))
            {
                if (decision == StepDecision.Update)
                {
                    if (options.Clip > 0) GradClip.ScaleToNorm(parameters, norm, options.Clip);
                    Optimizer.Step();
                }
                else if (decision == StepDecision.Abort)
                {
                    found ??= [];
                    found.AddRange(NonFiniteTensor.Find(Rank, "weight", Model.Module.NamedParameters()));
                    found.AddRange(NonFiniteTensor.Find(Rank, "gradient", Model.Module.NamedParameters().Where(p => p.Tensor.Grad is not null).Select(p => (p.Name, p.Tensor.Grad!))));
                }
                Optimizer.ZeroGrad();
            }
            using (Phase(StepPhase.Sync))
            {
                bufferSync?.Synchronize();
                Refresh?.Refresh();
            }
            var after = Comm.Stats;
            return new WorkerStepResult(loss, items, norm, after.BytesSent - before.BytesSent, after.Collectives - before.Collectives, Account.Snapshot(), decision, found);
        }

        /// <summary>
        /// Apply the update, skip it or abort, from values every worker shares: the all-reduced norm, which is NaN
        /// when any worker's loss or any gradient is not finite, and, for spikes, the mean loss over the workers
        /// (one more all-reduce of a scalar, only with <see cref="TrainerOptions.SkipSpikes"/>).
        /// </summary>
        private StepDecision Decide(double norm, double loss, TrainerOptions options)
        {
            if (!double.IsFinite(norm)) return options.OnNonFinite == NonFinitePolicy.Skip ? StepDecision.SkipNonFinite : StepDecision.Abort;
            if (Spikes is null) return StepDecision.Update;
            double mean = loss;
            if (Comm.WorldSize > 1)
            {
                _lossSum ??= EngineScalar(Device);
                _lossSum.Backend.Fill(_lossSum, loss);
                Comm.World.AllReduceSum(_lossSum);
                mean = _lossSum.Item() / Comm.WorldSize;
            }
            return Spikes.Update(mean) > options.SkipSpikes ? StepDecision.SkipSpike : StepDecision.Update;
        }

        /// <summary>The float64 scalar the mean loss is all-reduced in (engine buffer), made by the first step that needs it.</summary>
        private Tensor? _lossSum;

        /// <summary>The float64 scalar the gradient norm accumulates in, kept between steps (engine buffer).</summary>
        private readonly Tensor _squaredNorm = EngineScalar(device);

        private static Tensor EngineScalar(IBackend device)
        {
            using (MemoryAccount.Use(MemoryCategory.EngineBuffers)) return Tensor.Zeros(Shape.Scalar, DType.Float64, device);
        }

        /// <summary>
        /// ‖ĝ‖²: every worker's share (A14) summed over the workers in rank order on the device, then read once. A worker
        /// whose <paramref name="loss"/> is not finite starts its share at NaN, so every worker reads NaN: the loss is
        /// checked by the collective the step makes anyway.
        /// </summary>
        private double SquaredGradNorm(double loss)
        {
            using var noGrad = GradMode.Disable();
            _squaredNorm.Backend.Fill(_squaredNorm, double.IsFinite(loss) ? 0 : double.NaN);
            GradSync.AddSquaredNormShare(_squaredNorm);
            if (Comm.WorldSize > 1) Comm.World.AllReduceSum(_squaredNorm);
            return _squaredNorm.Item();
        }

        public void Dispose()
        {
            using var active = Account.Activate();
            _squaredNorm.Dispose();
            _lossSum?.Dispose();
            GradSync.Dispose();
            bufferSync?.Dispose();
            Refresh?.Dispose();
            groups.Dispose();
            if (ownsComm) (Comm as IDisposable)?.Dispose();
            if (!owned) return;
            Optimizer.Dispose();
            Model.Dispose();
        }
    }

    /// <summary>One thread per worker for the trainer's lifetime; <see cref="Run"/> hands each the same job and waits for all.</summary>
    private sealed class WorkerThreads : IDisposable
    {
        private readonly Thread[] _threads;
        private readonly SemaphoreSlim[] _start;
        private readonly CountdownEvent _done;
        private readonly Exception?[] _errors;
        private Action<int>? _job;
        private volatile bool _stopping;

        public WorkerThreads(int count)
        {
            _start = [.. Enumerable.Range(0, count).Select(_ => new SemaphoreSlim(0))];
            _done = new CountdownEvent(count);
            _errors = new Exception?[count];
            _threads = [.. Enumerable.Range(0, count).Select(rank => new Thread(() => Loop(rank)) { Name = $"sdp worker {rank}", IsBackground = true })];
            foreach (var t in _threads) t.Start();
        }

        public Exception?[] Run(Action<int> job)
        {
            _job = job;
            Array.Clear(_errors);
            _done.Reset();
            foreach (var s in _start) s.Release();
            _done.Wait();
            return [.. _errors];
        }

        private void Loop(int rank)
        {
            while (true)
            {
                _start[rank].Wait();
                if (_stopping) return;
                try
                {
                    _job!(rank);
                }
                catch (Exception e)
                {
                    _errors[rank] = e;
                }
                finally
                {
                    _done.Signal();
                }
            }
        }

        public void Dispose()
        {
            _stopping = true;
            foreach (var s in _start) s.Release();
            foreach (var t in _threads) t.Join();
            foreach (var s in _start) s.Dispose();
            _done.Dispose();
        }
    }
}
