using Sdp.Engine;
using Sdp.Engine.Nn;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;

namespace Sdp.Tests.Subnetworks;

/// <summary>
/// The analytical memory model against MemoryAccount peaks of one real training step: parameters,
/// gradients and optimizer state within 2%, activations within 15% (method reference §4.2, A19).
/// </summary>
[TestFixture]
public sealed class MemoryModelTests
{
    private const double StaticTolerance = 0.02, ActivationTolerance = 0.15;

    private static readonly LlamaConfig Tiny = LlamaConfig.Preset("tiny");

    /// <summary>A mid-sized config with GQA and an odd MLP width.</summary>
    private static readonly LlamaConfig Mid = new(vocabSize: 1000, hiddenSize: 128, intermediateSize: 344, numHiddenLayers: 3, numAttentionHeads: 4, numKeyValueHeads: 2, maxPositionEmbeddings: 256);

    private static void AssertClose(long model, long measured, double tolerance, string what)
    {
        TestContext.Out.WriteLine($"{what}: model {model:N0}, measured {measured:N0}, error {MemoryReport.Percent(MemoryReport.RelativeError(model, measured), signed: true)}");
        Assert.That(Math.Abs(MemoryReport.RelativeError(model, measured)), Is.LessThanOrEqualTo(tolerance),
            $"{what}: model {model:N0} bytes, measured {measured:N0} bytes");
    }

    private static void AssertMatches(CategoryBytes model, MeasuredMemory measured, string what)
    {
        AssertClose(model.Parameters, measured.Peaks.Parameters, StaticTolerance, what + " parameters");
        AssertClose(model.Gradients, measured.Peaks.Gradients, StaticTolerance, what + " gradients");
        AssertClose(model.OptimizerState, measured.Peaks.OptimizerState, StaticTolerance, what + " optimizer state");
        AssertClose(model.Activations, measured.Peaks.Activations, ActivationTolerance, what + " activations");
    }

    private static IEnumerable<TestCaseData> DenseCases()
    {
        yield return new TestCaseData(new LlamaWorkload(Tiny, 2, 16), OptimizerMemory.AdamW).SetName("Dense_LlamaTiny_B2_T16_AdamW");
        yield return new TestCaseData(new LlamaWorkload(Tiny, 1, 48), OptimizerMemory.SgdMomentum).SetName("Dense_LlamaTiny_B1_T48_SgdMomentum");
        yield return new TestCaseData(new LlamaWorkload(Mid, 3, 32), OptimizerMemory.AdamW).SetName("Dense_LlamaMid_B3_T32_AdamW");
        yield return new TestCaseData(new LlamaWorkload(Mid, 2, 64), OptimizerMemory.Sgd).SetName("Dense_LlamaMid_B2_T64_Sgd");
        // Narrower configs stand in for forward-masked workers: a neuron-level worker is a thinner MLP, a block-level one has fewer layers.
        yield return new TestCaseData(new LlamaWorkload(Tiny with { IntermediateSize = 172 }, 2, 16), OptimizerMemory.AdamW).SetName("Narrow_LlamaTiny_QuarterMlp");
        yield return new TestCaseData(new LlamaWorkload(Mid with { NumHiddenLayers = 1 }, 2, 32), OptimizerMemory.AdamW).SetName("Narrow_LlamaMid_OneLayer");
        yield return new TestCaseData(new ResNetWorkload(new ResNetConfig(8), 4, 8), OptimizerMemory.SgdMomentum).SetName("Dense_ResNetW8_8x8");
        yield return new TestCaseData(new ResNetWorkload(new ResNetConfig(4), 2, 32), OptimizerMemory.AdamW).SetName("Dense_ResNetW4_32x32");
        yield return new TestCaseData(new ResNetWorkload(new ResNetConfig(2, NumClasses: 5), 3, 16), OptimizerMemory.Sgd).SetName("Narrow_ResNetW2_16x16");
    }

    [TestCaseSource(nameof(DenseCases))]
    public void DenseStepMatchesTheModel(MemoryWorkload workload, OptimizerMemory optimizer)
    {
        var model = MemoryModel.DenseBytes(workload, optimizer);
        var measured = MemoryMeasurement.MeasureDenseStep(workload, optimizer);
        AssertMatches(model, measured, workload.Describe());
    }

    [Test]
    public void BackwardMaskedLlamaLayerDropsWhatTheModelSays()
    {
        var workload = new LlamaWorkload(Mid, 2, 32);
        var dense = MemoryMeasurement.MeasureDenseStep(workload, OptimizerMemory.AdamW);
        const int frozen = 1;
        var measured = MemoryMeasurement.MeasureStep(() =>
        {
            var t = (LlamaTrainable)MemoryMeasurement.Build(workload);
            foreach (var p in t.Model.Layers[frozen].Parameters()) p.RequiresGrad = false;
            return t;
        }, new SyntheticBatches(workload), OptimizerMemory.AdamW);

        var shapes = Enumerable.Range(0, Mid.NumHiddenLayers)
            .Select(i => i == frozen ? new LlamaLayerShape(TrainAttention: false, TrainMlp: false) : LlamaLayerShape.Dense).ToArray();
        long held = Mid.ParameterCount - Mid.LayerParameterCount;
        var model = new CategoryBytes(4 * Mid.ParameterCount, 4 * held, 8 * held, MemoryModel.LlamaActivationBytes(Mid, 2, 32, shapes));
        AssertMatches(model, measured, "llama with layer 1 frozen");
        long modelDrop = MemoryModel.LlamaActivationBytes(Mid, 2, 32) - model.Activations;
        Assert.That(modelDrop, Is.GreaterThan(0));
        AssertClose(modelDrop, dense.Peaks.Activations - measured.Peaks.Activations, ActivationTolerance, "activation drop of a frozen layer");
    }

    [TestCase("layer2.1")]
    [TestCase("layer3.0")] // a downsampling block: its projection shortcut is shared and keeps training
    public void BackwardMaskedResNetBlockDropsWhatTheModelSays(string blockName)
    {
        var config = new ResNetConfig(8);
        var workload = new ResNetWorkload(config, 4, 16);
        var dense = MemoryMeasurement.MeasureDenseStep(workload, OptimizerMemory.AdamW);
        var infos = MemoryModel.ResNetBlocks(config, 16);
        int index = infos.Select(b => b.Name).ToList().IndexOf(blockName);
        long branchParams = 0;
        var measured = MemoryMeasurement.MeasureStep(() =>
        {
            var t = (ResNetTrainable)MemoryMeasurement.Build(workload);
            var block = t.Model.Blocks[index];
            foreach (var m in new Module[] { block.Conv1, block.Bn1, block.Conv2, block.Bn2 })
                foreach (var p in m.Parameters())
                {
                    p.RequiresGrad = false;
                    branchParams += p.Numel;
                }
            return t;
        }, new SyntheticBatches(workload), OptimizerMemory.AdamW);

        var shapes = infos.Select((b, i) => i == index ? new ResNetBlockShape(Train: false) : ResNetBlockShape.Dense).ToArray();
        long held = config.ParameterCount - branchParams;
        var model = new CategoryBytes(4 * config.ParameterCount + MemoryModel.ResNetBufferBytes(config, null), 4 * held, 8 * held,
            MemoryModel.ResNetActivationBytes(config, 4, 16, shapes));
        AssertMatches(model, measured, $"resnet with {blockName} frozen");
        long modelDrop = MemoryModel.ResNetActivationBytes(config, 4, 16) - model.Activations;
        Assert.That(modelDrop, Is.GreaterThan(0));
        AssertClose(modelDrop, dense.Peaks.Activations - measured.Peaks.Activations, ActivationTolerance, $"activation drop of frozen {blockName}");
    }

    /// <summary>A forward-masked block-level ResNet worker runs the model with its unheld blocks skipped (a dropped downsampling block keeps its projection).</summary>
    [Test]
    public void ForwardMaskedResNetBlocksMatchTheModel()
    {
        var config = new ResNetConfig(8);
        var workload = new ResNetWorkload(config, 4, 16);
        var infos = MemoryModel.ResNetBlocks(config, 16);
        var dropped = new HashSet<string> { "layer1.1", "layer2.0", "layer4.1" };
        var measured = MemoryMeasurement.MeasureStep(
            () => new SkippingResNet((ResNetTrainable)MemoryMeasurement.Build(workload), dropped), new SyntheticBatches(workload), OptimizerMemory.AdamW);
        var shapes = infos.Select(b => new ResNetBlockShape(Present: !dropped.Contains(b.Name))).ToArray();
        AssertClose(MemoryModel.ResNetActivationBytes(config, 4, 16, shapes), measured.Peaks.Activations, ActivationTolerance, "resnet with dropped blocks");
    }

    /// <summary>Runs ResNet-18 with some blocks skipped, as a forward-masked block-level worker does.</summary>
    private sealed class SkippingResNet(ResNetTrainable inner, HashSet<string> dropped) : ITrainable
    {
        public Module Module => inner.Module;

        public string ItemUnit => inner.ItemUnit;

        public Tensor Loss(Tensor inputs, Tensor targets)
        {
            var names = inner.Model.Blocks.Select((b, i) => (b, MemoryModel.ResNetBlocks(inner.Model.Config, 32)[i].Name)).ToDictionary(x => x.b, x => x.Name);
            return inner.Model.Loss(inputs, targets, b => dropped.Contains(names[b]));
        }

        public BatchEvaluation Evaluate(Tensor inputs, Tensor targets) => ((ITrainable)inner).Evaluate(inputs, targets);

        public void Dispose() => inner.Dispose();
    }

    // ---- the SDP side of the model (no measurement) ----------------------------------------------------

    [TestCase(SubnetLevel.Neuron, Masking.Forward)]
    [TestCase(SubnetLevel.Neuron, Masking.Backward)]
    [TestCase(SubnetLevel.Block, Masking.Forward)]
    [TestCase(SubnetLevel.Block, Masking.Backward)]
    public void FullCoverageEqualsDataParallel(SubnetLevel level, Masking masking)
    {
        var switches = new[] { new SubnetOptions(), new SubnetOptions { MaskHeads = true, SplitSublayers = true, Downsample = DownsampleBlocks.AlwaysKeep } };
        foreach (MemoryWorkload workload in new MemoryWorkload[] { new LlamaWorkload(Mid, 2, 32), new ResNetWorkload(new ResNetConfig(8), 4, 16) })
            foreach (var options in switches)
            {
                var e = MemoryModel.Estimate(workload, OptimizerMemory.AdamW, 4, new SdpVariant(level, masking, 1.0, Options: options));
                Assert.That(e.PerWorker, Has.All.EqualTo(e.Dp), $"{workload.Describe()} {options}");
                Assert.That(e.Saving.Total, Is.Zero);
            }
    }

    [Test]
    public void NeuronForwardWorkerIsTheDenseModelWithItsMlpWidth()
    {
        // W = 4 divides 344, so every worker holds exactly C·344 = 172 units of every layer.
        var workload = new LlamaWorkload(Mid, 2, 32);
        var e = MemoryModel.Estimate(workload, OptimizerMemory.AdamW, 4, new SdpVariant(SubnetLevel.Neuron, Masking.Forward, 0.5));
        long narrow = MemoryModel.LlamaActivationBytes(Mid with { IntermediateSize = 172 }, 2, 32);
        Assert.That(e.PerWorker.Select(w => w.Activations), Has.All.EqualTo(narrow));
        long held = Mid.ParameterCount - Mid.NumHiddenLayers * 172L * 3 * Mid.HiddenSize;
        Assert.That(e.PerWorker.Select(w => w.Parameters), Has.All.EqualTo(4 * held));
        Assert.That(e.PerWorker.Select(w => w.OptimizerState), Has.All.EqualTo(8 * held));
    }

    [Test]
    public void HeadMaskedNeuronWorkerIsTheDenseModelWithItsHeadsAndWidth()
    {
        // Mid has 2 KV groups; W = 2, C = 0.5: each worker holds one KV group (2 query heads) and 172 MLP units per layer.
        var e = MemoryModel.Estimate(new LlamaWorkload(Mid, 2, 32), OptimizerMemory.AdamW, 2,
            new SdpVariant(SubnetLevel.Neuron, Masking.Forward, 0.5, Options: new SubnetOptions { MaskHeads = true }));
        // The residual width D stays while the attention width halves, so no smaller LlamaConfig describes this worker: use explicit shapes.
        var shapes = Enumerable.Repeat(new LlamaLayerShape(KvHeads: 1, MlpWidth: 172), Mid.NumHiddenLayers).ToArray();
        Assert.That(e.PerWorker.Select(w => w.Activations), Has.All.EqualTo(MemoryModel.LlamaActivationBytes(Mid, 2, 32, shapes)));
        Assert.That(e.PerWorker.Select(w => w.Activations), Has.All.LessThan(MemoryModel.LlamaActivationBytes(Mid with { IntermediateSize = 172 }, 2, 32)));
    }

    [Test]
    public void BlockForwardWorkerIsTheDenseModelWithItsLayers()
    {
        var config = Mid with { NumHiddenLayers = 4 };
        var e = MemoryModel.Estimate(new LlamaWorkload(config, 2, 32), OptimizerMemory.AdamW, 4, new SdpVariant(SubnetLevel.Block, Masking.Forward, 0.5));
        long twoLayers = MemoryModel.LlamaActivationBytes(config with { NumHiddenLayers = 2 }, 2, 32);
        Assert.That(e.PerWorker.Select(w => w.Activations), Has.All.EqualTo(twoLayers));
    }

    [Test]
    public void BackwardMaskingKeepsDenseParametersAndNeuronLevelActivations()
    {
        var workload = new ResNetWorkload(new ResNetConfig(8), 4, 16);
        var e = MemoryModel.Estimate(workload, OptimizerMemory.AdamW, 4, new SdpVariant(SubnetLevel.Neuron, Masking.Backward, 0.5));
        Assert.That(e.PerWorker.Select(w => w.Parameters), Has.All.EqualTo(e.Dp.Parameters));
        Assert.That(e.PerWorker.Select(w => w.Activations), Has.All.EqualTo(e.Dp.Activations));
        Assert.That(e.PerWorker.Select(w => w.Gradients), Has.All.LessThan(e.Dp.Gradients));
    }

    /// <summary>§4.3: LLaMA-130M at block level, C = 0.5, holds 68.3% of the parameters per worker.</summary>
    [Test]
    public void Llama130mBlockLevelHalfCoverageHolds68Percent()
    {
        var workload = new LlamaWorkload(LlamaConfig.Preset("130m"), 1, 16);
        var e = MemoryModel.Estimate(workload, OptimizerMemory.AdamW, 8, new SdpVariant(SubnetLevel.Block, Masking.Forward, 0.5));
        Assert.That((double)e.Max.Parameters / e.Dp.Parameters, Is.EqualTo(0.683).Within(0.001));
        var back = MemoryModel.Estimate(workload, OptimizerMemory.AdamW, 8, new SdpVariant(SubnetLevel.Block, Masking.Backward, 0.5));
        Assert.That(back.Max.Parameters, Is.EqualTo(back.Dp.Parameters));
        Assert.That((double)back.Max.Gradients / back.Dp.Gradients, Is.EqualTo(0.683).Within(0.001));
    }

    /// <summary>A19: ResNet-18, W = 8, C = 0.5, block level: the max worker keeps at most ~57% of DP static memory.</summary>
    [Test]
    public void ResNet18BlockLevelMaxWorkerStaticIsAtMost57Percent()
    {
        var e = MemoryModel.Estimate(new ResNetWorkload(new ResNetConfig(), 64, 32), OptimizerMemory.AdamW, 8, new SdpVariant(SubnetLevel.Block, Masking.Forward, 0.5));
        Assert.That((double)e.MaxStatic / e.Dp.Static, Is.LessThanOrEqualTo(0.57));
    }

    [Test]
    public void InvalidInputsNameTheProblem()
    {
        Assert.That(() => MemoryModel.Estimate(new LlamaWorkload(Mid, 0, 8), OptimizerMemory.AdamW, 2, null),
            Throws.ArgumentException.With.Message.Contains("batch"));
        Assert.That(() => MemoryModel.Estimate(new LlamaWorkload(Mid, 1, 8), OptimizerMemory.AdamW, 8, new SdpVariant(SubnetLevel.Block, Masking.Forward, 0.3)),
            Throws.ArgumentException.With.Message.Contains("coverage"));
    }
}
