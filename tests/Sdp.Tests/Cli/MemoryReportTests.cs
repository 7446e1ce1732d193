using System.Buffers.Binary;
using Sdp.Cli.Commands;
using Sdp.Models.Subnetworks;

namespace Sdp.Tests.Cli;

/// <summary>
/// `sdp memory --report DIR`: memory.md with a row for DP and every variant of every model, memory.png a real PNG,
/// measured rows within the tolerances the memory model's own tests hold it to, and options it cannot take refused.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class MemoryReportTests : CliTestBase
{
    [Test]
    public void Report_WritesTheTableForEveryVariantAndAPng()
    {
        Directory.CreateDirectory("out");
        var r = Sdp(Args("memory --report out"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.OutLines[^1], Does.StartWith("wrote out/memory.md and out/memory.png: 65 rows (26 measured)"));

        string[] md = File.ReadAllLines(Path.Combine("out", MemoryCommand.ReportMarkdown));
        Assert.That(md, Has.Some.StartsWith("Written by `sdp memory --report out` on"), "the command that wrote it");
        foreach (var workload in MemoryCommand.ReportWorkloads)
        {
            string source = workload.Measured ? "measured" : "analytical";
            int at = Array.IndexOf(md, $"## {workload.Title}: {source}");
            Assert.That(at, Is.GreaterThan(0), $"a section for {workload.Title}");
            var table = md.Skip(at + 1).SkipWhile(l => !l.StartsWith("| DP ", StringComparison.Ordinal)).TakeWhile(l => l.StartsWith('|')).ToList();
            Assert.That(table[0], Does.StartWith($"| DP | 1 | {source} |"));
            foreach (var name in new[] { "N-SDP forward", "N-SDP backward", "B-SDP forward", "B-SDP backward" })
                foreach (double c in MemoryCommand.VariantCoverages)
                    Assert.That(table.Count(l => l.StartsWith($"| {name} | {c:0.##} | {source} |", StringComparison.Ordinal)), Is.EqualTo(1), $"{workload.Title}: {name} C={c}");
            Assert.That(table, Has.Count.EqualTo(13));
        }
        Assert.That(md, Has.Some.StartsWith("| LLaMA 1b, 8 x 1024 tokens per worker | analytical |"), "the summary against the claim");

        byte[] png = File.ReadAllBytes(Path.Combine("out", MemoryCommand.ReportImage));
        Assert.That(png[..8], Is.EqualTo(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A }), "PNG signature");
        Assert.That(BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(16)), Is.GreaterThan(0), "IHDR width");
        Assert.That(BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(20)), Is.GreaterThan(0), "IHDR height");
        Assert.That(Directory.GetFiles("out"), Has.Length.EqualTo(2), "no temporary files left");
    }

    [Test]
    public void MeasuredRows_AgreeWithTheModel_AndSDPSavesOnEveryVariant()
    {
        var rows = MemoryCommand.ReportRows(seed: 0, TextWriter.Null);
        var measured = rows.Where(r => r.Measured).ToList();
        Assert.That(measured, Has.Count.EqualTo(26), "DP and 12 variants of the two small models");
        Assert.Multiple(() =>
        {
            // The tolerances of SdpMemoryTests and MemoryModelTests: static categories within 2%, activations within 15%.
            foreach (var r in measured)
            {
                string what = $"{r.Workload.Title} {r.Name} C={r.Coverage}";
                Assert.That(r.Bytes!.Parameters, Is.EqualTo(r.Model!.Parameters).Within(2).Percent, what + " parameters");
                Assert.That(r.Bytes.Gradients, Is.EqualTo(r.Model.Gradients).Within(2).Percent, what + " gradients");
                Assert.That(r.Bytes.OptimizerState, Is.EqualTo(r.Model.OptimizerState).Within(2).Percent, what + " optimizer state");
                Assert.That(r.Bytes.Activations, Is.EqualTo(r.Model.Activations).Within(15).Percent, what + " activations");
            }
            foreach (var r in rows.Where(r => r.Variant is not null))
            {
                Assert.That(r.Bytes, Is.Not.Null, $"{r.Workload.Title} {r.Name} C={r.Coverage} is available at W = 8: {r.Why}");
                Assert.That(MemoryCommand.Saving(rows, r), Is.InRange(0.0, 1.0), $"{r.Workload.Title} {r.Name} C={r.Coverage}");
            }
        });
        // Each bar is the largest worker of the analytical estimate (the worker --measure steps on measured rows).
        foreach (var r in rows.Where(r => r.Variant is not null))
        {
            var estimate = MemoryModel.Estimate(r.Workload.Workload, OptimizerMemory.AdamW, r.Workload.Workers, r.Variant);
            Assert.That((r.Worker, r.Model!.Total), Is.EqualTo((estimate.MaxWorker, estimate.MaxTotal)), $"{r.Workload.Title} {r.Name} C={r.Coverage}");
        }
        // A smaller coverage never needs more memory on the largest worker than a larger one of the same variant.
        foreach (var group in rows.Where(r => r.Variant is not null).GroupBy(r => (r.Workload, r.Variant!.Level, r.Variant.Masking)))
        {
            var byCoverage = group.OrderByDescending(r => r.Variant!.Coverage).Select(r => r.Bytes!.Static).ToList();
            Assert.That(byCoverage, Is.Ordered.Descending, $"{group.Key.Workload.Title} {group.Key.Level}/{group.Key.Masking}");
        }
    }

    [TestCase("memory --report out --model llama:tiny", "--model", "--report")]
    [TestCase("memory --report out --workers 4", "--workers")]
    [TestCase("memory --report out --coverage 0.5", "--coverage")]
    [TestCase("memory --report nowhere", "--report", "nowhere")]
    [TestCase("memory --workers 8", "--model")]
    [TestCase("memory --model llama:tiny", "--workers")]
    public void BadReportOptions_AreUsageErrors(string commandLine, params string[] mentions)
    {
        Directory.CreateDirectory("out");
        var before = Listing();
        AssertUsageError(Sdp(Args(commandLine)), before, mentions);
    }
}
