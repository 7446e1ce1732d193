using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Checkpoints;
using Sdp.Models.Training;
using Sdp.Tests.Support;
using static Sdp.Tests.SdpTraining.SdpTestSupport;

namespace Sdp.Tests.SdpTraining;

/// <summary>Multi-worker training-state checkpoints: a resumed run continues bit for bit.</summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class SdpResumeTests(IBackend backend) : DeviceFixture(backend)
{
    private string _dir = "";

    [SetUp]
    public void MakeDirectory() => _dir = Training.TrainingTestSupport.NewScratchDirectory();

    [TearDown]
    public void Clean()
    {
        Tape.Current.Clear();
        Training.TrainingTestSupport.DeleteScratchDirectory(_dir);
    }

    private static Trainer NewTrainer(SdpOptions sdp, SubnetLevel level)
        => new(LlamaModel(level), sdp, AdamW, w => Tokens(w, sdp.Workers), Options(4));

    private static IEnumerable<TestCaseData> Runs()
    {
        yield return new TestCaseData(SdpRun(4, SubnetLevel.Neuron, Masking.Forward, 0.5), SubnetLevel.Neuron).SetArgDisplayNames("neuron forward");
        yield return new TestCaseData(SdpRun(4, SubnetLevel.Neuron, Masking.Backward, 0.5), SubnetLevel.Neuron).SetArgDisplayNames("neuron backward");
        yield return new TestCaseData(SdpRun(4, SubnetLevel.Block, Masking.Backward, 0.5), SubnetLevel.Block).SetArgDisplayNames("block backward");
        yield return new TestCaseData(Dp(2), SubnetLevel.Block).SetArgDisplayNames("dp");
    }

    [TestCaseSource(nameof(Runs))]
    public void Two_plus_two_steps_through_a_checkpoint_equal_four_steps(SdpOptions sdp, SubnetLevel level)
    {
        using var straight = NewTrainer(sdp, level);
        for (int s = 0; s < 4; s++) straight.TrainStep();

        string dir = Path.Combine(_dir, "state");
        using (var first = NewTrainer(sdp, level))
        {
            first.TrainStep();
            first.TrainStep();
            first.Save(dir);
        }
        Assert.That(Directory.GetFileSystemEntries(_dir).Select(Path.GetFileName), Is.EquivalentTo(new[] { "state" }), "no temporary directories left");
        using var resumed = NewTrainer(sdp, level);
        resumed.Resume(dir);
        Assert.That(resumed.Step, Is.EqualTo(2));
        resumed.TrainStep();
        resumed.TrainStep();
        Assert.That(StateBits(resumed.AssembleDense().Module), Is.EqualTo(StateBits(straight.AssembleDense().Module)));
        for (int w = 0; w < sdp.Workers; w++)
            Training.TrainingTestSupport.AssertSameOptimizerState(straight.WorkerOptimizer(w), resumed.WorkerOptimizer(w));
    }

    [Test]
    public void A_checkpoint_of_another_run_is_refused_naming_both()
    {
        string dir = Path.Combine(_dir, "state");
        using (var first = NewTrainer(SdpRun(4, SubnetLevel.Block, Masking.Forward, 0.5), SubnetLevel.Block))
        {
            first.TrainStep();
            first.Save(dir);
        }
        using var other = NewTrainer(SdpRun(4, SubnetLevel.Block, Masking.Forward, 0.75), SubnetLevel.Block);
        var e = Assert.Throws<ArgumentException>(() => other.Resume(dir));
        Assert.That(e!.Message, Does.Contain("Coverage = 0.5").And.Contain("Coverage = 0.75"));
        File.Delete(Path.Combine(dir, SdpCheckpoint.StateFileName));
        Assert.That(() => other.Resume(dir), Throws.InstanceOf<InvalidDataException>().With.Message.Contains(SdpCheckpoint.StateFileName));
    }

    [Test]
    public void A_single_worker_state_of_an_earlier_version_resumes_only_into_one_dp_worker()
    {
        // The single-worker format of earlier versions: one training checkpoint at the top, no sdp.json.
        string dir = Path.Combine(_dir, "single");
        using (var first = NewTrainer(Dp(1), SubnetLevel.Block))
        {
            first.TrainStep();
            var model = first.WorkerModel(0);
            TrainingCheckpoint.Save(dir, model.Module, first.WorkerOptimizer(0), new TrainingState { Step = 1, LrSchedulePosition = 1 }, model.ConfigJson);
        }
        foreach (var run in new[] { Dp(2), SdpRun(4, SubnetLevel.Block, Masking.Forward, 0.5) })
        {
            using var other = NewTrainer(run, SubnetLevel.Block);
            var e = Assert.Throws<ArgumentException>(() => other.Resume(dir));
            Assert.That(e!.Message, Does.Contain("is a single-worker training state from an earlier Sdp version").And.Contain($"Workers = {run.Workers}"));
            Assert.That(other.Step, Is.Zero);
        }
        using var single = NewTrainer(Dp(1), SubnetLevel.Block);
        single.Resume(dir);
        Assert.That(single.Step, Is.EqualTo(1));
        Assert.That(SdpCheckpoint.ReadInfo(dir).Run, Is.EqualTo(SdpCheckpoint.RunDescription.Dp(1)));
    }
}
