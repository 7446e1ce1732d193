using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Checkpoints;
using Sdp.Models.Data;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;

namespace Sdp.Cli.Commands;

/// <summary>
/// `sdp train`: trains LLaMA or ResNet-18 on W simulated workers (one by default), DP or SDP. With no
/// options it trains the tiny LLaMA on the synthetic Markov source for about a minute on 2 cores and
/// reports the loss against the source's entropy rate, the exact floor.
/// </summary>
public static partial class TrainCommand
{
    public sealed record Options(
        string Model, string? Config, string Data, bool Shuffle, ImageAugmentation? Augment, int Steps, int Batch, int Seq,
        string Optimizer, double Lr, double Momentum, double WeightDecay, int? Warmup, string Schedule, double Clip,
        ulong Seed, string? InitFrom, string? Save, int SaveEvery, string? Resume, int EvalEvery, string? EvalData, int EvalBatches, bool FinalEvalOnSample, string? Metrics, DistributedOptions Distributed,
        string Device = "cpu", int KeepLast = 1, NonFinitePolicy OnNonFinite = NonFinitePolicy.Abort, double SkipSpikes = 0, long? MaxMemory = null, bool Profile = false)
    {
        /// <summary>The options given on the command line (by name: "--config"), as opposed to left at their defaults; a resumed run checks these against its checkpoint.</summary>
        public IReadOnlySet<string> Given { get; init; } = new HashSet<string>();

        /// <summary>Warm-up steps before --schedule-match: --warmup when given (<see cref="Warmup"/>), else <see cref="DefaultWarmupFor"/>.</summary>
        public int WarmupSteps => Warmup ?? DefaultWarmupFor(Steps);

        /// <summary>True when --warmup was not given and the default was shrunk for a short run.</summary>
        public bool WarmupShrunk => Warmup is null && WarmupSteps != DefaultWarmup;
    }

    /// <summary>The exit code of a run stopped by a non-finite loss or gradient norm (--on-nonfinite abort).</summary>
    public const int NonFiniteExitCode = 3;

    /// <summary>
    /// Where an abort on a non-finite value writes its record: beside the metrics (m.jsonl: m.nonfinite.json), else beside
    /// the checkpoint (DIR: DIR.nonfinite.json, w.safetensors: w.nonfinite.json); null when the run writes neither.
    /// </summary>
    public static string? DiagnosticsPath(Options o)
    {
        if (o.Metrics is not null) return Path.ChangeExtension(o.Metrics, ".nonfinite.json");
        if (o.Save is null) return null;
        return o.Save.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) ? Path.ChangeExtension(o.Save, ".nonfinite.json") : Path.TrimEndingDirectorySeparator(o.Save) + ".nonfinite.json";
    }

    /// <summary>The warm-up of a run of 200 steps or more when --warmup is not given.</summary>
    public const int DefaultWarmup = 20;

    /// <summary>
    /// The default warm-up of a <paramref name="steps"/>-step run: <see cref="DefaultWarmup"/>, but at most a tenth of
    /// the run, so a short run (`--steps 5`) still has a valid schedule and spends most of its steps at the peak
    /// rate and in the decay rather than in warm-up. Runs of 200 steps or more (the default) keep 20.
    /// </summary>
    public static int DefaultWarmupFor(int steps) => Math.Min(DefaultWarmup, steps / 10);

    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "llama or resnet18", DefaultValueFactory = _ => "llama" };
        model.AcceptOnlyFromAmong(RunSetup.Models);
        var config = new Option<string?>("--config") { Description = "LLaMA preset (tiny, 130m, 1b) or config.json; for resnet18 'cifar' or a config JSON file" };
        var data = new Option<string>("--data") { Description = "'synthetic' or a path: token shard file/glob (llama), CIFAR-10 or MNIST directory (resnet18)", DefaultValueFactory = _ => "synthetic" };
        var noShuffle = new Option<bool>("--no-shuffle") { Description = "Read data in order" };
        var augment = new Option<string>("--augment") { Description = "resnet18 training images: auto (the dataset's recipe: crop-flip for CIFAR-10, none for MNIST and synthetic), none or crop-flip", DefaultValueFactory = _ => "auto" };
        augment.AcceptOnlyFromAmong(["auto", .. Enum.GetValues<ImageAugmentation>().Select(ImageAugment.NameOf)]);
        var steps = new Option<int>("--steps") { Description = "Total optimizer steps", DefaultValueFactory = _ => 200 };
        var batch = new Option<int>("--batch") { Description = "Sequences or images per step", DefaultValueFactory = _ => 16 };
        var seq = new Option<int>("--seq") { Description = "Tokens per sequence (llama)", DefaultValueFactory = _ => 64 };
        var optimizer = new Option<string>("--optimizer") { Description = "adamw or sgd", DefaultValueFactory = _ => "adamw" };
        optimizer.AcceptOnlyFromAmong("adamw", "sgd");
        var lr = new Option<double>("--lr") { Description = "Peak learning rate", DefaultValueFactory = _ => 5e-3 };
        var momentum = new Option<double>("--momentum") { Description = "SGD momentum", DefaultValueFactory = _ => 0.9 };
        var weightDecay = new Option<double>("--weight-decay") { Description = "Weight decay (decoupled for AdamW)", DefaultValueFactory = _ => 0.0 };
        var warmup = new Option<int?>("--warmup") { Description = $"Linear warm-up steps (default {DefaultWarmup}, at most a tenth of --steps)" };
        var schedule = new Option<string>("--schedule") { Description = "constant or cosine (to 10% of the peak)", DefaultValueFactory = _ => "cosine" };
        schedule.AcceptOnlyFromAmong("constant", "cosine");
        var clip = new Option<double>("--clip") { Description = "Global gradient-norm clip (0 = off)", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<ulong>("--seed") { Description = "Seed for initialisation and data", DefaultValueFactory = _ => 0UL };
        var device = new Option<string>("--device") { Description = "cpu, cuda (worker w on GPU w mod the GPU count; the emulated device where there is no GPU) or cuda:K (every worker on GPU K)", DefaultValueFactory = _ => "cpu" };
        var initFrom = new Option<string?>("--init-from") { Description = "Initial weights: a .safetensors file or a training-state directory" };
        var save = new Option<string?>("--save") { Description = "Save at the end: a *.safetensors path (weights) or a directory (full training state)" };
        var saveEvery = new Option<int>("--save-every") { Description = "Also save every K steps (needs --save)", DefaultValueFactory = _ => 0 };
        var keepLast = new Option<int>("--keep-last") { Description = "With --save DIR: keep the last K checkpoints, DIR (the latest) and DIR.step-N beside it", DefaultValueFactory = _ => 1 };
        var resume = new Option<string?>("--resume") { Description = "Continue the training state saved in this directory (options given again must match it)" };
        var evalEvery = new Option<int>("--eval-every") { Description = "Evaluate every K steps (and at the end)", DefaultValueFactory = _ => 0 };
        var evalData = new Option<string?>("--eval-data") { Description = "Evaluation data (default: a held-out synthetic stream, or the test split of --data)" };
        var evalBatches = new Option<int>("--eval-batches") { Description = "Batches per periodic evaluation (the same sample each time), and per final one without a test split", DefaultValueFactory = _ => 8 };
        var finalEval = new Option<string>("--final-eval") { Description = "split (the whole test split of image data) or sample (--eval-batches batches)", DefaultValueFactory = _ => "split" };
        finalEval.AcceptOnlyFromAmong("split", "sample");
        var onNonFinite = new Option<string>("--on-nonfinite") { Description = $"A step whose loss or gradient norm is NaN or infinite: abort (exit {NonFiniteExitCode}, with a diagnostic record beside --metrics or --save) or skip its update", DefaultValueFactory = _ => "abort" };
        onNonFinite.AcceptOnlyFromAmong("abort", "skip");
        var skipSpikes = new Option<double>("--skip-spikes") { Description = "Skip the update of a step whose loss is Z standard deviations above the mean of the last 128 (as llm.c; 0 = off)", DefaultValueFactory = _ => 0 };
        var maxMemory = new Option<string?>(MemoryBudget.Option) { Description = MemoryBudget.Description + $"; a worker whose accounted memory passes it during the run stops the run (exit {MemoryBudgetExitCode}) with the memory report" };
        var metrics = new Option<string?>("--metrics") { Description = "Write one JSON object per step (and per evaluation) to this .jsonl file" };
        var profile = new Option<bool>("--profile") { Description = "Time every step's phases and every CPU kernel per worker, with GC pauses and managed allocation; print the table at the end" };
        var distributed = DistributedArguments.Create();

        var cmd = new Command("train", "Train LLaMA or ResNet-18 (default: tiny LLaMA on the synthetic Markov source)")
        {
            model, config, data, noShuffle, augment, steps, batch, seq, optimizer, lr, momentum, weightDecay, warmup, schedule, clip, seed, device,
            initFrom, save, saveEvery, keepLast, resume, evalEvery, evalData, evalBatches, finalEval, metrics, onNonFinite, skipSpikes, maxMemory, profile,
        };
        distributed.AddTo(cmd);
        cmd.SetAction(p =>
        {
            string augmentation = p.GetValue(augment)!;
            var o = new Options(p.GetValue(model)!, p.GetValue(config), p.GetValue(data)!, !p.GetValue(noShuffle), augmentation == "auto" ? null : ImageAugment.Parse(augmentation),
                Check.Positive(p.GetValue(steps), "--steps"), Check.Positive(p.GetValue(batch), "--batch"), Check.Positive(p.GetValue(seq), "--seq"),
                p.GetValue(optimizer)!, Check.PositiveReal(p.GetValue(lr), "--lr"), Check.NonNegativeReal(p.GetValue(momentum), "--momentum"),
                Check.NonNegativeReal(p.GetValue(weightDecay), "--weight-decay"), p.GetValue(warmup) is { } w ? Check.AtLeast(w, 0, "--warmup") : null, p.GetValue(schedule)!,
                Check.NonNegativeReal(p.GetValue(clip), "--clip"), p.GetValue(seed), p.GetValue(initFrom), p.GetValue(save),
                Check.AtLeast(p.GetValue(saveEvery), 0, "--save-every"), p.GetValue(resume), Check.AtLeast(p.GetValue(evalEvery), 0, "--eval-every"),
                p.GetValue(evalData), Check.Positive(p.GetValue(evalBatches), "--eval-batches"), p.GetValue(finalEval) == "sample", p.GetValue(metrics), distributed.Parse(p),
                p.GetValue(device)!, Check.Positive(p.GetValue(keepLast), "--keep-last"),
                p.GetValue(onNonFinite) == "skip" ? NonFinitePolicy.Skip : NonFinitePolicy.Abort, Check.NonNegativeReal(p.GetValue(skipSpikes), "--skip-spikes"),
                p.GetValue(maxMemory) is { } size ? MemoryBudget.Parse(size) : null, p.GetValue(profile))
            {
                Given = cmd.Options.Where(option => p.GetResult(option) is { Implicit: false }).Select(option => option.Name).ToHashSet(),
            };
            Validate(o);
            return Run(o, Console.Out, Console.IsOutputRedirected);
        });
        return cmd;
    }

    private static void Validate(Options o)
    {
        if (o.Profile && o.Device != "cpu") throw new UsageException($"--profile times the CPU backend's kernels; --device {o.Device} is not profiled (on a GPU use Nsight Systems)");
        if (o.Resume is not null && o.InitFrom is not null) throw new UsageException("--resume and --init-from are contradictory: a resumed run takes its weights from the training state");
        if (o.SaveEvery > 0 && o.Save is null) throw new UsageException("--save-every needs --save");
        if (o.KeepLast > 1 && (o.Save is null || o.Save.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)))
            throw new UsageException($"--keep-last ({o.KeepLast}) keeps training-state checkpoints; it needs --save DIR (a directory, not a *.safetensors file)");
        if (o.Augment is not null && o.Model != "resnet18") throw new UsageException("--augment applies to image data (--model resnet18)");
        var (steps, warmup) = o.Distributed.Matched(o.Steps, o.WarmupSteps);
        if (o.Schedule == "cosine" && (o.WarmupSteps >= o.Steps || warmup >= steps))
        {
            throw new UsageException(o.Warmup is null
                ? $"--steps ({o.Steps}): the default warm-up ({o.WarmupSteps} steps, {warmup} after --schedule-match) does not fit {steps} steps; pass --warmup"
                : $"--warmup ({o.Warmup}) must be smaller than --steps ({o.Steps}) with --schedule cosine");
        }
        if (o.Model == "resnet18" && o.Data != "synthetic" && !Directory.Exists(o.Data) && !File.Exists(o.Data)) throw new UsageException($"--data: '{o.Data}' does not exist");
        if (o.Resume is not null && !Directory.Exists(o.Resume)) throw new UsageException($"--resume: '{o.Resume}' is not a directory");
        if (o.Resume is not null) CheckResumable(o);
        if (o.Metrics is not null && Directory.Exists(o.Metrics)) throw new UsageException($"--metrics: '{o.Metrics}' is a directory, expected a .jsonl file path");
        if (o.Metrics is not null) RequireParentDirectory(o.Metrics, "--metrics");
        RunSetup.CheckConfig(o.Model, o.Config);
        if (o.InitFrom is not null) RunSetup.ModelFile(o.InitFrom, "--init-from");
        // Checked before training, so a bad --save path does not cost the whole run.
        if (o.Save is not null)
        {
            if (o.Save.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
            {
                if (Directory.Exists(o.Save)) throw new UsageException($"--save: '{o.Save}' is a directory; a *.safetensors path saves the weights as one file");
                RequireParentDirectory(o.Save, "--save");
            }
            else if (File.Exists(Path.TrimEndingDirectorySeparator(o.Save)))
            {
                throw new UsageException($"--save: '{o.Save}' is a file; give a *.safetensors path for the weights or a directory path for the full training state");
            }
        }
    }

    /// <summary>
    /// A training state of this version, or, for one DP worker, the single-worker training state of an earlier one;
    /// every option given again must match what the checkpoint was saved with (see <see cref="CheckMatchesCheckpoint"/>).
    /// </summary>
    private static void CheckResumable(Options o)
    {
        string resume = o.Resume!;
        var d = o.Distributed;
        if (SdpCheckpoint.IsSingleWorkerState(resume))
        {
            if (!d.IsSingleWorkerDp) throw new UsageException($"--resume: '{resume}' is a single-worker training state from an earlier Sdp version; it resumes only with --workers 1 --mode dp");
        }
        else if (!File.Exists(Path.Combine(resume, SdpCheckpoint.StateFileName)))
        {
            throw new UsageException($"--resume: '{resume}' has no {SdpCheckpoint.StateFileName} (nor the {TrainingCheckpoint.StateFileName} of an earlier single-worker Sdp version); it is not a training state saved by `sdp train --save DIR`");
        }
        CheckMatchesCheckpoint(o, SdpCheckpoint.ReadInfo(resume));
    }

    private static void RequireParentDirectory(string path, string option)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        if (!Directory.Exists(dir)) throw new UsageException($"{option}: directory '{dir}' of '{path}' does not exist");
    }

    /// <summary>
    /// Trains with the <see cref="Trainer"/> (W workers, DP or SDP; one worker is plain single-process training),
    /// printing the run, progress and a summary with per-worker memory and, for several workers, communication,
    /// and writing the metrics.
    /// </summary>
    public static int Run(Options o, TextWriter output, bool plain)
    {
        if (o.Distributed.Launcher == Launcher.Mpi) return RunMpiRank(o, output);
        using var devices = DeviceSelection.Open(o.Device, o.Distributed.Workers);
        if (devices.Banner is not null) output.WriteLine(devices.Banner);
        using var host = DeviceScope.Use(devices.Host);
        return Run(o, devices, output, plain, job: null);
    }

    /// <param name="job">This process's rank of a multi-process job (it runs that worker only), or null: every worker here.</param>
    private static int Run(Options o, DeviceSelection devices, TextWriter output, bool plain, JobRank? job)
    {
        var d = o.Distributed;
        // A resumed run takes the model configuration and the optimizer's kind and settings from the training state.
        var resumed = o.Resume is null ? null : SdpCheckpoint.ReadInfo(o.Resume);
        string? config = resumed?.ModelConfig ?? o.Config;
        var (probe, floor, dataDescription) = RunSetup.BuildData(o.Model, o.Data, o.Batch, o.Seq, o.Shuffle, o.Seed, train: true, 0, d.Workers, o.Augment);
        var (eval, _, _) = RunSetup.BuildData(o.Model, o.EvalData ?? o.Data, o.Batch, o.Seq, shuffle: false, o.Seed, train: false);
        (config, string? vocabNote) = RunSetup.ShardVocabulary(o.Model, config, probe);
        if (vocabNote is not null) dataDescription += $"; {vocabNote}";
        var (channels, classes) = ImageShape(probe);
        // Before the model and the workers allocate anything.
        if (o.MaxMemory is { } budget) MemoryBudget.Require(EstimateMemory(o, config, probe, resumed), budget);
        var model = RunSetup.BuildSubnetworkModel(o.Model, config, o.Seed, channels, classes, d.Level, d.Subnet, o.InitFrom, resumed is null ? "--config" : $"--resume checkpoint '{o.Resume}'");
        int? vocab = RunSetup.VocabSize(o.Model, config);
        eval = RunSetup.CheckTokenIds(eval, vocab, o.EvalData is null ? "--data" : "--eval-data", o.EvalData ?? o.Data);
        var (steps, warmup) = d.Matched(o.Steps, o.WarmupSteps);
        ILrSchedule schedule = o.Schedule == "cosine" ? new WarmupCosineSchedule(o.Lr, warmup, steps, o.Lr * 0.1) : new ConstantSchedule(o.Lr);
        var sdp = new SdpOptions
        {
            Workers = d.Workers, Mode = d.Mode, Level = d.Level, Masking = d.Masking, Coverage = d.Coverage, PlanSeed = d.PlanSeed,
            BucketBytes = (long)d.BucketMb << 20, CollectiveTimeout = TimeSpan.FromSeconds(d.CommTimeoutSeconds), EvalRule = d.EvalRule,
        };
        Func<IReadOnlyList<Tensor>, Optimizer> makeOptimizer = resumed is not null ? resumed.Optimizer.Create
            : o.Optimizer == "sgd" ? parameters => new Sgd(parameters, o.Lr, momentum: o.Momentum, weightDecay: o.WeightDecay)
            : parameters => new AdamW(parameters, o.Lr, weightDecay: o.WeightDecay);
        IBatchSource TrainData(int worker)
        {
            var source = worker == 0 ? probe : RunSetup.BuildData(o.Model, o.Data, o.Batch, o.Seq, o.Shuffle, o.Seed, train: true, worker, d.Workers, o.Augment).Source;
            return RunSetup.CheckTokenIds(source, vocab, "--data", o.Data);
        }
        // Recalibration reads the training data at its own batch size, as update_bn reads its loader.
        var recalibration = d.BnRecalibrate == 0 ? null
            : new BatchNormRecalibration(RunSetup.BuildData(o.Model, o.Data, d.BnRecalibrateBatch, o.Seq, o.Shuffle, o.Seed, train: true, augmentation: o.Augment).Source, d.BnRecalibrate);
        // Image data has a test split: the final evaluation reads all of it, periodic ones a sample.
        var testSplit = !o.FinalEvalOnSample && eval is ImageBatches split ? split.Loader : null;
        var runOptions = RunOptionsJson(o, probe, testSplit is not null);
        var options = new TrainerOptions
        {
            Steps = steps, Schedule = schedule, Clip = o.Clip, EvalEvery = o.EvalEvery, EvalBatches = o.EvalBatches, FinalEvalBatches = (int?)testSplit?.BatchesPerEpoch,
            BnRecalibration = recalibration,
            SavePath = o.Save, SaveEvery = o.SaveEvery, KeepLast = o.KeepLast, RunOptions = runOptions,
            Profile = o.Profile, MaxMemoryBytes = o.MaxMemory, OnNonFinite = o.OnNonFinite, SkipSpikes = o.SkipSpikes, DiagnosticsPath = job is { Processes.Rank: > 0 } ? null : DiagnosticsPath(o),
        };
        Trainer trainer;
        try
        {
            trainer = new Trainer(model, sdp, makeOptimizer, TrainData, options, eval, devices.Worker, job);
        }
        catch (ArgumentException e)
        {
            // Options are checked one by one before this; what remains is a combination the model cannot
            // be cut into (e.g. a worker left without any unit of a group), which is still the user's input.
            throw new UsageException(CliRunner.MessageOf(e));
        }
        using (trainer)
        {
            if (o.Resume is not null)
            {
                try
                {
                    trainer.Resume(o.Resume);
                }
                catch (ArgumentException e)
                {
                    throw new UsageException($"--resume: {CliRunner.MessageOf(e)}");
                }
                output.WriteLine($"resumed from {o.Resume} at step {trainer.Step}");
            }
            PrintRun(o, trainer, steps, warmup, dataDescription, floor, output);
            return Train(o, trainer, steps, floor, testSplit is not null, runOptions, output, plain);
        }
    }

    private static void PrintRun(Options o, Trainer trainer, long steps, int warmup, string dataDescription, double? floor, TextWriter output)
    {
        var d = o.Distributed;
        var inv = CultureInfo.InvariantCulture;
        var plan = trainer.Plan;
        string variant = plan is null ? "dp" : $"sdp, {SubnetworkPlan.LevelName(d.Level)} level, {(d.Masking == Masking.Forward ? "forward" : "backward")} masking, C = {d.Coverage.ToString("0.###", inv)}";
        long parameters = plan?.TotalParams ?? trainer.WorkerModel(trainer.LocalWorkers[0]).Module.ParameterCount;
        output.WriteLine($"sdp train: {o.Model} ({parameters:N0} parameters) on {dataDescription}");
        output.WriteLine($"  {d.Workers} {(d.Workers == 1 ? "worker" : "workers")} ({variant}), batch {o.Batch}{(d.Workers > 1 ? " per worker" : "")}{(o.Model == "llama" ? $" x {o.Seq} tokens" : "")}, " +
            $"{steps} steps{(steps != o.Steps ? $" (flop-matched: {o.Steps} ÷ C)" : "")}, seed {o.Seed}");
        string shrunk = !o.WarmupShrunk ? ""
            : warmup == o.WarmupSteps ? $" (default {DefaultWarmup} shrunk for a {o.Steps}-step run)"
            : $" (default {DefaultWarmup} shrunk to {o.WarmupSteps} for a {o.Steps}-step run, then flop-matched)";
        output.WriteLine($"  {trainer.WorkerOptimizer(trainer.LocalWorkers[0]).GetType().Name.ToLowerInvariant()}, lr {o.Lr} {o.Schedule}, warm-up {warmup}{shrunk}, clip {o.Clip}");
        if (plan is not null)
        {
            output.WriteLine(string.Create(inv, $"  plan: {plan.DistinctHolderGroups} holder sets, {(plan.IsConnected ? "connected" : "DISCONNECTED")}, algebraic connectivity {plan.AlgebraicConnectivity:0.####} (normalised {plan.NormalizedAlgebraicConnectivity:0.####})"));
            for (int w = 0; w < d.Workers; w++)
                output.WriteLine(string.Create(inv, $"    worker {w}: {plan.HeldParams(w):N0} of {plan.TotalParams:N0} parameters ({100.0 * plan.HeldParams(w) / plan.TotalParams:0.0}%)"));
        }
        if (d.Workers > 1)
        {
            int shown = trainer.LocalWorkers[0];
            var (collectives, bytes) = trainer.GradientSyncCost(shown);
            output.WriteLine(string.Create(inv, $"  gradient sync (worker {shown}): {collectives} collectives, {MemorySnapshot.FormatBytes((long)bytes)} sent per step, {trainer.CommunicatorKind}"));
        }
        if (d.EvalRule != EvalRule.Dense) output.WriteLine($"  evaluation rule: {EvaluationRules.Name(d.EvalRule)} (--eval-rule)");
        if (d.BnRecalibrate > 0) output.WriteLine($"  before each evaluation: BatchNorm statistics re-estimated on {d.BnRecalibrate} training batches of {d.BnRecalibrateBatch} (cumulative average)");
        if (floor is { } f) output.WriteLine($"  loss floor (entropy rate of the source): {f:F4} nats/token");
    }

    /// <summary>
    /// Runs the trainer with progress, metrics (after a header record holding <paramref name="runOptions"/>) and
    /// periodic notes, then prints the summary. <paramref name="finalOnWholeSplit"/>: the final evaluation reads the whole test split.
    /// </summary>
    private static int Train(Options o, Trainer trainer, long steps, double? floor, bool finalOnWholeSplit, JsonObject runOptions, TextWriter output, bool plain)
    {
        int workers = o.Distributed.Workers;
        // In DP the evaluated model is worker 0's; in SDP it is assembled from the holders.
        string evaluated = EvaluatedModel(trainer) is { Length: > 0 } what ? $" ({what})" : "";
        // Only the final evaluation is at the last step; periodic ones stop before it.
        bool WholeSplit(EvalMetrics e) => finalOnWholeSplit && e.Step == steps;
        string unit = trainer.WorkerModel(trainer.LocalWorkers[0]).ItemUnit;
        string Extent(EvalMetrics e) => WholeSplit(e) ? $"{e.Count:N0} test {unit}, whole split" : $"sample of {e.Count:N0} {unit}";
        using var metricsFile = o.Metrics is null ? null : new MetricsWriter(new FileInfo(o.Metrics));
        metricsFile?.Write(new JsonObject { ["run"] = runOptions.DeepClone() });
        var progress = new TrainProgress(output, plain, steps, trainer.Step);
        long firstStep = trainer.Step;
        var recent = new Queue<double>();
        double items = 0;
        EvalMetrics? lastEval = null;
        StepMetrics? last = null;
        trainer.StepCompleted += m =>
        {
            last = m;
            recent.Enqueue(m.Loss);
            if (recent.Count > 20) recent.Dequeue();
            items += m.ItemsPerSecond * m.StepMs / 1000;
            metricsFile?.Write(StepRecord(m));
            progress.Report(m);
        };
        trainer.Evaluated += e =>
        {
            lastEval = e;
            metricsFile?.Write(EvalRecord(e, WholeSplit(e)));
            progress.Note(e.Accuracy is { } a
                ? $"eval step {e.Step}{evaluated}: loss {e.MeanLoss:F4}, accuracy {a:P2} ({Extent(e)})"
                : $"eval step {e.Step}{evaluated}: loss {e.MeanLoss:F4}, perplexity {e.Perplexity:F3} ({Extent(e)})");
        };
        trainer.Saved += path => progress.Note($"saved {path} at step {trainer.Step}");

        var clock = Stopwatch.StartNew();
        try
        {
            progress.Run(trainer.Run);
        }
        catch (MemoryBudgetExceededException e)
        {
            metricsFile?.Commit();
            if (trainer.LocalWorkers[0] != 0) return MemoryBudgetExitCode;
            Console.Error.WriteLine($"sdp: {e.Message}");
            output.WriteLine($"memory per worker at step {e.Step} ({MemoryBudget.Option} {MemorySnapshot.FormatBytes(e.Budget)})");
            PrintMemory(e.Workers, output);
            return MemoryBudgetExitCode;
        }
        catch (NonFiniteException e)
        {
            // Every worker stopped at the same step; the metrics up to it are what the record is read against.
            metricsFile?.Commit();
            if (trainer.LocalWorkers[0] == 0) Console.Error.WriteLine($"sdp: {e.Message}");
            return NonFiniteExitCode;
        }
        clock.Stop();
        metricsFile?.Commit();

        var inv = CultureInfo.InvariantCulture;
        double trainLoss = recent.Count == 0 ? double.NaN : recent.Average();
        output.WriteLine();
        output.WriteLine("summary");
        output.WriteLine($"  train loss       {trainLoss:F4} (mean {(workers > 1 ? "over workers " : "")}of the last {recent.Count} steps)");
        if (lastEval is { } le)
        {
            string scope = EvaluatedModel(trainer) is { Length: > 0 } model ? $"{model}, {Extent(le)}" : Extent(le);
            output.WriteLine($"  eval loss        {le.MeanLoss:F4}" + (le.Accuracy is { } acc ? $", accuracy {acc:P2}" : $", perplexity {le.Perplexity:F3}") + $" ({scope})");
            if (trainer.LastSubnetworkMetrics is { } own)
                output.WriteLine("  subnetworks      " + string.Join(", ", own.Select((m, w) => $"worker {w} " + (m.Accuracy is { } a ? $"{a:P2}" : $"loss {m.MeanLoss:F4}"))));
        }
        if (floor is { } fl) output.WriteLine($"  entropy floor    {fl:F4}; gap {(lastEval?.MeanLoss ?? trainLoss) - fl:F4} nats/token");
        output.WriteLine($"  throughput       {items / Math.Max(1e-9, clock.Elapsed.TotalSeconds):N0} {trainer.WorkerModel(trainer.LocalWorkers[0]).ItemUnit}/s over {(workers > 1 ? $"all {workers} workers, " : "")}{trainer.Step - firstStep} steps ({clock.Elapsed.TotalSeconds:F1} s)");
        if (workers > 1 && last is not null)
            output.WriteLine(string.Create(inv, $"  communication    {last.MaxCollectives} collectives per step (max worker), {MemorySnapshot.FormatBytes((long)last.Workers.Max(w => w.BytesSent))} sent per step (max worker)"));
        output.WriteLine(workers > 1 ? "  peak memory per worker" : "  peak memory");
        // Collective in a job: every process reports its worker's account.
        PrintMemory(trainer.WorkerMemory(), output);
        // What the backend holds per process (the CPU: GEMM packing panels) belongs to no worker's account.
        output.WriteLine($"  {BackendReport.ProcessWorkspace(trainer.WorkerModel(trainer.LocalWorkers[0]).Module)}");
        if (trainer.Profile is { } timings)
        {
            output.WriteLine();
            foreach (string line in timings.Report()) output.WriteLine(line);
        }
        return 0;
    }

    /// <summary>Peak bytes per category and in total, one row per worker.</summary>
    private static void PrintMemory(IReadOnlyList<MemorySnapshot> memory, TextWriter output)
    {
        var categories = Enum.GetValues<MemoryCategory>();
        output.WriteLine("    worker " + string.Concat(categories.Select(c => $"{c,16}")) + $"{"total",16}");
        for (int w = 0; w < memory.Count; w++)
        {
            var snap = memory[w];
            output.WriteLine($"    {w,-6} " + string.Concat(categories.Select(c => $"{MemorySnapshot.FormatBytes(snap.PeakBytes(c)),16}")) + $"{MemorySnapshot.FormatBytes(snap.PeakTotal),16}");
        }
    }

    /// <summary>The exit code of a run stopped because a worker's accounted memory passed --max-memory.</summary>
    public const int MemoryBudgetExitCode = 4;

    /// <summary>The memory model's estimate of this run's workers (the model as it will be built, the optimizer as it will be made).</summary>
    private static MemoryEstimate EstimateMemory(Options o, string? config, IBatchSource probe, SdpCheckpoint.Info? resumed)
    {
        var d = o.Distributed;
        MemoryWorkload workload = o.Model == "llama"
            ? new LlamaWorkload(RunSetup.LlamaConfigFrom(config ?? RunSetup.DefaultLlamaPreset, "--config"), o.Batch, o.Seq)
            : new ResNetWorkload(RunSetup.ResNetConfigFrom(config, ImageShape(probe).Channels, ImageShape(probe).Classes, "--config"), o.Batch,
                probe is ImageBatches images ? images.Loader.Dataset.Height : 32);
        string kind = resumed?.Optimizer.Kind.ToLowerInvariant() ?? o.Optimizer;
        double momentum = resumed?.Optimizer.Hyperparameters.GetValueOrDefault("momentum") ?? o.Momentum;
        var optimizer = kind == "adamw" ? OptimizerMemory.AdamW : momentum > 0 ? OptimizerMemory.SgdMomentum : OptimizerMemory.Sgd;
        var variant = d.Mode == ParallelMode.Sdp ? new SdpVariant(d.Level, d.Masking, d.Coverage, d.PlanSeed, d.Subnet) : null;
        return MemoryModel.Estimate(workload, optimizer, d.Workers, variant);
    }

    internal static (int Channels, int Classes) ImageShape(IBatchSource source)
        => source is ImageBatches images ? (images.Loader.Dataset.Channels, images.Loader.Dataset.Classes) : (3, 10);

    /// <summary>
    /// The run's options as stored with every worker's checkpoint state and in the metrics header: "augment" is the
    /// augmentation <paramref name="train"/> applies (after --augment auto), "final_eval" and "bn_recalibrate" how evaluation is done.
    /// </summary>
    private static JsonObject RunOptionsJson(Options o, IBatchSource train, bool finalOnWholeSplit)
    {
        var json = new JsonObject
        {
            ["model"] = o.Model, ["data"] = o.Data, ["steps"] = o.Steps, ["batch"] = o.Batch, ["seq"] = o.Seq, ["optimizer"] = o.Optimizer,
            ["lr"] = o.Lr, ["schedule"] = o.Schedule, ["warmup"] = o.WarmupSteps, ["clip"] = o.Clip, ["seed"] = o.Seed,
            ["eval_batches"] = o.EvalBatches, ["final_eval"] = finalOnWholeSplit ? "split" : "sample",
        };
        if (train is ImageBatches images) json["augment"] = ImageAugment.NameOf(images.Loader.Augmentation);
        if (o.OnNonFinite != NonFinitePolicy.Abort) json["on_nonfinite"] = "skip";
        if (o.SkipSpikes > 0) json["skip_spikes"] = o.SkipSpikes;
        json["eval_rule"] = EvaluationRules.Name(o.Distributed.EvalRule);
        if (o.Distributed.BnRecalibrate > 0) json["bn_recalibrate"] = new JsonObject { ["batches"] = o.Distributed.BnRecalibrate, ["batch"] = o.Distributed.BnRecalibrateBatch };
        return json;
    }

    /// <summary>
    /// One step: the run's loss, rate, norm and throughput; "memory" of the worker with the highest peak (the
    /// only one when W = 1); and per worker its loss, memory and communication.
    /// </summary>
    internal static JsonObject StepRecord(StepMetrics m)
    {
        var workers = new JsonArray();
        foreach (var w in m.Workers)
        {
            workers.Add(new JsonObject
            {
                ["worker"] = w.Worker, ["loss"] = JsonNumbers.Of(w.Loss), ["memory"] = MemoryJson(w.Memory),
                ["comm"] = new JsonObject { ["bytes_sent"] = w.BytesSent, ["collectives"] = w.Collectives },
            });
        }
        var record = new JsonObject
        {
            ["step"] = m.Step, ["loss"] = JsonNumbers.Of(m.Loss), ["lr"] = m.LearningRate, ["grad_norm"] = JsonNumbers.Of(m.GradNorm), ["step_ms"] = m.StepMs,
            [$"{m.ItemUnit}_per_s"] = m.ItemsPerSecond, ["memory"] = MemoryJson(m.Workers.MaxBy(w => w.Memory.PeakTotal)!.Memory), ["workers"] = workers,
        };
        // Present once a step has been skipped, so runs that never skip keep their records as they were.
        if (m.SkippedSteps > 0)
        {
            record["skipped"] = m.Skipped;
            record["skipped_steps"] = m.SkippedSteps;
        }
        return record;
    }

    internal static JsonObject EvalRecord(EvalMetrics e, bool wholeSplit)
    {
        var o = new JsonObject { ["eval"] = true, ["step"] = e.Step, ["loss"] = JsonNumbers.Of(e.MeanLoss), ["count"] = e.Count, ["whole_split"] = wholeSplit };
        if (e.Accuracy is { } a) o["accuracy"] = a;
        else o["perplexity"] = JsonNumbers.Of(e.Perplexity);
        return o;
    }

    /// <summary>{"parameters": {"current": B, "peak": B}, ...} in snake_case category names.</summary>
    public static JsonObject MemoryJson(MemorySnapshot s)
    {
        var o = new JsonObject();
        foreach (var c in Enum.GetValues<MemoryCategory>())
            o[System.Text.Json.JsonNamingPolicy.SnakeCaseLower.ConvertName(c.ToString())] = new JsonObject { ["current"] = s.CurrentBytes(c), ["peak"] = s.PeakBytes(c) };
        return o;
    }
}
