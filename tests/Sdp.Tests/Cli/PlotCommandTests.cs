using System.Buffers.Binary;
using Sdp.Cli.Commands;

namespace Sdp.Tests.Cli;

/// <summary>`sdp plot`: metrics files into a PNG of loss (and accuracy); malformed files name the file and line (exit 2).</summary>
[TestFixture]
[NonParallelizable]
public sealed class PlotCommandTests : CliTestBase
{
    private const string Header = """{"run":{"model":"resnet18","data":"synthetic","batch":8,"lr":0.001,"seed":0}}""";

    private static void WriteRun(string path, string header, int steps, bool accuracy)
    {
        var lines = new List<string> { header };
        for (int s = 1; s <= steps; s++)
        {
            lines.Add($$"""{"step":{{s}},"loss":{{(3.0 / s).ToString("R", System.Globalization.CultureInfo.InvariantCulture)}},"lr":0.001}""");
            if (s % 2 == 0)
                lines.Add(accuracy ? $$"""{"eval":true,"step":{{s}},"loss":{{(2.5 / s).ToString("R", System.Globalization.CultureInfo.InvariantCulture)}},"count":16,"accuracy":{{s / 10.0}}}"""
                                   : $$"""{"eval":true,"step":{{s}},"loss":2.0,"count":16,"perplexity":7.4}""");
        }
        File.WriteAllLines(path, lines);
    }

    /// <summary>The width and height from a PNG's IHDR chunk, after checking the 8-byte signature.</summary>
    private static (int Width, int Height) PngSize(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        Assert.That(bytes, Has.Length.GreaterThan(33));
        Assert.That(bytes[..8], Is.EqualTo(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A }), "PNG signature");
        Assert.That(System.Text.Encoding.ASCII.GetString(bytes, 12, 4), Is.EqualTo("IHDR"));
        return (BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(16)), BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(20)));
    }

    [Test]
    public void TwoRunsWithAccuracy_WriteATwoPanelPng()
    {
        WriteRun("a.jsonl", Header, 6, accuracy: true);
        WriteRun("b.jsonl", Header.Replace("0.001", "0.01"), 4, accuracy: true);
        var r = Sdp(Args("plot a.jsonl b.jsonl -o loss.png --width 400 --height 300"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("2 run(s), 10 steps, 5 evaluations; loss and accuracy panels"));
        Assert.That(PngSize("loss.png"), Is.EqualTo((400, 600)), "two panels of 300 pixels");
        Assert.That(Directory.GetFiles(Dir), Has.None.Contains(".tmp"), "the temporary file was renamed");
    }

    [Test]
    public void RunWithoutAccuracy_WritesTheLossPanelOnly()
    {
        WriteRun("llama.jsonl", """{"run":{"model":"llama","data":"synthetic"}}""", 4, accuracy: false);
        var r = Sdp(Args("plot llama.jsonl -o loss.png --width 300 --height 200"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("loss (no accuracy"));
        Assert.That(PngSize("loss.png"), Is.EqualTo((300, 200)));
    }

    [Test]
    public void Labels_NameTheFileAndTheOptionsThatDiffer()
    {
        WriteRun("dp.jsonl", Header, 2, accuracy: false);
        WriteRun("fast.jsonl", Header.Replace("0.001", "0.01"), 2, accuracy: false);
        WriteRun("same.jsonl", Header, 2, accuracy: false);
        var labels = PlotCommand.Labels([MetricsRun.Read("dp.jsonl"), MetricsRun.Read("fast.jsonl")]);
        Assert.That(labels, Is.EqualTo(new[] { "dp (lr 0.001)", "fast (lr 0.01)" }));
        Assert.That(PlotCommand.Labels([MetricsRun.Read("dp.jsonl"), MetricsRun.Read("same.jsonl")]), Is.EqualTo(new[] { "dp", "same" }));
    }

    [Test]
    public void MetricsOfARealTrainingRun_Plot()
    {
        var train = Train("--steps 4 --eval-every 2 --metrics m.jsonl");
        Assert.That(train.ExitCode, Is.EqualTo(0), train.ToString());
        var r = Sdp(Args("plot m.jsonl -o m.png --width 300 --height 200"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("1 run(s), 4 steps, 2 evaluations"));
        Assert.That(PngSize("m.png"), Is.EqualTo((300, 200)));
    }

    private static IEnumerable<TestCaseData> Malformed()
    {
        TestCaseData Case(string name, string content, params string[] mentions) => new TestCaseData(content, mentions).SetName("Malformed_" + name);
        yield return Case("NoHeader", """{"step":1,"loss":2.0}""", "bad.jsonl:1", "header");
        yield return Case("NotJson", Header + "\n{\"step\":1,\"loss\":2.0}\n{\"step\":2,\"loss\":", "bad.jsonl:3", "not valid JSON");
        yield return Case("NotAnObject", Header + "\n[1,2]", "bad.jsonl:2", "JSON object");
        yield return Case("MissingLoss", Header + "\n{\"step\":1}", "bad.jsonl:2", "\"loss\"", "finite number");
        yield return Case("LossAsText", Header + "\n{\"step\":1,\"loss\":\"NaN\"}", "bad.jsonl:2", "\"loss\"");
        yield return Case("NegativeStep", Header + "\n{\"step\":-1,\"loss\":2.0}", "bad.jsonl:2", "\"step\"", "whole number");
        yield return Case("FractionalStep", Header + "\n{\"step\":1.5,\"loss\":2.0}", "bad.jsonl:2", "\"step\"");
        yield return Case("AccuracyAboveOne", Header + "\n{\"eval\":true,\"step\":1,\"loss\":2.0,\"accuracy\":1.5}", "bad.jsonl:2", "\"accuracy\"", "[0, 1]");
        yield return Case("HeaderOnly", Header, "bad.jsonl", "no step or evaluation records");
        yield return Case("Empty", "", "bad.jsonl", "empty");
    }

    [TestCaseSource(nameof(Malformed))]
    public void MalformedFile_IsAUsageErrorNamingFileAndLine(string content, string[] mentions)
    {
        WriteRun("good.jsonl", Header, 2, accuracy: false);
        File.WriteAllText("bad.jsonl", content);
        var before = Listing();
        AssertUsageError(Sdp(Args("plot good.jsonl bad.jsonl -o loss.png")), before, mentions);
    }

    [TestCase("plot missing.jsonl -o loss.png", "missing.jsonl")]
    [TestCase("plot good.jsonl -o loss.jpg", "--output", ".png")]
    [TestCase("plot good.jsonl -o nowhere/loss.png", "--output", "does not exist")]
    [TestCase("plot good.jsonl -o loss.png --width 10", "--width")]
    [TestCase("plot good.jsonl", "--output")]
    public void BadArguments_AreUsageErrorsNamingThem(string commandLine, params string[] mentions)
    {
        WriteRun("good.jsonl", Header, 2, accuracy: false);
        var before = Listing();
        AssertUsageError(Sdp(Args(commandLine)), before, mentions);
    }
}
