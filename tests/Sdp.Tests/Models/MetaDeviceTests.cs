using System.Diagnostics;
using Sdp.Engine;
using Sdp.Engine.Backends.Meta;
using Sdp.Engine.Memory;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Subnetworks;

namespace Sdp.Tests.Models;

/// <summary>The meta device: shapes, dtypes and memory accounting without storage or compute.</summary>
[NonParallelizable]
public class MetaDeviceTests
{
    [Test]
    public void Llama_1b_builds_on_meta_with_its_full_parameter_account_and_almost_no_memory()
    {
        var config = LlamaConfig.Preset("1b");
        var account = new MemoryAccount("meta");
        GC.Collect();
        long managedBefore = GC.GetTotalMemory(forceFullCollection: true);
        long rssBefore = Process.GetCurrentProcess().WorkingSet64;
        var clock = Stopwatch.StartNew();
        using (account.Activate())
        using (DeviceScope.Use(MetaBackend.Instance))
        {
            using var model = new LlamaForCausalLM(config, new Rng(0));
            clock.Stop();
            Assert.That(model.ParameterCount, Is.EqualTo(config.ParameterCount));
            Assert.That(model.Parameters().All(p => p.Device == Device.Meta), Is.True);
            Assert.That(account.CurrentBytes(MemoryCategory.Parameters), Is.EqualTo(4 * config.ParameterCount), "float32 parameters, charged as on a real device");
            long rssGrowth = Process.GetCurrentProcess().WorkingSet64 - rssBefore;
            long managedGrowth = GC.GetTotalMemory(forceFullCollection: true) - managedBefore;
            TestContext.Out.WriteLine($"LLaMA 1b on meta: {config.ParameterCount:N0} parameters ({MemorySnapshot.FormatBytes(account.CurrentBytes(MemoryCategory.Parameters))} accounted) in {clock.ElapsedMilliseconds} ms; RSS +{MemorySnapshot.FormatBytes(rssGrowth)}, managed heap +{MemorySnapshot.FormatBytes(managedGrowth)}");
            Assert.That(rssGrowth, Is.LessThan(200L << 20), "the process grew by less than 200 MB for a 5 GiB model");
            Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(30)));
        }
        Assert.That(account.CurrentBytes(MemoryCategory.Parameters), Is.Zero, "disposing the model refunds its account");
    }

    [Test]
    public void Reading_a_meta_tensor_is_an_error_that_says_why()
    {
        using var t = Tensor.Zeros(new Shape(2, 3), backend: MetaBackend.Instance);
        var e = Assert.Throws<InvalidOperationException>(() => t.ToArray<float>());
        Assert.That(e!.Message, Does.Contain("is on the meta device: it has a shape and a dtype but no values to read"));
        Assert.That(t.Device.ToString(), Is.EqualTo("meta"));
    }

    private static IEnumerable<TestCaseData> Workloads()
    {
        yield return new TestCaseData(new LlamaWorkload(new LlamaConfig(vocabSize: 64, hiddenSize: 32, intermediateSize: 48, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2, maxPositionEmbeddings: 32), 2, 16)).SetArgDisplayNames("llama");
        yield return new TestCaseData(new ResNetWorkload(new ResNetConfig(4, 10, 3), 4, 16)).SetArgDisplayNames("resnet18");
    }

    /// <summary>
    /// Parameters, gradients, optimizer state and activations (what the engine allocates) are the same bytes on both;
    /// workspace is each backend's own scratch inside its kernels (im2col panels, softmax blocks), and meta kernels need none.
    /// </summary>
    [TestCaseSource(nameof(Workloads))]
    public void A_training_step_on_meta_accounts_exactly_what_it_accounts_on_the_cpu(MemoryWorkload workload)
    {
        var onCpu = MemoryMeasurement.MeasureDenseStep(workload, OptimizerMemory.AdamW);
        MeasuredMemory onMeta;
        using (DeviceScope.Use(new MetaBackend(readsAsZeros: true))) onMeta = MemoryMeasurement.MeasureDenseStep(workload, OptimizerMemory.AdamW);
        Assert.That(onMeta.Peaks, Is.EqualTo(onCpu.Peaks));
        Assert.That(onMeta.Peaks.Activations, Is.GreaterThan(0));
        Assert.That(onMeta.WorkspacePeak, Is.LessThanOrEqualTo(onCpu.WorkspacePeak));

        var variant = new SdpVariant(SubnetLevel.Neuron, Masking.Forward, 0.5, Seed: 1);
        var workerOnCpu = MemoryMeasurement.MeasureSdpWorker(workload, OptimizerMemory.AdamW, 4, variant, 0);
        MeasuredMemory workerOnMeta;
        using (DeviceScope.Use(new MetaBackend(readsAsZeros: true))) workerOnMeta = MemoryMeasurement.MeasureSdpWorker(workload, OptimizerMemory.AdamW, 4, variant, 0);
        Assert.That(workerOnMeta.Peaks, Is.EqualTo(workerOnCpu.Peaks));
    }
}
