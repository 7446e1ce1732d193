using System.Reflection;
using System.Text;
using System.Text.Json.Nodes;
using Sdp.Engine.Subnetworks;
using Sdp.Measure;
using Sdp.Models.Checkpoints;
using Sdp.Models.Training;

namespace Sdp.Cli.Commands;

/// <summary>
/// quality.md, its PNGs (curves through `sdp plot`'s renderer) and CSVs, and the method reference's result-level
/// checks (A21–A23) judged on the runs.
/// </summary>
public static partial class ExperimentCommand
{
    /// <summary>A22's "close to DP" for this report: at most 2 accuracy points below DP, or an evaluation loss at most 2% above DP's (better than DP is close).</summary>
    public const double CloseAccuracyPoints = 0.02, CloseLossFraction = 0.02;

    /// <summary>One comparison as observed: <see cref="Verdict"/> starts with "held" or "not held".</summary>
    public sealed record QualityCheck(string Id, string Model, string Schedule, string Claim, string Verdict);

    /// <summary>Seed-mean of the runs of one model, variant and schedule.</summary>
    private static List<QualityRun> RunsOf(IReadOnlyList<QualityRun> runs, string model, string variant, ScheduleMatch schedule)
        => [.. runs.Where(r => r.Key.Model == model && r.Key.Variant.Key == variant && (r.Key.Variant.IsDp || r.Key.Schedule == schedule))];

    private static double Mean(IEnumerable<double> xs) => xs.DefaultIfEmpty(double.NaN).Average();

    private static string MetricName(string model) => model == "resnet18" ? "accuracy" : "eval loss";

    /// <summary>A score (accuracy, or minus the loss) as the table shows it.</summary>
    private static string Show(string model, double score) => model == "resnet18" ? Invariant($"{score * 100:F2}%") : Invariant($"{-score:F4}");

    /// <summary>
    /// The checks, per model and schedule: A21 as the method reference words it (B-SDP ≥ B_β-SDP) and as issue 11 words it
    /// (B-SDP ≥ N_β-SDP), block ≥ neuron under each masking (A21's second half, issue 11's A22), A22 as the method
    /// reference words it (flop-matched SDP close to DP), and per model A23 (backward-masked gradients better aligned
    /// with DP's than forward-masked ones, at each level).
    /// </summary>
    public static IReadOnlyList<QualityCheck> Checks(QualitySettings settings, IReadOnlyList<QualityRun> runs)
    {
        var checks = new List<QualityCheck>();
        foreach (var model in settings.Models.Select(m => m.Model))
        {
            foreach (var schedule in new[] { ScheduleMatch.SameSteps, ScheduleMatch.FlopMatched })
            {
                string label = ScheduleLabel(schedule);
                QualityCheck AtLeast(string id, string a, string b)
                {
                    var x = RunsOf(runs, model, a, schedule);
                    var y = RunsOf(runs, model, b, schedule);
                    string claim = $"{QualityVariant.Of(a).Name} ≥ {QualityVariant.Of(b).Name} in {MetricName(model)}";
                    return new QualityCheck(id, model, label, claim, Verdict(model, x.Select(r => r.Score).ToList(), y.Select(r => r.Score).ToList()));
                }
                checks.Add(AtLeast("A21", "b-fwd", "b-bwd"));
                checks.Add(AtLeast("A21 (issue 11)", "b-fwd", "n-bwd"));
                checks.Add(AtLeast("A21/A22 block ≥ neuron", "b-fwd", "n-fwd"));
                checks.Add(AtLeast("A21/A22 block ≥ neuron", "b-bwd", "n-bwd"));
                if (schedule == ScheduleMatch.FlopMatched)
                {
                    double dp = Mean(RunsOf(runs, model, "dp", schedule).Select(r => r.Score));
                    foreach (var v in QualityVariant.All.Where(v => !v.IsDp))
                    {
                        double sdp = Mean(RunsOf(runs, model, v.Key, schedule).Select(r => r.Score));
                        bool close = model == "resnet18" ? sdp >= dp - CloseAccuracyPoints : -sdp <= -dp * (1 + CloseLossFraction);
                        string gap = model == "resnet18" ? Invariant($"{(sdp - dp) * 100:+0.00;-0.00} points") : Invariant($"{(-sdp) / (-dp) - 1:+0.0%;-0.0%} loss");
                        string within = model == "resnet18" ? Invariant($"at most {CloseAccuracyPoints * 100:0} points below DP") : Invariant($"loss at most {CloseLossFraction:0%} above DP's");
                        checks.Add(new QualityCheck("A22", model, label, $"{v.Name} {within}", $"{(close ? "held" : "not held")} ({Show(model, sdp)} against {Show(model, dp)}: {gap})"));
                    }
                }
            }
            foreach (var level in new[] { "n", "b" })
            {
                var forward = RunsOf(runs, model, $"{level}-fwd", ScheduleMatch.SameSteps).Where(r => r.MeanCosine is not null).Select(r => r.MeanCosine!.Value).ToList();
                var backward = RunsOf(runs, model, $"{level}-bwd", ScheduleMatch.SameSteps).Where(r => r.MeanCosine is not null).Select(r => r.MeanCosine!.Value).ToList();
                string claim = $"{QualityVariant.Of($"{level}-bwd").Name} gradient closer to DP's than {QualityVariant.Of($"{level}-fwd").Name} (mean cosine over training)";
                checks.Add(new QualityCheck("A23", model, "same-steps", claim, Verdict(null, backward, forward, strict: true)));
            }
        }
        return checks;
    }

    /// <summary>
    /// "held" when the seed-mean of <paramref name="a"/> is at least that of <paramref name="b"/> (strictly above with
    /// <paramref name="strict"/>), with both means, and a warning when the margin is smaller than either side's spread over seeds.
    /// </summary>
    private static string Verdict(string? model, IReadOnlyList<double> a, IReadOnlyList<double> b, bool strict = false)
    {
        double ma = Mean(a), mb = Mean(b);
        if (double.IsNaN(ma) || double.IsNaN(mb)) return "not measured";
        bool held = strict ? ma > mb : ma >= mb;
        string Value(double x) => model is null ? Invariant($"{x:F4}") : Show(model, x);
        double spread = Math.Max(a.Max() - a.Min(), b.Max() - b.Min());
        string note = a.Count > 1 && Math.Abs(ma - mb) < spread ? "; the margin is smaller than the spread over seeds" : "";
        return $"{(held ? "held" : "not held")} ({Value(ma)} against {Value(mb)}{note})";
    }

    /// <summary>Writes quality.md, the PNGs and the CSVs into <paramref name="dir"/> (each atomically); returns their paths.</summary>
    private static IReadOnlyList<string> WriteReport(string dir, QualitySettings s, IReadOnlyList<QualityRun> runs, string command, QualityTiming timing)
    {
        var written = new List<string>();
        void Write(string name, byte[] bytes)
        {
            string path = Path.Combine(dir, name);
            AtomicFile.Write(path, f => f.Write(bytes));
            written.Add(path);
        }
        var images = new Dictionary<(string Model, string Kind), string>();
        foreach (var m in s.Models)
        {
            foreach (var schedule in new[] { ScheduleMatch.SameSteps, ScheduleMatch.FlopMatched })
            {
                string name = $"quality-{m.Model}-{ScheduleLabel(schedule)}.png";
                var curves = QualityVariant.All.Select(v => SeedMeanCurves(m, v, schedule, RunsOf(runs, m.Model, v.Key, schedule), s)).Where(c => c is not null).Select(c => c!).ToList();
                Write(name, PlotCommand.Render(curves, 1000, 450));
                images[(m.Model, ScheduleLabel(schedule))] = name;
            }
            // Each variant keeps the colour it has in the curves (its index among all variants, DP first).
            var lines = QualityVariant.All.Select((v, i) => (v, i)).Where(x => !x.v.IsDp).Select(x => AlignmentLine(x.v, x.i, RunsOf(runs, m.Model, x.v.Key, ScheduleMatch.SameSteps))).ToList();
            if (lines.Any(l => l.X.Length > 0))
            {
                string name = $"quality-{m.Model}-alignment.png";
                Write(name, PlotCommand.RenderLines(lines, $"{m.Title}: cos(ĝ, g_DP) on the same batches, same-steps runs", "step", "cosine", 1000, 450));
                images[(m.Model, "alignment")] = name;
            }
        }
        Write("quality-runs.csv", Encoding.UTF8.GetBytes(RunsCsv(runs)));
        Write("quality-alignment.csv", Encoding.UTF8.GetBytes(AlignmentCsv(runs)));
        Write(QualityMarkdown, Encoding.UTF8.GetBytes(Markdown(s, runs, images, command, timing)));
        return written;
    }

    /// <summary>
    /// A variant's curves averaged over seeds, as `sdp plot` draws a run: training loss at every step and the
    /// evaluations (loss, accuracy). Runs of one variant and schedule share steps and evaluation points.
    /// </summary>
    private static MetricsRun? SeedMeanCurves(QualityModel m, QualityVariant v, ScheduleMatch schedule, IReadOnlyList<QualityRun> runs, QualitySettings s)
    {
        if (runs.Count == 0) return null;
        var steps = runs[0].Losses.Select((p, i) => (p.Step, Mean(runs.Select(r => r.Losses[i].Loss)))).ToList();
        var evals = runs[0].Evals.Select((e, i) => (e.Step, Mean(runs.Select(r => r.Evals[i].MeanLoss)),
            e.Accuracy is null ? (double?)null : Mean(runs.Select(r => r.Evals[i].Accuracy!.Value)))).ToList();
        // The same options on every line put them in the title; the label is the variant's name.
        var options = new JsonObject { ["model"] = m.Model, ["data"] = s.Data, ["batch"] = m.Batch, ["optimizer"] = "adamw", ["lr"] = s.Lr, ["schedule"] = $"cosine, {ScheduleLabel(schedule)}" };
        return new MetricsRun(v.Name, options, steps, evals);
    }

    /// <summary>A variant's cosine at each probe step, averaged over seeds (the runs of one variant probe at the same steps).</summary>
    private static PlotLine AlignmentLine(QualityVariant v, int color, IReadOnlyList<QualityRun> runs)
    {
        var probed = runs.Where(r => r.Alignment.Count > 0).ToList();
        if (probed.Count == 0) return new PlotLine(v.Name, [], [], color);
        var x = probed[0].Alignment.Select(a => (double)a.Step).ToArray();
        var y = x.Select((_, i) => Mean(probed.Select(r => r.Alignment[i].Cosine))).ToArray();
        return new PlotLine(v.Name, x, y, color);
    }

    private static string RunsCsv(IReadOnlyList<QualityRun> runs)
    {
        var sb = new StringBuilder("model,variant,schedule_match,seed,steps,held_fraction,eval_rule,eval_loss,accuracy,mean_cosine,final_cosine,seconds\n");
        foreach (var r in runs)
        {
            sb.Append(Invariant($"{r.Key.Model},{r.Key.Variant.Key},{r.Key.ScheduleName},{r.Key.Seed},{r.Steps},{r.HeldFraction:F4},{r.EvalRule},{r.Final.MeanLoss:F6},"));
            sb.Append(Invariant($"{(r.Final.Accuracy is { } a ? a.ToString("F6", System.Globalization.CultureInfo.InvariantCulture) : "")},"));
            sb.Append(Invariant($"{(r.MeanCosine is { } c ? c.ToString("F6", System.Globalization.CultureInfo.InvariantCulture) : "")},"));
            sb.Append(Invariant($"{(r.Alignment.Count > 0 ? r.Alignment[^1].Cosine.ToString("F6", System.Globalization.CultureInfo.InvariantCulture) : "")},{r.Seconds:F1}\n"));
        }
        return sb.ToString();
    }

    private static string AlignmentCsv(IReadOnlyList<QualityRun> runs)
    {
        var sb = new StringBuilder("model,variant,seed,step,cosine,sdp_norm,dp_norm\n");
        foreach (var r in runs)
            foreach (var a in r.Alignment)
                sb.Append(Invariant($"{r.Key.Model},{r.Key.Variant.Key},{r.Key.Seed},{a.Step},{a.Cosine:F6},{a.SdpNorm:G6},{a.DpNorm:G6}\n"));
        return sb.ToString();
    }

    private static string Markdown(QualitySettings s, IReadOnlyList<QualityRun> runs, IReadOnlyDictionary<(string, string), string> images, string command, QualityTiming timing)
    {
        var sb = new StringBuilder();
        void Line(string text = "") => sb.Append(text).Append('\n');
        string version = typeof(ExperimentCommand).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown";
        Line("# Quality at CPU scale: DP against N-SDP and B-SDP");
        Line();
        Line($"Written by `{command}` (sdp {version}) on {MachineInfo.Describe()}.");
        string loads = timing.Loads.Count == 0 ? ""
            : Invariant($" The 1-minute load average after each run was {timing.Loads.Average():F1} on average (at most {timing.Loads.Max():F1}); above {Environment.ProcessorCount}, other work shared the cores, and the wall times (here and in the tables) are longer than the experiment's own.");
        Line(Invariant($"{runs.Count} runs took {timing.Elapsed.TotalMinutes:F1} minutes of wall time and {timing.Cpu.TotalMinutes:F1} minutes of CPU time (all threads).") + loads);
        if (s.Quick) Line("**`--quick`: tiny models and a few steps that check the pipeline; these numbers say nothing about SDP.**");
        Line();
        Line("## Setup");
        Line();
        Line(Invariant($"- W = {s.Workers} in-process workers (threads sharing the cores), C = {s.Coverage} (each unit held by {s.Coverage * s.Workers:0} workers), seeds {string.Join(" and ", s.Seeds)} (initialisation, data order and plan)."));
        Line(Invariant($"- AdamW, learning rate {s.Lr} with a linear warm-up (a tenth of the steps, at most 20) and a cosine decay to a tenth, gradient clipping at 1: `sdp train`'s defaults."));
        Line("- Variants (method reference §3.3): DP; N-SDP fwd (neuron level, forward masking: N-SDP); N-SDP bwd (neuron level, backward masking: N_β-SDP); " +
             "B-SDP fwd (block level, forward masking: B-SDP); B-SDP bwd (block level, backward masking: B_β-SDP).");
        Line("- Schedules (A17): *same-steps* runs DP's steps; *flop-matched* runs steps ÷ C with the whole learning-rate schedule stretched alike (about DP's compute under forward masking). DP runs once per seed and is the baseline of both.");
        Line("- Evaluation: the assembled dense model under each variant's default rule (`--eval-rule auto`: B-SDP fwd scales residual branches by their coverage and, on ResNet, recalibrates BatchNorm statistics; everything else is evaluated as assembled).");
        Line(Invariant($"- Gradient alignment (A23): every same-steps SDP run is probed at step 0 and at each of its {s.Points} evaluation steps. A probe takes the run's current assembled weights θ and one fresh training batch per worker, and computes on them the DP gradient g_DP = the mean of the {s.Workers} batch gradients of the dense model, and the synchronised SDP gradient ĝ (each parameter's worker gradients averaged over its holders; under forward masking a worker's gradient is its subnetwork's, under backward masking the dense gradient of its held parameters), then cos(ĝ, g_DP) over all parameters. At C = 1 the two are equal (a unit test checks the cosine is 1, and that ĝ is exactly the step the trainer takes)."));
        foreach (var m in s.Models)
        {
            string data = m.Model == "llama" ? $"the synthetic Markov source, batch {m.Batch} x {m.Seq} tokens per worker" : $"{(s.Data == "synthetic" ? "the synthetic shapes set (10,000 training, 2,000 test images, 10 classes)" : s.Data)}, batch {m.Batch} images per worker";
            string eval = m.Model == "llama" ? $"loss on {m.EvalBatches} held-out batches of {m.EvalBatch} x {m.Seq} tokens (the same sample every time)"
                : m.WholeTestSplit ? $"accuracy on the whole test split at the end ({m.EvalBatches} batches of {m.EvalBatch} along the way)" : $"accuracy on {m.EvalBatches} test batches of {m.EvalBatch}";
            Line(Invariant($"- {m.Title} (`{m.Config}`) on {data}; {m.Steps} DP steps; evaluation: {eval}. Largest SDP worker's share of the parameters: {string.Join(", ", QualityVariant.All.Where(v => !v.IsDp).Select(v => $"{v.Name} {RunsOf(runs, m.Model, v.Key, ScheduleMatch.SameSteps).Select(r => r.HeldFraction).DefaultIfEmpty(double.NaN).First() * 100:0}%"))}."));
        }
        foreach (var m in s.Models)
        {
            Line();
            Line($"## {m.Title}");
            Line();
            var seeds = s.Seeds;
            Line($"| variant | schedule | steps | {string.Join(" | ", seeds.Select(x => $"{MetricName(m.Model)} seed {x}"))} | mean | vs DP | mean cos(ĝ, g_DP) | final cos | wall time |");
            Line($"|---|---|---:|{string.Concat(seeds.Select(_ => "---:|"))}---:|---:|---:|---:|---:|");
            double dp = Mean(RunsOf(runs, m.Model, "dp", ScheduleMatch.SameSteps).Select(r => r.Score));
            foreach (var v in QualityVariant.All)
            {
                foreach (var schedule in v.IsDp ? [ScheduleMatch.SameSteps] : new[] { ScheduleMatch.SameSteps, ScheduleMatch.FlopMatched })
                {
                    var part = RunsOf(runs, m.Model, v.Key, schedule);
                    if (part.Count == 0) continue;
                    double mean = Mean(part.Select(r => r.Score));
                    string vsDp = v.IsDp ? "" : m.Model == "resnet18" ? Invariant($"{(mean - dp) * 100:+0.00;-0.00} pt") : Invariant($"{-mean + dp:+0.0000;-0.0000}");
                    string cos = part.All(r => r.MeanCosine is not null) ? Invariant($"{Mean(part.Select(r => r.MeanCosine!.Value)):F3}") : "";
                    string final = part.All(r => r.Alignment.Count > 0) ? Invariant($"{Mean(part.Select(r => r.Alignment[^1].Cosine)):F3}") : "";
                    string perSeed = string.Join(" | ", seeds.Select(seed => part.FirstOrDefault(r => r.Key.Seed == seed) is { } r ? Show(m.Model, r.Score) : ""));
                    Line(Invariant($"| {v.Name} | {(v.IsDp ? "-" : ScheduleLabel(schedule))} | {part[0].Steps} | {perSeed} | **{Show(m.Model, mean)}** | {vsDp} | {cos} | {final} | {part.Sum(r => r.Seconds):F0} s |"));
                }
            }
            Line();
            Line(m.Model == "resnet18" ? "*vs DP*: accuracy points against DP's mean." : "*vs DP*: evaluation loss against DP's mean (positive: worse).");
            Line("*mean cos*: the mean of the alignment probes of the same-steps run (steps 0 to the end), *final cos* the last one; *wall time*: all seeds of the row, alignment probes and evaluations included.");
            if (m.Model == "llama")
                Line("The source's entropy rate bounds the loss from below (`sdp train` prints it; about 1.08 nats/token). Runs this short are leaving the initial plateau (about 5.3, the unigram loss), and when a run leaves it varies by seed: compare seeds before reading a gap.");
            Line();
            foreach (var kind in new[] { "same-steps", "flop-matched", "alignment" })
            {
                if (images.TryGetValue((m.Model, kind), out var png)) Line($"![{m.Title}, {kind}]({png})");
            }
        }
        Line();
        Line("## Claims, as observed");
        Line();
        Line("Each check compares seed means; *the margin is smaller than the spread over seeds* flags a comparison two seeds cannot settle. " +
             "The method reference (`sdp-method.md` §9) words A21 as \"B-SDP ≥ B_β-SDP and block level ≥ neuron level\" and A22 as \"for C above ~0.3 (FLOP-matched) SDP stays close to DDP\"; " +
             "issue 11 words A21 as B-SDP ≥ backward-masked N-SDP and A22 as block ≥ neuron. All are reported. " +
             Invariant($"\"Close\" for A22 is this report's threshold, one-sided as the claim is (\"close to DDP, sometimes better\"): at most {CloseAccuracyPoints * 100:0} accuracy points below DP, or an evaluation loss at most {CloseLossFraction:0%} above DP's. ") +
             "Flop-matched runs take twice DP's steps while DP keeps its own, so in runs this short, where DP itself is far from converged, a flop-matched variant can pass DP by training longer: that is the comparison the paper makes (A17).");
        Line();
        Line("| check | model | schedule | claim | observed |");
        Line("|---|---|---|---|---|");
        foreach (var c in Checks(s, runs)) Line($"| {c.Id} | {c.Model} | {c.Schedule} | {c.Claim} | {c.Verdict} |");
        Line();
        Line("## Evaluating B-SDP (issue 11 item 7)");
        Line();
        Line("The assembled dense model of block-level forward masking is not a function any worker trained; the rules for evaluating it (residual branches scaled by coverage, " +
             "inverse scaling in training, BatchNorm recalibration, the subnetworks' ensemble) are compared in `docs/results/evaluation.md` ([evaluation.md](evaluation.md) beside this file), " +
             "which makes `scale+recalibrate` the default for ResNet (`scale` for LLaMA). The B-SDP fwd rows above are evaluated under that default; here it gave:");
        Line();
        foreach (var m in s.Models)
        {
            double dp = Mean(RunsOf(runs, m.Model, "dp", ScheduleMatch.SameSteps).Select(r => r.Score));
            var rule = RunsOf(runs, m.Model, "b-fwd", ScheduleMatch.SameSteps).Select(r => r.EvalRule).FirstOrDefault() ?? "?";
            string At(ScheduleMatch schedule) => Show(m.Model, Mean(RunsOf(runs, m.Model, "b-fwd", schedule).Select(r => r.Score)));
            Line($"- {m.Title}, `{rule}`: B-SDP fwd {At(ScheduleMatch.SameSteps)} at DP's steps and {At(ScheduleMatch.FlopMatched)} flop-matched, against DP's {Show(m.Model, dp)} ({MetricName(m.Model)}, mean over seeds).");
        }
        return sb.ToString();
    }
}
