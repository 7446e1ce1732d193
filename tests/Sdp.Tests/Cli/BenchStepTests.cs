using System.Globalization;
using System.Text.RegularExpressions;

namespace Sdp.Tests.Cli;

/// <summary>`sdp bench step`: one worker's step timed alone for DP and the four SDP variants.</summary>
[NonParallelizable]
public class BenchStepTests : CliTestBase
{
    [Test]
    public void Times_dp_and_every_variant_with_the_workers_held_fraction()
    {
        var r = Sdp("bench", "step", "--batch", "1", "--seq", "8", "--samples", "1", "--coverages", "0.5");
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        var rows = Regex.Matches(r.Out, @"^(dp|neuron, forward|neuron, backward|block, forward|block, backward)\s+([\d.]+)\s+([\d.]+) %\s+([\d.]+)\s+([\d.]+) %\s+([\d.]+) % \((\d+) %-(\d+) %\)\s*$", RegexOptions.Multiline);
        Assert.That(rows, Has.Count.EqualTo(1 + 4), r.Out);
        double Held(Match m) => double.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture);
        Assert.That(Held(rows[0]), Is.EqualTo(100.0), "DP holds everything");
        Assert.That(rows.Skip(1).Select(Held), Has.All.LessThan(100.0), "an SDP worker holds a part");
        Assert.That(rows.Select(m => double.Parse(m.Groups[4].Value, CultureInfo.InvariantCulture)), Has.All.GreaterThan(0), "every step was timed");
        Assert.That(rows[0].Groups[6].Value, Is.EqualTo("100.0"), "each round's DP step against itself");
        foreach (Match m in rows)
        {
            // One sample: the paired ratio is that round's ratio, so it equals the ratio of the (single-sample) medians.
            Assert.That(double.Parse(m.Groups[6].Value, CultureInfo.InvariantCulture), Is.EqualTo(double.Parse(m.Groups[5].Value, CultureInfo.InvariantCulture)).Within(0.11), m.Value);
        }
    }

    [Test]
    public void A_coverage_the_workers_cannot_hold_is_refused()
    {
        var r = Sdp("bench", "step", "--workers", "4", "--coverages", "0.3");
        Assert.That(r.ExitCode, Is.EqualTo(2), r.ToString());
        Assert.That(r.Err, Does.Contain("--coverage"), r.ToString());
    }
}
