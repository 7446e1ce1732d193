using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Models.Checkpoints;
using Sdp.Models.Training;

namespace Sdp.Cli.Commands;

/// <summary>
/// `sdp train`: trains LLaMA or ResNet-18 on one worker. With no options it trains the tiny LLaMA on
/// the synthetic Markov source for about a minute on 2 cores and reports the loss against the
/// source's entropy rate, the exact floor.
/// </summary>
public static partial class TrainCommand
{
    public sealed record Options(
        string Model, string? Config, string Data, bool Shuffle, int Steps, int Batch, int Seq,
        string Optimizer, double Lr, double Momentum, double WeightDecay, int Warmup, string Schedule, double Clip,
        ulong Seed, string? InitFrom, string? Save, int SaveEvery, string? Resume, int EvalEvery, string? EvalData, int EvalBatches, string? Metrics, DistributedOptions? Distributed = null);

    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "llama or resnet18", DefaultValueFactory = _ => "llama" };
        model.AcceptOnlyFromAmong(RunSetup.Models);
        var config = new Option<string?>("--config") { Description = "LLaMA preset (tiny, 130m, 1b) or config.json; for resnet18 'cifar' or a config JSON file" };
        var data = new Option<string>("--data") { Description = "'synthetic' or a path: token shard file/glob (llama), CIFAR-10 or MNIST directory (resnet18)", DefaultValueFactory = _ => "synthetic" };
        var noShuffle = new Option<bool>("--no-shuffle") { Description = "Read data in order" };
        var steps = new Option<int>("--steps") { Description = "Total optimizer steps", DefaultValueFactory = _ => 200 };
        var batch = new Option<int>("--batch") { Description = "Sequences or images per step", DefaultValueFactory = _ => 16 };
        var seq = new Option<int>("--seq") { Description = "Tokens per sequence (llama)", DefaultValueFactory = _ => 64 };
        var optimizer = new Option<string>("--optimizer") { Description = "adamw or sgd", DefaultValueFactory = _ => "adamw" };
        optimizer.AcceptOnlyFromAmong("adamw", "sgd");
        var lr = new Option<double>("--lr") { Description = "Peak learning rate", DefaultValueFactory = _ => 5e-3 };
        var momentum = new Option<double>("--momentum") { Description = "SGD momentum", DefaultValueFactory = _ => 0.9 };
        var weightDecay = new Option<double>("--weight-decay") { Description = "Weight decay (decoupled for AdamW)", DefaultValueFactory = _ => 0.0 };
        var warmup = new Option<int>("--warmup") { Description = "Linear warm-up steps", DefaultValueFactory = _ => 20 };
        var schedule = new Option<string>("--schedule") { Description = "constant or cosine (to 10% of the peak)", DefaultValueFactory = _ => "cosine" };
        schedule.AcceptOnlyFromAmong("constant", "cosine");
        var clip = new Option<double>("--clip") { Description = "Global gradient-norm clip (0 = off)", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<ulong>("--seed") { Description = "Seed for initialisation and data", DefaultValueFactory = _ => 0UL };
        var device = new Option<string>("--device") { Description = "cpu", DefaultValueFactory = _ => "cpu" };
        var initFrom = new Option<string?>("--init-from") { Description = "Initial weights: a .safetensors file or a training-state directory" };
        var save = new Option<string?>("--save") { Description = "Save at the end: a *.safetensors path (weights) or a directory (full training state)" };
        var saveEvery = new Option<int>("--save-every") { Description = "Also save every K steps (needs --save)", DefaultValueFactory = _ => 0 };
        var resume = new Option<string?>("--resume") { Description = "Continue the training state saved in this directory" };
        var evalEvery = new Option<int>("--eval-every") { Description = "Evaluate every K steps (and at the end)", DefaultValueFactory = _ => 0 };
        var evalData = new Option<string?>("--eval-data") { Description = "Evaluation data (default: a held-out synthetic stream, or the test split of --data)" };
        var evalBatches = new Option<int>("--eval-batches") { Description = "Batches per evaluation", DefaultValueFactory = _ => 8 };
        var metrics = new Option<string?>("--metrics") { Description = "Write one JSON object per step (and per evaluation) to this .jsonl file" };
        var distributed = DistributedArguments.Create();

        var cmd = new Command("train", "Train LLaMA or ResNet-18 (default: tiny LLaMA on the synthetic Markov source)")
        {
            model, config, data, noShuffle, steps, batch, seq, optimizer, lr, momentum, weightDecay, warmup, schedule, clip, seed, device,
            initFrom, save, saveEvery, resume, evalEvery, evalData, evalBatches, metrics,
        };
        distributed.AddTo(cmd);
        cmd.SetAction(p =>
        {
            if (p.GetValue(device) != "cpu") throw new UsageException($"--device: only 'cpu' is available in this build, got '{p.GetValue(device)}'");
            var o = new Options(p.GetValue(model)!, p.GetValue(config), p.GetValue(data)!, !p.GetValue(noShuffle),
                Check.Positive(p.GetValue(steps), "--steps"), Check.Positive(p.GetValue(batch), "--batch"), Check.Positive(p.GetValue(seq), "--seq"),
                p.GetValue(optimizer)!, Check.PositiveReal(p.GetValue(lr), "--lr"), Check.NonNegativeReal(p.GetValue(momentum), "--momentum"),
                Check.NonNegativeReal(p.GetValue(weightDecay), "--weight-decay"), Check.AtLeast(p.GetValue(warmup), 0, "--warmup"), p.GetValue(schedule)!,
                Check.NonNegativeReal(p.GetValue(clip), "--clip"), p.GetValue(seed), p.GetValue(initFrom), p.GetValue(save),
                Check.AtLeast(p.GetValue(saveEvery), 0, "--save-every"), p.GetValue(resume), Check.AtLeast(p.GetValue(evalEvery), 0, "--eval-every"),
                p.GetValue(evalData), Check.Positive(p.GetValue(evalBatches), "--eval-batches"), p.GetValue(metrics), distributed.Parse(p));
            Validate(o);
            return o.Distributed is { IsSingleWorkerDp: false } ? RunDistributed(o, Console.Out, Console.IsOutputRedirected) : Run(o, Console.Out, Console.IsOutputRedirected);
        });
        return cmd;
    }

    private static void Validate(Options o)
    {
        if (o.Resume is not null && o.InitFrom is not null) throw new UsageException("--resume and --init-from are contradictory: a resumed run takes its weights from the training state");
        if (o.Resume is not null && o.Config is not null) throw new UsageException("--resume takes the model configuration from the checkpoint; drop --config");
        if (o.SaveEvery > 0 && o.Save is null) throw new UsageException("--save-every needs --save");
        if (o.Schedule == "cosine" && o.Warmup >= o.Steps) throw new UsageException($"--warmup ({o.Warmup}) must be smaller than --steps ({o.Steps}) with --schedule cosine");
        if (o.Model == "resnet18" && o.Data != "synthetic" && !Directory.Exists(o.Data) && !File.Exists(o.Data)) throw new UsageException($"--data: '{o.Data}' does not exist");
        if (o.Resume is not null && !Directory.Exists(o.Resume)) throw new UsageException($"--resume: '{o.Resume}' is not a directory");
        if (o.Metrics is not null && Directory.Exists(o.Metrics)) throw new UsageException($"--metrics: '{o.Metrics}' is a directory, expected a .jsonl file path");
        if (o.Metrics is not null) RequireParentDirectory(o.Metrics, "--metrics");
        RunSetup.CheckConfig(o.Model, o.Config);
        if (o.Distributed is { IsSingleWorkerDp: false } d) ValidateDistributed(o, d);
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

    private static void RequireParentDirectory(string path, string option)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        if (!Directory.Exists(dir)) throw new UsageException($"{option}: directory '{dir}' of '{path}' does not exist");
    }

    public static int Run(Options o, TextWriter output, bool plain)
    {
        var account = new MemoryAccount("worker0");
        using var activation = account.Activate();
        var rng = new Rng(o.Seed);

        SdpCheckpoint.Info? resumeInfo = o.Resume is null ? null : SdpCheckpoint.ReadInfo(o.Resume);
        string? config = resumeInfo?.ModelConfig ?? o.Config;
        var (train, floor, dataDescription) = RunSetup.BuildData(o.Model, o.Data, o.Batch, o.Seq, o.Shuffle, o.Seed, train: true);
        var (eval, _, _) = RunSetup.BuildData(o.Model, o.EvalData ?? o.Data, o.Batch, o.Seq, shuffle: false, o.Seed, train: false);
        var (channels, classes) = ImageShape(train);
        using var model = RunSetup.BuildModel(o.Model, config, rng, channels, classes, resumeInfo is null ? "--config" : $"--resume checkpoint '{o.Resume}'");
        if (o.InitFrom is not null) ModuleCheckpoint.LoadInto(model.Module, RunSetup.ModelFile(o.InitFrom, "--init-from"));
        train = RunSetup.CheckTokenIds(train, model, "--data", o.Data);
        eval = RunSetup.CheckTokenIds(eval, model, o.EvalData is null ? "--data" : "--eval-data", o.EvalData ?? o.Data);

        using Optimizer optimizer = resumeInfo is not null ? resumeInfo.Optimizer.Create(model.Module.Parameters())
            : o.Optimizer == "sgd" ? new Sgd(model.Module.Parameters(), o.Lr, momentum: o.Momentum, weightDecay: o.WeightDecay)
            : new AdamW(model.Module.Parameters(), o.Lr, weightDecay: o.WeightDecay);
        ILrSchedule schedule = o.Schedule == "cosine" ? new WarmupCosineSchedule(o.Lr, o.Warmup, o.Steps, o.Lr * 0.1) : new ConstantSchedule(o.Lr);
        using var trainer = new Trainer(model, optimizer, train, new TrainerOptions
        {
            Steps = o.Steps, Schedule = schedule, Clip = o.Clip, EvalEvery = o.EvalEvery, EvalBatches = o.EvalBatches,
            SavePath = o.Save, SaveEvery = o.SaveEvery, RunOptions = RunOptionsJson(o),
        }, account, eval);
        if (o.Resume is not null)
        {
            trainer.Resume(o.Resume);
            output.WriteLine($"resumed from {o.Resume} at step {trainer.Step}");
        }

        output.WriteLine($"sdp train: {o.Model} ({model.Module.ParameterCount:N0} parameters) on {dataDescription}");
        output.WriteLine($"  {optimizer.GetType().Name.ToLowerInvariant()}, lr {o.Lr} {o.Schedule} (warm-up {o.Warmup}), clip {o.Clip}, batch {o.Batch}{(o.Model == "llama" ? $" x {o.Seq} tokens" : "")}, {o.Steps} steps, seed {o.Seed}");
        if (floor is { } f) output.WriteLine($"  loss floor (entropy rate of the source): {f:F4} nats/token");

        using var metricsFile = o.Metrics is null ? null : new MetricsWriter(new FileInfo(o.Metrics));
        var progress = new TrainProgress(output, plain, o.Steps, trainer.Step);
        var recent = new Queue<double>();
        double items = 0;
        long firstStep = trainer.Step;
        EvalMetrics? lastEval = null;
        trainer.StepCompleted += m =>
        {
            recent.Enqueue(m.Loss);
            if (recent.Count > 20) recent.Dequeue();
            items += m.ItemsPerSecond * m.StepMs / 1000;
            metricsFile?.Write(StepRecord(m));
            progress.Report(m);
        };
        trainer.Evaluated += e =>
        {
            lastEval = e;
            metricsFile?.Write(EvalRecord(e));
            progress.Note(e.Accuracy is { } a
                ? $"eval step {e.Step}: loss {e.MeanLoss:F4}, accuracy {a:P2} on {e.Count} images"
                : $"eval step {e.Step}: loss {e.MeanLoss:F4}, perplexity {e.Perplexity:F3} on {e.Count:N0} tokens");
        };
        trainer.Saved += path => progress.Note($"saved {path} at step {trainer.Step}");

        var clock = Stopwatch.StartNew();
        progress.Run(trainer.Run);
        clock.Stop();
        metricsFile?.Commit();

        var snap = account.Snapshot();
        double trainLoss = recent.Count == 0 ? double.NaN : recent.Average();
        output.WriteLine();
        output.WriteLine("summary");
        output.WriteLine($"  train loss       {trainLoss:F4} (mean of the last {recent.Count} steps)");
        if (lastEval is { } le) output.WriteLine($"  eval loss        {le.MeanLoss:F4}" + (le.Accuracy is { } acc ? $", accuracy {acc:P2}" : $", perplexity {le.Perplexity:F3}"));
        if (floor is { } fl) output.WriteLine($"  entropy floor    {fl:F4}; gap {(lastEval?.MeanLoss ?? trainLoss) - fl:F4} nats/token");
        output.WriteLine($"  throughput       {items / Math.Max(1e-9, clock.Elapsed.TotalSeconds):N0} {model.ItemUnit}/s over {trainer.Step - firstStep} steps ({clock.Elapsed.TotalSeconds:F1} s)");
        output.WriteLine($"  peak memory      {MemorySnapshot.FormatBytes(snap.PeakTotal)} in all");
        foreach (var c in Enum.GetValues<MemoryCategory>())
            output.WriteLine($"    {c,-16} {MemorySnapshot.FormatBytes(snap.PeakBytes(c)),12}");
        // The GEMM's per-thread packing panels belong to the process, not to one worker's account.
        output.WriteLine($"  GEMM packing buffers (per process, all threads): {MemorySnapshot.FormatBytes(Sdp.Kernels.Cpu.Gemm.WorkspaceBytes)}");
        return 0;
    }

    private static (int Channels, int Classes) ImageShape(IBatchSource source)
        => source is ImageBatches images ? (images.Loader.Dataset.Channels, images.Loader.Dataset.Classes) : (3, 10);

    private static JsonObject RunOptionsJson(Options o) => new()
    {
        ["model"] = o.Model, ["data"] = o.Data, ["steps"] = o.Steps, ["batch"] = o.Batch, ["seq"] = o.Seq, ["optimizer"] = o.Optimizer,
        ["lr"] = o.Lr, ["schedule"] = o.Schedule, ["warmup"] = o.Warmup, ["clip"] = o.Clip, ["seed"] = o.Seed,
    };

    private static JsonObject StepRecord(StepMetrics m) => new()
    {
        ["step"] = m.Step, ["loss"] = m.Loss, ["lr"] = m.LearningRate, ["grad_norm"] = m.GradNorm, ["step_ms"] = m.StepMs,
        [$"{m.ItemUnit}_per_s"] = m.ItemsPerSecond, ["memory"] = MemoryJson(m.Workers[0].Memory),
    };

    private static JsonObject EvalRecord(EvalMetrics e)
    {
        var o = new JsonObject { ["eval"] = true, ["step"] = e.Step, ["loss"] = e.MeanLoss, ["count"] = e.Count };
        if (e.Accuracy is { } a) o["accuracy"] = a;
        else o["perplexity"] = e.Perplexity;
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
