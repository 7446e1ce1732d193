using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Data;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;
using Sdp.Tests.Cli;
using static Sdp.Tests.SdpTraining.SdpTestSupport;

namespace Sdp.Tests.Reliability;

/// <summary>
/// NaN and infinities injected into the data, the weights, the gradients or the loss of one worker (W = 1, and worker 2 of an
/// SDP run of W = 4) at step 2: under --on-nonfinite abort the run stops at that step with a record naming the first
/// non-finite tensors; under skip that step's update is skipped; either way every worker takes the same decision (their
/// optimizers have stepped equally often). Loss spikes are skipped as llm.c skips them.
/// </summary>
[NonParallelizable]
public sealed class NonFiniteTests
{
    public enum Poison
    {
        /// <summary>The batch's images are NaN.</summary>
        Data,

        /// <summary>One weight element becomes NaN after step 1 (and stays).</summary>
        Weight,

        /// <summary>The loss is unchanged, but one parameter's gradient is NaN (0·∞ through √0).</summary>
        Gradient,

        /// <summary>The loss is +∞ but every gradient stays finite: only the loss check catches it.</summary>
        InfiniteLoss,
    }

    private const int PoisonedStep = 2;
    private const int Steps = 3;

    private string _dir = "";

    [SetUp]
    public void Setup()
    {
        Tape.Current.Clear();
        _dir = Training.TrainingTestSupport.NewScratchDirectory();
    }

    [TearDown]
    public void TearDown()
    {
        Tape.Current.Clear();
        Training.TrainingTestSupport.DeleteScratchDirectory(_dir);
    }

    /// <summary>A worker's model whose loss, at one chosen step, also carries a NaN gradient into its first parameter, or is scaled.</summary>
    private sealed class Poisoned(ITrainable inner) : ITrainable
    {
        private int _calls;

        /// <summary>The training step (1-based) whose loss is poisoned, or 0.</summary>
        public int Step { get; set; }

        /// <summary>Null: a NaN gradient through √0; otherwise the loss is multiplied by this factor (a spike).</summary>
        public double? Scale { get; set; }

        /// <summary>Adds +∞ to the loss through a constant, so the gradients are untouched.</summary>
        public bool AddInfinity { get; set; }

        public string PoisonedParameter => inner.Module.NamedParameters().First().Name;

        public Engine.Nn.Module Module => inner.Module;

        public string ConfigJson => inner.ConfigJson;

        public string ItemUnit => inner.ItemUnit;

        public long ItemsIn(Tensor inputs) => inner.ItemsIn(inputs);

        public Tensor Loss(Tensor inputs, Tensor targets)
        {
            var loss = inner.Loss(inputs, targets);
            if (++_calls != Step) return loss;
            if (Scale is { } factor) return Ops.Scale(loss, factor);
            if (AddInfinity) return Ops.Add(loss, Tensor.FromArray([float.PositiveInfinity], loss.Shape, loss.Backend));
            var p = inner.Module.NamedParameters().First().Tensor;
            // Forward: + 0 (the loss is unchanged); backward: d√x/dx at 0 is infinite, times 0 is NaN.
            return Ops.Add(loss, Ops.Scale(Ops.Sum(Ops.Sqrt(Ops.Scale(p, 0))), 0));
        }

        public BatchEvaluation Evaluate(Tensor inputs, Tensor targets) => inner.Evaluate(inputs, targets);

        public void Dispose() => inner.Dispose();
    }

    /// <summary>Batches of a real source, the <paramref name="poisonedBatch"/>-th (1-based) with NaN images.</summary>
    private sealed class NaNImages(IBatchSource inner, int poisonedBatch) : IBatchSource
    {
        private int _batches;

        public DataLoaderState State { get => inner.State; set => inner.State = value; }

        public (Tensor Inputs, Tensor Targets) NextBatch()
        {
            var (inputs, targets) = inner.NextBatch();
            if (++_batches != poisonedBatch) return (inputs, targets);
            return (Tensor.FromArray(Enumerable.Repeat(float.NaN, (int)inputs.Numel).ToArray(), inputs.Shape, inputs.Backend), targets);
        }
    }

    private static SubnetworkModel Wrapped(SubnetworkModel model) => model.Wrapping(built => new Poisoned(built));

    private static void SetFirstElementToNaN(Tensor t)
    {
        var values = t.ToArray<float>();
        values[0] = float.NaN;
        using var nan = Tensor.FromArray(values, t.Shape, t.Backend);
        t.Backend.Copy(nan, t);
    }

    [Test]
    public void Injected_non_finite_values_abort_or_skip_alike_on_every_worker(
        [Values(1, 4)] int workers, [Values] Poison poison, [Values] NonFinitePolicy policy)
    {
        int target = workers == 1 ? 0 : 2;
        var sdp = workers == 1 ? Dp(1) : SdpRun(workers, SubnetLevel.Block, Masking.Forward, 0.5);
        string record = Path.Combine(_dir, "nonfinite.json");
        var options = Options(Steps) with { OnNonFinite = policy, DiagnosticsPath = record };
        IBatchSource Data(int w) => poison == Poison.Data && w == target ? new NaNImages(Images(w, workers), PoisonedStep) : Images(w, workers);
        using var trainer = new Trainer(Wrapped(ResNetModel(SubnetLevel.Block)), sdp, AdamW, Data, options);
        var poisoned = (Poisoned)trainer.WorkerModel(target);
        if (poison is Poison.Gradient or Poison.InfiniteLoss) poisoned.Step = PoisonedStep;
        poisoned.AddInfinity = poison == Poison.InfiniteLoss;
        string weight = poisoned.PoisonedParameter;
        var skipped = new List<string?>();
        trainer.StepCompleted += m =>
        {
            skipped.Add(m.Skipped);
            if (poison == Poison.Weight && m.Step == PoisonedStep - 1) SetFirstElementToNaN(trainer.WorkerModel(target).Module.NamedParameters().First().Tensor);
        };

        if (policy == NonFinitePolicy.Abort)
        {
            var e = Assert.Throws<NonFiniteException>(() => trainer.Run());
            Assert.That(e!.Step, Is.EqualTo(PoisonedStep));
            Assert.That(e.Message, Does.Contain($"step {PoisonedStep}").And.Contain(record).And.Not.Contain("\n"));
            Assert.That(trainer.Step, Is.EqualTo(PoisonedStep - 1));
            var json = JsonNode.Parse(File.ReadAllText(record))!;
            Assert.That(json["step"]!.GetValue<long>(), Is.EqualTo(PoisonedStep));
            if (poison == Poison.InfiniteLoss)
            {
                Assert.That(json["losses"]!.AsArray().Single(l => l!["worker"]!.GetValue<int>() == target)!["loss"]!.GetValue<string>(), Is.EqualTo("Infinity"));
                Assert.That(json["non_finite_tensors"]!.AsArray(), Is.Empty, "the data, weights and gradients are finite");
                Assert.That(e.Message, Does.Contain($"worker {target} loss Infinity"));
            }
            else
            {
                var first = json["non_finite_tensors"]!.AsArray()[0]!;
                string kind = poison switch { Poison.Data => "data", Poison.Weight => "weight", _ => "gradient" };
                Assert.That(first["kind"]!.GetValue<string>(), Is.EqualTo(kind), json.ToJsonString());
                if (poison is Poison.Data or Poison.Weight) Assert.That(first["worker"]!.GetValue<int>(), Is.EqualTo(target), json.ToJsonString());
                if (poison is Poison.Weight or Poison.Gradient) Assert.That(first["name"]!.GetValue<string>(), Is.EqualTo(weight), json.ToJsonString());
                if (poison == Poison.Gradient)
                    Assert.That(json["losses"]!.AsArray().Select(l => l!["loss"]!.GetValueKind()), Has.All.EqualTo(System.Text.Json.JsonValueKind.Number), "the loss stayed finite");
            }
        }
        else
        {
            trainer.Run();
            // A NaN weight stays: every step from the poisoned one on is skipped.
            int expectedSkips = poison == Poison.Weight ? Steps - PoisonedStep + 1 : 1;
            Assert.That(trainer.SkippedSteps, Is.EqualTo(expectedSkips));
            Assert.That(skipped[PoisonedStep - 1], Is.EqualTo("non-finite"));
            Assert.That(skipped[0], Is.Null);
            Assert.That(File.Exists(record), Is.False);
        }
        // The same decision everywhere: every worker's optimizer stepped exactly at the steps that were applied.
        long applied = policy == NonFinitePolicy.Abort ? PoisonedStep - 1 : Steps - trainer.SkippedSteps;
        for (int w = 0; w < workers; w++) Assert.That(trainer.WorkerOptimizer(w).StepCount, Is.EqualTo(applied), $"worker {w}");
    }

    [Test]
    public void A_loss_spike_on_one_worker_is_skipped_by_every_worker()
    {
        const int steps = 20, spike = 18;
        var options = Options(steps) with { SkipSpikes = 3, SpikeWindow = 16 };
        using var trainer = new Trainer(Wrapped(LlamaModel(SubnetLevel.Block)), SdpRun(4, SubnetLevel.Block, Masking.Forward, 0.5), AdamW, w => Tokens(w, 4), options);
        var poisoned = (Poisoned)trainer.WorkerModel(2);
        (poisoned.Step, poisoned.Scale) = (spike, 1000);
        var metrics = new List<StepMetrics>();
        trainer.StepCompleted += metrics.Add;
        trainer.Run();
        Assert.That(metrics.Where(m => m.Skipped is not null).Select(m => (m.Step, m.Skipped)), Is.EqualTo(new[] { ((long)spike, (string?)"spike") }));
        Assert.That(metrics[^1].SkippedSteps, Is.EqualTo(1));
        for (int w = 0; w < 4; w++) Assert.That(trainer.WorkerOptimizer(w).StepCount, Is.EqualTo(steps - 1), $"worker {w}");
    }

    /// <summary>The detector's window is part of the checkpoint: a run resumed before a spike skips it as the uninterrupted run does, to the bit.</summary>
    [Test]
    public void A_resumed_run_skips_the_same_spike_and_ends_with_the_same_weights()
    {
        const int steps = 20, spike = 18, split = 12;
        var options = Options(steps) with { SkipSpikes = 3, SpikeWindow = 16 };
        var sdp = SdpRun(4, SubnetLevel.Block, Masking.Forward, 0.5);
        Trainer Build(int poisonAtCall)
        {
            var t = new Trainer(Wrapped(LlamaModel(SubnetLevel.Block)), sdp, AdamW, w => Tokens(w, 4), options);
            ((Poisoned)t.WorkerModel(2)).Step = poisonAtCall;
            ((Poisoned)t.WorkerModel(2)).Scale = 1000;
            return t;
        }
        using var uninterrupted = Build(spike);
        uninterrupted.Run();
        string dir = Path.Combine(_dir, "state");
        using (var first = Build(0))
        {
            while (first.Step < split) first.TrainStep();
            first.Save(dir);
        }
        using var resumed = Build(spike - split);
        resumed.Resume(dir);
        var skipped = new List<long>();
        resumed.StepCompleted += m => { if (m.Skipped == "spike") skipped.Add(m.Step); };
        resumed.Run();
        Assert.That(skipped, Is.EqualTo(new long[] { spike }));
        Assert.That(StateBits(resumed.AssembleDense().Module), Is.EqualTo(StateBits(uninterrupted.AssembleDense().Module)));
    }

    [Test]
    public void The_spike_detector_scores_like_llm_c()
    {
        var detector = new LossSpikeDetector(4);
        Assert.That(detector.Update(1), Is.NaN);
        Assert.That(detector.Update(2), Is.NaN);
        Assert.That(detector.Update(3), Is.NaN);
        // Window 1, 2, 3, 4: mean 2.5, population variance 1.25.
        Assert.That(detector.Update(4), Is.EqualTo(1.5 / Math.Sqrt(1.25)).Within(1e-12));
        // Window 2, 3, 4, 2: the oldest value left.
        Assert.That(detector.Update(2), Is.EqualTo((2 - 2.75) / Math.Sqrt(0.6875)).Within(1e-12));
    }
}

/// <summary>`sdp train --on-nonfinite abort|skip` on a learning rate that blows the weights up after step 1.</summary>
[NonParallelizable]
public sealed class NonFiniteCliTests : CliTestBase
{
    private const string Exploding = "--lr 1e38 --clip 0 --schedule constant --warmup 0 --steps 3 --metrics m.jsonl";

    [Test]
    public void Abort_exits_3_with_one_line_and_a_record()
    {
        var r = Train($"{Exploding} --save ck --save-every 1");
        Assert.That(r.ExitCode, Is.EqualTo(3), r.ToString());
        Assert.That(r.ErrLines, Has.Length.EqualTo(1), r.ToString());
        Assert.That(r.Err, Does.Contain("step 2").And.Contain("model.embed_tokens.weight").And.Contain("m.nonfinite.json").And.Contain("ck (step 1) holds these weights"));
        var record = JsonNode.Parse(File.ReadAllText("m.nonfinite.json"))!;
        Assert.That(record["step"]!.GetValue<long>(), Is.EqualTo(2));
        Assert.That(record["last_checkpoint"]!["holds_these_weights"]!.GetValue<bool>(), Is.True);
        // The metrics up to the failure are kept.
        Assert.That(MetricsRecords("m.jsonl").Select(m => m["step"]!.GetValue<long>()), Is.EqualTo(new long[] { 1 }));
    }

    [Test]
    public void Skip_counts_the_skipped_steps_in_the_metrics()
    {
        var r = Train($"{Exploding} --on-nonfinite skip");
        Assert.That(r.ExitCode, Is.Zero, r.ToString());
        var steps = MetricsRecords("m.jsonl").Where(m => m["eval"] is null).ToList();
        Assert.That(steps.Select(m => m["skipped"]?.GetValue<string>()), Is.EqualTo(new[] { null, "non-finite", "non-finite" }));
        Assert.That(steps.Select(m => m["skipped_steps"]?.GetValue<long>()), Is.EqualTo(new long?[] { null, 1, 2 }));
        Assert.That(steps[1]["grad_norm"]!.GetValue<string>(), Is.EqualTo("NaN"));
    }
}
