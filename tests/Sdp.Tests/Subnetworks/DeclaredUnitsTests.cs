using Sdp.Engine;
using Sdp.Engine.Nn;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Subnetworks;
using static Sdp.Tests.Subnetworks.SubnetworkWeights;

namespace Sdp.Tests.Subnetworks;

/// <summary>
/// Units declared from modules (issue 15): what <see cref="DeclaredUnits"/> derives from a user's model (counts, FLOPs,
/// bindings), the declarations it refuses, and the cut it makes on a real device.
/// </summary>
public sealed class DeclaredUnitsTests
{
    private const int Dim = 6, Hidden = 5, Classes = 3;

    /// <summary>input (Dim→Dim) → blocks b: up (Dim→Hidden, bias), down (Hidden→Dim) → head (Dim→Classes); a second hidden layer "extra" in block 0.</summary>
    private sealed class Net : Module
    {
        public Net()
        {
            var rng = new Rng(4);
            Input = RegisterModule("input", new Linear(Dim, Dim, bias: true, rng));
            var blocks = RegisterModule("blocks", new Bag());
            for (int b = 0; b < 2; b++)
            {
                var block = blocks.Add(b.ToString(), new Bag());
                Blocks.Add((block.Add("up", new Linear(Dim, Hidden, bias: true, rng)), block.Add("down", new Linear(Hidden, Dim, bias: false, rng))));
            }
            Head = RegisterModule("head", new Linear(Dim, Classes, bias: true, rng));
        }

        public Linear Input { get; }

        public List<(Linear Up, Linear Down)> Blocks { get; } = [];

        public Linear Head { get; }

        private sealed class Bag : Module
        {
            public T Add<T>(string name, T module) where T : Module => RegisterModule(name, module);
        }
    }

    private static IEnumerable<UnitDeclaration> Hidden_(Net net) => net.Blocks.Select(b => Units.Hidden(b.Up, b.Down));

    [Test]
    public void Counts_flops_names_and_bindings_come_from_the_modules()
    {
        using var net = new Net();
        var units = DeclaredUnits.Resolve(net, Hidden_(net)).Units;
        Assert.That(units.Level, Is.EqualTo(SubnetLevel.Neuron));
        Assert.That(units.Groups.Select(g => g.Name), Is.EqualTo(new[] { "blocks.0", "blocks.1" }));
        Assert.That(units.Groups.Select(g => g.UnitCount), Is.All.EqualTo(Hidden));
        // A hidden unit: a row of up's weight and its bias element, a column of down's weight.
        Assert.That(units.Groups.SelectMany(g => g.ParamsPerUnit), Is.All.EqualTo(2 * Dim + 1));
        // Never run: each layer counts as applied once, 2 FLOPs per weight element.
        Assert.That(units.Groups.SelectMany(g => g.FlopsPerUnit), Is.All.EqualTo(4 * Dim));
        Assert.That(units.SharedParams, Is.EqualTo(Dim * Dim + Dim + Dim * Classes + Classes));
        Assert.That(units.TotalParams, Is.EqualTo(net.ParameterCount));
        Assert.That(Bindings(units).Values.OrderBy(b => b.Tensor), Is.EqualTo(new[]
        {
            new UnitBinding("blocks.0.down.weight", 0, 1), new UnitBinding("blocks.0.up.bias", 0, 0), new UnitBinding("blocks.0.up.weight", 0, 0),
            new UnitBinding("blocks.1.down.weight", 1, 1), new UnitBinding("blocks.1.up.bias", 1, 0), new UnitBinding("blocks.1.up.weight", 1, 0),
        }));

        var blocks = DeclaredUnits.Resolve(net, net.Blocks.Select(b => Units.Block(b.Up, b.Down))).Units;
        Assert.That(blocks.Groups.Single().UnitNames, Is.EqualTo(new[] { "blocks.0.up", "blocks.1.up" }));
        Assert.That(blocks.Groups[0].ParamsPerUnit, Is.All.EqualTo(2 * Dim * Hidden + Hidden));
    }

    [Test]
    public void Flops_are_per_sample_from_a_forward_on_the_meta_device()
    {
        // ResNet width 8 on 32x32 images: layer2.0 maps 8 -> 16 channels at 16x16; a channel is a conv1 filter
        // (8·9), a conv2 input channel (16·9) and a bn1 channel (2 FLOPs per pixel).
        var neurons = PlanTests.ResNetUnits(new ResNetConfig(Width: 8), SubnetLevel.Neuron);
        Assert.That(neurons.Groups[2].FlopsPerUnit, Is.All.EqualTo(2L * (8 * 9 + 16 * 9) * 256 + 2 * 256));
        // LLaMA blocks, per sequence of T = max_position_embeddings: 2 FLOPs per weight per token plus the
        // attention scores and weighted values, 4·hidden·T per token.
        var config = LlamaConfig.Preset("tiny");
        long t = config.MaxPositionEmbeddings, h = config.HiddenSize;
        long weights = config.LayerParameterCount - 2 * h;
        var blocks = PlanTests.LlamaUnits(config, SubnetLevel.Block);
        Assert.That(blocks.Groups[0].FlopsPerUnit, Is.All.EqualTo(t * (2 * weights + 4 * h * t)));
        // A key/value group of heads: its projection slices, and its share of the attention's scores (4·T²·D per query head).
        var heads = PlanTests.LlamaUnits(config, SubnetLevel.Neuron, new SubnetOptions { MaskHeads = true });
        long g = config.GroupSize, d = config.HeadDim;
        Assert.That(heads.Groups[0].FlopsPerUnit, Is.All.EqualTo(t * 2 * (2 * g + 2) * d * h + 4 * g * d * t * t));
    }

    [Test]
    public void Bad_declarations_are_refused_naming_the_module()
    {
        using var net = new Net();
        using var stranger = new Linear(Dim, Hidden, bias: false, new Rng(1));
        Assert.Multiple(() =>
        {
            Assert.That(() => DeclaredUnits.Resolve(net, [Units.Hidden(stranger, net.Blocks[0].Down)]),
                Throws.ArgumentException.With.Message.Contains("the producer, a Linear with 30 parameters, is not part of the model"));
            Assert.That(() => DeclaredUnits.Resolve(net, [Units.Hidden(net.Blocks[0].Up, net.Head)]),
                Throws.ArgumentException.With.Message.Contains("head reads 6 inputs but blocks.0.up makes 5 hidden units"));
            Assert.That(() => DeclaredUnits.Resolve(net, [Units.Hidden(net.Blocks[0].Up, net.Blocks[0].Down, net.Head)]),
                Throws.ArgumentException.With.Message.Contains("head has 3 units along the sliced axis but blocks.0.up makes 5"));
            Assert.That(() => DeclaredUnits.Resolve(net, [Units.Hidden(net.Blocks[0].Up, net.Blocks[0].Down), Units.Hidden(net.Blocks[0].Up, net.Blocks[1].Down)]),
                Throws.ArgumentException.With.Message.Contains("tensor blocks.0.up.weight is claimed by unit group"));
            Assert.That(() => DeclaredUnits.Resolve(net, [Units.Block(net.Blocks[0].Up), Units.Block(net.Blocks[0].Up, net.Blocks[0].Down)]),
                Throws.ArgumentException.With.Message.Contains("tensor blocks.0.up.weight is claimed by block \"blocks.0.up\""));
            Assert.That(() => DeclaredUnits.Resolve(net, [Units.Hidden(net.Blocks[0].Up, net.Blocks[0].Down), Units.Block(net.Head)]),
                Throws.ArgumentException.With.Message.Contains("declared together"));
            Assert.That(() => DeclaredUnits.Resolve(net, [Units.Hidden(net, net.Blocks[0].Down)]),
                Throws.ArgumentException.With.Message.Contains("is a Net, which cannot be sliced"));
            Assert.That(() => DeclaredUnits.Resolve(net, []), Throws.ArgumentException.With.Message.Contains("declares no units"));
        });
    }

    [Test]
    public void A_cut_on_a_real_device_keeps_the_held_values_and_the_tensor_objects()
    {
        using var net = new Net();
        var dense = Tensors(net).ToDictionary(kv => kv.Key, kv => (kv.Value.Shape, Values: kv.Value.ToDoubles()));
        var up = net.Blocks[0].Up.Weight;
        var declared = DeclaredUnits.Resolve(net, Hidden_(net));
        int[][] held = [[1, 3], []];
        declared.Cut(held, inverseCoverageScale: true);
        Assert.That(net.Blocks[0].Up.Weight, Is.SameAs(up), "the layer keeps its tensor object");
        Assert.That(net.Blocks[0].Down.InputScale, Is.EqualTo(Hidden / 2.0));
        Assert.That(net.Blocks[1].Up.IsDropped && net.Blocks[1].Down.IsDropped, Is.True, "a hidden layer with no held unit is dropped");
        var units = declared.Units;
        foreach (var (name, t) in Tensors(net))
        {
            var (shape, values) = dense[name];
            var expected = Bindings(units).ContainsKey(name) ? HeldPart(name, values, shape.Dims, units, held) : values;
            Assert.That(t.ToDoubles(), Is.EqualTo(expected), name);
        }
        Assert.That(Tensors(net).Keys, Has.None.StartsWith("blocks.1."));
    }
}
