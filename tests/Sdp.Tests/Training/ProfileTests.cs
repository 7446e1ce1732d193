using Sdp.Engine.Autograd;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Profiling;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Training;
using Sdp.Tests.Cli;
using static Sdp.Tests.SdpTraining.SdpTestSupport;

namespace Sdp.Tests.Training;

/// <summary>`--profile`: the trainer times each worker's phases and kernels without changing a single bit of the training.</summary>
[NonParallelizable]
public class ProfileTests
{
    [TearDown]
    public void ClearTape() => Tape.Current.Clear();

    private static (double[] Losses, Dictionary<string, long[]> Weights, TrainingProfile? Profile) Run(bool profile)
    {
        var sdp = SdpRun(2, SubnetLevel.Neuron, Masking.Forward, 0.5);
        using var trainer = new Trainer(LlamaModel(SubnetLevel.Neuron), sdp, AdamW, w => Tokens(w, 2), Options(4) with { Profile = profile });
        var losses = Enumerable.Range(0, 4).Select(_ => trainer.TrainStep().Loss).ToArray();
        return (losses, StateBits(trainer.AssembleDense().Module), trainer.Profile);
    }

    [Test]
    public void A_profiled_run_trains_bit_for_bit_as_an_unprofiled_one_and_accounts_its_phases()
    {
        var plain = Run(profile: false);
        var profiled = Run(profile: true);
        Assert.That(plain.Profile, Is.Null);
        Assert.That(profiled.Losses, Is.EqualTo(plain.Losses));
        Assert.That(profiled.Weights, Is.EqualTo(plain.Weights));

        var timings = profiled.Profile!;
        Assert.That(timings.Steps, Is.EqualTo(3), "the first of 4 steps is warm-up");
        Assert.That(timings.Workers, Has.Count.EqualTo(2));
        foreach (var worker in timings.Workers)
        {
            var kernels = worker.Kernels();
            // The model's linear layers run a GEMM forward and two backward per layer; AdamW runs on every held parameter.
            Assert.That(kernels.Single(k => k is { Kernel: "MatMul", Phase: StepPhase.Forward }).Calls, Is.GreaterThan(0));
            Assert.That(kernels.Single(k => k is { Kernel: "MatMul", Phase: StepPhase.Backward }).Calls,
                Is.GreaterThan(kernels.Single(k => k is { Kernel: "MatMul", Phase: StepPhase.Forward }).Calls));
            Assert.That(kernels.Where(k => k.Kernel == "AdamWStep").Select(k => k.Phase), Is.EqualTo(new[] { StepPhase.Optimizer }));
            Assert.That(kernels.Any(k => k.Phase == StepPhase.None), Is.False, "nothing outside a step is recorded");
            foreach (var phase in new[] { StepPhase.Forward, StepPhase.Backward, StepPhase.Sync, StepPhase.Optimizer })
            {
                var inKernels = TimeSpan.FromTicks(kernels.Where(k => k.Phase == phase).Sum(k => k.Time.Ticks));
                Assert.That(worker.PhaseTime(phase), Is.GreaterThan(TimeSpan.Zero), $"{phase}");
                Assert.That(inKernels, Is.LessThanOrEqualTo(worker.PhaseTime(phase)), $"{phase}: kernels are timed inside their phase");
            }
        }
        var report = timings.Report().ToList();
        Assert.That(report[0], Does.StartWith("profile: 3 steps after the warm-up step, 2 workers' times summed"));
        Assert.That(report, Has.Some.Match(@"^  backward +\d+\.\d\d +\d+\.\d\d"));
        Assert.That(report, Has.Some.Match(@"^  MatMul +backward "));
        Assert.That(report, Has.Some.StartsWith("  gc: gen0 "));
        Assert.That(report, Has.Some.StartsWith("  timing cost: "));
    }

    [Test]
    public void Profiling_refuses_a_device_it_cannot_time()
    {
        var e = Assert.Throws<ArgumentException>(() => new Trainer(LlamaModel(SubnetLevel.Neuron), Dp(1), AdamW, w => Tokens(w, 1), Options(2) with { Profile = true },
            devices: _ => new Sdp.Tests.Support.CountingBackend()));
        Assert.That(e!.Message, Does.Contain("profiling times CPU kernels, but worker 0 runs on counting-cpu"));
    }

    [Test]
    public void A_timed_kernel_call_costs_well_under_a_microsecond()
    {
        // What makes --profile cheap: a step of the tiny model makes ~600 calls of ~1 ms on average.
        Assert.That(ProfilingBackend.OverheadPerCall(), Is.LessThan(TimeSpan.FromMicroseconds(2)));
        Assert.That(new ProfilingBackend(new StepProfile()).ToString(), Is.EqualTo("cpu (profiled)"));
        Assert.That(new ProfilingBackend(new StepProfile()).Device, Is.EqualTo(CpuBackend.Instance.Device));
    }
}

[NonParallelizable]
public class ProfileCliTests : CliTestBase
{
    [Test]
    public void Train_with_profile_prints_the_phase_and_kernel_tables()
    {
        var r = Train("--profile");
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("profile: 2 steps after the warm-up step, one worker"));
        Assert.That(r.OutLines, Has.Some.Match(@"^  forward +\d+\.\d\d"));
        Assert.That(r.OutLines, Has.Some.Match(@"^  kernel +phase +ms/step +calls/step"));
    }

    [Test]
    public void Profile_on_a_gpu_is_refused_naming_the_option()
    {
        var r = Train("--profile --device cuda");
        Assert.That(r.ExitCode, Is.EqualTo(2), r.ToString());
        Assert.That(r.Err, Does.Contain("--profile times the CPU backend's kernels; --device cuda is not profiled"));
    }
}
