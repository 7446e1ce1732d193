using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Optim;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;
using static Sdp.Tests.SdpTraining.SdpTestSupport;

namespace Sdp.Tests.SdpTraining;

/// <summary>
/// <see cref="GradientAlignment"/>: the synchronised SDP gradient and the DP gradient on the same batches at the same
/// weights, and their cosine (A23's measurement). The gradients are checked against the steps the trainer takes.
/// </summary>
public class GradientAlignmentTests
{
    [TearDown]
    public void ClearTape() => Tape.Current.Clear();

    private static SubnetworkModel Model(string model, SubnetLevel level) => model == "llama" ? LlamaModel(level) : ResNetModel(level);

    private static IBatchSource Data(string model, int worker, int workers) => model == "llama" ? Tokens(worker, workers) : Images(worker, workers);

    /// <summary>Each worker's first batch of its own stream, as the trainer's workers read them at step 1.</summary>
    private static List<(Tensor Inputs, Tensor Targets)> FirstBatches(string model, int workers)
        => [.. Enumerable.Range(0, workers).Select(w => Data(model, w, workers).NextBatch())];

    private static Dictionary<string, float[]> Values(ITrainable model) => model.Module.NamedParameters().ToDictionary(p => p.Name, p => p.Tensor.ToArray<float>());

    /// <summary>
    /// One SGD step with learning rate 1, no clipping and no decay moves every parameter by minus the gradient the
    /// trainer applied: for SDP the holder-averaged ĝ, for DP the mean over the workers.
    /// </summary>
    private static Dictionary<string, double[]> AppliedGradient(Trainer trainer)
    {
        var before = Values(trainer.AssembleDense());
        trainer.TrainStep();
        var after = Values(trainer.AssembleDense());
        return before.ToDictionary(p => p.Key, p => p.Value.Zip(after[p.Key], (b, a) => (double)b - a).ToArray());
    }

    [Test]
    public void The_synchronised_gradient_is_the_step_sdp_training_takes(
        [Values("llama", "resnet18")] string model, [Values(SubnetLevel.Neuron, SubnetLevel.Block)] SubnetLevel level, [Values(Masking.Forward, Masking.Backward)] Masking masking)
    {
        var subnetworks = Model(model, level);
        using var trainer = new Trainer(subnetworks, SdpRun(4, level, masking, 0.5), p => new Sgd(p, 1.0), w => Data(model, w, 4), Options(1, clip: 0, lr: 1.0));
        using var alignment = new GradientAlignment(subnetworks, trainer.Plan!, masking);
        var pair = alignment.Gradients(trainer.AssembleDense().Module, FirstBatches(model, 4));
        var applied = AppliedGradient(trainer);
        Assert.That(pair.Sdp.Keys, Is.EquivalentTo(applied.Keys));
        foreach (var (name, g) in applied) Assert.That(pair.Sdp[name], Is.EqualTo(g).Within(2e-5), name);
        // Half the units on each worker: ĝ averages two of the four batches' gradients per unit, DP all four.
        Assert.That(pair.Compare(0).Cosine, Is.LessThan(0.9999).And.GreaterThan(-1));
    }

    [Test]
    public void The_dp_gradient_is_the_step_dp_training_takes([Values("llama", "resnet18")] string model)
    {
        var subnetworks = Model(model, SubnetLevel.Block);
        using var dp = new Trainer(subnetworks, Dp(4), p => new Sgd(p, 1.0), w => Data(model, w, 4), Options(1, clip: 0, lr: 1.0));
        var plan = SubnetworkPlan.Create(subnetworks.Units, 4, 0.5, 5);
        using var alignment = new GradientAlignment(subnetworks, plan, Masking.Forward);
        var pair = alignment.Gradients(dp.AssembleDense().Module, FirstBatches(model, 4));
        foreach (var (name, g) in AppliedGradient(dp)) Assert.That(pair.Dp[name], Is.EqualTo(g).Within(2e-5), name);
    }

    [Test]
    public void Full_coverage_gives_cosine_one([Values(SubnetLevel.Neuron, SubnetLevel.Block)] SubnetLevel level, [Values(Masking.Forward, Masking.Backward)] Masking masking)
    {
        // C = 1: every worker holds every unit, so ĝ is the plain mean over the workers, which is g_DP.
        var model = LlamaModel(level);
        using var alignment = new GradientAlignment(model, SubnetworkPlan.Create(model.Units, 2, 1.0, 5), masking);
        using var dense = model.Build(null);
        var m = alignment.Measure(dense.Module, FirstBatches("llama", 2), step: 3);
        Assert.That(m.Step, Is.EqualTo(3));
        Assert.That(m.Cosine, Is.EqualTo(1.0).Within(1e-6));
        Assert.That(m.SdpNorm, Is.EqualTo(m.DpNorm).Within(1e-6 * m.DpNorm));
        Assert.That(m.DpNorm, Is.GreaterThan(0));
    }

    [Test]
    public void Backward_masking_on_the_same_batch_everywhere_gives_cosine_one()
    {
        // A8: with one batch on every worker each holder's gradient is the dense one, so their mean over the holders is too.
        var model = LlamaModel(SubnetLevel.Neuron);
        using var alignment = new GradientAlignment(model, SubnetworkPlan.Create(model.Units, 4, 0.5, 5), Masking.Backward);
        using var dense = model.Build(null);
        var batch = SameTokens().NextBatch();
        var m = alignment.Measure(dense.Module, [batch, batch, batch, batch]);
        Assert.That(m.Cosine, Is.EqualTo(1.0).Within(1e-9));
    }

    [Test]
    public void Gradients_need_one_batch_per_worker()
    {
        var model = LlamaModel(SubnetLevel.Block);
        using var alignment = new GradientAlignment(model, SubnetworkPlan.Create(model.Units, 4, 0.5, 5), Masking.Forward);
        using var dense = model.Build(null);
        Assert.That(() => alignment.Gradients(dense.Module, FirstBatches("llama", 2)), Throws.ArgumentException.With.Message.Contains("one per worker"));
    }
}
