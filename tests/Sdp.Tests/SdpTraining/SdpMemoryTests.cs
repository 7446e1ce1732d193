using Sdp.Engine.Memory;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;
using static Sdp.Tests.SdpTraining.SdpTestSupport;

namespace Sdp.Tests.SdpTraining;

/// <summary>
/// `sdp memory --measure` for SDP: a real worker step against the analytical model (weights, gradients and
/// optimizer within 2%, activations within 15%), and the measured worker against the trainer's own accounts.
/// </summary>
[TestFixture]
public class SdpMemoryTests
{
    private static IEnumerable<TestCaseData> Variants()
    {
        foreach (var level in new[] { SubnetLevel.Neuron, SubnetLevel.Block })
            foreach (var masking in new[] { Masking.Forward, Masking.Backward })
            {
                yield return new TestCaseData(new LlamaWorkload(Llama, 2, 8), level, masking).SetArgDisplayNames("llama", level.ToString(), masking.ToString());
                yield return new TestCaseData(new ResNetWorkload(ResNet, 4, 8), level, masking).SetArgDisplayNames("resnet", level.ToString(), masking.ToString());
            }
    }

    [TestCaseSource(nameof(Variants))]
    public void Measured_worker_agrees_with_the_model(MemoryWorkload workload, SubnetLevel level, Masking masking)
    {
        var variant = new SdpVariant(level, masking, 0.5, Seed: 3);
        var estimate = MemoryModel.Estimate(workload, OptimizerMemory.AdamW, 4, variant);
        int worker = estimate.MaxWorker;
        var model = estimate.PerWorker[worker];
        var measured = MemoryMeasurement.MeasureSdpWorker(workload, OptimizerMemory.AdamW, 4, variant, worker).Peaks;
        Assert.Multiple(() =>
        {
            Assert.That(measured.Parameters, Is.EqualTo(model.Parameters).Within(2).Percent, "parameters");
            Assert.That(measured.Gradients, Is.EqualTo(model.Gradients).Within(2).Percent, "gradients");
            Assert.That(measured.OptimizerState, Is.EqualTo(model.OptimizerState).Within(2).Percent, "optimizer state");
            Assert.That(measured.Activations, Is.EqualTo(model.Activations).Within(15).Percent, "activations");
        });
        var dp = estimate.Dp;
        Assert.That(model.Gradients, Is.LessThan(dp.Gradients), "SDP at C = 0.5 holds fewer gradients than DP");
    }

    [Test]
    public void The_trainer_allocates_what_the_measurement_measures([Values(Masking.Forward, Masking.Backward)] Masking masking)
    {
        var workload = new LlamaWorkload(Llama, Batch, Seq);
        var variant = new SdpVariant(SubnetLevel.Neuron, masking, 0.5, Seed: 5);
        using var trainer = new Trainer(LlamaModel(SubnetLevel.Neuron), SdpRun(4, SubnetLevel.Neuron, masking, 0.5), AdamW, w => Tokens(w, 4), Options(1));
        trainer.TrainStep();
        for (int w = 0; w < 4; w++)
        {
            var measured = MemoryMeasurement.MeasureSdpWorker(workload, OptimizerMemory.AdamW, 4, variant, w).Peaks;
            var account = trainer.WorkerAccount(w);
            Assert.That(account.PeakBytes(MemoryCategory.Parameters), Is.EqualTo(measured.Parameters), $"worker {w} parameters");
            Assert.That(account.PeakBytes(MemoryCategory.Gradients), Is.EqualTo(measured.Gradients), $"worker {w} gradients");
            Assert.That(account.PeakBytes(MemoryCategory.OptimizerState), Is.EqualTo(measured.OptimizerState), $"worker {w} optimizer state");
            Assert.That(account.PeakBytes(MemoryCategory.Activations), Is.EqualTo(measured.Activations), $"worker {w} activations");
        }
    }
}
