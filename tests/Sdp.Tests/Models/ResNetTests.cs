using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Memory;
using Sdp.Engine.Nn;
using Sdp.Engine.Optim;
using Sdp.Engine;
using Sdp.Models.ResNet;
using Sdp.Tests.Support;

namespace Sdp.Tests.Models;

/// <summary>CIFAR ResNet-18: torchvision names and counts, init, gradients, BN modes, skipping blocks, training.</summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class ResNetTests(IBackend backend) : DeviceFixture(backend)
{
    [SetUp]
    public void ClearTape() => Tape.Current.Clear();

    /// <summary>
    /// Parameters by hand, width w, classes k, in-channels c (a conv is in·out·9, a BN 2·out):
    /// stem 9cw + 2w; layer1 two identity blocks 2·(18w² + 4w); a later stage with m channels (m/2 in)
    /// has block 0 = 9·(m/2)·m + 9m² + 4m plus the projection (m/2)·m + 2m = 14m² + 6m, and block 1
    /// = 18m² + 4m, so 32m² + 10m; summed over m = 2w, 4w, 8w: 32·84w² + 10·14w; fc 8wk + k.
    /// Total 2724w² + (150 + 9c + 8k)·w + k; at w 64, k 10, c 3 that is 11,173,962.
    /// </summary>
    private static long ExpectedParameters(long w, long k, long c) => 2724 * w * w + (150 + 9 * c + 8 * k) * w + k;

    private static readonly string[] BnSuffixes = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"];

    /// <summary>torchvision resnet18's state_dict keys with shapes, in order, by rule (no maxpool/avgpool parameters).</summary>
    private static List<(string Name, int[] Shape, bool IsParameter)> TorchvisionStateDict(int w, int k, int c)
    {
        var keys = new List<(string, int[], bool)>();
        void Conv(string prefix, int o, int i, int kernel) => keys.Add(($"{prefix}.weight", [o, i, kernel, kernel], true));
        void Bn(string prefix, int ch)
        {
            foreach (var s in BnSuffixes) keys.Add(($"{prefix}.{s}", s == "num_batches_tracked" ? [] : [ch], s is "weight" or "bias"));
        }
        Conv("conv1", w, c, 3);
        Bn("bn1", w);
        int inC = w;
        for (int layer = 1; layer <= 4; layer++)
        {
            int outC = w << (layer - 1);
            for (int b = 0; b < 2; b++)
            {
                string p = $"layer{layer}.{b}";
                int blockIn = b == 0 ? inC : outC;
                Conv($"{p}.conv1", outC, blockIn, 3);
                Bn($"{p}.bn1", outC);
                Conv($"{p}.conv2", outC, outC, 3);
                Bn($"{p}.bn2", outC);
                if (layer > 1 && b == 0)
                {
                    Conv($"{p}.downsample.0", outC, blockIn, 1);
                    Bn($"{p}.downsample.1", outC);
                }
            }
            inC = outC;
        }
        keys.Add(("fc.weight", [k, 8 * w], true));
        keys.Add(("fc.bias", [k], true));
        return keys;
    }

    /// <summary>The model's state_dict order: each leaf module's parameters, then its buffers, depth first.</summary>
    private static List<(string Name, int[] Shape, bool IsParameter)> StateDict(Module model)
    {
        var keys = new List<(string, int[], bool)>();
        foreach (var (path, m) in model.NamedModules())
        {
            if (m.NamedModules().Skip(1).Any()) continue;
            foreach (var (n, t) in m.NamedParameters()) keys.Add(($"{path}.{n}", t.Shape.Dims.ToArray(), true));
            foreach (var (n, t) in m.NamedBuffers()) keys.Add(($"{path}.{n}", t.Shape.Dims.ToArray(), false));
        }
        return keys;
    }

    private static string Format(IEnumerable<(string Name, int[] Shape, bool IsParameter)> keys)
        => string.Join("\n", keys.Select(k => $"{k.Name} ({string.Join(", ", k.Shape)}){(k.IsParameter ? "" : " buffer")}"));

    private static Tensor Images(Rng rng, int n, int c, int hw, DType dtype = DType.Float32) => Tensor.Randn(new Shape(n, c, hw, hw), rng, dtype: dtype);

    private static Tensor Labels(params long[] labels) => Tensor.FromArray(labels, new Shape(labels.Length));

    // ---- structure ----------------------------------------------------------------------------------

    [Test]
    public void Width_64_with_10_classes_has_11_173_962_parameters_named_as_torchvision()
    {
        using var model = new ResNet18(new ResNetConfig(), new Rng(0));
        Assert.Multiple(() =>
        {
            Assert.That(model.ParameterCount, Is.EqualTo(11_173_962));
            Assert.That(new ResNetConfig().ParameterCount, Is.EqualTo(11_173_962));
            Assert.That(ExpectedParameters(64, 10, 3), Is.EqualTo(11_173_962));
            Assert.That(Format(StateDict(model)), Is.EqualTo(Format(TorchvisionStateDict(64, 10, 3))));
        });
    }

    [Test]
    public void Parameters_and_buffers_come_in_torchvision_order()
    {
        using var model = new ResNet18(new ResNetConfig(Width: 2, NumClasses: 3, InChannels: 1), new Rng(0));
        var expected = TorchvisionStateDict(2, 3, 1);
        Assert.Multiple(() =>
        {
            Assert.That(Format(StateDict(model)), Is.EqualTo(Format(expected)), "state_dict order");
            Assert.That(model.NamedParameters().Select(p => p.Name), Is.EqualTo(expected.Where(e => e.IsParameter).Select(e => e.Name)), "named_parameters");
            Assert.That(model.NamedBuffers().Select(p => p.Name), Is.EqualTo(expected.Where(e => !e.IsParameter).Select(e => e.Name)), "named_buffers");
            Assert.That(model.NamedParameters().All(p => p.Tensor.RequiresGrad), Is.True, "parameters require grad");
            Assert.That(model.NamedBuffers().Any(b => b.Tensor.RequiresGrad), Is.False, "buffers do not");
        });
    }

    [TestCase(1, 1, 1)]
    [TestCase(2, 3, 1)]
    [TestCase(3, 7, 2)]
    [TestCase(8, 100, 3)]
    [TestCase(16, 10, 4)]
    public void Parameter_count_follows_the_formula(int width, int classes, int inChannels)
    {
        var config = new ResNetConfig(width, classes, inChannels);
        using var model = new ResNet18(config, new Rng(1));
        long expected = ExpectedParameters(width, classes, inChannels);
        Assert.Multiple(() =>
        {
            Assert.That(model.ParameterCount, Is.EqualTo(expected));
            Assert.That(config.ParameterCount, Is.EqualTo(expected));
            Assert.That(model.Blocks.Select(b => b.Downsample is not null), Is.EqualTo(new[] { false, false, true, false, true, false, true, false }));
            Assert.That(model.Blocks.Select(b => b.Stride), Is.EqualTo(new[] { 1, 1, 2, 1, 2, 1, 2, 1 }));
            Assert.That(model.Blocks.Select(b => b.OutChannels), Is.EqualTo(new[] { 1, 1, 2, 2, 4, 4, 8, 8 }.Select(m => m * width)));
        });
    }

    [Test]
    public void Init_follows_torchvision()
    {
        const int w = 16;
        using var model = new ResNet18(new ResNetConfig(Width: w), new Rng(5));
        static (double Mean, double Std) Stats(Tensor t)
        {
            var v = t.ToDoubles();
            double mean = v.Average();
            return (mean, Math.Sqrt(v.Sum(x => (x - mean) * (x - mean)) / v.Length));
        }
        Assert.Multiple(() =>
        {
            // kaiming_normal_(fan_out, relu): std = sqrt(2 / (out·k·k)).
            foreach (var (conv, fanOut) in new[]
            {
                (model.Blocks[7].Conv2, 8 * w * 9),           // 147,456 draws: std within ~0.2 %
                (model.Blocks[6].Conv1, 8 * w * 9),
                (model.Blocks[2].Downsample!.Conv, 2 * w),    // 1x1 projection: fan_out = out
                (model.Conv1, w * 9),
            })
            {
                var (mean, std) = Stats(conv.Weight);
                double expected = Math.Sqrt(2.0 / fanOut);
                double n = conv.Weight.Numel;
                Assert.That(std, Is.EqualTo(expected).Within(5 * expected / Math.Sqrt(2 * n)), $"std of {conv.Weight.Shape}");
                Assert.That(mean, Is.EqualTo(0).Within(5 * expected / Math.Sqrt(n)), $"mean of {conv.Weight.Shape}");
            }
            foreach (var (name, t) in model.NamedParameters().Where(p => p.Name.Contains("bn", StringComparison.Ordinal) || p.Name.Contains("downsample.1", StringComparison.Ordinal)))
                Assert.That(t.ToDoubles().Distinct(), Is.EqualTo(new[] { name.EndsWith(".weight", StringComparison.Ordinal) ? 1.0 : 0.0 }), name);
            foreach (var (name, t) in model.NamedBuffers())
            {
                double value = name.EndsWith("running_var", StringComparison.Ordinal) ? 1 : 0;
                Assert.That(t.ToDoubles().Distinct(), Is.EqualTo(new[] { value }), name);
            }
            // nn.Linear default: U(±1/sqrt(in)) for weight and bias.
            double bound = 1 / Math.Sqrt(8 * w);
            foreach (var t in new[] { model.Fc.Weight, model.Fc.Bias! })
            {
                var v = t.ToDoubles();
                Assert.That(v.Max(), Is.LessThanOrEqualTo(bound).And.GreaterThan(bound / 2), $"fc {t.Shape} max");
                Assert.That(v.Min(), Is.GreaterThanOrEqualTo(-bound).And.LessThan(-bound / 2), $"fc {t.Shape} min");
            }
        });
    }

    // ---- forward, gradients, BN modes -----------------------------------------------------------------

    [Test]
    public void Loss_gradients_match_finite_differences_in_training_mode([Values(1, 3)] int inChannels)
    {
        using var model = new ResNet18(new ResNetConfig(Width: 2, NumClasses: 3, InChannels: inChannels), new Rng(11), DType.Float64);
        var rng = new Rng(12);
        using var x = GradCheck.Input(rng, 2, inChannels, 8, 8);
        using var labels = Labels(2, 0);
        var ps = model.NamedParameters().ToDictionary(p => p.Name, p => p.Tensor);
        // Perturb BN affine parameters away from (1, 0) so their gradients are exercised in general position.
        foreach (var name in new[] { "bn1.weight", "layer2.0.downsample.1.bias", "layer3.1.bn2.weight" })
            ps[name].Backend.Upload<double>([.. ps[name].ToDoubles().Select(v => v + 0.3 * rng.NextNormal())], ps[name]);
        Tensor[] inputs =
        [
            x,
            ps["conv1.weight"],
            ps["bn1.weight"],
            ps["layer1.0.conv2.weight"],
            ps["layer2.0.downsample.0.weight"],
            ps["layer2.0.downsample.1.bias"],
            ps["layer3.1.bn2.weight"],
            ps["fc.weight"],
            ps["fc.bias"],
        ];
        Assert.That(model.IsTraining, Is.True);
        GradCheck.Check(_ => model.Loss(x, labels), inputs, maxElements: GradCheck.SampleFor(Backend));
    }

    [Test]
    public void Eval_mode_uses_running_statistics_and_leaves_them_alone()
    {
        using var model = new ResNet18(new ResNetConfig(Width: 4, NumClasses: 5), new Rng(21), DType.Float64);
        var rng = new Rng(22);
        using var x = Images(rng, 4, 3, 8, DType.Float64);
        using (GradMode.Disable())
        using (TensorScope.Begin())
        {
            // A few training-mode batches move the running statistics off (0, 1).
            for (int i = 0; i < 3; i++) model.Forward(Images(rng, 4, 3, 8, DType.Float64));
            Assert.That(model.Bn1.NumBatchesTracked.Item(), Is.EqualTo(3));
            var trainLogits = model.Forward(x).ToDoubles();
            var buffers = model.NamedBuffers().Select(b => b.Tensor.ToDoubles()).ToList();

            model.Eval();
            Assert.That(model.Blocks.All(b => !b.Bn2.IsTraining && b.Downsample?.Bn.IsTraining != true), Is.True);
            var batch = model.Forward(x).ToDoubles();
            Assert.That(model.NamedBuffers().Select(b => b.Tensor.ToDoubles()), Is.EqualTo(buffers), "eval forward changed a buffer");
            Assert.That(batch, Is.Not.EqualTo(trainLogits), "eval logits equal training-mode logits");

            // Each image alone gives its row of the batch: nothing depends on the rest of the batch.
            var xs = x.ToDoubles();
            int per = 3 * 8 * 8;
            for (int n = 0; n < 4; n++)
            {
                var single = model.Forward(Tensor.FromDoubles(xs[(n * per)..((n + 1) * per)], new Shape(1, 3, 8, 8), DType.Float64));
                TensorAssert.Close(single, batch[(n * 5)..((n + 1) * 5)], 1e-12, 1e-10, $"image {n} alone");
            }

            model.Train();
            Assert.That(model.Forward(x).ToDoubles(), Is.Not.EqualTo(batch), "Train() did not restore batch statistics");
        }
    }

    [Test]
    public void Same_seed_gives_bitwise_equal_weights_and_logits()
    {
        var config = new ResNetConfig(Width: 4, NumClasses: 10);
        using var a = new ResNet18(config, new Rng(7));
        using var b = new ResNet18(config, new Rng(7));
        using var c = new ResNet18(config, new Rng(8));
        using var x = Images(new Rng(9), 3, 3, 8);
        Assert.That(a.NamedParameters().Select(p => p.Tensor.ToArray<float>()), Is.EqualTo(b.NamedParameters().Select(p => p.Tensor.ToArray<float>())));
        using (TensorScope.Begin())
        {
            var la = a.Forward(x).ToArray<float>();
            var lb = b.Forward(x).ToArray<float>();
            var lc = c.Forward(x).ToArray<float>();
            Assert.That(lb, Is.EqualTo(la), "same seed");
            Assert.That(lc, Is.Not.EqualTo(la), "different seed");
        }
    }

    [Test]
    public void Tiny_model_overfits_a_fixed_batch()
    {
        using var model = new ResNet18(new ResNetConfig(Width: 4, NumClasses: 10), new Rng(31));
        var rng = new Rng(32);
        using var x = Images(rng, 8, 3, 8);
        using var labels = Labels([.. Enumerable.Range(0, 8).Select(_ => rng.NextInt64(10))]);
        using var opt = new Sgd(model.Parameters(), lr: 0.05, momentum: 0.9);
        double first = double.NaN, last = double.NaN;
        for (int step = 0; step < 40; step++)
        {
            using (TensorScope.Begin())
            {
                var loss = model.Loss(x, labels);
                last = loss.Item();
                if (step == 0) first = last;
                loss.Backward();
            }
            opt.Step();
            opt.ZeroGrad();
        }
        TestContext.Out.WriteLine($"loss {first:G4} -> {last:G4}");
        Assert.That(first, Is.GreaterThan(1.5), "initial loss near ln 10");
        Assert.That(last, Is.LessThan(0.05), "loss after 40 SGD steps on one batch");
    }

    [Test]
    public void Forward_keeps_only_what_backward_needs()
    {
        using var model = new ResNet18(new ResNetConfig(Width: 4, NumClasses: 10), new Rng(41));
        using var x = Images(new Rng(42), 2, 3, 8);
        using var labels = Labels(1, 2);
        var account = new MemoryAccount("resnet");
        using (account.Activate())
        {
            var loss = model.Loss(x, labels);
            Assert.Multiple(() =>
            {
                // Every intermediate nobody saved is already freed: only the loss itself is transient.
                Assert.That(account.CurrentBytes(MemoryCategory.Workspace), Is.EqualTo(loss.ByteLength), "workspace after forward");
                Assert.That(account.CurrentBytes(MemoryCategory.Activations), Is.GreaterThan(0), "saved activations");
            });
            loss.Backward();
            loss.Dispose();
            Assert.Multiple(() =>
            {
                Assert.That(account.CurrentBytes(MemoryCategory.Activations), Is.Zero, "activations after backward");
                Assert.That(account.CurrentBytes(MemoryCategory.Workspace), Is.Zero, "workspace after backward");
                Assert.That(model.Parameters().All(p => p.Grad is not null), Is.True, "every parameter got a gradient");
            });
            foreach (var p in model.Parameters()) p.ZeroGrad();
        }
        Assert.That(account.CurrentTotal, Is.Zero);
    }

    // ---- skipping blocks ------------------------------------------------------------------------------

    [Test]
    public void Skipped_blocks_pass_through_or_project()
    {
        using var model = new ResNet18(new ResNetConfig(Width: 2, NumClasses: 3), new Rng(51), DType.Float64);
        model.Eval();
        using var scope = TensorScope.Begin();
        var h = Ops.Relu(Images(new Rng(52), 2, 2, 8, DType.Float64));
        var identity = model.Blocks[1];
        var projecting = model.Blocks[2];
        Assert.That(identity.Skip(h), Is.SameAs(h), "identity block skipped");
        Assert.That(identity.Shortcut(h), Is.SameAs(h), "identity shortcut");

        using (GradMode.Disable())
        {
            var skipped = projecting.Skip(h);
            Assert.That(skipped.Shape, Is.EqualTo(new Shape(2, 4, 4, 4)));
            TensorAssert.Close(skipped, Ops.Relu(projecting.Downsample!.Forward(h)).ToDoubles(), 0, 0, "relu(downsample(x))");
            var full = projecting.Forward(h).ToDoubles();
            var parts = Ops.Relu(Ops.Add(projecting.Residual(h), projecting.Shortcut(h))).ToDoubles();
            TensorAssert.Close(parts, full, 0, 0, "relu(residual + shortcut)");

            // Skipping layer1.1 = running layer1.0 and feeding its output straight to layer2.
            var x = Images(new Rng(53), 2, 3, 8, DType.Float64);
            var stem = Ops.Relu(model.Bn1.Forward(model.Conv1.Forward(x)));
            var manual = model.Blocks[0].Forward(stem);
            foreach (var block in model.Blocks.Skip(2)) manual = block.Forward(manual);
            var expected = model.Fc.Forward(Ops.Reshape(Ops.AdaptiveAvgPool2d(manual, 1, 1), 2, 16)).ToDoubles();
            TensorAssert.Close(model.Forward(x, b => b == identity), expected, 0, 0, "layer1.1 skipped");
        }

        // Skipping everything: gradients reach the projections and fc but no residual branch.
        model.Train();
        var all = model.Loss(Images(new Rng(54), 2, 3, 8, DType.Float64), Labels(0, 1), _ => true);
        all.Backward();
        var withGrad = model.NamedParameters().Where(p => p.Tensor.Grad is not null).Select(p => p.Name).ToList();
        Assert.That(withGrad, Is.EqualTo(new[] { "conv1.weight", "bn1.weight", "bn1.bias" }
            .Concat(new[] { 2, 3, 4 }.SelectMany(l => new[] { $"layer{l}.0.downsample.0.weight", $"layer{l}.0.downsample.1.weight", $"layer{l}.0.downsample.1.bias" }))
            .Concat(["fc.weight", "fc.bias"])));
        foreach (var p in model.Parameters()) p.ZeroGrad();
    }

    // ---- config and bad input -------------------------------------------------------------------------

    [Test]
    public void Config_round_trips_through_json()
    {
        var config = new ResNetConfig(Width: 32, NumClasses: 100, InChannels: 1);
        string json = config.ToJson();
        Assert.Multiple(() =>
        {
            Assert.That(ResNetConfig.FromJson(json), Is.EqualTo(config));
            Assert.That(json, Does.Contain("\"model\": \"resnet18\"").And.Contain("\"num_classes\": 100").And.Contain("\"in_channels\": 1"));
            Assert.That(ResNetConfig.FromJson("{}"), Is.EqualTo(new ResNetConfig(64, 10, 3)), "defaults");
            Assert.That(ResNetConfig.FromJson("{\"width\": 8}"), Is.EqualTo(new ResNetConfig(Width: 8)));
        });
    }

    [TestCase("{\"width\": 0}", "width")]
    [TestCase("{\"num_classes\": -3}", "num_classes")]
    [TestCase("{\"in_channels\": 2.5}", "in_channels")]
    [TestCase("{\"width\": \"64\"}", "width")]
    [TestCase("{\"widht\": 64}", "widht")]
    [TestCase("{\"model\": \"llama\"}", "model")]
    [TestCase("[64]", "object")]
    [TestCase("{\"width\": ", "JSON")]
    public void Bad_config_json_names_the_field(string json, string field)
    {
        var e = Assert.Catch<Exception>(() => ResNetConfig.FromJson(json));
        Assert.That(e!.Message, Does.Contain(field).And.Contain("ResNetConfig"));
    }

    [Test]
    public void Bad_config_and_input_are_rejected_with_names()
    {
        Assert.Multiple(() =>
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => new ResNet18(new ResNetConfig(Width: 0), new Rng(0)));
            Assert.That(e!.Message, Does.Contain("Width").And.Contain("got 0"));
            e = Assert.Throws<ArgumentOutOfRangeException>(() => new ResNetConfig(NumClasses: 0).Validate());
            Assert.That(e!.Message, Does.Contain("NumClasses"));
            e = Assert.Throws<ArgumentOutOfRangeException>(() => new ResNetConfig(InChannels: -1).Validate());
            Assert.That(e!.Message, Does.Contain("InChannels"));
            var d = Assert.Throws<ArgumentException>(() => new ResNet18(new ResNetConfig(Width: 1), new Rng(0), DType.Int32));
            Assert.That(d!.Message, Does.Contain("int32"));
        });

        using var model = new ResNet18(new ResNetConfig(Width: 1, NumClasses: 2, InChannels: 3), new Rng(0));
        using var scope = TensorScope.Begin();
        Assert.Multiple(() =>
        {
            var e = Assert.Throws<ArgumentException>(() => model.Forward(Tensor.Zeros(new Shape(2, 1, 8, 8))));
            Assert.That(e!.Message, Does.Contain("ResNet18").And.Contain("(N, 3, H, W)").And.Contain("(2, 1, 8, 8)"));
            e = Assert.Throws<ArgumentException>(() => model.Forward(Tensor.Zeros(new Shape(2, 3, 8, 8), DType.Float64)));
            Assert.That(e!.Message, Does.Contain("float64").And.Contain("float32"));
        });
    }
}
