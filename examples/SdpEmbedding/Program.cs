// Trains a user-defined residual MLP with SDP: 4 simulated workers, each holding half of every block's
// hidden units (neuron level, forward masking), then reads the per-worker memory report; then trains
// the same network on one worker, as plain single-process training. Exits 1 unless both reach the stated loss.
using Sdp.Engine;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Memory;
using Sdp.Engine.Nn;
using Sdp.Engine.Optim;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Data;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;
using static Sizes;

DeviceScope.SetProcessDefault(CpuBackend.Instance); // this program's device; every tensor below lives there

// The SDP declaration: each block's hidden units sit between its up and down layers. Counts, FLOPs and
// tensor names come from the modules; the engine cuts every worker's narrower copy itself.
var model = SubnetworkModel.For(() => new ResidualMlp(), net => new Classifier(net, net.Forward),
    net => net.Blocks.Select(b => Units.Hidden(b.Up, b.Down)));

using var trainer = new Trainer(model,
    new SdpOptions { Workers = 4, Mode = ParallelMode.Sdp, Level = SubnetLevel.Neuron, Masking = Masking.Forward, Coverage = 0.5 },
    parameters => new AdamW(parameters, 3e-3),
    worker => new TeacherData(seed: 100 + (ulong)worker),
    new TrainerOptions { Steps = 150, Schedule = new ConstantSchedule(3e-3), Clip = 1.0 });
trainer.StepCompleted += m => { if (m.Step % 50 == 0) Console.WriteLine($"step {m.Step}: loss {m.Loss:F3}, {m.Workers[0].Collectives} collectives"); };
trainer.Run();
const double TargetLoss = 0.35; // from ln 4 = 1.39; CI fails the run above it
var heldOut = trainer.Evaluate(new TeacherData(seed: 1), 20);
Console.WriteLine($"assembled dense model, held-out loss: {heldOut.MeanLoss:F3} (target {TargetLoss}), accuracy {heldOut.Accuracy:P1}");
for (int w = 0; w < 4; w++) Console.WriteLine(trainer.WorkerAccount(w).Snapshot());

// Plain single-process training: one already-built model and its optimizer (both stay ours) on one worker.
var account = new MemoryAccount("one worker");
using (account.Activate())
using (var dense = model.Build(null))
using (var optimizer = new AdamW(dense.Module.Parameters(), 3e-3))
using (var single = new Trainer(dense, optimizer, new TeacherData(seed: 100), new TrainerOptions { Steps = 150, Schedule = new ConstantSchedule(3e-3), Clip = 1.0 }, account))
{
    single.Run();
    double singleLoss = single.Evaluate(new TeacherData(seed: 1), 20).MeanLoss;
    Console.WriteLine($"one worker, held-out loss: {singleLoss:F3} (target {TargetLoss})");
    Console.WriteLine(account.Snapshot());
    if (heldOut.MeanLoss > TargetLoss || singleLoss > TargetLoss) return 1;
}
return 0;

/// <summary>x (B, Dim) -> logits (B, Classes): an input layer, residual blocks x + down(relu(up(x))), a head.</summary>
sealed class ResidualMlp : Module
{
    private readonly Linear _input, _head;
    private readonly List<(Linear Up, Linear Down)> _blocks = [];

    public ResidualMlp()
    {
        var rng = new Rng(0);
        _input = RegisterModule("input", new Linear(Dim, Dim, bias: true, rng));
        var blocks = RegisterModule("blocks", new Container());
        for (int b = 0; b < Sizes.Blocks; b++)
        {
            var block = blocks.Add(b.ToString(), new Container());
            _blocks.Add((block.Add("up", new Linear(Dim, Hidden, bias: true, rng)), block.Add("down", new Linear(Hidden, Dim, bias: false, rng))));
        }
        _head = RegisterModule("head", new Linear(Dim, Classes, bias: true, rng));
    }

    public IReadOnlyList<(Linear Up, Linear Down)> Blocks => _blocks;

    public Tensor Forward(Tensor x)
    {
        var h = _input.Forward(x);
        foreach (var (up, down) in _blocks)
        {
            using var hidden = Ops.Relu(up.Forward(h));
            using var old = h;
            h = Ops.Add(old, down.Forward(hidden));
        }
        using (h) return _head.Forward(h);
    }

    private sealed class Container : Module
    {
        public T Add<T>(string name, T module) where T : Module => RegisterModule(name, module);
    }
}

/// <summary>Batches of 32 Gaussian points labelled by a fixed random linear teacher.</summary>
sealed class TeacherData(ulong seed) : IBatchSource
{
    private static readonly float[] Teacher = [.. Enumerable.Range(0, Dim * Classes).Select(_ => (float)new Rng(42 + (ulong)_).NextNormal())];
    private readonly Rng _rng = new(seed);
    public DataLoaderState State { get; set; } = DataLoaderState.Start;
    public (Tensor Inputs, Tensor Targets) NextBatch()
    {
        var x = Enumerable.Range(0, 32 * Dim).Select(_ => (float)_rng.NextNormal()).ToArray();
        var y = Enumerable.Range(0, 32).Select(i => Enumerable.Range(0, Classes).MaxBy(c => Enumerable.Range(0, Dim).Sum(d => x[i * Dim + d] * Teacher[d * Classes + c]))).ToArray();
        State = State with { Batch = State.Batch + 1 };
        return (Tensor.FromArray(x, new Shape(32, Dim)), Tensor.FromArray(y, new Shape(32)));
    }
}

static class Sizes
{
    public const int Dim = 32, Hidden = 64, Blocks = 3, Classes = 4;
}
