using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cuda;
using Sdp.Engine.Optim;
using Sdp.Engine.Subnetworks;
using Sdp.Kernels.Cuda;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;
using Sdp.Tests.Support;
using static Sdp.Tests.SdpTraining.SdpTestSupport;

namespace Sdp.Tests.Cuda;

/// <summary>
/// Short training runs on CUDA follow the CPU's loss curve: LLaMA and ResNet-18, dense and SDP, with every
/// worker on its own device (so gradients are synchronised through NCCL) or all workers sharing one (the
/// in-process communicator). The per-step losses agree to 1e-4 relative: fp32 kernels sum in other orders
/// than the CPU's, and those differences grow over steps; a wrong gradient moves the loss by far more. SGD with
/// momentum, not AdamW: AdamW's m/√v turns a rounding-level difference in a near-zero gradient into a full
/// ±lr step, which makes losses of two correct backends drift apart by 1e-3 within four steps.
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable]
public class CudaTrainingTests
{
    private const int Steps = 4;
    private const double Tolerance = 1e-4;
    private readonly CudaImplementation _impl;
    private CudaApi _api = null!;

    public CudaTrainingTests(CudaImplementation implementation) => _impl = implementation;

    [OneTimeSetUp]
    public void Load() => _api = CudaDevices.Load(_impl);

    private static double[] Losses(Func<SubnetworkModel> model, SdpOptions sdp, Func<int, IBatchSource> data, IBackend host, Func<int, IBackend> devices, out string communicator)
    {
        using var scope = DeviceScope.Use(host);
        using var trainer = new Trainer(model(), sdp, p => new Sgd(p, 0.05, momentum: 0.9), data, Options(Steps, lr: 0.05), devices: devices);
        communicator = trainer.CommunicatorKind;
        var losses = new List<double>();
        trainer.StepCompleted += m => losses.Add(m.Loss);
        trainer.Run();
        return [.. losses];
    }

    private void AssertFollowsCpu(Func<SubnetworkModel> model, SdpOptions sdp, Func<int, IBatchSource> data, bool ownDevices, string expectedCommunicator)
    {
        int count;
        unsafe { _api.Check(_api.cuDeviceGetCount(&count)); }
        if (ownDevices && count < sdp.Workers) Assert.Ignore($"{sdp.Workers} workers on their own devices need {sdp.Workers}; the {_api} has {count}");
        var backends = new List<CudaBackend>();
        try
        {
            for (int w = 0; w < sdp.Workers; w++) backends.Add(CudaBackend.Open(ownDevices ? w : 0, _api));
            var host = CudaBackend.Open(0, _api);
            backends.Add(host);
            double[] cpu = Losses(model, sdp, data, Backends.Cpu, _ => Backends.Cpu, out _);
            double[] cuda = Losses(model, sdp, data, host, w => backends[w], out string communicator);
            Assert.That(communicator, Does.StartWith(expectedCommunicator));
            Assert.That(cuda, Has.Length.EqualTo(Steps));
            for (int s = 0; s < Steps; s++)
                Assert.That(cuda[s], Is.EqualTo(cpu[s]).Within(Tolerance * Math.Abs(cpu[s])), $"step {s + 1}: CPU losses {string.Join(", ", cpu)}; CUDA {string.Join(", ", cuda)}");
        }
        finally
        {
            foreach (var b in backends) b.Dispose();
        }
    }

    [Test]
    public void Llama_dense_training_on_one_device_follows_the_cpu() =>
        AssertFollowsCpu(() => LlamaModel(SubnetLevel.Neuron), Dp(1), w => Tokens(w, 1), ownDevices: true, "in-process");

    [TestCase(SubnetLevel.Neuron, Masking.Backward)]
    [TestCase(SubnetLevel.Block, Masking.Forward)]
    public void Llama_sdp_with_a_device_per_worker_syncs_through_nccl_and_follows_the_cpu(SubnetLevel level, Masking masking) =>
        AssertFollowsCpu(() => LlamaModel(level), SdpRun(2, level, masking, 0.5), w => Tokens(w, 2), ownDevices: true, "NCCL");

    [Test]
    public void Llama_sdp_with_workers_sharing_a_device_uses_the_in_process_communicator() =>
        AssertFollowsCpu(() => LlamaModel(SubnetLevel.Neuron), SdpRun(2, SubnetLevel.Neuron, Masking.Forward, 0.5), w => Tokens(w, 2), ownDevices: false, "in-process (2 workers share cuda:0");

    [TestCase(SubnetLevel.Neuron, Masking.Backward)]
    [TestCase(SubnetLevel.Block, Masking.Forward)]
    public void ResNet_sdp_with_a_device_per_worker_follows_the_cpu(SubnetLevel level, Masking masking) =>
        AssertFollowsCpu(() => ResNetModel(level), SdpRun(2, level, masking, 0.5), w => Images(w, 2), ownDevices: true, "NCCL");
}
