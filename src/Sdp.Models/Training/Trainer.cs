using System.Diagnostics;
using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Distributed;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Checkpoints;
using Sdp.Models.Subnetworks;

namespace Sdp.Models.Training;

/// <summary>
/// Data-parallel and subnetwork-data-parallel training of W simulated workers in one process (method
/// reference §2.5), one thread per worker, talking through an <see cref="InProcessCommunicator"/>.
/// Each worker has its own model copy (its subnetwork under forward masking; the dense model with held-slice
/// gradients under backward masking), optimizer over what it holds, data stream and
/// <see cref="MemoryAccount"/>. A step on every worker:
/// <code>
/// loss = L(subnetwork; own batch); backward              // dW only for held units
/// ĝ_u = mean of g_u over u's holders                      // one all-reduce per holder-set bucket
/// ‖ĝ‖² = all-reduce Σ_held ‖ĝ_u‖² / |H_u|; clip          // each parameter counted once (A14)
/// optimizer step on held parameters                       // weight decay once per parameter (A15)
/// BatchNorm buffers: mean over holders
/// backward masking: unheld units ← their lowest holder   // broadcast (§2.6 B1)
/// </code>
/// The dense model is kept on the host (its own account) and assembled from the holders for evaluation
/// and saving (A18). DP is the same loop with every tensor shared.
/// </summary>
public sealed class SdpTrainer : IDisposable
{
    private readonly SubnetworkModel _model;
    private readonly TrainerOptions _options;
    private readonly IBatchSource? _eval;
    private readonly Data.DataLoaderState? _evalStart;
    private readonly Worker[] _workers;
    private readonly ITrainable _dense;

    /// <param name="model">The model and its maskable units.</param>
    /// <param name="sdp">Workers, mode, level, masking, coverage.</param>
    /// <param name="optimizer">Makes a worker's optimizer over the parameters it trains.</param>
    /// <param name="trainData">Worker w's training batches (worker 0's must be single-worker training's for A5).</param>
    /// <param name="options">Steps, schedule, clipping, evaluation and saving, as for <see cref="Trainer"/>.</param>
    /// <param name="eval">Held-out batches, evaluated on the assembled dense model.</param>
    public SdpTrainer(SubnetworkModel model, SdpOptions sdp, Func<IReadOnlyList<Tensor>, Optimizer> optimizer, Func<int, IBatchSource> trainData, TrainerOptions options, IBatchSource? eval = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(sdp);
        ArgumentNullException.ThrowIfNull(optimizer);
        ArgumentNullException.ThrowIfNull(trainData);
        ArgumentNullException.ThrowIfNull(options);
        if (sdp.Workers < 1) throw new ArgumentException($"SdpTrainer: workers must be at least 1, got {sdp.Workers}");
        if (options.Steps < 0) throw new ArgumentException($"SdpTrainer: steps must be >= 0, got {options.Steps}");
        (_model, Options, _options, _eval) = (model, sdp, options, eval);
        _evalStart = eval?.State;

        if (sdp.Mode == ParallelMode.Sdp)
        {
            if (model.Units.TensorBindings.Count == 0) throw new ArgumentException("SdpTrainer: SDP needs the model's unit bindings (MaskableUnits.Bindings is empty)");
            Plan = SubnetworkPlan.Create(model.Units, sdp.Workers, sdp.Coverage, sdp.PlanSeed);
        }

        HostAccount = new MemoryAccount("host");
        using (HostAccount.Activate())
        using (MemoryAccount.Use(MemoryCategory.Parameters))
        {
            _dense = model.Build(null);
        }
        var comms = InProcessCommunicator.Create(sdp.Workers, sdp.CollectiveTimeout);
        _workers = new Worker[sdp.Workers];
        try
        {
            for (int w = 0; w < sdp.Workers; w++) _workers[w] = CreateWorker(w, comms[w], optimizer, trainData(w));
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public SdpOptions Options { get; }

    /// <summary>The subnetwork plan (null in DP mode).</summary>
    public SubnetworkPlan? Plan { get; }

    /// <summary>Charged with the host's dense model (initialisation, evaluation, saving), not with any worker.</summary>
    public MemoryAccount HostAccount { get; }

    /// <summary>Worker w's memory account.</summary>
    public MemoryAccount WorkerAccount(int worker) => _workers[worker].Account;

    /// <summary>Worker w's model copy (its subnetwork under forward masking).</summary>
    public ITrainable WorkerModel(int worker) => _workers[worker].Model;

    /// <summary>Worker w's optimizer.</summary>
    public Optimizer WorkerOptimizer(int worker) => _workers[worker].Optimizer;

    /// <summary>Worker w's layout (null in DP mode).</summary>
    public WorkerLayout? WorkerLayout(int worker) => _workers[worker].Layout;

    /// <summary>Collectives and bytes per step of the gradient sync alone (A20), per worker.</summary>
    public (int Collectives, double Bytes) GradientSyncCost(int worker) => (_workers[worker].GradSync.CollectivesPerStep, _workers[worker].GradSync.BytesPerStep);

    /// <summary>Backward masking: parameter and buffer elements worker w receives per step from the holders of the units it lacks (0 otherwise).</summary>
    public long RefreshElementsReceived(int worker) => _workers[worker].Refresh?.ElementsReceived ?? 0;

    /// <summary>Completed steps.</summary>
    public long Step { get; private set; }

    public event Action<SdpStepMetrics>? StepCompleted;

    public event Action<EvalMetrics>? Evaluated;

    public event Action<string>? Saved;

    private Worker CreateWorker(int rank, ICommunicator comm, Func<IReadOnlyList<Tensor>, Optimizer> makeOptimizer, IBatchSource data)
    {
        var account = new MemoryAccount($"worker {rank}");
        using var active = account.Activate();
        var layout = Plan is null ? null : new WorkerLayout(_model.Units, Plan, rank);
        bool forward = layout is not null && Options.Masking == Masking.Forward;
        ITrainable model;
        using (MemoryAccount.Use(MemoryCategory.Parameters))
        {
            model = _model.Build(forward ? layout!.HeldUnits : null);
        }
        try
        {
            if (forward) RequireSharedTensors(model, layout!);
            SubnetworkTensors.CopyFromDense(_dense.Module, model.Module, layout);
            var trained = layout is not null && !forward
                ? SubnetworkTensors.ApplyBackwardMasking(model.Module, layout)
                : [.. model.Module.NamedParameters().Select(p => p.Tensor).Where(t => t.RequiresGrad)];
            if (trained.Count == 0) throw new ArgumentException($"SdpTrainer: worker {rank} trains no parameter");
            var names = new Dictionary<Tensor, string>(ReferenceEqualityComparer.Instance);
            foreach (var (name, p) in model.Module.NamedParameters()) names[p] = name;
            var gradEntries = trained.Select(p => Entry(layout, names[p], p, SyncTarget.Gradient)).OfType<SyncParameter>().ToList();
            var buffers = model.Module.NamedBuffers().Where(b => b.Tensor.DType.IsFloatingPoint()).ToList();
            var bufferEntries = buffers.Select(b => Entry(layout, b.Name, b.Tensor, SyncTarget.Value)).OfType<SyncParameter>().ToList();
            UnitRefresh? refresh = null;
            if (layout is not null && !forward)
            {
                var all = model.Module.NamedParameters().Concat(buffers).Select(t => layout.SyncEntry(t.Name, t.Tensor, SyncTarget.Value)).OfType<SyncParameter>().ToList();
                refresh = new UnitRefresh(all, rank, Options.Workers, Options.BucketBytes);
            }
            var gradSync = new HolderGroupedSync(gradEntries, rank, Options.Workers, Options.BucketBytes);
            var bufferSync = bufferEntries.Count == 0 ? null : new HolderGroupedSync(bufferEntries, rank, Options.Workers, Options.BucketBytes, SyncTarget.Value);
            return new Worker(rank, layout, model, makeOptimizer(trained), account, comm, data, gradSync, bufferSync, refresh);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Every worker must have every shared tensor, or the shared gradient buckets would differ between
    /// workers. A subnetwork drops a shared pre-norm when it holds no unit of the sub-block behind it
    /// (e.g. no attention head of a layer with --mask-heads); such plans are refused, naming the cause.
    /// </summary>
    private void RequireSharedTensors(ITrainable model, WorkerLayout layout)
    {
        var present = SubnetworkTensors.Named(model.Module);
        foreach (var name in SubnetworkTensors.Named(_dense.Module).Keys)
        {
            if (layout.BindingOf(name) is not null || present.ContainsKey(name)) continue;
            var empty = Enumerable.Range(0, _model.Units.Groups.Count).Where(g => layout.HeldUnits[g].Length == 0).Select(g => _model.Units.Groups[g].Name).ToList();
            throw new ArgumentException(
                $"SdpTrainer: worker {layout.Worker} holds no unit of {string.Join(", ", empty.DefaultIfEmpty("some group"))}, so its subnetwork lacks the shared tensor {name}; " +
                $"choose workers and coverage so that every worker holds at least one unit of every group (each group has {string.Join("/", _model.Units.Groups.Select(g => g.UnitCount).Distinct())} units, W = {Options.Workers}, C = {Options.Coverage})");
        }
    }

    private static SyncParameter? Entry(WorkerLayout? layout, string name, Tensor t, SyncTarget target)
        => layout is null ? new SyncParameter(t) : layout.SyncEntry(name, t, target);

    /// <summary>Trains from <see cref="Step"/> up to the configured number of steps, evaluating and saving as configured.</summary>
    public void Run()
    {
        _options.RunLoop(() => Step, () => TrainStep(), _eval is null ? null : () => Evaluated?.Invoke(EvaluateHeldOut(_eval)), Save);
    }

    /// <summary>One synchronous step of every worker.</summary>
    public SdpStepMetrics TrainStep()
    {
        var clock = Stopwatch.StartNew();
        double lr = _options.Schedule.LearningRate(Step);
        var results = new (double Loss, long Items, double Norm, double Bytes, int Collectives)[_workers.Length];
        OnEveryWorker(w => results[w.Rank] = w.Step(lr, _options.Clip));
        Step++;
        double ms = clock.Elapsed.TotalMilliseconds;
        double loss = 0;
        long items = 0;
        foreach (var r in results)
        {
            loss += r.Loss;
            items += r.Items;
        }
        loss /= _workers.Length;
        var perWorker = _workers.Select(w => new WorkerStepMetrics(w.Rank, results[w.Rank].Loss, w.Account.Snapshot(), results[w.Rank].Bytes, results[w.Rank].Collectives)).ToArray();
        var metrics = new SdpStepMetrics(Step, loss, lr, results[0].Norm, ms, items / (ms / 1000), _dense.ItemUnit, perWorker);
        StepCompleted?.Invoke(metrics);
        return metrics;
    }

    /// <summary>The dense model assembled from the holders (A18), owned by the trainer.</summary>
    public ITrainable AssembleDense()
    {
        using var active = HostAccount.Activate();
        if (Plan is null) SubnetworkTensors.CopyFromDense(_workers[0].Model.Module, _dense.Module, null);
        else SubnetworkTensors.AssembleDense(_dense.Module, [.. _workers.Select(w => w.Model.Module)], [.. _workers.Select(w => w.Layout!)]);
        return _dense;
    }

    /// <summary>Mean loss (and accuracy) of the assembled dense model over <paramref name="batches"/> batches.</summary>
    public EvalMetrics Evaluate(IBatchSource data, int batches)
    {
        var dense = AssembleDense();
        using var active = HostAccount.Activate();
        if (Options.BnRecalibrationBatches > 0) RecalibrateBatchNorm(dense, _workers[0].Data, Options.BnRecalibrationBatches);
        return Trainer.Evaluate(dense, data, batches, Step);
    }

    private EvalMetrics EvaluateHeldOut(IBatchSource eval)
    {
        eval.State = _evalStart!;
        return Evaluate(eval, _options.EvalBatches);
    }

    /// <summary>
    /// Re-estimates BatchNorm running statistics of the dense model: reset to mean 0, variance 1, then
    /// forward passes in training mode without gradients. The batches are drawn from a copy of worker 0's
    /// position, so training data order is unchanged.
    /// </summary>
    private static void RecalibrateBatchNorm(ITrainable dense, IBatchSource source, int batches)
    {
        var buffers = dense.Module.NamedBuffers().ToList();
        if (!buffers.Any(b => b.Name.EndsWith("running_mean", StringComparison.Ordinal))) return;
        var saved = source.State;
        using var noGrad = GradMode.Disable();
        foreach (var (name, t) in buffers)
        {
            if (name.EndsWith("running_mean", StringComparison.Ordinal)) t.Backend.Fill(t, 0);
            else if (name.EndsWith("running_var", StringComparison.Ordinal)) t.Backend.Fill(t, 1);
        }
        bool wasTraining = dense.Module.IsTraining;
        dense.Module.Train();
        try
        {
            for (int b = 0; b < batches; b++)
            {
                using var scope = TensorScope.Begin();
                var (inputs, targets) = source.NextBatch();
                using var loss = dense.Loss(inputs, targets);
            }
        }
        finally
        {
            dense.Module.Train(wasTraining);
            source.State = saved;
        }
    }

    /// <summary>
    /// Saves atomically: a *.safetensors path gets the assembled dense model (config in the metadata); a
    /// directory gets the full training state (<see cref="SdpCheckpoint"/>: the assembled model, every
    /// worker's model copy, optimizer state and data position), from which <see cref="Resume"/> continues.
    /// </summary>
    public void Save(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var dense = AssembleDense();
        if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            ModuleCheckpoint.Save(dense.Module, path, new Dictionary<string, string> { [TrainingCheckpoint.ConfigMetadataKey] = dense.ConfigJson });
        }
        else
        {
            var workers = _workers.Select(w => new SdpCheckpoint.WorkerState(w.Model.Module, w.Optimizer, new TrainingState
            {
                Step = Step, LrSchedulePosition = Step, DataLoader = Trainer.DataStateJson(w.Data.State),
            })).ToList();
            SdpCheckpoint.Save(path, dense.Module, dense.ConfigJson, Step, Describe(), workers);
        }
        Saved?.Invoke(path);
    }

    /// <summary>
    /// Continues the run saved in <paramref name="directory"/> by <see cref="Save"/>: every worker's weights,
    /// optimizer state and data position, and the step. The saved run must have this trainer's workers,
    /// mode, level, masking, coverage and plan seed (the plan, and so every compact tensor, follows from them).
    /// </summary>
    public void Resume(string directory)
    {
        var (run, step) = SdpCheckpoint.Read(directory);
        var expected = Describe();
        if (run != expected)
            throw new ArgumentException($"training checkpoint '{directory}' was saved by a run with {run}, but this run has {expected}; resume with the same options");
        for (int w = 0; w < _workers.Length; w++)
        {
            var worker = _workers[w];
            using var active = worker.Account.Activate();
            string dir = Path.Combine(directory, SdpCheckpoint.WorkerDirectory(w));
            var info = TrainingCheckpoint.Load(dir, worker.Model.Module, worker.Optimizer);
            if (info.State.Step != step) throw new InvalidDataException($"training checkpoint '{dir}': step {info.State.Step}, but the run saved step {step}");
            if (info.State.DataLoader is { } data) worker.Data.State = Trainer.DataStateFromJson(data, dir);
        }
        Step = step;
    }

    private SdpCheckpoint.RunDescription Describe() => Plan is null
        ? new(Options.Workers, "dp", "none", "none", 1.0, 0)
        : new(Options.Workers, "sdp", SubnetworkPlan.LevelName(Options.Level), Options.Masking == Masking.Forward ? "forward" : "backward", Options.Coverage, Options.PlanSeed);

    /// <summary>
    /// Runs <paramref name="work"/> on every worker at once, each on its own long-lived thread (collectives
    /// need all of them running; the tape and the GEMM packing buffers are per thread, so a worker keeps
    /// its thread). A worker that fails aborts the group, so the others stop waiting at their collectives;
    /// the failure is rethrown (a worker's timeout or abort is reported only when nothing else failed).
    /// </summary>
    private void OnEveryWorker(Action<Worker> work)
    {
        _threads ??= new WorkerThreads(_workers.Length);
        var errors = _threads.Run(rank =>
        {
            var w = _workers[rank];
            using var active = w.Account.Activate();
            try
            {
                work(w);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                w.Comm.Abort($"worker {rank} failed: {e.Message}");
                throw;
            }
        });
        var cause = errors.FirstOrDefault(e => e is not null and not TimeoutException and not OperationCanceledException) ?? errors.FirstOrDefault(e => e is not null);
        if (cause is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(cause);
    }

    private WorkerThreads? _threads;

    public void Dispose()
    {
        _threads?.Dispose();
        foreach (var w in _workers) w?.Dispose();
        _dense?.Dispose();
    }

    private sealed class Worker(int rank, WorkerLayout? layout, ITrainable model, Optimizer optimizer, MemoryAccount account, ICommunicator comm, IBatchSource data,
        HolderGroupedSync gradSync, HolderGroupedSync? bufferSync, UnitRefresh? refresh) : IDisposable
    {
        public int Rank { get; } = rank;

        public WorkerLayout? Layout { get; } = layout;

        public ITrainable Model { get; } = model;

        public Optimizer Optimizer { get; } = optimizer;

        public MemoryAccount Account { get; } = account;

        public IBatchSource Data { get; } = data;

        public HolderGroupedSync GradSync { get; } = gradSync;

        public UnitRefresh? Refresh { get; } = refresh;

        public ICommunicator Comm { get; } = comm;

        /// <summary>Forward, backward, gradient sync, clipping, update, buffer sync and (backward masking) refresh.</summary>
        public (double Loss, long Items, double Norm, double Bytes, int Collectives) Step(double lr, double clip)
        {
            var before = Comm.Stats.Clone();
            Optimizer.LearningRate = lr;
            double loss;
            long items;
            using (TensorScope.Begin())
            {
                var (inputs, targets) = Data.NextBatch();
                items = Model.ItemsIn(inputs);
                var lossTensor = Model.Loss(inputs, targets);
                loss = lossTensor.Item();
                lossTensor.Backward();
            }
            GradSync.Synchronize(Comm);
            double norm = Math.Sqrt(SquaredGradNorm());
            var parameters = Optimizer.Parameters;
            if (double.IsFinite(norm))
            {
                if (clip > 0) GradClip.ScaleToNorm(parameters, norm, clip);
                Optimizer.Step();
            }
            Optimizer.ZeroGrad();
            bufferSync?.Synchronize(Comm);
            Refresh?.Refresh(Comm);
            var after = Comm.Stats;
            return (loss, items, norm, after.BytesSent - before.BytesSent, after.Collectives - before.Collectives);
        }

        /// <summary>‖ĝ‖²: every worker's share (A14) summed over the workers in rank order on the device, then read once.</summary>
        private double SquaredGradNorm()
        {
            using var noGrad = GradMode.Disable();
            using (MemoryAccount.Use(MemoryCategory.Workspace))
            using (var total = Tensor.Zeros(Shape.Scalar, DType.Float64, Optimizer.Parameters[0].Backend))
            {
                GradSync.AddSquaredNormShare(total);
                if (Comm.WorldSize > 1) Comm.AllReduceSum(total, [.. Enumerable.Range(0, Comm.WorldSize)]);
                return total.Item();
            }
        }

        public void Dispose()
        {
            using var active = Account.Activate();
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
