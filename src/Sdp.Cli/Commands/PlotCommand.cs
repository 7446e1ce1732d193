using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sdp.Models.Checkpoints;
using ScottPlot;

namespace Sdp.Cli.Commands;

/// <summary>
/// `sdp plot RUN.jsonl [RUN.jsonl ...] -o loss.png`: training loss (and the evaluations' loss, and accuracy where
/// the evaluations have it) against step, one line per run, from the files `sdp train --metrics` writes.
/// </summary>
public static class PlotCommand
{
    /// <summary>Run options named in the title when every run has the same value (the rest still label lines when they differ).</summary>
    private static readonly string[] TitleOptions = ["model", "data", "batch", "seq", "optimizer", "lr", "schedule"];

    public static Command Create()
    {
        var files = new Argument<string[]>("metrics") { Description = "JSON-lines metrics files from `sdp train --metrics`", Arity = ArgumentArity.OneOrMore };
        var output = new Option<string>("--output", "-o") { Description = "The PNG to write", Required = true };
        var width = new Option<int>("--width") { Description = "Image width in pixels", DefaultValueFactory = _ => 1000 };
        var height = new Option<int>("--height") { Description = "Image height in pixels (per panel: loss, and accuracy when present)", DefaultValueFactory = _ => 500 };
        var cmd = new Command("plot", "Plot loss (and accuracy) against step from `sdp train --metrics` files, one line per run") { files, output, width, height };
        cmd.SetAction(p =>
        {
            string png = p.GetValue(output)!;
            int w = Check.AtLeast(p.GetValue(width), 200, "--width"), h = Check.AtLeast(p.GetValue(height), 150, "--height");
            CheckPngTarget(png, "--output");
            var runs = p.GetValue(files)!.Select(MetricsRun.Read).ToList();
            byte[] image = Render(runs, w, h);
            AtomicFile.Write(png, s => s.Write(image));
            bool accuracy = runs.Any(r => r.HasAccuracy);
            Console.WriteLine($"wrote {png}: {runs.Count} run(s), {runs.Sum(r => r.Steps.Count):N0} steps, {runs.Sum(r => r.Evals.Count):N0} evaluations; " +
                              (accuracy ? "loss and accuracy panels" : "loss (no accuracy in the evaluations)"));
            return 0;
        });
        return cmd;
    }

    /// <summary>A PNG path whose directory exists (checked before any work, so a typo costs nothing).</summary>
    public static void CheckPngTarget(string path, string option)
    {
        if (!path.EndsWith(".png", StringComparison.OrdinalIgnoreCase)) throw new UsageException($"{option}: expected a .png file name, got '{path}'");
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        if (!Directory.Exists(dir)) throw new UsageException($"{option}: directory '{dir}' does not exist");
    }

    /// <summary>
    /// The figure as PNG bytes: a loss panel (training loss solid, evaluation loss dashed with markers, one colour per
    /// run) and, when any evaluation reports accuracy, an accuracy panel below it.
    /// </summary>
    public static byte[] Render(IReadOnlyList<MetricsRun> runs, int width, int height)
    {
        ArgumentOutOfRangeException.ThrowIfZero(runs.Count);
        var labels = Labels(runs);
        var palette = new ScottPlot.Palettes.Category10();
        bool accuracy = runs.Any(r => r.HasAccuracy);
        var multiplot = new Multiplot();
        multiplot.AddPlots(accuracy ? 2 : 1);
        var loss = multiplot.GetPlot(0);
        for (int i = 0; i < runs.Count; i++)
        {
            var run = runs[i];
            var color = palette.GetColor(i);
            if (run.Steps.Count > 0)
            {
                var line = loss.Add.ScatterLine(run.Steps.Select(s => (double)s.Step).ToArray(), run.Steps.Select(s => s.Loss).ToArray(), color);
                line.LegendText = labels[i];
                line.LineWidth = 1.5f;
            }
            if (run.Evals.Count > 0)
            {
                var eval = loss.Add.Scatter(run.Evals.Select(e => (double)e.Step).ToArray(), run.Evals.Select(e => e.Loss).ToArray(), color);
                eval.LegendText = labels[i] + " (eval)";
                eval.LinePattern = LinePattern.Dashed;
                eval.MarkerSize = 6;
            }
        }
        loss.Title("loss against step" + CommonOptions(runs));
        loss.XLabel("step");
        loss.YLabel("loss");
        loss.ShowLegend(Alignment.UpperRight);
        if (accuracy)
        {
            var acc = multiplot.GetPlot(1);
            for (int i = 0; i < runs.Count; i++)
            {
                var points = runs[i].Evals.Where(e => e.Accuracy is not null).ToList();
                if (points.Count == 0) continue;
                var line = acc.Add.Scatter(points.Select(e => (double)e.Step).ToArray(), points.Select(e => e.Accuracy!.Value).ToArray(), palette.GetColor(i));
                line.LegendText = labels[i] + " (eval)";
                line.MarkerSize = 6;
            }
            acc.Title("evaluation accuracy");
            acc.XLabel("step");
            acc.YLabel("accuracy");
            acc.ShowLegend(Alignment.LowerRight);
        }
        return multiplot.Render(width, height * (accuracy ? 2 : 1)).GetImageBytes(ImageFormat.Png, 100);
    }

    /// <summary>
    /// One panel of lines with markers (a value measured every few steps, say), as PNG bytes, the legend beside it: each
    /// line in its <see cref="PlotLine.Color"/> (the palette's colour of that index, as <see cref="Render"/> colours its
    /// runs), or by its position; lines without points are left out.
    /// </summary>
    public static byte[] RenderLines(IReadOnlyList<PlotLine> lines, string title, string xLabel, string yLabel, int width, int height)
    {
        ArgumentOutOfRangeException.ThrowIfZero(lines.Count);
        var palette = new ScottPlot.Palettes.Category10();
        var plot = new Plot();
        for (int i = 0; i < lines.Count; i++)
        {
            if (lines[i].X.Length == 0) continue;
            var line = plot.Add.Scatter(lines[i].X, lines[i].Y, palette.GetColor(lines[i].Color ?? i));
            line.LegendText = lines[i].Label;
            line.LineWidth = 1.5f;
            line.MarkerSize = 6;
        }
        plot.Title(title);
        plot.XLabel(xLabel);
        plot.YLabel(yLabel);
        plot.ShowLegend(Edge.Right);
        return plot.GetImageBytes(width, height, ImageFormat.Png);
    }

    /// <summary>
    /// Each run's label: its file name, then the options whose values differ between the runs ("lr 0.001"), so two
    /// runs that differ in one option read as such. Options every run shares go to the title instead.
    /// </summary>
    public static IReadOnlyList<string> Labels(IReadOnlyList<MetricsRun> runs)
    {
        var keys = runs.SelectMany(r => r.Options.Select(kv => kv.Key)).Distinct().ToList();
        var differing = keys.Where(k => runs.Select(r => OptionText(r, k)).Distinct().Count() > 1).ToList();
        return runs.Select(r =>
        {
            string name = Path.GetFileNameWithoutExtension(r.File);
            var parts = differing.Select(k => $"{k} {OptionText(r, k) ?? "-"}").ToList();
            return parts.Count == 0 ? name : $"{name} ({string.Join(", ", parts)})";
        }).ToList();
    }

    private static string CommonOptions(IReadOnlyList<MetricsRun> runs)
    {
        var shared = TitleOptions
            .Select(k => (Key: k, Values: runs.Select(r => OptionText(r, k)).Distinct().ToList()))
            .Where(x => x.Values.Count == 1 && x.Values[0] is not null)
            .Select(x => $"{x.Key} {x.Values[0]}")
            .ToList();
        return shared.Count == 0 ? "" : ": " + string.Join(", ", shared);
    }

    private static string? OptionText(MetricsRun run, string key) => run.Options[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out string? s) => s,
        JsonNode n => n.ToJsonString(),
    };
}

/// <summary>One line of <see cref="PlotCommand.RenderLines"/>: its legend label, its points, and its palette index (null: its position).</summary>
public sealed record PlotLine(string Label, double[] X, double[] Y, int? Color = null);

/// <summary>One `sdp train --metrics` file: the run's options (its header), its step losses and its evaluations.</summary>
public sealed record MetricsRun(string File, JsonObject Options, IReadOnlyList<(long Step, double Loss)> Steps, IReadOnlyList<(long Step, double Loss, double? Accuracy)> Evals)
{
    public bool HasAccuracy => Evals.Any(e => e.Accuracy is not null);

    /// <summary>
    /// Reads a metrics file: a header {"run": {...}}, then one record per line, each a step ({"step", "loss", ...}) or
    /// an evaluation ({"eval": true, "step", "loss", "accuracy"?}). Anything else is an <see cref="InvalidDataException"/>
    /// naming the file, the line and what was expected there.
    /// </summary>
    public static MetricsRun Read(string file)
    {
        if (!System.IO.File.Exists(file)) throw new UsageException($"metrics file '{file}' does not exist");
        JsonObject? options = null;
        var steps = new List<(long, double)>();
        var evals = new List<(long, double, double?)>();
        int number = 0;
        foreach (string text in System.IO.File.ReadLines(file))
        {
            number++;
            if (string.IsNullOrWhiteSpace(text)) continue;
            string where = $"{file}:{number}";
            JsonObject record;
            try
            {
                record = JsonNode.Parse(text) as JsonObject ?? throw new InvalidDataException($"{where}: expected a JSON object, got '{Clip(text)}'");
            }
            catch (JsonException e)
            {
                throw new InvalidDataException($"{where}: not valid JSON ({e.Message.Split('.')[0]}): '{Clip(text)}'");
            }
            if (options is null)
            {
                options = record["run"] as JsonObject
                    ?? throw new InvalidDataException($"{where}: expected the header {{\"run\": {{...}}}} that `sdp train --metrics` writes first, got '{Clip(text)}'");
                continue;
            }
            long step = Integer(record, "step", where);
            double loss = Number(record, "loss", where);
            if (record["eval"] is JsonValue flag && flag.TryGetValue(out bool isEval) && isEval)
            {
                double? accuracy = record["accuracy"] is null ? null : Number(record, "accuracy", where);
                if (accuracy is < 0 or > 1) throw new InvalidDataException($"{where}: \"accuracy\" must be in [0, 1], got {accuracy}");
                evals.Add((step, loss, accuracy));
            }
            else
            {
                steps.Add((step, loss));
            }
        }
        if (options is null) throw new InvalidDataException($"{file}: empty; expected the header {{\"run\": {{...}}}} and step records that `sdp train --metrics` writes");
        if (steps.Count == 0 && evals.Count == 0) throw new InvalidDataException($"{file}:{number}: no step or evaluation records after the run header");
        return new MetricsRun(file, options, steps, evals);
    }

    private static long Integer(JsonObject record, string key, string where)
        => record[key] is JsonValue v && v.TryGetValue(out long x) && x >= 0 ? x
            : throw new InvalidDataException($"{where}: expected \"{key}\" as a whole number >= 0, got {Describe(record[key])}");

    private static double Number(JsonObject record, string key, string where)
        => record[key] is JsonValue v && v.TryGetValue(out double x) && double.IsFinite(x) ? x
            : throw new InvalidDataException($"{where}: expected \"{key}\" as a finite number, got {Describe(record[key])}");

    private static string Describe(JsonNode? node) => node is null ? "nothing" : node.ToJsonString();

    private static string Clip(string text) => text.Length <= 60 ? text : text[..60] + "...";
}
