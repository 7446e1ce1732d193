using System.Globalization;
using Sdp.Cli.Commands;

namespace Sdp.Tests.Cli;

/// <summary>
/// `sdp experiment quality --quick`: the whole pipeline end to end on tiny models (every run, quality.md with a parseable
/// table per model and the checks, the PNGs, the CSVs and each run's metrics file), and bad options refused.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class ExperimentQualityTests : CliTestBase
{
    private static readonly byte[] PngSignature = [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A];

    [Test]
    public void Quick_run_writes_the_table_curves_alignment_and_checks()
    {
        var r = Sdp(Args("experiment quality --out out --quick --seeds 1 --steps 2"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        // Per model and seed: DP, and four SDP variants under two schedules.
        Assert.That(r.OutLines.Count(l => l.TrimStart().StartsWith('[')), Is.EqualTo(2 * 9), r.Out);

        string[] md = File.ReadAllLines(Path.Combine("out", ExperimentCommand.QualityMarkdown));
        Assert.That(md, Has.Some.StartsWith("Written by `sdp experiment quality --out out --quick --seeds 1 --steps 2` (sdp "), "the command that wrote it");
        foreach (var (model, metric) in new[] { ("llama", "eval loss"), ("resnet18", "accuracy") })
        {
            var header = md.Single(l => l.StartsWith($"| variant | schedule | steps | {metric} seed 0 | mean |", StringComparison.Ordinal));
            var rows = md.SkipWhile(l => l != header).Skip(2).TakeWhile(l => l.StartsWith('|')).Select(l => l.Split('|').Select(c => c.Trim()).ToArray()).ToList();
            Assert.That(rows.Select(c => $"{c[1]} {c[2]}"), Is.EqualTo(new[]
            {
                "DP -", "N-SDP fwd same-steps", "N-SDP fwd flop-matched", "N-SDP bwd same-steps", "N-SDP bwd flop-matched",
                "B-SDP fwd same-steps", "B-SDP fwd flop-matched", "B-SDP bwd same-steps", "B-SDP bwd flop-matched",
            }), model);
            foreach (var c in rows)
            {
                // Steps: DP's 2, or 2 ÷ C = 4 when flop-matched; one seed, so the mean is its cell.
                Assert.That(int.Parse(c[3], CultureInfo.InvariantCulture), Is.EqualTo(c[2] == "flop-matched" ? 4 : 2), string.Join('|', c));
                double Cell(string s) => double.Parse(s.Trim('*', '%'), CultureInfo.InvariantCulture);
                Assert.That(Cell(c[5]), Is.EqualTo(Cell(c[4])), string.Join('|', c));
                bool probed = c[1] != "DP" && c[2] == "same-steps";
                Assert.That(c[7], probed ? Does.Match(@"^-?[01]\.\d{3}$") : Is.Empty, $"cosine of {c[1]} {c[2]}");
            }
            foreach (var kind in new[] { "same-steps", "flop-matched", "alignment" })
            {
                string png = Path.Combine("out", $"quality-{model}-{kind}.png");
                Assert.That(File.ReadAllBytes(png)[..8], Is.EqualTo(PngSignature), png);
                Assert.That(md, Has.Some.Contains($"](quality-{model}-{kind}.png)"), $"{png} linked");
            }
        }
        var checks = md.SkipWhile(l => l != "## Claims, as observed").Where(l => l.StartsWith("| A2", StringComparison.Ordinal)).ToList();
        // Per model: four comparisons under each schedule, four A22 rows (flop-matched) and two A23 rows.
        Assert.That(checks, Has.Count.EqualTo(2 * (8 + 4 + 2)));
        Assert.That(checks, Has.All.Match(@"\| (held|not held) \("));
        Assert.That(md, Has.Some.Contains("[evaluation.md](evaluation.md)"), "the B-SDP evaluation result is linked");

        Assert.That(File.ReadAllLines(Path.Combine("out", "quality-runs.csv")), Has.Length.EqualTo(1 + 2 * 9));
        // Probes at step 0 and at each of the 2 evaluation steps, for the 4 same-steps SDP runs per model.
        Assert.That(File.ReadAllLines(Path.Combine("out", "quality-alignment.csv")), Has.Length.EqualTo(1 + 2 * 4 * 3));
        Assert.That(Directory.GetFiles(Path.Combine("out", ExperimentCommand.RunsFolder), "*.jsonl"), Has.Length.EqualTo(2 * 9));
        // Each run's metrics are `sdp train --metrics` records, which `sdp plot` draws.
        var plot = Sdp("plot", Path.Combine("out", ExperimentCommand.RunsFolder, "llama-b-fwd-flop-matched-seed0.jsonl"), "-o", "one.png");
        Assert.That(plot.ExitCode, Is.EqualTo(0), plot.ToString());
    }

    [Test]
    public void Bad_options_are_refused_before_any_run()
    {
        var r = Sdp(Args("experiment quality --out out --data no-such-dir"));
        Assert.That(r.ExitCode, Is.EqualTo(2), r.ToString());
        Assert.That(r.Err, Does.Contain("--data"));
        r = Sdp(Args("experiment quality --out out --seeds 0"));
        Assert.That(r.ExitCode, Is.EqualTo(2), r.ToString());
        Assert.That(r.Err, Does.Contain("--seeds"));
        Assert.That(Directory.Exists("out"), Is.False, "nothing written");
    }
}
