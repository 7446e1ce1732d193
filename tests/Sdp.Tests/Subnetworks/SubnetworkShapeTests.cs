using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Memory;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;
using Sdp.Tests.Support;
using static Sdp.Tests.Subnetworks.SubnetworkWeights;

namespace Sdp.Tests.Subnetworks;

/// <summary>
/// Forward-masked subnetworks (method reference §2.4, §3; acceptance checks A9, A10): a subnetwork whose
/// weights are the held slices of a dense model computes the loss and (held) gradients of the dense model
/// with its unheld units masked to zero, and a block-level one equals the explicitly shortened network
/// with the dropped blocks never allocated.
/// </summary>
public sealed class SubnetworkShapeTests
{
    private const ulong Seed = 17;

    /// <summary>hidden 16, 4 query heads of dim 4 in 2 KV groups (GroupSize 2), intermediate 12, 3 layers.</summary>
    private static LlamaConfig Llama() => new(vocabSize: 32, hiddenSize: 16, intermediateSize: 12, numHiddenLayers: 3,
        numAttentionHeads: 4, numKeyValueHeads: 2, maxPositionEmbeddings: 16);

    private static ResNetConfig ResNet() => new(Width: 4, NumClasses: 3, InChannels: 3);

    [SetUp]
    public void ClearTape() => Tape.Current.Clear();

    private static double Tolerance(DType dtype) => dtype == DType.Float64 ? 1e-12 : 1e-6;

    private static (Tensor Ids, Tensor Targets) Tokens(int vocab)
    {
        var rng = new Rng(5);
        int[] ids = [.. Enumerable.Range(0, 2 * 6).Select(_ => rng.NextInt(vocab))];
        int[] targets = [.. Enumerable.Range(0, 2 * 6).Select(_ => rng.NextInt(vocab))];
        return (Tensor.FromArray(ids, new Shape(2, 6)), Tensor.FromArray(targets, new Shape(2, 6)));
    }

    private static (Tensor X, Tensor Labels) Images(ResNetConfig config, DType dtype)
    {
        var rng = new Rng(6);
        var x = Tensor.Randn(new Shape(4, config.InChannels, 8, 8), rng, 1.0, dtype);
        return (x, Tensor.FromArray(new[] { 0, 2, 1, 2 }, new Shape(4)));
    }

    /// <summary>Loss and backward; returns the loss value.</summary>
    private static double LossAndBackward(ITrainable model, Tensor inputs, Tensor targets)
    {
        using var loss = model.Loss(inputs, targets);
        double value = loss.Item();
        loss.Backward();
        return value;
    }

    /// <summary>A seeded held set per group: group <paramref name="full"/> holds everything, groups in <paramref name="empty"/> nothing, the rest a proper random subset.</summary>
    private static int[][] Held(MaskableUnits units, int full, params int[] empty)
    {
        var rng = new Rng(99);
        var held = new int[units.Groups.Count][];
        for (int g = 0; g < held.Length; g++)
        {
            int n = units.Groups[g].UnitCount;
            int[] perm = [.. Enumerable.Range(0, n)];
            rng.Shuffle(perm.AsSpan());
            int count = g == full ? n : empty.Contains(g) ? 0 : 1 + rng.NextInt(n - 1);
            held[g] = [.. perm.Take(count).Order()];
        }
        return held;
    }

    /// <summary>The dense gradient restricted to the held part equals the subnetwork's gradient, for every subnetwork parameter.</summary>
    private static void AssertHeldGradients(ITrainable dense, ITrainable sub, MaskableUnits units, IReadOnlyList<int[]> held, double tol, Func<string, double>? subOverDense = null)
    {
        var denseParams = dense.Module.NamedParameters().ToDictionary(p => p.Name, p => p.Tensor);
        int compared = 0;
        foreach (var (name, p) in sub.Module.NamedParameters())
        {
            var d = denseParams[name];
            Assert.That(p.Grad, Is.Not.Null, $"{name}: the subnetwork parameter got no gradient");
            Assert.That(d.Grad, Is.Not.Null, $"{name}: the dense parameter got no gradient");
            double factor = subOverDense?.Invoke(name) ?? 1.0;
            var expected = HeldPart(name, d.Grad!.ToDoubles(), d.Shape.Dims, units, held).Select(v => v * factor).ToArray();
            double scale = expected.Max(Math.Abs);
            TensorAssert.Close(p.Grad!.ToDoubles(), expected, atol: tol * Math.Max(scale, 1e-30), rtol: 0, what: $"grad {name}");
            compared++;
        }
        Assert.That(compared, Is.GreaterThan(0));
    }

    private static void ZeroGrads(params ITrainable[] models)
    {
        foreach (var m in models)
        {
            foreach (var p in m.Module.Parameters()) p.ZeroGrad();
        }
    }

    // ---- dense models are unchanged --------------------------------------------------------------------

    [Test]
    public void Build_null_is_the_dense_model_training_builds_bit_for_bit()
    {
        var llama = SubnetworkModels.Llama(Llama(), SubnetLevel.Neuron, new SubnetOptions(), Seed);
        using (var built = llama.Build(null))
        using (var expected = new LlamaForCausalLM(Llama(), new Rng(Seed)))
        {
            AssertSameTensors(built.Module, expected);
        }
        var resnet = SubnetworkModels.ResNet18(ResNet(), SubnetLevel.Block, new SubnetOptions(), Seed, DType.Float64);
        using (var built = resnet.Build(null))
        using (var expected = new ResNet18(ResNet(), new Rng(Seed), DType.Float64))
        {
            AssertSameTensors(built.Module, expected);
        }
    }

    private static void AssertSameTensors(Sdp.Engine.Nn.Module actual, Sdp.Engine.Nn.Module expected)
    {
        var a = Tensors(actual);
        var e = Tensors(expected);
        Assert.That(a.Keys, Is.EqualTo(e.Keys));
        foreach (var (name, t) in e)
        {
            Assert.That(a[name].Shape, Is.EqualTo(t.Shape), name);
            Assert.That(a[name].ToDoubles(), Is.EqualTo(t.ToDoubles()), name);
        }
    }

    // ---- A10: neuron level -----------------------------------------------------------------------------

    [TestCase(DType.Float32, false)]
    [TestCase(DType.Float64, false)]
    [TestCase(DType.Float32, true)]
    [TestCase(DType.Float64, true)]
    public void Llama_neuron_subnetwork_matches_the_masked_dense_model(DType dtype, bool maskHeads)
    {
        var model = SubnetworkModels.Llama(Llama(), SubnetLevel.Neuron, new SubnetOptions { MaskHeads = maskHeads }, Seed, dtype);
        var units = model.Units;
        // With heads: groups per layer are (self_attn, mlp); layer 1 holds nothing (not built at all) and layer 2's MLP is empty.
        // Without: layer 2's MLP is empty (MLP and its pre-norm absent).
        var held = maskHeads ? Held(units, 0, 2, 3, 5) : Held(units, 0, 2);
        using var dense = model.Build(null);
        using var sub = (LlamaTrainable)model.Build(held);
        if (maskHeads)
        {
            Assert.That(sub.Model.Layers.Select(l => l.IsDropped), Is.EqualTo(new[] { false, true, false }));
            Assert.That(sub.Model.Layers[2].HasMlp, Is.False);
            Assert.That(sub.Model.Layers[2].SelfAttn.NumKeyValueHeads, Is.EqualTo(held[4].Length));
        }
        else
        {
            Assert.That(sub.Model.Layers[2].HasMlp && sub.Model.Layers[2].HasAttention, Is.EqualTo(false));
            Assert.That(sub.Model.Layers[1].Mlp.IntermediateSize, Is.EqualTo(held[1].Length));
        }
        Assert.That(sub.Module.NamedParameters().Select(p => p.Name), Has.None.Contains("layers.2.post_attention_layernorm"));

        CopyFromDense(dense.Module, sub.Module, units, held);
        Mask(dense.Module, units, held);
        var (ids, targets) = Tokens(Llama().VocabSize);
        double expected = LossAndBackward(dense, ids, targets);
        double actual = LossAndBackward(sub, ids, targets);
        Assert.That(actual, Is.EqualTo(expected).Within(Tolerance(dtype) * Math.Abs(expected)));
        AssertHeldGradients(dense, sub, units, held, Tolerance(dtype));
        ZeroGrads(dense, sub);
    }

    [TestCase(DType.Float32)]
    [TestCase(DType.Float64)]
    public void Llama_inverse_coverage_scale_equals_scaling_the_hidden_activation(DType dtype)
    {
        var options = new SubnetOptions { NeuronScale = NeuronScale.InverseCoverage };
        var model = SubnetworkModels.Llama(Llama(), SubnetLevel.Neuron, options, Seed, dtype);
        var units = model.Units;
        var held = Held(units, 0);
        double ScaleOf(int group) => (double)units.Groups[group].UnitCount / held[group].Length;
        using var dense = model.Build(null);
        using var sub = (LlamaTrainable)model.Build(held);
        Assert.That(sub.Model.Layers.Select(l => l.Mlp.DownProj.InputScale), Is.EqualTo(Enumerable.Range(0, held.Length).Select(ScaleOf)));
        Assert.That(sub.Model.Layers[0].Mlp.DownProj.InputScale, Is.EqualTo(1.0), "a fully held layer is not rescaled");

        CopyFromDense(dense.Module, sub.Module, units, held);
        // s·down(h) = (s·down)(h): the reference scales down_proj's held columns, so its loss is the
        // subnetwork's, its gate/up gradients too, and the subnetwork's down_proj gradient is s times its own.
        Mask(dense.Module, units, held, b => b.Tensor.EndsWith("down_proj.weight", StringComparison.Ordinal) ? ScaleOf(b.Group) : 1.0);
        var (ids, targets) = Tokens(Llama().VocabSize);
        double expected = LossAndBackward(dense, ids, targets);
        double actual = LossAndBackward(sub, ids, targets);
        Assert.That(actual, Is.EqualTo(expected).Within(Tolerance(dtype) * Math.Abs(expected)));
        var bindings = Bindings(units);
        AssertHeldGradients(dense, sub, units, held, Tolerance(dtype),
            name => name.EndsWith("down_proj.weight", StringComparison.Ordinal) ? ScaleOf(bindings[name].Group) : 1.0);
        ZeroGrads(dense, sub);
    }

    [TestCase(DType.Float32, true)]
    [TestCase(DType.Float64, true)]
    [TestCase(DType.Float64, false)]
    public void ResNet_neuron_subnetwork_matches_the_masked_dense_model(DType dtype, bool training)
    {
        var model = SubnetworkModels.ResNet18(ResNet(), SubnetLevel.Neuron, new SubnetOptions(), Seed, dtype);
        var units = model.Units;
        // layer2.1 (group 3) holds no channel: only its bn2 remains, applied to zeros (bn2(0) = β in training).
        var held = Held(units, 0, 3);
        using var dense = model.Build(null);
        using var sub = (ResNetTrainable)model.Build(held);
        Assert.That(sub.Model.Blocks.Select(b => b.InternalWidth), Is.EqualTo(held.Select(h => h.Length)));
        Assert.That(sub.Model.Blocks[3].HasBranch, Is.True);
        Assert.That(sub.Model.Blocks[3].Conv1.IsDropped && sub.Model.Blocks[3].Conv2.IsDropped, Is.True);

        CopyFromDense(dense.Module, sub.Module, units, held);
        Mask(dense.Module, units, held);
        // β of the empty block's bn2 is 0 at init: make it count.
        foreach (var m in new[] { dense, sub })
        {
            var beta = ((ResNetTrainable)m).Model.Blocks[3].Bn2.Bias;
            using var values = Tensor.FromDoubles([.. Enumerable.Range(0, beta.Shape[0]).Select(i => 0.1 * (i % 3 - 1))], beta.Shape, dtype);
            beta.Backend.Copy(values, beta);
        }
        dense.Module.Train(training);
        sub.Module.Train(training);
        var (x, labels) = Images(ResNet(), dtype);
        double expected = LossAndBackward(dense, x, labels);
        double actual = LossAndBackward(sub, x, labels);
        Assert.That(actual, Is.EqualTo(expected).Within(Tolerance(dtype) * Math.Abs(expected)));
        // conv2's reduction runs over fewer input channels in the subnetwork, so float32 rounding differs;
        // training-mode BN over 4 samples at 1x1 (layer4) amplifies that to ~1e-6 of the largest gradient.
        // Float64 shows the two are the same function to 1e-12.
        AssertHeldGradients(dense, sub, units, held, dtype == DType.Float32 ? 1e-5 : Tolerance(dtype));
        ZeroGrads(dense, sub);
    }

    [Test]
    public void ResNet_inverse_coverage_scale_equals_scaling_the_internal_activation()
    {
        const DType dtype = DType.Float64;
        var options = new SubnetOptions { NeuronScale = NeuronScale.InverseCoverage };
        var model = SubnetworkModels.ResNet18(ResNet(), SubnetLevel.Neuron, options, Seed, dtype);
        var units = model.Units;
        var held = Held(units, 0);
        double ScaleOf(int group) => (double)units.Groups[group].UnitCount / held[group].Length;
        using var dense = model.Build(null);
        using var sub = (ResNetTrainable)model.Build(held);
        Assert.That(sub.Model.Blocks.Select(b => b.Conv2.InputScale), Is.EqualTo(Enumerable.Range(0, 8).Select(ScaleOf)));

        CopyFromDense(dense.Module, sub.Module, units, held);
        // conv2(s·a) = (s·conv2)(a): the reference scales conv2's held input channels.
        Mask(dense.Module, units, held, b => b.Tensor.EndsWith("conv2.weight", StringComparison.Ordinal) ? ScaleOf(b.Group) : 1.0);
        var (x, labels) = Images(ResNet(), dtype);
        double expected = LossAndBackward(dense, x, labels);
        double actual = LossAndBackward(sub, x, labels);
        Assert.That(actual, Is.EqualTo(expected).Within(1e-12 * Math.Abs(expected)));
        var bindings = Bindings(units);
        AssertHeldGradients(dense, sub, units, held, 1e-12,
            name => name.EndsWith("conv2.weight", StringComparison.Ordinal) ? ScaleOf(bindings[name].Group) : 1.0);
        ZeroGrads(dense, sub);
    }

    // ---- A9: block level -------------------------------------------------------------------------------

    [TestCase(false)]
    [TestCase(true)]
    public void Llama_block_subnetwork_equals_the_dense_model_with_the_dropped_blocks_skipped(bool split)
    {
        var config = Llama();
        var model = SubnetworkModels.Llama(config, SubnetLevel.Block, new SubnetOptions { SplitSublayers = split }, Seed);
        var units = model.Units;
        // Whole layers: keep 0 and 2. Split: layer 0 attention only, layer 1 MLP only, layer 2 nothing.
        int[] kept = split ? [0, 3] : [0, 2];
        var held = new[] { kept };
        var plan = SubnetworkPlan.Create(units, 4, 0.5, 3);
        using var dense = (LlamaTrainable)model.Build(null);
        var account = new MemoryAccount("subnetwork");
        LlamaTrainable sub;
        using (account.Activate()) sub = (LlamaTrainable)model.Build(held);
        using (sub)
        {
            long expectedParams = units.SharedParams + kept.Sum(u => units.Groups[0].ParamsPerUnit[u]);
            Assert.That(sub.Module.ParameterCount, Is.EqualTo(expectedParams));
            Assert.That(account.CurrentBytes(MemoryCategory.Parameters), Is.EqualTo(expectedParams * sizeof(float)));
            AssertOnlyHeldTensors(dense.Module, sub.Module, units, held);
            for (int w = 0; w < plan.Workers; w++)
            {
                using var worker = model.Build(HeldOf(plan, w));
                Assert.That(worker.Module.ParameterCount, Is.EqualTo(plan.HeldParams(w)), $"worker {w}");
            }

            CopyFromDense(dense.Module, sub.Module, units, held);
            var (ids, targets) = Tokens(config.VocabSize);
            double actual = LossAndBackward(sub, ids, targets);
            var names = kept.Select(units.Groups[0].UnitLabel).ToHashSet();
            double expected;
            using (var loss = ShortenedLlamaLoss(dense.Model, ids, targets,
                l => names.Contains($"model.layers.{l}") || names.Contains($"model.layers.{l}.self_attn"),
                l => names.Contains($"model.layers.{l}") || names.Contains($"model.layers.{l}.mlp")))
            {
                expected = loss.Item();
                loss.Backward();
            }
            Assert.That(actual, Is.EqualTo(expected).Within(1e-6 * Math.Abs(expected)));
            AssertHeldGradients(dense, sub, units, held, 1e-6);
            ZeroGrads(dense, sub);
        }
    }

    /// <summary>The dense model run by hand with only the chosen sub-blocks: the explicitly shortened network.</summary>
    private static Tensor ShortenedLlamaLoss(LlamaForCausalLM model, Tensor ids, Tensor targets, Func<int, bool> attention, Func<int, bool> mlp)
    {
        var config = model.Config;
        var (cos, sin) = Ops.RopeTables(ids.Shape[1], config.HeadDim, config.RopeTheta, model.DType, ids.Backend);
        using (cos)
        using (sin)
        {
            var rope = new LlamaRotary(cos, sin);
            var x = model.Model.EmbedTokens.Forward(ids);
            for (int l = 0; l < config.NumHiddenLayers; l++)
            {
                var layer = model.Layers[l];
                if (attention(l))
                {
                    var next = layer.AttentionResidual(x, rope);
                    x.Dispose();
                    x = next;
                }
                if (mlp(l))
                {
                    var next = layer.MlpResidual(x);
                    x.Dispose();
                    x = next;
                }
            }
            using (x)
            using (var normed = model.Model.Norm.Forward(x))
            using (var logits = Ops.Linear(normed, model.OutputWeight))
            {
                return Ops.CrossEntropy(logits, targets, ignoreIndex: -100);
            }
        }
    }

    [TestCase(DownsampleBlocks.DropBranchKeepShortcut)]
    [TestCase(DownsampleBlocks.AlwaysKeep)]
    public void ResNet_block_subnetwork_equals_forward_with_skip_and_allocates_no_dropped_branch(DownsampleBlocks downsample)
    {
        const DType dtype = DType.Float64;
        var config = ResNet();
        var model = SubnetworkModels.ResNet18(config, SubnetLevel.Block, new SubnetOptions { Downsample = downsample }, Seed, dtype);
        var units = model.Units;
        var group = units.Groups[0];
        // Drop layer1.1, layer4.1 and (when it is a unit) the downsampling layer2.0: its projection stays.
        string[] dropped = ["layer1.1", "layer2.0", "layer4.1"];
        var held = new[] { Enumerable.Range(0, group.UnitCount).Where(u => !dropped.Contains(group.UnitLabel(u))).ToArray() };
        var droppedNow = dropped.Where(d => group.UnitNames!.Contains(d)).ToHashSet();
        Assert.That(droppedNow, Has.Count.EqualTo(downsample == DownsampleBlocks.AlwaysKeep ? 2 : 3));

        using var dense = (ResNetTrainable)model.Build(null);
        var account = new MemoryAccount("subnetwork");
        ResNetTrainable sub;
        using (account.Activate()) sub = (ResNetTrainable)model.Build(held);
        using (sub)
        {
            long expectedParams = units.SharedParams + held[0].Sum(u => group.ParamsPerUnit[u]);
            Assert.That(sub.Module.ParameterCount, Is.EqualTo(expectedParams));
            long expectedBytes = AssertOnlyHeldTensors(dense.Module, sub.Module, units, held);
            Assert.That(account.CurrentBytes(MemoryCategory.Parameters), Is.EqualTo(expectedBytes));
            Assert.That(sub.Model.Blocks.Where(b => !b.HasBranch).Count(), Is.EqualTo(droppedNow.Count));
            Assert.That(sub.Model.Blocks[2].Downsample, Is.Not.Null, "layer2.0 keeps its projection shortcut");
            var plan = SubnetworkPlan.Create(units, 4, 0.5, 3);
            for (int w = 0; w < plan.Workers; w++)
            {
                using var worker = model.Build(HeldOf(plan, w));
                Assert.That(worker.Module.ParameterCount, Is.EqualTo(plan.HeldParams(w)), $"worker {w}");
            }

            CopyFromDense(dense.Module, sub.Module, units, held);
            var (x, labels) = Images(config, dtype);
            double actual = LossAndBackward(sub, x, labels);
            var blockNames = dense.Model.NamedModules().Where(m => m.Module is BasicBlock).ToDictionary(m => (BasicBlock)m.Module, m => m.Name);
            double expected;
            using (var loss = dense.Model.Loss(x, labels, b => droppedNow.Contains(blockNames[b])))
            {
                expected = loss.Item();
                loss.Backward();
            }
            Assert.That(actual, Is.EqualTo(expected).Within(1e-12 * Math.Abs(expected)));
            AssertHeldGradients(dense, sub, units, held, 1e-12);
            ZeroGrads(dense, sub);
        }
    }

    private static int[][] HeldOf(SubnetworkPlan plan, int worker)
        => [.. plan.MaskOf(worker).Select(m => Enumerable.Range(0, m.Length).Where(u => m[u]).ToArray())];

    /// <summary>
    /// The subnetwork has exactly the dense tensors minus those bound whole to unheld units (sliced ones
    /// with only their held slices); returns the bytes those tensors take.
    /// </summary>
    private static long AssertOnlyHeldTensors(Sdp.Engine.Nn.Module dense, Sdp.Engine.Nn.Module sub, MaskableUnits units, IReadOnlyList<int[]> held)
    {
        var bindings = Bindings(units);
        var expected = new List<string>();
        long bytes = 0;
        foreach (var (name, t) in Tensors(dense))
        {
            if (bindings.TryGetValue(name, out var b) && b.IsWhole && !held[b.Group].Contains(b.Unit!.Value)) continue;
            expected.Add(name);
            bytes += t.ByteLength;
        }
        Assert.That(Tensors(sub).Keys.Order(StringComparer.Ordinal), Is.EqualTo(expected.Order(StringComparer.Ordinal)));
        return bytes;
    }
}
