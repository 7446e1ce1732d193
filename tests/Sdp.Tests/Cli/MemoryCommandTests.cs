using System.Text.Json.Nodes;

namespace Sdp.Tests.Cli;

/// <summary>`sdp memory`: option errors name the option (exit 2), tables and JSON of small models.</summary>
[TestFixture]
[NonParallelizable]
public sealed class MemoryCommandTests : CliTestBase
{
    private const string Small = "memory --model llama:tiny --workers 4 --batch 2 --seq 16";

    [TestCase("memory --model llama:tiny --workers 0", "--workers")]
    [TestCase("memory --model llama:tiny --workers 8 --coverage 0.3", "--coverage")]
    [TestCase("memory --model gpt2 --workers 8", "--model")]
    [TestCase("memory --model llama:nope --workers 8", "--model")]
    [TestCase("memory --model resnet18:wide --workers 8", "--model")]
    [TestCase("memory --model resnet18:0 --workers 8", "--model")]
    [TestCase("memory --model llama:tiny --workers 8 --batch 0", "--batch")]
    [TestCase("memory --model llama:tiny --workers 8 --seq -1", "--seq")]
    [TestCase("memory --model resnet18 --workers 8 --image-size 0", "--image-size")]
    [TestCase("memory --model llama:tiny --workers 8 --masking sideways", "--masking")]
    [TestCase("memory --model llama:tiny --workers 8 --subnet layer", "--subnet")]
    [TestCase("memory --model llama:tiny --workers 8 --mode zero", "--mode")]
    [TestCase("memory --model llama:tiny --workers 8 --optimizer lion", "--optimizer")]
    [TestCase("memory --model llama:tiny --workers 8 --optimizer sgd --momentum -1", "--momentum")]
    [TestCase("memory --model llama:tiny --workers 8 --mode dp --measure --all-variants", "--measure")]
    public void BadOptionExitsTwoNamingIt(string commandLine, string option)
    {
        var before = Listing();
        AssertUsageError(Sdp(Args(commandLine)), before, option);
    }

    [Test]
    public void SdpMeasurementRunsTheLargestWorkerAndMatchesTheModel()
    {
        var r = Sdp(Args(Small + " --subnet block --masking forward --measure"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("measured: one training step of SDP worker"));
        foreach (var category in new[] { "parameters", "gradients", "optimizer", "activations" })
        {
            var line = r.OutLines.Last(l => l.TrimStart().StartsWith(category, StringComparison.Ordinal));
            double error = double.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[^1].TrimEnd('%'), System.Globalization.CultureInfo.InvariantCulture);
            Assert.That(Math.Abs(error), Is.LessThanOrEqualTo(category == "activations" ? 15 : 2), line);
        }
    }

    [Test]
    public void SmallRunPrintsOneRowPerWorkerAndTheSaving()
    {
        var r = Sdp(Args(Small + " --subnet block --masking backward"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Err, Is.Empty);
        Assert.That(r.Out, Does.Contain("block level, backward masking, C = 0.5 (2 holders per unit)"));
        foreach (var row in new[] { "DP ", "SDP worker 0", "SDP worker 3", "SDP max", "saving vs DP" })
            Assert.That(r.OutLines.Count(l => l.StartsWith(row, StringComparison.Ordinal)), Is.EqualTo(1), $"one '{row}' row\n{r}");
        Assert.That(r.OutLines, Has.None.StartsWith("SDP worker 4"));
        Assert.That(r.Out, Does.Contain("not modelled"));
    }

    [Test]
    public void JsonParsesAndItsNumbersAddUp()
    {
        var r = Sdp(Args(Small + " --subnet neuron --coverage 0.25 --json"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        var root = JsonNode.Parse(r.Out)!.AsObject();
        Assert.That(root["model"]!.GetValue<string>(), Is.EqualTo("llama:tiny"));
        Assert.That(root["workspace_modelled"]!.GetValue<bool>(), Is.False);
        var dp = root["dp"]!;
        long dpTotal = dp["total"]!.GetValue<long>();
        Assert.That(dpTotal, Is.EqualTo(new[] { "parameters", "gradients", "optimizer_state", "activations" }.Sum(k => dp[k]!.GetValue<long>())));
        Assert.That(dp["parameters"]!.GetValue<long>(), Is.EqualTo(4L * 4_999_424));
        var sdp = root["sdp"]!;
        Assert.That(sdp["workers"]!.AsArray(), Has.Count.EqualTo(4));
        long maxTotal = sdp["max"]!["total"]!.GetValue<long>();
        Assert.That(maxTotal, Is.EqualTo(sdp["workers"]!.AsArray().Max(w => w!["total"]!.GetValue<long>())));
        Assert.That(sdp["saving"]!["total"]!.GetValue<double>(), Is.EqualTo(1.0 - (double)maxTotal / dpTotal).Within(1e-12));
        Assert.That(sdp["saving"]!["total"]!.GetValue<double>(), Is.InRange(0.05, 0.95));
    }

    [Test]
    public void AllVariantsHasTwelveRows()
    {
        var text = Sdp(Args("memory --model resnet18:8 --workers 8 --batch 4 --all-variants"));
        Assert.That(text.ExitCode, Is.EqualTo(0), text.ToString());
        foreach (var v in new[] { "neuron/forward", "neuron/backward", "block/forward", "block/backward" })
            Assert.That(text.OutLines.Count(l => l.StartsWith(v + " ", StringComparison.Ordinal)), Is.EqualTo(3), text.ToString());

        var json = Sdp(Args("memory --model resnet18:8 --workers 8 --batch 4 --all-variants --json"));
        var variants = JsonNode.Parse(json.Out)!["variants"]!.AsArray();
        Assert.That(variants, Has.Count.EqualTo(12));
        Assert.That(variants.Select(v => v!["saving_total"]!.GetValue<double>()), Has.All.InRange(0.0, 1.0));
    }

    [Test]
    public void AllVariantsMarksCoveragesThatDoNotFitTheWorkers()
    {
        var r = Sdp(Args("memory --model llama:tiny --workers 2 --batch 1 --seq 8 --all-variants"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.OutLines.Count(l => l.Contains("not available", StringComparison.Ordinal)), Is.EqualTo(8), "C = 0.75 and 0.25 give 1.5 and 0.5 holders with W = 2");
    }

    [Test]
    public void MeasureRunsADenseStepAndMatchesTheModel()
    {
        new Sdp.Models.Llama.LlamaConfig(vocabSize: 512, hiddenSize: 64, intermediateSize: 160, numHiddenLayers: 2, numAttentionHeads: 4).Save("small.json");
        var r = Sdp(Args("memory --model llama:small.json --workers 8 --mode dp --batch 2 --seq 16 --measure --json"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        var root = JsonNode.Parse(r.Out)!;
        foreach (var k in new[] { "parameters", "gradients", "optimizer_state", "activations" })
        {
            double model = root["dp"]![k]!.GetValue<long>(), measured = root["measured"]![k]!.GetValue<long>();
            Assert.That(measured, Is.EqualTo(model).Within(k == "activations" ? 15 : 2).Percent, k);
        }
        Assert.That(root["measured"]!["workspace"]!.GetValue<long>(), Is.GreaterThan(0));

        var text = Sdp(Args("memory --model resnet18:4 --workers 8 --mode dp --batch 2 --image-size 8 --measure"));
        Assert.That(text.ExitCode, Is.EqualTo(0), text.ToString());
        Assert.That(text.Out, Does.Contain("measured: one dense training step"));
        Assert.That(text.OutLines.Single(l => l.TrimStart().StartsWith("activations", StringComparison.Ordinal)), Does.EndWith("0.0%"));
    }

    [Test]
    public void Measure_on_meta_steps_llama_1b_and_an_sdp_worker_of_it_at_no_cost()
    {
        foreach (string variant in new[] { "--mode dp", "--subnet neuron --masking forward --coverage 0.5" })
        {
            var r = Sdp(Args($"memory --model llama:1b --workers 4 --batch 2 --seq 256 {variant} --measure --device meta"));
            Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
            Assert.That(r.OutLines[0], Does.StartWith("device: meta (shapes, dtypes and memory accounting; no storage, no compute)"));
            Assert.That(r.Out, Does.Contain(variant == "--mode dp" ? "measured: one dense training step" : "measured: one training step of SDP worker"));
            foreach (string category in new[] { "parameters", "gradients", "optimizer", "activations" })
            {
                string row = r.OutLines.Last(l => l.TrimStart().StartsWith(category, StringComparison.Ordinal));
                Assert.That(row, Does.EndWith("0.0%"), $"{variant}: {category}: the measured step agrees with the memory model at 1b");
            }
        }
    }
}
