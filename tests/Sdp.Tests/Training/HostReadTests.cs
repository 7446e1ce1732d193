using Sdp.Engine.Backends;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;
using Sdp.Tests.Support;
using static Sdp.Tests.SdpTraining.SdpTestSupport;

namespace Sdp.Tests.Training;

/// <summary>
/// A training step may read its device at most twice per worker (the loss and the gradient norm), never once
/// per parameter or per layer: on a GPU every read stalls the stream. Each worker gets its own
/// <see cref="CountingBackend"/>, which counts every device-to-host read (its only value-returning path) and
/// rejects tensors from any other device, so the count is exhaustive and the placement is checked too.
/// </summary>
public class HostReadTests
{
    private const int MeasuredSteps = 3;

    public enum Variant
    {
        Dense,
        Dp,
        NeuronForward,
        NeuronBackward,
        BlockForward,
        BlockBackward,
    }

    private static SdpOptions Run(Variant v) => v switch
    {
        Variant.Dense => Dp(1),
        Variant.Dp => Dp(2),
        Variant.NeuronForward => SdpRun(2, SubnetLevel.Neuron, Masking.Forward, 0.5),
        Variant.NeuronBackward => SdpRun(2, SubnetLevel.Neuron, Masking.Backward, 0.5),
        Variant.BlockForward => SdpRun(2, SubnetLevel.Block, Masking.Forward, 0.5),
        _ => SdpRun(2, SubnetLevel.Block, Masking.Backward, 0.5),
    };

    [Test]
    public void A_llama_step_reads_each_workers_device_at_most_twice([Values] Variant variant)
    {
        var run = Run(variant);
        AssertReadsPerStep(run, LlamaModel(run.Level), w => Tokens(w, run.Workers));
    }

    [Test]
    public void A_resnet_step_reads_each_workers_device_at_most_twice([Values] Variant variant)
    {
        var run = Run(variant);
        AssertReadsPerStep(run, ResNetModel(run.Level), w => Images(w, run.Workers));
    }

    private static void AssertReadsPerStep(SdpOptions run, SubnetworkModel model, Func<int, IBatchSource> data)
    {
        var devices = Enumerable.Range(0, run.Workers).Select(_ => new CountingBackend()).ToArray();
        using var host = Engine.DeviceScope.Use(new CountingBackend());
        using var trainer = new Trainer(model, run, AdamW, data, Options(steps: 2 + MeasuredSteps), devices: w => devices[w]);
        // Warm-up: optimizer state and staging buffers are made on the first steps.
        trainer.TrainStep();
        trainer.TrainStep();
        foreach (var d in devices) d.ResetCounts();
        for (int s = 0; s < MeasuredSteps; s++) trainer.TrainStep();
        for (int w = 0; w < run.Workers; w++)
        {
            Assert.That(devices[w].Calls, Is.Positive, $"worker {w} ran its kernels on its own device");
            Assert.That(devices[w].Downloads, Is.EqualTo(2 * MeasuredSteps), $"worker {w}: the loss and the gradient norm, once per step, and nothing else");
        }
    }
}
