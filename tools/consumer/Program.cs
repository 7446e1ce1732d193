// The packages' consumer test (tools/consumer-test.sh copies this file into a throwaway project outside the
// repository that references Sdp.Models from the freshly packed packages only). Model.cs beside it is the
// SdpEmbedding example's model (ResidualMlp, TeacherData, Sizes), cut from
// examples/SdpEmbedding/Program.cs. It trains that model for a few steps with SDP on the CPU, then on one
// worker on the CPU and on the emulated CUDA device, and checks the two agree. Any failure throws (exit != 0).
using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Backends.Cuda;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Engine.Subnetworks;
using Sdp.Kernels.Cuda;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;
using static Sizes;

const int Steps = 5;
var options = new TrainerOptions { Steps = Steps, Schedule = new ConstantSchedule(3e-3), Clip = 1.0 };
DeviceScope.SetProcessDefault(CpuBackend.Instance);

var model = SubnetworkModel.For(() => new ResidualMlp(), net => new Classifier(net, net.Forward),
    net => net.Blocks.Select(b => Units.Hidden(b.Up, b.Down)));

// SDP: 4 simulated workers on the CPU, each holding half of every block's hidden units.
using (var sdp = new Trainer(model,
    new SdpOptions { Workers = 4, Mode = ParallelMode.Sdp, Level = SubnetLevel.Neuron, Masking = Masking.Forward, Coverage = 0.5 },
    parameters => new AdamW(parameters, 3e-3), worker => new TeacherData(seed: 100 + (ulong)worker), options))
{
    sdp.StepCompleted += m => Console.WriteLine($"cpu, sdp 4 workers, step {m.Step}: loss {m.Loss:F4}");
    sdp.Run();
}

// One worker on a device: the dense model, built on that device.
List<double> TrainOne(IBackend device, string name)
{
    var losses = new List<double>();
    using var scope = DeviceScope.Use(device);
    var account = new MemoryAccount(name);
    using (account.Activate())
    using (var dense = model.Build(null))
    using (var optimizer = new AdamW(dense.Module.Parameters(), 3e-3))
    using (var single = new Trainer(dense, optimizer, new TeacherData(seed: 100), options, account))
    {
        single.StepCompleted += m => { losses.Add(m.Loss); Console.WriteLine($"{name}, one worker, step {m.Step}: loss {m.Loss:F4}"); };
        single.Run();
    }
    if (losses.Count != Steps || losses.Any(l => !double.IsFinite(l))) throw new Exception($"{name}: expected {Steps} finite losses, got [{string.Join(", ", losses)}]");
    return losses;
}

var cpu = TrainOne(CpuBackend.Instance, "cpu");

string emulator = Cuda.EmulatorPath() ?? throw new Exception("the emulated CUDA device (libcudaemu.so) was not found in the package layout");
Console.WriteLine($"emulated CUDA device: {emulator}");
if (!File.Exists(Path.Combine(Path.GetDirectoryName(emulator)!, "cudaemu.h"))) throw new Exception($"cudaemu.h is not beside {emulator}");
List<double> cuda;
using (var emulated = CudaBackend.Open(0, Cuda.Load(CudaImplementation.Emulated)))
    cuda = TrainOne(emulated, "cuda (emulated)");

for (int i = 0; i < Steps; i++)
    if (Math.Abs(cpu[i] - cuda[i]) > 1e-3 * Math.Max(1, Math.Abs(cpu[i])))
        throw new Exception($"step {i + 1}: cpu loss {cpu[i]} and emulated cuda loss {cuda[i]} differ");
Console.WriteLine($"consumer: ok, cpu and emulated cuda agree over {Steps} steps");
