using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using Sdp.Engine;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Models;
using Sdp.Models.Data;

namespace Sdp.Cli.Commands;

/// <summary>
/// `sdp train`: the built-in demo job. An MLP learns K interleaved spirals (a procedurally drawn set,
/// no download) with AdamW or SGD, warm-up + cosine schedule and gradient clipping, and ends with a
/// summary of loss, accuracy, throughput and peak memory by category.
/// </summary>
public static class TrainCommand
{
    public static Command Create()
    {
        var steps = new Option<int>("--steps") { Description = "Optimizer steps", DefaultValueFactory = _ => 1500 };
        var batch = new Option<int>("--batch") { Description = "Samples per step", DefaultValueFactory = _ => 256 };
        var hidden = new Option<int>("--hidden") { Description = "Hidden width of the MLP (two hidden layers)", DefaultValueFactory = _ => 256 };
        var classes = new Option<int>("--classes") { Description = "Number of spirals (classes)", DefaultValueFactory = _ => 5 };
        var optimizer = new Option<string>("--optimizer") { Description = "adamw or sgd", DefaultValueFactory = _ => "adamw" };
        optimizer.AcceptOnlyFromAmong("adamw", "sgd");
        var lr = new Option<double>("--lr") { Description = "Peak learning rate", DefaultValueFactory = _ => 3e-3 };
        var momentum = new Option<double>("--momentum") { Description = "SGD momentum", DefaultValueFactory = _ => 0.9 };
        var weightDecay = new Option<double>("--weight-decay") { Description = "Weight decay", DefaultValueFactory = _ => 0.0 };
        var warmup = new Option<int>("--warmup") { Description = "Linear warm-up steps", DefaultValueFactory = _ => 50 };
        var schedule = new Option<string>("--schedule") { Description = "constant or cosine", DefaultValueFactory = _ => "cosine" };
        schedule.AcceptOnlyFromAmong("constant", "cosine");
        var clip = new Option<double>("--clip") { Description = "Global gradient-norm clip (0 = off)", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<ulong>("--seed") { Description = "Seed for data and initialisation", DefaultValueFactory = _ => 0UL };
        var metrics = new Option<FileInfo?>("--metrics") { Description = "Write one JSON object per step to this JSONL file" };
        var logEvery = new Option<int>("--log-every") { Description = "Print a progress line every K steps", DefaultValueFactory = _ => 100 };

        var cmd = new Command("train", "Train the built-in demo model (an MLP on synthetic spirals)")
        {
            steps, batch, hidden, classes, optimizer, lr, momentum, weightDecay, warmup, schedule, clip, seed, metrics, logEvery,
        };
        cmd.SetAction(p =>
        {
            var options = new TrainOptions(
                Positive(p.GetValue(steps), "--steps"), Positive(p.GetValue(batch), "--batch"), Positive(p.GetValue(hidden), "--hidden"),
                AtLeast(p.GetValue(classes), 2, "--classes"), p.GetValue(optimizer)!, PositiveReal(p.GetValue(lr), "--lr"),
                p.GetValue(momentum), p.GetValue(weightDecay), AtLeast(p.GetValue(warmup), 0, "--warmup"), p.GetValue(schedule)!,
                p.GetValue(clip), p.GetValue(seed), p.GetValue(metrics), Positive(p.GetValue(logEvery), "--log-every"));
            if (options.Warmup >= options.Steps && options.Schedule == "cosine")
                throw new UsageException($"--warmup ({options.Warmup}) must be smaller than --steps ({options.Steps}) with --schedule cosine");
            return Run(options, Console.Out);
        });
        return cmd;
    }

    private static int Positive(int v, string name) => v > 0 ? v : throw new UsageException($"{name} must be a positive integer, got {v}");

    private static int AtLeast(int v, int min, string name) => v >= min ? v : throw new UsageException($"{name} must be at least {min}, got {v}");

    private static double PositiveReal(double v, string name) => v > 0 && double.IsFinite(v) ? v : throw new UsageException($"{name} must be a positive number, got {v}");

    public sealed record TrainOptions(int Steps, int Batch, int Hidden, int Classes, string Optimizer, double Lr, double Momentum,
        double WeightDecay, int Warmup, string Schedule, double Clip, ulong Seed, FileInfo? Metrics, int LogEvery);

    public static int Run(TrainOptions o, TextWriter output)
    {
        var account = new MemoryAccount("worker0");
        using var activation = account.Activate();
        var data = new SpiralDataset(o.Classes, 2000, noise: 0.2, o.Seed);
        var rng = new Rng(o.Seed + 1);
        using var model = new Mlp([2, o.Hidden, o.Hidden, o.Classes], rng);
        using Optimizer opt = o.Optimizer == "sgd"
            ? new Sgd(model.Parameters, o.Lr, momentum: o.Momentum, weightDecay: o.WeightDecay)
            : new AdamW(model.Parameters, o.Lr, weightDecay: o.WeightDecay);
        ILrSchedule lrs = o.Schedule == "cosine" ? new WarmupCosineSchedule(o.Lr, o.Warmup, o.Steps, o.Lr * 0.01) : new ConstantSchedule(o.Lr);

        output.WriteLine($"sdp train: MLP 2-{o.Hidden}-{o.Hidden}-{o.Classes} ({model.ParameterCount:N0} parameters) on {o.Classes} spirals " +
                         $"({data.Count} points), {o.Optimizer}, lr {o.Lr} {o.Schedule}, batch {o.Batch}, {o.Steps} steps, chance loss ln({o.Classes}) = {Math.Log(o.Classes):F4}");

        using var metrics = o.Metrics is null ? null : new MetricsWriter(o.Metrics);
        var total = Stopwatch.StartNew();
        double emaLoss = double.NaN;
        for (int step = 0; step < o.Steps; step++)
        {
            var sw = Stopwatch.StartNew();
            double loss, gradNorm;
            opt.LearningRate = lrs.LearningRate(step);
            using (TensorScope.Begin())
            {
                var (x, y) = data.Sample(o.Batch, rng);
                var lossT = Ops.CrossEntropy(model.Forward(x), y);
                loss = lossT.Item();
                lossT.Backward();
                gradNorm = o.Clip > 0 ? GradClip.ClipGlobalNorm(model.Parameters, o.Clip) : GradClip.ClipGlobalNorm(model.Parameters, double.PositiveInfinity);
                opt.Step();
                opt.ZeroGrad();
            }
            double ms = sw.Elapsed.TotalMilliseconds;
            emaLoss = double.IsNaN(emaLoss) ? loss : 0.95 * emaLoss + 0.05 * loss;
            metrics?.Write(new Dictionary<string, object>
            {
                ["step"] = step + 1, ["loss"] = loss, ["lr"] = opt.LearningRate, ["grad_norm"] = gradNorm, ["step_ms"] = ms,
                ["samples_per_s"] = o.Batch / (ms / 1000), ["memory"] = MemoryRecord(account.Snapshot()),
            });
            if ((step + 1) % o.LogEvery == 0 || step == 0)
                output.WriteLine($"step {step + 1,6}  loss {loss:F4}  (ema {emaLoss:F4})  lr {opt.LearningRate:E2}  grad_norm {gradNorm:F3}  {ms:F1} ms");
        }
        total.Stop();

        double accuracy, fullLoss;
        using (Sdp.Engine.Autograd.GradMode.Disable())
        using (TensorScope.Begin())
        {
            var (x, y) = data.All();
            var logits = model.Forward(x);
            fullLoss = Ops.CrossEntropy(logits, y).Item();
            accuracy = Accuracy(logits.ToArray<float>(), data.Labels, o.Classes);
        }
        metrics?.Commit();

        var snap = account.Snapshot();
        output.WriteLine();
        output.WriteLine("summary");
        output.WriteLine($"  final loss       {fullLoss:F4} on all {data.Count} points (chance {Math.Log(o.Classes):F4}), accuracy {accuracy:P1}");
        output.WriteLine($"  throughput       {o.Steps * (double)o.Batch / total.Elapsed.TotalSeconds:N0} samples/s ({total.Elapsed.TotalSeconds:F1} s)");
        output.WriteLine($"  peak memory      {MemorySnapshot.FormatBytes(snap.PeakTotal)} in all");
        foreach (var c in Enum.GetValues<MemoryCategory>())
            output.WriteLine($"    {c,-16} {MemorySnapshot.FormatBytes(snap.PeakBytes(c)),12}");
        return 0;
    }

    private static double Accuracy(float[] logits, int[] labels, int classes)
    {
        int correct = 0;
        for (int i = 0; i < labels.Length; i++)
        {
            var row = logits.AsSpan(i * classes, classes);
            int best = 0;
            for (int c = 1; c < classes; c++) if (row[c] > row[best]) best = c;
            if (best == labels[i]) correct++;
        }
        return correct / (double)labels.Length;
    }

    private static Dictionary<string, object> MemoryRecord(MemorySnapshot s)
    {
        var record = new Dictionary<string, object>();
        foreach (var c in Enum.GetValues<MemoryCategory>())
            record[JsonNamingPolicy.SnakeCaseLower.ConvertName(c.ToString())] = new { current = s.CurrentBytes(c), peak = s.PeakBytes(c) };
        return record;
    }
}
