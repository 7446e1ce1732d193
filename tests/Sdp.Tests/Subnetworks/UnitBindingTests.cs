using Sdp.Engine;
using Sdp.Engine.Nn;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Subnetworks;
using static Sdp.Tests.Subnetworks.PlanTests;
using static Sdp.Tests.Subnetworks.SubnetworkWeights;

namespace Sdp.Tests.Subnetworks;

/// <summary>The tensor bindings the built-in models declare (resolved from their modules) against the dense models.</summary>
public sealed class UnitBindingTests
{
    private static readonly LlamaConfig Llama = new(vocabSize: 32, hiddenSize: 16, intermediateSize: 12, numHiddenLayers: 3,
        numAttentionHeads: 4, numKeyValueHeads: 2, maxPositionEmbeddings: 16);

    private static readonly ResNetConfig ResNet = new(Width: 4, NumClasses: 3);

    public static IEnumerable<TestCaseData> Builders()
    {
        yield return new TestCaseData("llama", LlamaUnits(Llama, SubnetLevel.Neuron)).SetArgDisplayNames("llama neurons");
        yield return new TestCaseData("llama", LlamaUnits(Llama, SubnetLevel.Neuron, new SubnetOptions { MaskHeads = true })).SetArgDisplayNames("llama neurons+heads");
        yield return new TestCaseData("llama", LlamaUnits(Llama, SubnetLevel.Block)).SetArgDisplayNames("llama blocks");
        yield return new TestCaseData("llama", LlamaUnits(Llama, SubnetLevel.Block, new SubnetOptions { SplitSublayers = true })).SetArgDisplayNames("llama sublayers");
        yield return new TestCaseData("llama-tied", LlamaUnits(Llama with { TieWordEmbeddings = true }, SubnetLevel.Block)).SetArgDisplayNames("llama tied blocks");
        yield return new TestCaseData("resnet", ResNetUnits(ResNet, SubnetLevel.Neuron)).SetArgDisplayNames("resnet neurons");
        yield return new TestCaseData("resnet", ResNetUnits(ResNet, SubnetLevel.Block)).SetArgDisplayNames("resnet blocks");
        yield return new TestCaseData("resnet", ResNetUnits(ResNet, SubnetLevel.Block, new SubnetOptions { Downsample = DownsampleBlocks.AlwaysKeep })).SetArgDisplayNames("resnet blocks, keep downsampling");
    }

    private static Module Dense(string model) => model switch
    {
        "llama" => new LlamaForCausalLM(Llama, new Rng(1)),
        "llama-tied" => new LlamaForCausalLM(Llama with { TieWordEmbeddings = true }, new Rng(1)),
        _ => new ResNet18(ResNet, new Rng(1)),
    };

    [TestCaseSource(nameof(Builders))]
    public void Bindings_name_dense_tensors_with_consistent_sizes_and_cover_exactly_the_unit_parameters(string model, MaskableUnits units)
    {
        using var dense = Dense(model);
        var parameters = dense.NamedParameters().ToDictionary(p => p.Name, p => p.Tensor);
        var tensors = Tensors(dense);
        Assert.That(units.TensorBindings, Is.Not.Empty);
        Assert.That(units.TensorBindings.Select(b => b.Tensor), Is.Unique);

        var perUnit = units.Groups.Select(g => new long[g.UnitCount]).ToArray();
        long bound = 0;
        foreach (var b in units.TensorBindings)
        {
            Assert.That(tensors.ContainsKey(b.Tensor), Is.True, $"{b.Tensor} is not a tensor of the dense model");
            Assert.That(b.Group, Is.InRange(0, units.Groups.Count - 1), b.Tensor);
            var t = tensors[b.Tensor];
            var group = units.Groups[b.Group];
            if (b.IsWhole)
            {
                Assert.That(b.Unit!.Value, Is.InRange(0, group.UnitCount - 1), b.Tensor);
                Assert.That(units.Level, Is.EqualTo(SubnetLevel.Block), $"{b.Tensor}: whole bindings are block level");
            }
            else
            {
                Assert.That(units.Level, Is.EqualTo(SubnetLevel.Neuron), $"{b.Tensor}: sliced bindings are neuron level");
                Assert.That(b.Axis, Is.InRange(0, t.Rank - 1), b.Tensor);
                Assert.That(b.SlicesPerUnit, Is.GreaterThanOrEqualTo(1), b.Tensor);
                Assert.That(t.Shape[b.Axis], Is.EqualTo(group.UnitCount * b.SlicesPerUnit), $"{b.Tensor} {t.Shape} axis {b.Axis}");
            }
            if (!parameters.ContainsKey(b.Tensor)) continue; // buffers cost no parameters
            bound += t.Numel;
            if (b.IsWhole) perUnit[b.Group][b.Unit!.Value] += t.Numel;
            else
            {
                for (int u = 0; u < group.UnitCount; u++) perUnit[b.Group][u] += t.Numel / group.UnitCount;
            }
        }
        Assert.That(bound, Is.EqualTo(units.Groups.Sum(g => g.TotalParams)), "Σ bound parameter sizes = Σ group parameters");
        Assert.That(units.SharedParams, Is.EqualTo(dense.ParameterCount - bound), "shared = total − bound");
        for (int g = 0; g < units.Groups.Count; g++)
        {
            Assert.That(perUnit[g], Is.EqualTo(units.Groups[g].ParamsPerUnit), $"group {units.Groups[g].Name}: parameters per unit");
        }
    }

    [Test]
    public void Every_per_channel_tensor_of_a_maskable_unit_is_bound_buffers_included()
    {
        var neurons = Bindings(ResNetUnits(ResNet, SubnetLevel.Neuron));
        foreach (string t in new[] { "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "conv2.weight" })
        {
            Assert.That(neurons.ContainsKey("layer3.0." + t), Is.True, t);
        }
        Assert.That(neurons["layer3.0.conv2.weight"].Axis, Is.EqualTo(1));
        Assert.That(neurons.Keys, Has.None.Contains("bn2").And.None.Contains("downsample"));

        var blocks = ResNetUnits(ResNet, SubnetLevel.Block);
        var byName = Bindings(blocks);
        using var dense = new ResNet18(ResNet, new Rng(1));
        int unit = blocks.Groups[0].UnitNames!.ToList().IndexOf("layer2.0");
        var expected = Tensors(dense).Keys.Where(n => n.StartsWith("layer2.0.", StringComparison.Ordinal) && !n.Contains("downsample")).ToList();
        Assert.That(expected, Has.Count.EqualTo(12)); // 2 convs + 2 BNs of 5 tensors
        Assert.That(byName.Where(kv => kv.Value.Unit == unit).Select(kv => kv.Key), Is.EquivalentTo(expected));

        var heads = Bindings(LlamaUnits(Llama, SubnetLevel.Neuron, new SubnetOptions { MaskHeads = true }));
        Assert.That(heads["model.layers.1.self_attn.q_proj.weight"], Is.EqualTo(new UnitBinding("model.layers.1.self_attn.q_proj.weight", 2, 0, Llama.GroupSize * Llama.HeadDim)));
        Assert.That(heads["model.layers.1.self_attn.o_proj.weight"], Is.EqualTo(new UnitBinding("model.layers.1.self_attn.o_proj.weight", 2, 1, Llama.GroupSize * Llama.HeadDim)));
        Assert.That(heads["model.layers.1.self_attn.k_proj.weight"].SlicesPerUnit, Is.EqualTo(Llama.HeadDim));
        Assert.That(heads["model.layers.1.mlp.down_proj.weight"], Is.EqualTo(new UnitBinding("model.layers.1.mlp.down_proj.weight", 3, 1)));

        var split = Bindings(LlamaUnits(Llama, SubnetLevel.Block, new SubnetOptions { SplitSublayers = true }));
        Assert.That(split["model.layers.1.input_layernorm.weight"].Unit, Is.EqualTo(2));
        Assert.That(split["model.layers.1.post_attention_layernorm.weight"].Unit, Is.EqualTo(3));
    }

    [Test]
    public void Build_rejects_held_sets_that_do_not_fit_the_groups()
    {
        var model = SubnetworkModels.ResNet18(ResNet, SubnetLevel.Neuron, new SubnetOptions(), 1);
        Assert.That(() => model.Build([[0]]), Throws.ArgumentException.With.Message.Contains("one per unit group (8)"));
        var held = Enumerable.Range(0, 8).Select(_ => new[] { 0 }).ToArray();
        held[2] = [1, 0];
        Assert.That(() => model.Build(held), Throws.ArgumentException.With.Message.Contains("layer2.0").And.Message.Contains("ascending"));
        held[2] = [8];
        Assert.That(() => model.Build(held), Throws.ArgumentException.With.Message.Contains("in [0, 8), got [8]"));
    }
}
