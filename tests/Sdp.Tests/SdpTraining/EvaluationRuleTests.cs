using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;
using Sdp.Tests.Support;
using static Sdp.Tests.SdpTraining.SdpTestSupport;

namespace Sdp.Tests.SdpTraining;

/// <summary>
/// The evaluation rules of block-level SDP (--eval-rule): (a) residual branches × coverage at test time, (b) × 1/coverage
/// in training on their holders, (c) BatchNorm recalibration, (d) the ensemble of the subnetworks; which combinations
/// and variants are refused; the default for block level. CPU only, tiny models.
/// </summary>
[TestFixture]
public sealed class EvaluationRuleTests
{
    [TearDown]
    public void ClearTape() => Tape.Current.Clear();

    private static Tensor Random(Shape shape, int seed)
    {
        var r = new Random(seed);
        return Tensor.FromDoubles([.. Enumerable.Range(0, (int)shape.Numel).Select(_ => r.NextDouble() * 2 - 1)], shape);
    }

    [Test]
    public void A_scaled_basic_block_adds_its_residual_times_the_factor_to_the_shortcut([Values(1, 2)] int stride)
    {
        // stride 1 with equal channels: identity shortcut; stride 2: projection shortcut.
        using var block = new BasicBlock(4, stride == 1 ? 4 : 8, stride, new Rng(3));
        block.Eval();
        using var x = Random(new Shape(2, 4, 6, 6), 1);
        using var noGrad = GradMode.Disable();
        double[] residual, shortcut;
        using (var r = block.Residual(x)) residual = r.ToDoubles();
        var s = block.Shortcut(x);
        shortcut = s.ToDoubles();
        if (!ReferenceEquals(s, x)) s.Dispose();
        block.BranchScale = 0.375;
        using var y = block.Forward(x);
        TensorAssert.Close(y, [.. residual.Select((v, i) => Math.Max(0, 0.375 * v + shortcut[i]))], what: "relu(0.375·residual + shortcut)");
        Assert.Throws<ArgumentOutOfRangeException>(() => block.BranchScale = 0);
    }

    [Test]
    public void A_scaled_llama_layer_adds_each_branch_times_its_factor()
    {
        var config = Llama;
        using var model = new LlamaForCausalLM(config, new Rng(4));
        var trainable = new LlamaTrainable(model);
        trainable.ScaleBranch("model.layers.1.mlp", 0.25);
        trainable.ScaleBranch("model.layers.2", 0.5);
        var layer1 = model.Layers[1];
        var layer2 = model.Layers[2];
        Assert.That((layer1.AttentionBranchScale, layer1.MlpBranchScale, layer2.AttentionBranchScale, layer2.MlpBranchScale), Is.EqualTo((1.0, 0.25, 0.5, 0.5)));
        Assert.That(trainable.BranchScale("model.layers.1.mlp"), Is.EqualTo(0.25));
        Assert.Throws<ArgumentException>(() => trainable.ScaleBranch("model.layers.9", 0.5));

        using var noGrad = GradMode.Disable();
        using var x = Random(new Shape(1, 5, config.HiddenSize), 2);
        var (cos, sin) = Ops.RopeTables(5, config.HeadDim, config.RopeTheta);
        using (cos)
        using (sin)
        {
            var rope = new LlamaRotary(cos, sin);
            double[] attention, mlp;
            using (var normed = layer2.InputLayernorm.Forward(x))
            using (var a = layer2.SelfAttn.Forward(normed, rope)) attention = a.ToDoubles();
            var xs = x.ToDoubles();
            double[] h = [.. xs.Select((v, i) => v + 0.5 * attention[i])];
            using var hTensor = Tensor.FromDoubles(h, x.Shape);
            using (var normed = layer2.PostAttentionLayernorm.Forward(hTensor))
            using (var m = layer2.Mlp.Forward(normed)) mlp = m.ToDoubles();
            using var y = layer2.Forward(x, rope);
            TensorAssert.Close(y, [.. h.Select((v, i) => v + 0.5 * mlp[i])], what: "x + ½·attn, then h + ½·mlp");
        }
    }

    private static Trainer ResNetTrainer(SdpOptions sdp, SubnetOptions? subnet = null, TrainerOptions? options = null)
        => new(ResNetModel(sdp.Level, subnet), sdp, AdamW, w => Images(w, sdp.Workers), options ?? Options(2));

    private static void Train(Trainer trainer, int steps)
    {
        for (int s = 0; s < steps; s++) trainer.TrainStep();
    }

    /// <summary>The block units of the run's plan with the fraction of workers holding each.</summary>
    private static List<(string Unit, double Coverage)> UnitCoverage(Trainer trainer)
    {
        var plan = trainer.Plan!;
        return [.. Enumerable.Range(0, plan.Groups[0].UnitCount).Select(u => (plan.Groups[0].UnitLabel(u), plan.HoldersOf(0, u).Count / (double)plan.Workers))];
    }

    [Test]
    public void Rule_a_evaluates_the_assembled_model_with_each_unit_branch_times_its_coverage()
    {
        // Downsampling blocks always kept: shared, not units, so their branches must stay unscaled.
        var subnet = new SubnetOptions { Downsample = DownsampleBlocks.AlwaysKeep };
        using var trainer = ResNetTrainer(SdpRun(4, SubnetLevel.Block, Masking.Forward, 0.5) with { EvalRule = EvalRule.Scale }, subnet);
        Train(trainer, 2);
        var scaled = trainer.Evaluate(Images(0, 1), 2);

        var dense = (ResNetTrainable)trainer.AssembleDense();
        Assert.That(dense.Model.Blocks.Select(b => b.BranchScale), Is.All.EqualTo(1.0), "the factors are put back after evaluating");
        var units = UnitCoverage(trainer);
        Assert.That(units.Select(u => u.Unit), Is.EqualTo(new[] { "layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1" }));
        Assert.That(units.Select(u => u.Coverage), Is.All.EqualTo(0.5));
        var plain = Trainer.Evaluate(dense, Images(0, 1), 2);
        foreach (var (unit, coverage) in units) dense.ScaleBranch(unit, coverage);
        var byHand = Trainer.Evaluate(dense, Images(0, 1), 2);
        foreach (var (unit, _) in units) dense.ScaleBranch(unit, 1.0);
        Assert.That((scaled.MeanLoss, scaled.Accuracy), Is.EqualTo((byHand.MeanLoss, byHand.Accuracy)));
        Assert.That(scaled.MeanLoss, Is.Not.EqualTo(plain.MeanLoss), "the scaling changes what is evaluated");
    }

    [Test]
    public void Rule_a_scales_llama_sub_blocks_by_their_coverage()
    {
        var sdp = SdpRun(4, SubnetLevel.Block, Masking.Forward, 0.5) with { EvalRule = EvalRule.Scale };
        using var trainer = new Trainer(LlamaModel(SubnetLevel.Block, new SubnetOptions { SplitSublayers = true }), sdp, AdamW, w => Tokens(w, 4), Options(1));
        Train(trainer, 1);
        var scaled = trainer.Evaluate(SameTokens(), 2);
        var dense = (LlamaTrainable)trainer.AssembleDense();
        var units = UnitCoverage(trainer);
        Assert.That(units, Has.Count.EqualTo(2 * Llama.NumHiddenLayers), "attention and MLP of every layer");
        foreach (var (unit, coverage) in units) dense.ScaleBranch(unit, coverage);
        var byHand = Trainer.Evaluate(dense, SameTokens(), 2);
        foreach (var (unit, _) in units) dense.ScaleBranch(unit, 1.0);
        Assert.That(scaled.MeanLoss, Is.EqualTo(byHand.MeanLoss));
        Assert.That(scaled.MeanLoss, Is.Not.EqualTo(Trainer.Evaluate(dense, SameTokens(), 2).MeanLoss));
    }

    [Test]
    public void Rule_b_scales_held_branches_by_the_inverse_coverage_in_training_and_not_the_assembled_model()
    {
        var subnet = new SubnetOptions { Downsample = DownsampleBlocks.AlwaysKeep };
        using var trainer = ResNetTrainer(SdpRun(4, SubnetLevel.Block, Masking.Forward, 0.5) with { EvalRule = EvalRule.InverseScale }, subnet);
        var units = UnitCoverage(trainer).Select(u => u.Unit).ToHashSet();
        for (int w = 0; w < 4; w++)
        {
            var model = ((ResNetTrainable)trainer.WorkerModel(w)).Model;
            for (int b = 0; b < model.Blocks.Count; b++)
            {
                string name = $"layer{b / 2 + 1}.{b % 2}";
                var block = model.Blocks[b];
                double expected = !units.Contains(name) ? 1.0 : block.HasBranch ? 2.0 : 1.0;
                Assert.That(block.BranchScale, Is.EqualTo(expected), $"worker {w} {name} ({(units.Contains(name) ? block.HasBranch ? "held" : "not held" : "shared")})");
            }
        }
        Train(trainer, 1);
        var dense = (ResNetTrainable)trainer.AssembleDense();
        Assert.That(dense.Model.Blocks.Select(b => b.BranchScale), Is.All.EqualTo(1.0), "the assembled model is unscaled");
        var evaluated = trainer.Evaluate(Images(0, 1), 2);
        Assert.That(evaluated.MeanLoss, Is.EqualTo(Trainer.Evaluate(dense, Images(0, 1), 2).MeanLoss), "evaluated as assembled");
    }

    [Test]
    public void Rule_d_scores_the_mean_of_the_subnetworks_logits([Values] bool recalibrate)
    {
        var options = Options(2) with { BnRecalibration = recalibrate ? new BatchNormRecalibration(Images(0, 1), 2) : null };
        var rule = recalibrate ? EvalRule.Ensemble | EvalRule.Recalibrate : EvalRule.Ensemble;
        using var trainer = ResNetTrainer(SdpRun(2, SubnetLevel.Block, Masking.Forward, 0.5) with { EvalRule = rule }, options: options);
        Train(trainer, 2);
        var before = Enumerable.Range(0, 2).Select(w => StateBits(trainer.WorkerModel(w).Module)).ToList();
        var ensemble = trainer.Evaluate(Images(0, 1), 2);
        for (int w = 0; w < 2; w++) Assert.That(StateBits(trainer.WorkerModel(w).Module), Is.EqualTo(before[w]), $"worker {w}'s weights and statistics put back");

        // By hand: each subnetwork's logits (recalibrated as update_bn would: cumulative average over the same batches), averaged, then cross-entropy and top-1.
        var models = Enumerable.Range(0, 2).Select(w => (ResNetTrainable)trainer.WorkerModel(w)).ToList();
        var saved = models.Select(m => StateBits(m.Module)).ToList();
        if (recalibrate)
        {
            using var noGrad = GradMode.Disable();
            foreach (var m in models)
            {
                var norms = m.Module.NamedModules().Select(n => n.Module).OfType<Sdp.Engine.Nn.BatchNorm2d>().ToList();
                foreach (var n in norms)
                {
                    n.ResetRunningStats();
                    n.Momentum = null;
                }
                var data = Images(0, 1);
                for (int b = 0; b < 2; b++)
                {
                    var (x, y) = data.NextBatch();
                    using var loss = m.Loss(x, y);
                }
                foreach (var n in norms) n.Momentum = 0.1;
            }
        }
        double lossSum = 0;
        long correct = 0, count = 0;
        var eval = Images(0, 1);
        var own = new double[2];
        using (GradMode.Disable())
        {
            foreach (var m in models) m.Module.Eval();
            for (int b = 0; b < 2; b++)
            {
                var (x, labels) = eval.NextBatch();
                var logits = models.Select(m => { using var l = m.Logits(x); return l.ToDoubles(); }).ToList();
                var y = labels.ToDoubles();
                int classes = logits[0].Length / y.Length;
                for (int i = 0; i < y.Length; i++)
                {
                    var row = Enumerable.Range(0, classes).Select(c => (logits[0][i * classes + c] + logits[1][i * classes + c]) / 2).ToArray();
                    double max = row.Max();
                    lossSum += max + Math.Log(row.Sum(v => Math.Exp(v - max))) - row[(int)y[i]];
                    if (Array.IndexOf(row, max) == (int)y[i]) correct++;
                    count++;
                    for (int w = 0; w < 2; w++)
                    {
                        var mine = logits[w].AsSpan(i * classes, classes).ToArray();
                        if (Array.IndexOf(mine, mine.Max()) == (int)y[i]) own[w]++;
                    }
                }
            }
        }
        Assert.That(ensemble.Count, Is.EqualTo(count));
        Assert.That(ensemble.MeanLoss, Is.EqualTo(lossSum / count).Within(1e-5));
        Assert.That(ensemble.Accuracy, Is.EqualTo(correct / (double)count));
        Assert.That(trainer.LastSubnetworkMetrics!.Select(m => m.Accuracy), Is.EqualTo(own.Select(c => c / count)), "each subnetwork's own accuracy");
        if (recalibrate) Assert.That(StateBits(models[0].Module), Is.Not.EqualTo(saved[0]), "the reference recalibrated its copy");
    }

    [Test]
    public void The_default_for_block_level_forward_masking_is_scale_then_recalibrate_and_other_variants_are_unchanged()
    {
        Assert.That(EvaluationRules.DefaultFor(ParallelMode.Sdp, SubnetLevel.Block, Masking.Forward, hasBatchNorm: true), Is.EqualTo(EvalRule.Scale | EvalRule.Recalibrate));
        Assert.That(EvaluationRules.DefaultFor(ParallelMode.Sdp, SubnetLevel.Block, Masking.Forward, hasBatchNorm: false), Is.EqualTo(EvalRule.Scale));
        Assert.That(EvaluationRules.DefaultFor(ParallelMode.Sdp, SubnetLevel.Block, Masking.Forward, hasBatchNorm: true, residualBranches: false), Is.EqualTo(EvalRule.Recalibrate), "a model without scalable branches keeps them unscaled");
        Assert.That(EvaluationRules.DefaultFor(ParallelMode.Sdp, SubnetLevel.Neuron, Masking.Forward, hasBatchNorm: true), Is.EqualTo(EvalRule.Dense));
        Assert.That(EvaluationRules.DefaultFor(ParallelMode.Sdp, SubnetLevel.Block, Masking.Backward, hasBatchNorm: true), Is.EqualTo(EvalRule.Dense));
        Assert.That(EvaluationRules.DefaultFor(ParallelMode.Dp, SubnetLevel.Block, Masking.Forward, hasBatchNorm: true), Is.EqualTo(EvalRule.Dense));

        var recalibration = new BatchNormRecalibration(Images(0, 1), 1);
        using (var withData = ResNetTrainer(SdpRun(2, SubnetLevel.Block, Masking.Forward, 0.5), options: Options(1) with { BnRecalibration = recalibration }))
            Assert.That(withData.EvaluationRule, Is.EqualTo(EvalRule.Scale | EvalRule.Recalibrate));
        using (var withoutData = ResNetTrainer(SdpRun(2, SubnetLevel.Block, Masking.Forward, 0.5)))
            Assert.That(withoutData.EvaluationRule, Is.EqualTo(EvalRule.Scale), "no recalibration batches: scaling alone");
        using (var neuron = ResNetTrainer(SdpRun(2, SubnetLevel.Neuron, Masking.Forward, 0.5)))
            Assert.That(neuron.EvaluationRule, Is.EqualTo(EvalRule.Dense));
    }

    [Test]
    public void Rules_parse_and_bad_combinations_or_variants_are_refused()
    {
        Assert.That(EvaluationRules.Parse("scale+recalibrate"), Is.EqualTo(EvalRule.Scale | EvalRule.Recalibrate));
        Assert.That(EvaluationRules.Parse("dense"), Is.EqualTo(EvalRule.Dense));
        Assert.That(EvaluationRules.Name(EvaluationRules.Parse("recalibrate+ensemble")), Is.EqualTo("recalibrate+ensemble"));
        Assert.That(() => EvaluationRules.Parse("scale+inverse-scale"), Throws.TypeOf<FormatException>().With.Message.Contains("choose one"));
        Assert.That(() => EvaluationRules.Parse("scale+ensemble"), Throws.TypeOf<FormatException>().With.Message.Contains("choose one"));
        Assert.That(() => EvaluationRules.Parse("scale+scale"), Throws.TypeOf<FormatException>().With.Message.Contains("twice"));
        Assert.That(() => EvaluationRules.Parse("dense+scale"), Throws.TypeOf<FormatException>().With.Message.Contains("'dense' is not a rule"));

        Assert.That(() => ResNetTrainer(SdpRun(2, SubnetLevel.Neuron, Masking.Forward, 0.5) with { EvalRule = EvalRule.Scale }),
            Throws.ArgumentException.With.Message.Contains("--neuron-scale"));
        Assert.That(() => ResNetTrainer(SdpRun(2, SubnetLevel.Block, Masking.Backward, 0.5) with { EvalRule = EvalRule.Ensemble }),
            Throws.ArgumentException.With.Message.Contains("--masking forward"));
        Assert.That(() => ResNetTrainer(Dp(2) with { EvalRule = EvalRule.InverseScale }), Throws.ArgumentException.With.Message.Contains("--mode sdp"));
        Assert.That(() => ResNetTrainer(SdpRun(2, SubnetLevel.Block, Masking.Forward, 0.5) with { EvalRule = EvalRule.Recalibrate }),
            Throws.ArgumentException.With.Message.Contains("recalibration batches"));
        Assert.That(() => new Trainer(LlamaModel(SubnetLevel.Block), SdpRun(2, SubnetLevel.Block, Masking.Forward, 0.5), AdamW, w => Tokens(w, 2),
            Options(1) with { BnRecalibration = new BatchNormRecalibration(SameTokens(), 1) }), Throws.ArgumentException.With.Message.Contains("no BatchNorm"));
        Assert.That(EvaluationRules.Check(EvalRule.Ensemble, ParallelMode.Sdp, SubnetLevel.Block, Masking.Forward, true, true, true, multiProcess: true),
            Does.Contain("--launcher mpi"));
    }
}
