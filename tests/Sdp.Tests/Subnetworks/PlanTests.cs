using System.Text.Json;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Subnetworks;
using Sdp.Tests.Cli;

namespace Sdp.Tests.Subnetworks;

public sealed class PlanTests
{
    /// <summary>The units a model declares, resolved on the meta device as the trainer, `sdp plan` and `sdp memory` resolve them.</summary>
    internal static MaskableUnits LlamaUnits(LlamaConfig config, SubnetLevel level, SubnetOptions? options = null)
        => SubnetworkModels.Llama(config, level, options ?? new SubnetOptions(), seed: 0).Units;

    internal static MaskableUnits ResNetUnits(ResNetConfig config, SubnetLevel level, SubnetOptions? options = null)
        => SubnetworkModels.ResNet18(config, level, options ?? new SubnetOptions(), seed: 0).Units;

    private static readonly MaskableUnits TinyNeurons = LlamaUnits(LlamaConfig.Preset("tiny"), SubnetLevel.Neuron);
    private static readonly MaskableUnits ResNetBlocks = ResNetUnits(new ResNetConfig(), SubnetLevel.Block);

    /// <summary>Groups of uneven sizes, some not divisible by W, some smaller than W.</summary>
    private static UnitGroup[] MixedGroups() =>
        [UnitGroup.Uniform("a", 16, 3), UnitGroup.Uniform("b", 10, 5), UnitGroup.Uniform("c", 3, 7), UnitGroup.Uniform("d", 1, 1)];

    private static void AssertUniform(SubnetworkPlan plan)
    {
        int k = plan.HoldersPerUnit;
        for (int g = 0; g < plan.Groups.Count; g++)
        {
            for (int u = 0; u < plan.Groups[g].UnitCount; u++)
            {
                var h = plan.HoldersOf(g, u);
                Assert.That(h, Has.Count.EqualTo(k), $"group {g} unit {u}");
                Assert.That(h, Is.Ordered.Ascending.And.Unique.And.All.InRange(0, plan.Workers - 1), $"group {g} unit {u}");
                for (int w = 0; w < plan.Workers; w++) Assert.That(plan.Holds(w, g, u), Is.EqualTo(h.Contains(w)));
            }
        }
    }

    [TestCase(4, 0.5)]
    [TestCase(4, 0.25)]
    [TestCase(4, 0.75)]
    [TestCase(8, 0.5)]
    [TestCase(3, 2.0 / 3)]
    [TestCase(5, 0.2)]
    [TestCase(1, 1.0)]
    public void NeuronLevel_EveryUnitHasExactlyKHolders_AndLoadsDifferByAtMostOnePerGroup(int workers, double coverage)
    {
        var plan = SubnetworkPlan.Create(MixedGroups(), workers, coverage, 7, SubnetLevel.Neuron);
        int k = (int)Math.Round(coverage * workers);
        Assert.That(plan.HoldersPerUnit, Is.EqualTo(k));
        AssertUniform(plan);
        for (int g = 0; g < plan.Groups.Count; g++)
        {
            var counts = Enumerable.Range(0, workers).Select(w => plan.UnitsHeld(w, g)).ToArray();
            Assert.That(counts.Max() - counts.Min(), Is.LessThanOrEqualTo(1), $"group {plan.Groups[g].Name}: {string.Join(", ", counts)}");
            Assert.That(counts.Sum(), Is.EqualTo(k * plan.Groups[g].UnitCount));
        }
    }

    [Test]
    public void NeuronLevel_DivisibleGroups_GiveEveryWorkerExactlyCTimesNUnits()
    {
        // tiny LLaMA: 688 = 8·86 hidden units per layer; W = 8, C = 0.5 → stride 86, window 344, k = 4 (§2.3).
        var plan = SubnetworkPlan.Create(TinyNeurons, 8, 0.5, 1);
        AssertUniform(plan);
        for (int w = 0; w < 8; w++)
            for (int g = 0; g < 4; g++) Assert.That(plan.UnitsHeld(w, g), Is.EqualTo(344));
    }

    [Test]
    public void NeuronLevel_GroupsGetIndependentPermutations()
    {
        var plan = SubnetworkPlan.Create(TinyNeurons, 4, 0.25, 3);
        var first = Enumerable.Range(0, 688).Select(u => plan.HoldersOf(0, u)[0]).ToArray();
        var second = Enumerable.Range(0, 688).Select(u => plan.HoldersOf(1, u)[0]).ToArray();
        Assert.That(second, Is.Not.EqualTo(first));
        // A random permutation, not the identity: the first chunk is not units 0..171.
        Assert.That(first.Take(172).Distinct().Count(), Is.GreaterThan(1));
    }

    [Test]
    public void BlockLevel_ResNet18_W4_HalfCoverage_IsUniformBalancedAndConnected()
    {
        var plan = SubnetworkPlan.Create(ResNetBlocks, 4, 0.5, 0);
        AssertUniform(plan);
        Assert.That(plan.Groups.Single().UnitNames, Is.EqualTo(new[] { "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1" }));
        var held = Enumerable.Range(0, 4).Select(plan.HeldParams).ToArray();
        double ratio = (double)held.Max() / held.Min();
        TestContext.Out.WriteLine($"ResNet-18 W=4 C=0.5 block plan: held params {string.Join(", ", held)}, max/min {ratio:0.000}");
        // Blocks differ 64x in size (layer4.1 alone is 42% of the model); 1.25 is close to the best possible here.
        Assert.That(ratio, Is.LessThan(1.25));
        Assert.That(held.Max(), Is.LessThan(0.6 * plan.TotalParams));
        Assert.That(plan.IsConnected, Is.True);
        Assert.That(plan.AlgebraicConnectivity, Is.GreaterThan(0));
    }

    [TestCase(8, 0.5)]
    [TestCase(8, 0.25)]
    [TestCase(2, 0.5)]
    [TestCase(3, 1.0 / 3)]
    public void BlockLevel_EveryBlockHasExactlyKHolders(int workers, double coverage)
    {
        var plan = SubnetworkPlan.Create(ResNetBlocks, workers, coverage, 5);
        AssertUniform(plan);
        Assert.That(Enumerable.Range(0, workers).Sum(w => plan.UnitsHeld(w, 0)), Is.EqualTo(8 * plan.HoldersPerUnit));
    }

    [Test]
    public void SameSeedSamePlan_DifferentSeedDifferentPlan()
    {
        string a = SubnetworkPlan.Create(TinyNeurons, 4, 0.5, 42).ToJson();
        Assert.That(SubnetworkPlan.Create(TinyNeurons, 4, 0.5, 42).ToJson(), Is.EqualTo(a));
        Assert.That(SubnetworkPlan.Create(TinyNeurons, 4, 0.5, 43).ToJson(), Is.Not.EqualTo(a));

        string b = SubnetworkPlan.Create(ResNetBlocks, 4, 0.5, 42).ToJson();
        Assert.That(SubnetworkPlan.Create(ResNetBlocks, 4, 0.5, 42).ToJson(), Is.EqualTo(b));
        // Block plans only depend on the seed through tie-breaks: some other seed must change them.
        Assert.That(Enumerable.Range(0, 8).Select(s => SubnetworkPlan.Create(ResNetBlocks, 4, 0.5, (ulong)s).ToJson()).Distinct().Count(), Is.GreaterThan(1));
    }

    [TestCase(SubnetLevel.Neuron)]
    [TestCase(SubnetLevel.Block)]
    public void FullCoverage_EveryWorkerHoldsEverything(SubnetLevel level)
    {
        var units = ResNetUnits(new ResNetConfig(), level);
        var plan = SubnetworkPlan.Create(units, 4, 1.0, 9);
        for (int w = 0; w < 4; w++)
        {
            Assert.That(plan.MaskOf(w).SelectMany(m => m), Is.All.True);
            Assert.That(plan.HeldParams(w), Is.EqualTo(new ResNetConfig().ParameterCount));
        }
        Assert.That(plan.DistinctHolderGroups, Is.EqualTo(1));
        Assert.That(plan.IsConnected, Is.True);
    }

    [TestCase(4, 0.3, "0.25 or 0.5")]
    [TestCase(4, 0.1, "0.25")]
    [TestCase(4, 0.0, "0.25")]
    [TestCase(4, 1.5, "1")]
    [TestCase(3, 0.5, "0.333333 or 0.666667")]
    [TestCase(4, double.NaN, "0.25")]
    public void InvalidCoverage_NamesTheNearestValidCoverages(int workers, double coverage, string nearest)
    {
        var e = Assert.Throws<ArgumentException>(() => SubnetworkPlan.Create(MixedGroups(), workers, coverage, 0, SubnetLevel.Neuron))!;
        Assert.That(e.Message, Does.Contain("coverage").And.Contain($"nearest valid coverage: {nearest}").And.Contain($"[1, {workers}]"));
    }

    [Test]
    public void InvalidArguments_AreRejected()
    {
        Assert.That(() => SubnetworkPlan.Create(MixedGroups(), 0, 1, 0, SubnetLevel.Neuron), Throws.ArgumentException.With.Message.Contains("workers"));
        Assert.That(() => SubnetworkPlan.Create([], 2, 0.5, 0, SubnetLevel.Neuron), Throws.ArgumentException.With.Message.Contains("no unit groups"));
        Assert.That(() => SubnetworkPlan.Create([new UnitGroup("x", 3, null, [1, 2], [0, 0, 0])], 2, 0.5, 0, SubnetLevel.Neuron),
            Throws.ArgumentException.With.Message.Contains("\"x\"").And.Message.Contains("ParamsPerUnit has 2 entries"));
        Assert.That(() => SubnetworkPlan.Create([UnitGroup.Uniform("x", 3, 1)], 2, 0.5, 0, SubnetLevel.Block),
            Throws.ArgumentException.With.Message.Contains("needs UnitNames"));
        Assert.That(() => SubnetworkPlan.Create([UnitGroup.Uniform("x", 3, 1), UnitGroup.Uniform("x", 2, 1)], 2, 0.5, 0, SubnetLevel.Neuron),
            Throws.ArgumentException.With.Message.Contains("appears twice"));
    }

    [Test]
    public void Json_HasTheDocumentedShape_AndRoundTrips()
    {
        var plan = SubnetworkPlan.Create(MixedGroups(), 4, 0.5, 11, SubnetLevel.Neuron);
        string json = plan.ToJson();
        using (var doc = JsonDocument.Parse(json))
        {
            var root = doc.RootElement;
            Assert.That(root.EnumerateObject().Select(p => p.Name), Is.EqualTo(new[] { "workers", "coverage", "subnet", "groups" }));
            Assert.That(root.GetProperty("workers").GetInt32(), Is.EqualTo(4));
            Assert.That(root.GetProperty("coverage").GetDouble(), Is.EqualTo(0.5));
            Assert.That(root.GetProperty("subnet").GetString(), Is.EqualTo("neuron"));
            var g1 = root.GetProperty("groups")[1];
            Assert.That(g1.EnumerateObject().Select(p => p.Name), Is.EqualTo(new[] { "name", "units", "holders" }));
            Assert.That(g1.GetProperty("name").GetString(), Is.EqualTo("b"));
            Assert.That(g1.GetProperty("units").EnumerateArray().Select(e => e.GetInt32()), Is.EqualTo(Enumerable.Range(0, 10)));
            Assert.That(g1.GetProperty("holders")[3].EnumerateArray().Select(e => e.GetInt32()), Is.EqualTo(plan.HoldersOf(1, 3)));
        }
        var back = SubnetworkPlan.FromJson(json);
        Assert.That(back.ToJson(), Is.EqualTo(json));
        Assert.That(back.Workers, Is.EqualTo(4));
        Assert.That(back.HoldersPerUnit, Is.EqualTo(2));
        Assert.That(back.Seed, Is.Null);

        var blocks = SubnetworkPlan.Create(ResNetBlocks, 8, 0.5, 2);
        string bj = blocks.ToJson();
        using (var doc = JsonDocument.Parse(bj))
        {
            Assert.That(doc.RootElement.GetProperty("subnet").GetString(), Is.EqualTo("block"));
            Assert.That(doc.RootElement.GetProperty("groups")[0].GetProperty("units")[7].GetString(), Is.EqualTo("layer4.1"));
        }
        var blocksBack = SubnetworkPlan.FromJson(bj, ResNetBlocks);
        Assert.That(blocksBack.ToJson(), Is.EqualTo(bj));
        Assert.That(Enumerable.Range(0, 8).Select(blocksBack.HeldParams), Is.EqualTo(Enumerable.Range(0, 8).Select(blocks.HeldParams)));
        Assert.That(blocksBack.AlgebraicConnectivity, Is.EqualTo(blocks.AlgebraicConnectivity).Within(1e-9));
    }

    [TestCase("""{"workers": 2, "coverage": 0.5, "subnet": "neuron", "groups": [{"name": "a", "units": [0, 1], "holders": [[0], [0, 1]]}]}""", "groups[0].holders[1] has 2 holders, expected k")]
    [TestCase("""{"workers": 2, "coverage": 0.5, "subnet": "neuron", "groups": [{"name": "a", "units": [0, 1], "holders": [[0], [2]]}]}""", "groups[0].holders[1] holds 2")]
    [TestCase("""{"workers": 3, "coverage": 1, "subnet": "neuron", "groups": [{"name": "a", "units": [0], "holders": [[0, 2, 1]]}]}""", "increasing order")]
    [TestCase("""{"workers": 2, "coverage": 0.5, "subnet": "neuron", "groups": [{"name": "a", "units": [1, 0], "holders": [[0], [1]]}]}""", "groups[0].units[0] must be the index 0")]
    [TestCase("""{"workers": 4, "coverage": 0.3, "subnet": "neuron", "groups": []}""", "nearest valid coverage: 0.25 or 0.5")]
    [TestCase("""{"workers": 2, "coverage": 0.5, "subnet": "width", "groups": []}""", "\"subnet\" must be \"neuron\" or \"block\"")]
    [TestCase("""{"workers": 2, "coverage": 0.5, "subnet": "block", "groups": [{"name": "b", "units": ["x", "x"], "holders": [[0], [1]]}]}""", "appears twice")]
    [TestCase("""{"workers": 2, "coverage": 0.5, "subnet": "neuron", "groups": [], "seed": 1}""", "unknown key \"seed\"")]
    [TestCase("""{"workers": 2, "coverage": 0.5, "subnet": "neuron"}""", "missing \"groups\"")]
    [TestCase("""[1]""", "expected a JSON object")]
    public void FromJson_RejectsInvalidPlans(string json, string expected)
    {
        Assert.That(() => SubnetworkPlan.FromJson(json), Throws.InstanceOf<InvalidDataException>().With.Message.Contains(expected));
    }

    [Test]
    public void FromJson_WithModelUnits_ChecksTheyMatch()
    {
        string json = SubnetworkPlan.Create(ResNetBlocks, 4, 0.5, 0).ToJson();
        var keepDownsample = ResNetUnits(new ResNetConfig(), SubnetLevel.Block, new SubnetOptions { Downsample = DownsampleBlocks.AlwaysKeep });
        Assert.That(() => SubnetworkPlan.FromJson(json, keepDownsample), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("with 8 units"));
        Assert.That(() => SubnetworkPlan.FromJson(json, TinyNeurons), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("neuron-level"));
    }

    [Test]
    public void Connectivity_OneHolderPerUnitIsDisconnected_TwoOfFourIsARing()
    {
        var partition = SubnetworkPlan.Create(TinyNeurons, 4, 0.25, 0);
        Assert.That(partition.IsConnected, Is.False);
        Assert.That(partition.AlgebraicConnectivity, Is.EqualTo(0));
        Assert.That(partition.DistinctHolderGroups, Is.EqualTo(4));

        var halves = SubnetworkPlan.Create(TinyNeurons, 2, 0.5, 0);
        Assert.That(halves.IsConnected, Is.False, "W = 2, C = 0.5 is a pure partition (A1)");

        // W = 4, C = 0.5: worker w holds chunks w and w+1 of every layer, so workers w and w+1 share one
        // chunk (172 units per layer, 688 in all) and w, w+2 share nothing: a ring with edge weight 688,
        // whose Laplacian eigenvalues are 688·(2 − 2cos(2πj/4)) = 0, 1376, 1376, 2752.
        var ring = SubnetworkPlan.Create(TinyNeurons, 4, 0.5, 0);
        Assert.That(ring.IsConnected, Is.True);
        Assert.That(ring.AlgebraicConnectivity, Is.EqualTo(1376).Within(1e-6));
        // Normalised Laplacian of a 4-cycle: 1 − cos(2πj/4) = 0, 1, 1, 2.
        Assert.That(ring.NormalizedAlgebraicConnectivity, Is.EqualTo(1).Within(1e-9));
        Assert.That(partition.NormalizedAlgebraicConnectivity, Is.EqualTo(0));
        Assert.That(ring.DistinctHolderGroups, Is.EqualTo(4));
        for (int w = 0; w < 4; w++)
        {
            Assert.That(ring.Overlap[w, w], Is.EqualTo(4 * 344));
            Assert.That(ring.Overlap[w, (w + 1) % 4], Is.EqualTo(688));
            Assert.That(ring.Overlap[w, (w + 2) % 4], Is.EqualTo(0));
        }
    }

    [Test]
    public void Jacobi_MatchesKnownSpectra()
    {
        // Path graph on 3 vertices: Laplacian eigenvalues 0, 1, 3.
        Assert.That(SymmetricEigen.Eigenvalues(new double[,] { { 1, -1, 0 }, { -1, 2, -1 }, { 0, -1, 1 } }), Is.EqualTo(new[] { 0.0, 1, 3 }).Within(1e-12));
        // Complete graph K4: 0, 4, 4, 4.
        var k4 = new double[4, 4];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) k4[i, j] = i == j ? 3 : -1;
        Assert.That(SymmetricEigen.Eigenvalues(k4), Is.EqualTo(new[] { 0.0, 4, 4, 4 }).Within(1e-12));
        // A random symmetric 7x7: eigenvalues sum to the trace and their squares to the squared Frobenius norm.
        var rng = new Sdp.Engine.Rng(3);
        var m = new double[7, 7];
        for (int i = 0; i < 7; i++)
            for (int j = 0; j <= i; j++) m[i, j] = m[j, i] = rng.NextNormal();
        double[] eig = SymmetricEigen.Eigenvalues(m);
        double trace = 0, frob = 0;
        for (int i = 0; i < 7; i++)
        {
            trace += m[i, i];
            for (int j = 0; j < 7; j++) frob += m[i, j] * m[i, j];
        }
        Assert.That(eig.Sum(), Is.EqualTo(trace).Within(1e-10));
        Assert.That(eig.Sum(x => x * x), Is.EqualTo(frob).Within(1e-9));
        Assert.That(eig, Is.Ordered.Ascending);
        Assert.That(() => SymmetricEigen.Eigenvalues(new double[,] { { 1, 2 }, { 0, 1 } }), Throws.ArgumentException.With.Message.Contains("not symmetric"));
    }

    [Test]
    public void TinyLlama_ParameterCounts_MatchHandArithmetic()
    {
        // hidden 256, intermediate 688, 4 layers, vocab 4096, GQA 8/4 heads.
        // Unit = row of gate_proj and up_proj + column of down_proj = 3·256 = 768 parameters.
        // MLP per layer 768·688 = 528,384; 4 layers 2,113,536; shared = 4,999,424 − 2,113,536 = 2,885,888.
        Assert.That(TinyNeurons.Groups, Has.Count.EqualTo(4));
        Assert.That(TinyNeurons.Groups[2].Name, Is.EqualTo("model.layers.2.mlp"));
        Assert.That(TinyNeurons.Groups[0].UnitCount, Is.EqualTo(688));
        Assert.That(TinyNeurons.Groups[0].ParamsPerUnit, Is.All.EqualTo(768));
        Assert.That(TinyNeurons.SharedParams, Is.EqualTo(2_885_888));
        Assert.That(TinyNeurons.TotalParams, Is.EqualTo(4_999_424));

        // W = 4, C = 0.5: 344 units per layer each → 4·344·768 = 1,056,768 + 2,885,888 = 3,942,656 params, ×4 bytes.
        var plan = SubnetworkPlan.Create(TinyNeurons, 4, 0.5, 0);
        for (int w = 0; w < 4; w++)
        {
            Assert.That(plan.HeldParams(w), Is.EqualTo(3_942_656));
            Assert.That(plan.HeldBytes(w), Is.EqualTo(15_770_624));
        }

        // Block level: a layer is 256·256·2 (q, o) + 2·256·128 (k, v) + 3·256·688 + 2·256 = 725,504; shared = embeddings ×2 + final norm.
        var blocks = LlamaUnits(LlamaConfig.Preset("tiny"), SubnetLevel.Block);
        Assert.That(blocks.Groups.Single().UnitNames, Is.EqualTo(new[] { "model.layers.0", "model.layers.1", "model.layers.2", "model.layers.3" }));
        Assert.That(blocks.Groups[0].ParamsPerUnit, Is.All.EqualTo(725_504));
        Assert.That(blocks.SharedParams, Is.EqualTo(2 * 4096 * 256 + 256));
        var half = SubnetworkPlan.Create(blocks, 4, 0.5, 0);
        Assert.That(Enumerable.Range(0, 4).Select(half.HeldParams), Is.All.EqualTo(2 * 4096 * 256 + 256 + 2 * 725_504));
    }

    [Test]
    public void LlamaOptions_MaskHeadsAndSplitSublayers()
    {
        var tiny = LlamaConfig.Preset("tiny");
        // maskHeads: 4 KV groups per layer, each = 2 query heads (q rows + o columns: 2·2·32·256) + k, v rows (2·32·256) = 49,152.
        var heads = LlamaUnits(tiny, SubnetLevel.Neuron, new SubnetOptions { MaskHeads = true });
        Assert.That(heads.Groups.Select(g => g.Name).Take(3), Is.EqualTo(new[] { "model.layers.0.self_attn", "model.layers.0.mlp", "model.layers.1.self_attn" }));
        Assert.That(heads.Groups[0].UnitCount, Is.EqualTo(4));
        Assert.That(heads.Groups[0].ParamsPerUnit, Is.All.EqualTo(49_152));
        Assert.That(heads.TotalParams, Is.EqualTo(tiny.ParameterCount));
        // Attention is 4·49,152 = 196,608 = 2·256² + 2·256·128 per layer.
        Assert.That(heads.SharedParams, Is.EqualTo(2_885_888 - 4 * 196_608));
        AssertUniform(SubnetworkPlan.Create(heads, 4, 0.5, 0));

        var split = LlamaUnits(tiny, SubnetLevel.Block, new SubnetOptions { SplitSublayers = true });
        Assert.That(split.Groups[0].UnitNames!.Take(3), Is.EqualTo(new[] { "model.layers.0.self_attn", "model.layers.0.mlp", "model.layers.1.self_attn" }));
        Assert.That(split.Groups[0].ParamsPerUnit.Take(2), Is.EqualTo(new[] { 196_608L + 256, 528_384L + 256 }));
        Assert.That(split.TotalParams, Is.EqualTo(tiny.ParameterCount));
        Assert.That(SubnetworkPlan.Create(split, 4, 0.5, 0).IsConnected, Is.True);
    }

    [Test]
    public void ResNetUnits_SumToTheModelsParameterCount()
    {
        var config = new ResNetConfig(Width: 8, NumClasses: 10, InChannels: 3);
        var neurons = ResNetUnits(config, SubnetLevel.Neuron);
        Assert.That(neurons.Groups.Select(g => g.Name), Is.EqualTo(new[] { "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1" }));
        // layer2.0: 8 → 16 channels; channel t = conv1 filter (8·9) + bn1 (2) + conv2 input channel (16·9) = 218.
        Assert.That(neurons.Groups[2].UnitCount, Is.EqualTo(16));
        Assert.That(neurons.Groups[2].ParamsPerUnit, Is.All.EqualTo(8 * 9 + 2 + 16 * 9));
        Assert.That(neurons.TotalParams, Is.EqualTo(config.ParameterCount));

        var blocks = ResNetUnits(config, SubnetLevel.Block);
        Assert.That(blocks.TotalParams, Is.EqualTo(config.ParameterCount));
        // layer2.0's unit excludes its projection shortcut (1x1 conv 8·16 + BN 2·16), which is shared.
        Assert.That(blocks.Groups[0].ParamsPerUnit[2], Is.EqualTo(9 * 8 * 16 + 9 * 16 * 16 + 4 * 16));

        var keep = ResNetUnits(config, SubnetLevel.Block, new SubnetOptions { Downsample = DownsampleBlocks.AlwaysKeep });
        Assert.That(keep.Groups[0].UnitNames, Is.EqualTo(new[] { "layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1" }));
        Assert.That(keep.TotalParams, Is.EqualTo(config.ParameterCount));
        Assert.That(keep.SharedParams, Is.GreaterThan(blocks.SharedParams));
    }
}

[NonParallelizable]
public sealed class PlanCommandTests : CliTestBase
{
    [Test]
    public void Plan_PrintsHoldersParametersAndConnectivity()
    {
        var r = Sdp("plan", "--model", "llama", "--config", "tiny", "--workers", "4", "--coverage", "0.5", "--subnet", "neuron", "--seed", "1");
        Assert.That(r.ExitCode, Is.Zero, r.ToString());
        Assert.That(r.Out, Does.Contain("each held by exactly 2 worker(s)"));
        Assert.That(r.Out, Does.Contain("3,942,656 params").And.Contain("15,770,624 bytes"));
        Assert.That(r.Out, Does.Contain("4 distinct holder sets"));
        Assert.That(r.Out, Does.Contain("connected, algebraic connectivity 1376"));

        var b = Sdp("plan", "--model", "resnet18", "--workers", "4", "--coverage", "0.5", "--subnet", "block");
        Assert.That(b.ExitCode, Is.Zero, b.ToString());
        Assert.That(b.Out, Does.Contain("layer4.1").And.Contain("max/min held parameters"));
    }

    [Test]
    public void PlanJson_ParsesBackIntoTheSamePlan()
    {
        var r = Sdp("plan", "--model", "resnet18", "--workers", "8", "--coverage", "0.5", "--subnet", "block", "--seed", "3", "--json");
        Assert.That(r.ExitCode, Is.Zero, r.ToString());
        var plan = SubnetworkPlan.FromJson(r.Out.Trim(), PlanTests.ResNetUnits(new ResNetConfig(), SubnetLevel.Block));
        Assert.That(plan.ToJson(), Is.EqualTo(SubnetworkPlan.Create(PlanTests.ResNetUnits(new ResNetConfig(), SubnetLevel.Block), 8, 0.5, 3).ToJson()));
    }

    [TestCase("--coverage", "0.3", "nearest valid coverage: 0.25 or 0.5")]
    [TestCase("--workers", "0", "--workers must be a positive integer")]
    [TestCase("--config", "huge", "neither a LLaMA preset")]
    [TestCase("--subnet", "width", "--subnet")]
    public void Plan_BadInput_ExitsTwoWithOneLine(string option, string value, string expected)
    {
        var args = new List<string> { "plan", "--model", "llama", "--workers", "4", "--coverage", "0.5" };
        int at = args.IndexOf(option);
        if (at >= 0) args[at + 1] = value;
        else args.AddRange([option, value]);
        var r = Sdp([.. args]);
        Assert.That(r.ExitCode, Is.EqualTo(2), r.ToString());
        Assert.That(r.ErrLines, Has.Length.EqualTo(1));
        Assert.That(r.Err, Does.Contain(expected));
    }
}
