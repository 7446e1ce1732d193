using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Checkpoints;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Subnetworks;
using ScottPlot;

namespace Sdp.Cli.Commands;

/// <summary>
/// `sdp memory --report DIR`: the paper's memory claim checked on a fixed set of models, every SDP variant against
/// DP, written as memory.md (tables) and memory.png (stacked bars by category for the largest worker). Small models
/// are measured (one real training step of the largest worker, as --measure runs it) beside the analytical model;
/// the paper's sizes are analytical only, and every row says which it is.
/// </summary>
public static partial class MemoryCommand
{
    public const string ReportMarkdown = "memory.md";
    public const string ReportImage = "memory.png";

    /// <summary>What the paper says (method reference §4.1): 30–75% (v4/ICLR), 28–60% (v5), 28% for LLaMA 1B; 28–75% overall.</summary>
    public const double ClaimLow = 0.28, ClaimHigh = 0.75;

    private static string ClaimRange => FormattableString.Invariant($"{ClaimLow * 100:0}–{ClaimHigh * 100:0}%");

    /// <summary>One model of the report: a workload at W workers, measured or analytical only.</summary>
    public sealed record ReportWorkload(string Title, string Model, MemoryWorkload Workload, int Workers, bool Measured);

    /// <summary>
    /// The report's models, all at W = 8 (so C = 0.75, 0.5, 0.25 give 6, 4 and 2 holders per unit), AdamW, float32:
    /// a narrow ResNet-18 and LLaMA tiny that a 2-core machine steps in seconds (measured), then ResNet-18 at full
    /// width and LLaMA 130m and 1b at training batch sizes (analytical: one 1b worker step needs ~20 GiB and minutes).
    /// </summary>
    public static IReadOnlyList<ReportWorkload> ReportWorkloads { get; } =
    [
        new("ResNet-18, width 8, 4 images of 3x16x16 per worker", "resnet18:8 --batch 4 --image-size 16", new ResNetWorkload(new ResNetConfig(8), 4, 16), 8, Measured: true),
        new("LLaMA tiny, 2 x 64 tokens per worker", "llama:tiny --batch 2 --seq 64", new LlamaWorkload(LlamaConfig.Preset("tiny"), 2, 64), 8, Measured: true),
        new("ResNet-18 (CIFAR-10), width 64, 64 images of 3x32x32 per worker", "resnet18 --batch 64 --image-size 32", new ResNetWorkload(new ResNetConfig(64), 64, 32), 8, Measured: false),
        new("LLaMA 130m, 8 x 1024 tokens per worker", "llama:130m --batch 8 --seq 1024", new LlamaWorkload(LlamaConfig.Preset("130m"), 8, 1024), 8, Measured: false),
        new("LLaMA 1b, 8 x 1024 tokens per worker", "llama:1b --batch 8 --seq 1024", new LlamaWorkload(LlamaConfig.Preset("1b"), 8, 1024), 8, Measured: false),
    ];

    /// <summary>
    /// One bar of the report: DP (<see cref="Variant"/> null) or an SDP variant; <see cref="Bytes"/> are the largest
    /// worker's per category (measured peaks on measured rows), <see cref="Model"/> the analytical bytes of the same
    /// worker, <see cref="Why"/> the reason when the variant cannot be built at this W.
    /// </summary>
    public sealed record ReportRow(ReportWorkload Workload, SdpVariant? Variant, bool Measured, CategoryBytes? Bytes, CategoryBytes? Model, int Worker, string? Why)
    {
        public string Name => Variant is null ? "DP" : $"{(Variant.Level == SubnetLevel.Neuron ? "N-SDP" : "B-SDP")} {SdpVariant.MaskingName(Variant.Masking)}";

        public string Coverage => Variant is null ? "1" : Variant.Coverage.ToString("0.##", CultureInfo.InvariantCulture);
    }

    /// <summary>Every row of the report, in table order: per workload DP, then neuron/block x forward/backward x C.</summary>
    public static IReadOnlyList<ReportRow> ReportRows(ulong seed, TextWriter progress)
    {
        var rows = new List<ReportRow>();
        foreach (var w in ReportWorkloads)
        {
            var opt = OptimizerMemory.AdamW;
            var dense = MemoryModel.DenseBytes(w.Workload, opt);
            progress.WriteLine($"{(w.Measured ? "measuring" : "modelling")} {w.Title}");
            rows.Add(new ReportRow(w, null, w.Measured, w.Measured ? MemoryMeasurement.MeasureDenseStep(w.Workload, opt, seed).Peaks : dense, dense, 0, null));
            foreach (var level in new[] { SubnetLevel.Neuron, SubnetLevel.Block })
                foreach (var masking in new[] { Masking.Forward, Masking.Backward })
                    foreach (double c in VariantCoverages)
                    {
                        var variant = new SdpVariant(level, masking, c, seed);
                        MemoryEstimate estimate;
                        try
                        {
                            estimate = MemoryModel.Estimate(w.Workload, opt, w.Workers, variant);
                        }
                        catch (ArgumentException e)
                        {
                            rows.Add(new ReportRow(w, variant, false, null, null, -1, CliRunner.MessageOf(e)));
                            continue;
                        }
                        int worker = estimate.MaxWorker;
                        var model = estimate.PerWorker[worker];
                        var bytes = w.Measured ? MemoryMeasurement.MeasureSdpWorker(w.Workload, opt, w.Workers, variant, worker).Peaks : model;
                        rows.Add(new ReportRow(w, variant, w.Measured, bytes, model, worker, null));
                    }
        }
        return rows;
    }

    /// <summary>Computes the rows and writes memory.md and memory.png into <paramref name="dir"/> (each atomically).</summary>
    public static int Report(string dir, ulong seed, string command, TextWriter output)
    {
        if (!Directory.Exists(dir)) throw new UsageException($"--report: directory '{dir}' does not exist");
        var rows = ReportRows(seed, output);
        string md = Path.Combine(dir, ReportMarkdown), png = Path.Combine(dir, ReportImage);
        byte[] image = ReportPng(rows);
        string text = ReportText(rows, command, seed);
        AtomicFile.Write(png, s => s.Write(image));
        AtomicFile.Write(md, s => s.Write(Encoding.UTF8.GetBytes(text)));
        var savings = rows.Where(r => r.Variant is not null && r.Bytes is not null).Select(r => Saving(rows, r)).ToList();
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"wrote {md} and {png}: {rows.Count} rows ({rows.Count(r => r.Measured)} measured), savings vs DP {MemoryReport.Percent(savings.Min())} to {MemoryReport.Percent(savings.Max())}, " +
            $"{savings.Count(s => s >= ClaimLow && s <= ClaimHigh)} of {savings.Count} variants within the paper's {ClaimRange}"));
        return 0;
    }

    /// <summary>1 − variant total / DP total of the same workload (measured against measured, analytical against analytical).</summary>
    public static double Saving(IReadOnlyList<ReportRow> rows, ReportRow row) => 1.0 - (double)row.Bytes!.Total / Dp(rows, row).Bytes!.Total;

    /// <summary>As <see cref="Saving"/> for parameters + gradients + optimizer state only (what the paper's 14·C·N bytes estimate counts).</summary>
    public static double StaticSaving(IReadOnlyList<ReportRow> rows, ReportRow row) => 1.0 - (double)row.Bytes!.Static / Dp(rows, row).Bytes!.Static;

    private static ReportRow Dp(IReadOnlyList<ReportRow> rows, ReportRow row) => rows.Single(r => r.Workload == row.Workload && r.Variant is null);

    private static string ReportText(IReadOnlyList<ReportRow> rows, string command, ulong seed)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        void Line(string s = "") => sb.Append(s).Append('\n');
        Line("# Per-worker memory: data parallelism against SDP");
        Line();
        Line($"Written by `{command}` on {RuntimeInformation.OSDescription.Trim()} ({RuntimeInformation.ProcessArchitecture}, {Environment.ProcessorCount} CPU threads, .NET {Environment.Version}).");
        Line($"The picture is [{ReportImage}]({ReportImage}): stacked bars of the largest worker's bytes by category, one bar per variant.");
        Line();
        Line($"**The claim.** The SDP paper reports {ClaimRange} lower per-device memory than data parallelism (30–75% in the ICLR version, 28–60% in v5, 28% lower peak for LLaMA 1B; `sdp-method.md` §4.1), estimated from C in the ICLR version. " +
                             "Below, each variant's saving is 1 − (its largest worker's total) / (a DP worker's total), on the same model and batch; the last column says whether it falls in that range. *static saving* counts parameters, gradients and optimizer state only, as the paper's estimate of 14·C·N bytes per device does.");
        Line();
        Line($"**What is counted.** float32; AdamW (8 B/param of state); W = 8 workers; plan seed {seed}. Per worker: parameters, gradients, optimizer state and activations " +
             "(the tensors the autograd tape keeps at the end of the forward pass, at their peak). Workspace (transient op outputs, activation gradients, kernel scratch) and communication buffers are not counted, in either column. " +
             "The bytes are those of the worker with the largest total (SDP workers differ; DP workers are equal).");
        Line();
        Line("**Measured or analytical.** *measured* rows ran one real training step (loss, backward, AdamW update) of that worker alone, as `sdp memory --measure` does, and report the peak of each category of its memory account; " +
             "their *model* column is the analytical total for the same worker and *error* is (measured − model) / model. *analytical* rows are the model only (`sdp memory`; method reference §4.2): these sizes do not fit a 2-core test machine's time.");
        Line();
        Line("N-SDP = neuron level (MLP hidden units; ResNet channels), B-SDP = block level (decoder layers; residual blocks); forward masking trains and stores only the held subnetwork, backward masking keeps the dense weights and masks gradients and optimizer state.");
        foreach (var workload in ReportWorkloads)
        {
            var part = rows.Where(r => r.Workload == workload).ToList();
            Line();
            Line($"## {workload.Title}: {(workload.Measured ? "measured" : "analytical")}");
            Line();
            Line(string.Create(inv, $"{workload.Workload.Describe()}; W = {workload.Workers}; `sdp memory --model {workload.Model} --workers {workload.Workers} --all-variants`{(workload.Measured ? " (one variant at a time with --measure)" : "")}."));
            Line();
            Line("| variant | C | source | worker | parameters | gradients | optimizer | activations | total | model total | error | saving vs DP | static saving | in 28–75% |");
            Line("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            foreach (var r in part)
            {
                string source = r.Bytes is null ? "-" : r.Measured ? "measured" : "analytical";
                if (r.Bytes is null)
                {
                    Line($"| {r.Name} | {r.Coverage} | not available: {r.Why} | | | | | | | | | | | |");
                    continue;
                }
                var b = r.Bytes;
                string worker = r.Variant is null ? "any" : r.Worker.ToString(inv);
                string model = r.Measured ? MemoryReport.Bytes(r.Model!.Total) : "";
                string error = r.Measured ? MemoryReport.Percent(MemoryReport.RelativeError(r.Model!.Total, b.Total), signed: true) : "";
                string saving = r.Variant is null ? "-" : MemoryReport.Percent(Saving(rows, r));
                string staticSaving = r.Variant is null ? "-" : MemoryReport.Percent(StaticSaving(rows, r));
                string within = r.Variant is null ? "" : Saving(rows, r) is >= ClaimLow and <= ClaimHigh ? "yes" : "no";
                Line($"| {r.Name} | {r.Coverage} | {source} | {worker} | {MemoryReport.Bytes(b.Parameters)} | {MemoryReport.Bytes(b.Gradients)} | {MemoryReport.Bytes(b.OptimizerState)} | " +
                     $"{MemoryReport.Bytes(b.Activations)} | {MemoryReport.Bytes(b.Total)} | {model} | {error} | {saving} | {staticSaving} | {within} |");
            }
        }
        Line();
        Line("## Savings against the claim");
        Line();
        Line("| model | source | smallest saving | largest saving | variants in 28–75% |");
        Line("|---|---|---|---|---|");
        foreach (var workload in ReportWorkloads)
        {
            var s = rows.Where(r => r.Workload == workload && r.Variant is not null && r.Bytes is not null).Select(r => (Row: r, Saving: Saving(rows, r))).ToList();
            var lo = s.MinBy(x => x.Saving);
            var hi = s.MaxBy(x => x.Saving);
            Line($"| {workload.Title} | {(workload.Measured ? "measured" : "analytical")} | {MemoryReport.Percent(lo.Saving)} ({lo.Row.Name} C={lo.Row.Coverage}) | " +
                 $"{MemoryReport.Percent(hi.Saving)} ({hi.Row.Name} C={hi.Row.Coverage}) | {s.Count(x => x.Saving is >= ClaimLow and <= ClaimHigh)} of {s.Count} |");
        }
        return sb.ToString();
    }

    /// <summary>
    /// One panel per workload: a stacked bar per row (parameters, gradients, optimizer state, activations of the largest
    /// worker), each SDP bar topped by its saving against DP.
    /// </summary>
    private static byte[] ReportPng(IReadOnlyList<ReportRow> rows)
    {
        (string Name, Func<CategoryBytes, long> Of, Color Color)[] categories =
        [
            ("parameters", c => c.Parameters, Colors.SteelBlue),
            ("gradients", c => c.Gradients, Colors.DarkOrange),
            ("optimizer state", c => c.OptimizerState, Colors.ForestGreen),
            ("activations", c => c.Activations, Colors.FireBrick),
        ];
        var multiplot = new Multiplot();
        multiplot.AddPlots(ReportWorkloads.Count);
        for (int p = 0; p < ReportWorkloads.Count; p++)
        {
            var workload = ReportWorkloads[p];
            var part = rows.Where(r => r.Workload == workload).ToList();
            var plot = multiplot.GetPlot(p);
            long largest = part.Where(r => r.Bytes is not null).Max(r => r.Bytes!.Total);
            // One unit per panel so the axis reads in whole MiB or GiB.
            (double scale, string unit) = largest >= 4L << 30 ? (1.0 / (1 << 30), "GiB") : (1.0 / (1 << 20), "MiB");
            var bars = new List<Bar>();
            var ticks = new List<Tick>();
            var savings = new List<(double X, double Y, string Text)>();
            for (int i = 0; i < part.Count; i++)
            {
                var r = part[i];
                ticks.Add(new Tick(i, r.Variant is null ? "DP" : $"{(r.Variant.Level == SubnetLevel.Neuron ? "N" : "B")}-{(r.Variant.Masking == Masking.Forward ? "fwd" : "bwd")}\n{r.Coverage}"));
                if (r.Bytes is null) continue;
                double bottom = 0;
                foreach (var (_, of, color) in categories)
                {
                    double top = bottom + (of(r.Bytes) * scale);
                    bars.Add(new Bar { Position = i, ValueBase = bottom, Value = top, FillColor = color, Size = 0.7 });
                    bottom = top;
                }
                if (r.Variant is not null) savings.Add((i, bottom, "-" + MemoryReport.Percent(Saving(rows, r))));
            }
            plot.Add.Bars(bars);
            foreach (var (x, y, text) in savings)
            {
                var label = plot.Add.Text(text, x, y);
                label.LabelAlignment = Alignment.LowerCenter;
                label.LabelFontSize = 11;
            }
            plot.Axes.Margins(bottom: 0, top: 0.12);
            plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual([.. ticks]);
            plot.Title($"{workload.Title}, W = {workload.Workers}: {(workload.Measured ? "measured" : "analytical")}");
            plot.YLabel($"largest worker ({unit})");
            plot.Legend.ManualItems.AddRange(categories.Select(c => new LegendItem { LabelText = c.Name, FillColor = c.Color }));
            plot.ShowLegend(Edge.Right);
        }
        return multiplot.Render(1300, 420 * ReportWorkloads.Count).GetImageBytes(ImageFormat.Png, 100);
    }
}
