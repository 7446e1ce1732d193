using Sdp.Engine.Subnetworks;
using Sdp.Models.Training;
using static Sdp.Tests.SdpTraining.SdpTestSupport;

namespace Sdp.Tests.Distributed;

/// <summary>
/// A training run makes its communicator groups once, when the workers are built. Worker w holds
/// 1 + |{distinct holder sets S of the plan : w ∈ S, 2 ≤ |S| &lt; W}| groups: the world (shared buckets, the
/// norm's all-reduce, and backward masking's refresh, which broadcasts every unit to all workers) and one
/// per holder set of two to W−1 workers that contains w, shared by the gradient and BatchNorm-buffer syncs.
/// A set of one worker needs no communication, a set of all W is the world, and the refresh adds none.
/// </summary>
public class TrainingGroupsTests
{
    private static IEnumerable<TestCaseData> Runs()
    {
        foreach (var masking in new[] { Masking.Forward, Masking.Backward })
        {
            yield return new TestCaseData("llama", SdpRun(4, SubnetLevel.Neuron, masking, 0.5)).SetArgDisplayNames("llama", "neuron", masking.ToString(), "W=4");
            yield return new TestCaseData("resnet", SdpRun(4, SubnetLevel.Neuron, masking, 0.5)).SetArgDisplayNames("resnet", "neuron", masking.ToString(), "W=4");
        }
        yield return new TestCaseData("llama", SdpRun(3, SubnetLevel.Block, Masking.Forward, 2.0 / 3)).SetArgDisplayNames("llama", "block", "Forward", "W=3");
        yield return new TestCaseData("llama", Dp(2)).SetArgDisplayNames("llama", "dp", "W=2");
    }

    [TestCaseSource(nameof(Runs))]
    public void A_run_creates_the_world_and_one_group_per_holder_set_once(string model, SdpOptions sdp)
    {
        var level = sdp.Mode == ParallelMode.Sdp ? sdp.Level : SubnetLevel.Block;
        using var trainer = model == "llama"
            ? new Trainer(LlamaModel(level), sdp, AdamW, w => Tokens(w, sdp.Workers), Options(3))
            : new Trainer(ResNetModel(level), sdp, AdamW, w => Images(w, sdp.Workers), Options(3));
        int workers = sdp.Workers;
        trainer.TrainStep();
        var afterOne = Enumerable.Range(0, workers).Select(w => trainer.WorkerCommStats(w).GroupsCreated).ToArray();
        trainer.TrainStep();
        trainer.TrainStep();
        var plan = trainer.Plan;
        var sets = plan is null ? [] : Enumerable.Range(0, plan.Groups.Count)
            .SelectMany(g => Enumerable.Range(0, plan.Groups[g].UnitCount).Select(u => plan.HoldersOf(g, u)))
            .Where(s => s.Count > 1 && s.Count < workers).DistinctBy(s => string.Join(",", s)).ToList();
        for (int w = 0; w < workers; w++)
        {
            int expected = 1 + sets.Count(s => s.Contains(w));
            Assert.That(afterOne[w], Is.EqualTo(expected), $"worker {w} after 1 step");
            Assert.That(trainer.WorkerCommStats(w).GroupsCreated, Is.EqualTo(expected), $"worker {w} after 3 steps");
        }
        if (plan is not null) Assert.That(afterOne, Has.Some.GreaterThan(1), "the plan has holder sets smaller than the world");
    }
}
