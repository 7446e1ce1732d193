using System.Diagnostics;
using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Engine.Optim;
using Sdp.Engine.Subnetworks;
using Sdp.Measure;
using Sdp.Models.Data;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;

namespace Sdp.Cli.Commands;

/// <summary>
/// `sdp experiment quality --out DIR`: the paper's quality claims at CPU scale (issue 11 item 6). For each model and
/// seed it trains DP and the four SDP variants (neuron and block level, forward and backward masking) at C = 0.5 on
/// W = 4 in-process workers, the SDP variants both for DP's steps and flop-matched (steps ÷ C, the learning-rate
/// schedule stretched alike), evaluating along the way; every same-steps SDP run also measures, every few steps, the
/// cosine between its synchronised gradient and the DP gradient at its current weights on the same batches
/// (<see cref="GradientAlignment"/>). Then it writes quality.md, the curves, and CSVs (ExperimentCommand.Report.cs).
/// </summary>
public static partial class ExperimentCommand
{
    public const string QualityMarkdown = "quality.md";
    public const string RunsFolder = "quality-runs";

    /// <summary>Offset of the alignment probes' data order from the training order, so the probes read batches of the training distribution that the workers are not reading at that step.</summary>
    private const ulong ProbeOrder = 0xA11C_0000;

    /// <summary>DP or one of the four SDP variants; <see cref="Key"/> names its files, <see cref="PaperName"/> is the method reference's (§3.3).</summary>
    public sealed record QualityVariant(string Key, string Name, string PaperName, SubnetLevel? Level, Masking Masking)
    {
        public bool IsDp => Level is null;

        public static IReadOnlyList<QualityVariant> All { get; } =
        [
            new("dp", "DP", "DDP", null, Masking.Forward),
            new("n-fwd", "N-SDP fwd", "N-SDP", SubnetLevel.Neuron, Masking.Forward),
            new("n-bwd", "N-SDP bwd", "N_β-SDP", SubnetLevel.Neuron, Masking.Backward),
            new("b-fwd", "B-SDP fwd", "B-SDP", SubnetLevel.Block, Masking.Forward),
            new("b-bwd", "B-SDP bwd", "B_β-SDP", SubnetLevel.Block, Masking.Backward),
        ];

        public static QualityVariant Of(string key) => All.Single(v => v.Key == key);
    }

    /// <summary>One model's runs: its configuration, DP steps, per-worker batch, and how it is evaluated.</summary>
    /// <param name="EvalBatches">Batches of each periodic evaluation (the same sample each time).</param>
    /// <param name="WholeTestSplit">The final evaluation reads the whole test split (images), else <paramref name="EvalBatches"/>.</param>
    /// <param name="RecalibrationBatches">BatchNorm recalibration (the default evaluation rule of B-SDP fwd on ResNet): batches of <paramref name="RecalibrationBatch"/> images.</param>
    public sealed record QualityModel(string Model, string Title, string Config, int Steps, int Batch, int Seq, int EvalBatch, int EvalBatches, bool WholeTestSplit, int RecalibrationBatches, int RecalibrationBatch);

    /// <summary>Everything the experiment runs; <see cref="Points"/> evaluations (and alignment probes after step 0) per run.</summary>
    public sealed record QualitySettings(IReadOnlyList<QualityModel> Models, string Data, int Workers, double Coverage, IReadOnlyList<ulong> Seeds, double Lr, int Points, bool Quick)
    {
        /// <summary>DP steps of LLaMA tiny and ResNet-18 without --steps: sized so the whole experiment fits 30 minutes on 2 cores.</summary>
        public const int LlamaSteps = 64, ResNetSteps = 60;

        /// <summary>The full experiment, or (<paramref name="quick"/>) tiny models and a few steps that only check the pipeline.</summary>
        public static QualitySettings For(bool quick, string data, IReadOnlyList<string> models, int seeds, int? steps)
        {
            var all = quick
                ? new[]
                {
                    new QualityModel("llama", "LLaMA (quick: 4 layers of width 32)", """{"vocab_size":256,"hidden_size":32,"intermediate_size":32,"num_hidden_layers":4,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":64}""",
                        steps ?? 4, 2, 16, 2, 1, false, 0, 0),
                    new QualityModel("resnet18", "ResNet-18 (quick: width 4)", """{"width":4}""", steps ?? 4, 4, 0, 16, 1, false, 1, 8),
                }
                : new[]
                {
                    new QualityModel("llama", "LLaMA tiny", "tiny", steps ?? LlamaSteps, 4, 64, 8, 8, false, 0, 0),
                    new QualityModel("resnet18", "ResNet-18, width 16", """{"width":16}""", steps ?? ResNetSteps, 16, 0, 100, 4, true, TrainCommand.DefaultRecalibrationBatches, 64),
                };
            return new QualitySettings([.. all.Where(m => models.Contains(m.Model))], data, Workers: 4, Coverage: 0.5, [.. Enumerable.Range(0, seeds).Select(s => (ulong)s)], Lr: 5e-3, Points: quick ? 2 : 4, quick);
        }
    }

    /// <summary>One run's identity.</summary>
    public sealed record RunKey(string Model, QualityVariant Variant, ScheduleMatch Schedule, ulong Seed)
    {
        public string ScheduleName => ScheduleLabel(Schedule);

        public string FileStem => $"{Model}-{Variant.Key}-{ScheduleName}-seed{Seed}";
    }

    /// <summary>What one run produced: its losses, evaluations (the last one final), alignment probes and wall time.</summary>
    public sealed record QualityRun(RunKey Key, long Steps, double HeldFraction, string EvalRule, IReadOnlyList<(long Step, double Loss)> Losses, IReadOnlyList<EvalMetrics> Evals,
        IReadOnlyList<AlignmentMetrics> Alignment, double Seconds)
    {
        public EvalMetrics Final => Evals[^1];

        /// <summary>The run's score, higher is better: final accuracy for a classifier, minus the final loss otherwise.</summary>
        public double Score => Final.Accuracy ?? -Final.MeanLoss;

        public double? MeanCosine => Alignment.Count == 0 ? null : Alignment.Average(a => a.Cosine);
    }

    public static string ScheduleLabel(ScheduleMatch schedule) => schedule == ScheduleMatch.SameSteps ? "same-steps" : "flop-matched";

    /// <summary>
    /// How long the experiment took: wall time, this process's CPU time (which other work on the machine barely
    /// changes), and the 1-minute load average sampled after every run (null where the OS has none), so a reader can
    /// tell a shared machine's wall time from the experiment's own.
    /// </summary>
    public sealed record QualityTiming(TimeSpan Elapsed, TimeSpan Cpu, IReadOnlyList<double> Loads);

    /// <summary>Runs every model, seed, variant and schedule, writing each run's metrics as it ends, then the report.</summary>
    public static int Quality(string dir, QualitySettings settings, string command, TextWriter output)
    {
        var clock = Stopwatch.StartNew();
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        var loads = new List<double>();
        string runs = Path.Combine(dir, RunsFolder);
        Directory.CreateDirectory(runs);
        int total = settings.Models.Count * settings.Seeds.Count * (1 + 2 * (QualityVariant.All.Count - 1));
        output.WriteLine($"sdp experiment quality: {total} runs on {MachineInfo.Describe()}");
        output.WriteLine(Invariant($"  W = {settings.Workers}, C = {settings.Coverage}, seeds {string.Join(", ", settings.Seeds)}; metrics in {runs}"));
        var results = new List<QualityRun>();
        foreach (var model in settings.Models)
        {
            foreach (ulong seed in settings.Seeds)
            {
                // Image splits are loaded (or drawn) once per seed and shared by the runs' loaders.
                var train = model.Model == "resnet18" ? ImageSplit(settings, train: true, seed) : null;
                var test = model.Model == "resnet18" ? ImageSplit(settings, train: false, seed) : null;
                foreach (var variant in QualityVariant.All)
                {
                    foreach (var schedule in variant.IsDp ? [ScheduleMatch.SameSteps] : new[] { ScheduleMatch.SameSteps, ScheduleMatch.FlopMatched })
                    {
                        var run = RunOne(settings, model, new RunKey(model.Model, variant, schedule, seed), train, test, runs);
                        results.Add(run);
                        if (MachineInfo.LoadAverage() is { } load) loads.Add(load);
                        string metric = run.Final.Accuracy is { } a ? Invariant($"accuracy {a:P2}") : Invariant($"eval loss {run.Final.MeanLoss:F4}");
                        string cosine = run.MeanCosine is { } c ? Invariant($", mean cos(ĝ, g_DP) {c:F3}") : "";
                        output.WriteLine(Invariant($"  [{results.Count}/{total}] {model.Model} seed {seed} {variant.Name,-9} {run.Key.ScheduleName,-12} {run.Steps,4} steps: {metric}{cosine} ({run.Seconds:F0} s)"));
                    }
                }
            }
        }
        clock.Stop();
        var timing = new QualityTiming(clock.Elapsed, Process.GetCurrentProcess().TotalProcessorTime - cpu, loads);
        var written = WriteReport(dir, settings, results, command, timing);
        output.WriteLine(Invariant($"wrote {string.Join(", ", written.Select(Path.GetFileName))} into {dir} ({clock.Elapsed.TotalMinutes:F1} min)"));
        foreach (var check in Checks(settings, results)) output.WriteLine($"  {check.Id} {check.Model} {check.Schedule}: {check.Claim}: {check.Verdict}");
        return 0;
    }

    /// <summary>
    /// The training or test split of the image data; --quick draws a small shapes set of 16x16 images (512 and 128)
    /// instead of the full one, whose 12,000 images take longer to draw than the quick runs take to train.
    /// </summary>
    private static ImageDataset ImageSplit(QualitySettings settings, bool train, ulong seed)
        => settings.Quick && settings.Data == "synthetic"
            ? ShapesDataset.Create(train ? 512 : 128, train ? seed : seed + 1, size: 16)
            : RunSetup.ImageSplit(settings.Data, train, seed);

    /// <summary>
    /// One run with the trainer in this process: W workers on the model's synthetic or given data, AdamW with a warm-up
    /// cosine schedule and clipping at 1 as `sdp train` defaults to, the variant's default evaluation rule (with BatchNorm
    /// recalibration where that rule asks for it), <see cref="QualitySettings.Points"/> evaluations, and alignment probes
    /// for same-steps SDP runs.
    /// </summary>
    private static QualityRun RunOne(QualitySettings s, QualityModel m, RunKey key, ImageDataset? trainImages, ImageDataset? testImages, string runsDir)
    {
        var clock = Stopwatch.StartNew();
        var v = key.Variant;
        var (first, _, _) = RunSetup.BuildData(m.Model, s.Data, m.Batch, m.Seq, shuffle: true, key.Seed, train: true, 0, s.Workers, images: trainImages);
        var (eval, _, _) = RunSetup.BuildData(m.Model, s.Data, m.EvalBatch, m.Seq, shuffle: false, key.Seed, train: false, images: testImages);
        var (channels, classes) = TrainCommand.ImageShape(first);
        var model = RunSetup.BuildSubnetworkModel(m.Model, m.Config, key.Seed, channels, classes, v.Level ?? SubnetLevel.Block, new SubnetOptions(), null, "--config");
        double coverage = v.IsDp ? 1 : s.Coverage;
        long steps = SdpOptions.MatchedSteps(m.Steps, coverage, key.Schedule);
        int warmup = (int)SdpOptions.MatchedSteps(TrainCommand.DefaultWarmupFor(m.Steps), coverage, key.Schedule);
        var mode = v.IsDp ? ParallelMode.Dp : ParallelMode.Sdp;
        var rule = EvaluationRules.DefaultFor(mode, v.Level ?? SubnetLevel.Block, v.Masking, hasBatchNorm: m.Model == "resnet18");
        var recalibration = rule.HasFlag(EvalRule.Recalibrate)
            ? new BatchNormRecalibration(RunSetup.BuildData(m.Model, s.Data, m.RecalibrationBatch, m.Seq, shuffle: true, key.Seed, train: true, images: trainImages).Source, m.RecalibrationBatches)
            : null;
        var sdp = new SdpOptions { Workers = s.Workers, Mode = mode, Level = v.Level ?? SubnetLevel.Block, Masking = v.Masking, Coverage = coverage, PlanSeed = key.Seed, EvalRule = rule };
        int every = (int)Math.Max(1, steps / s.Points);
        var testSplit = m.WholeTestSplit && eval is ImageBatches split ? split.Loader : null;
        var options = new TrainerOptions
        {
            Steps = steps, Schedule = new WarmupCosineSchedule(s.Lr, warmup, steps, s.Lr * 0.1), Clip = 1.0, EvalEvery = every, EvalBatches = m.EvalBatches,
            FinalEvalBatches = (int?)testSplit?.BatchesPerEpoch, BnRecalibration = recalibration,
        };
        IBatchSource TrainData(int worker) => worker == 0 ? first
            : RunSetup.BuildData(m.Model, s.Data, m.Batch, m.Seq, shuffle: true, key.Seed, train: true, worker, s.Workers, images: trainImages).Source;
        using var trainer = new Trainer(model, sdp, p => new AdamW(p, s.Lr), TrainData, options, eval);

        var losses = new List<(long, double)>();
        var evals = new List<EvalMetrics>();
        var alignment = new List<AlignmentMetrics>();
        using var metrics = new MetricsWriter(new FileInfo(Path.Combine(runsDir, key.FileStem + ".jsonl")));
        metrics.Write(new JsonObject
        {
            ["run"] = new JsonObject
            {
                ["model"] = m.Model, ["config"] = m.Config, ["data"] = s.Data, ["variant"] = v.Name, ["schedule_match"] = key.ScheduleName, ["seed"] = key.Seed, ["steps"] = steps,
                ["workers"] = s.Workers, ["coverage"] = coverage, ["batch"] = m.Batch, ["seq"] = m.Seq, ["optimizer"] = "adamw", ["lr"] = s.Lr, ["schedule"] = "cosine", ["warmup"] = warmup,
                ["clip"] = 1.0, ["eval_rule"] = EvaluationRules.Name(rule),
            },
        });
        trainer.StepCompleted += step =>
        {
            losses.Add((step.Step, step.Loss));
            metrics.Write(TrainCommand.StepRecord(step));
        };
        trainer.Evaluated += e =>
        {
            evals.Add(e);
            metrics.Write(TrainCommand.EvalRecord(e, wholeSplit: testSplit is not null && e.Step == steps));
        };

        // Same-steps SDP runs are probed at step 0 and at every evaluation step, on one fresh training batch per worker.
        using var probe = v.IsDp || key.Schedule != ScheduleMatch.SameSteps ? null : new GradientAlignment(model, trainer.Plan!, v.Masking);
        var probeData = probe is null ? [] : Enumerable.Range(0, s.Workers)
            .Select(w => RunSetup.BuildData(m.Model, s.Data, m.Batch, m.Seq, shuffle: true, key.Seed, train: true, w, s.Workers, orderSeed: key.Seed + ProbeOrder, images: trainImages).Source).ToArray();
        void Probe()
        {
            using var scope = TensorScope.Begin();
            var batches = probeData.Select(d => d.NextBatch()).ToList();
            alignment.Add(probe!.Measure(trainer.AssembleDense().Module, batches, trainer.Step));
        }
        if (probe is not null)
        {
            Probe();
            trainer.StepCompleted += step =>
            {
                if (step.Step % every == 0 || step.Step == steps) Probe();
            };
        }
        trainer.Run();
        metrics.Commit();
        var plan = trainer.Plan;
        double held = plan is null ? 1 : Enumerable.Range(0, s.Workers).Max(plan.HeldParams) / (double)plan.TotalParams;
        return new QualityRun(key, steps, held, EvaluationRules.Name(rule), losses, evals, alignment, clock.Elapsed.TotalSeconds);
    }
}
