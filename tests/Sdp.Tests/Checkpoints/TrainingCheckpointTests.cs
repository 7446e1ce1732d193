using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Optim;
using Sdp.Models.Checkpoints;
using static Sdp.Tests.Checkpoints.CheckpointTest;

namespace Sdp.Tests.Checkpoints;

/// <summary>TrainingCheckpoint: a directory that resumes training bit-exactly, replaced atomically.</summary>
public class TrainingCheckpointTests
{
    private string _dir = "";

    [SetUp]
    public void Setup()
    {
        Tape.Current.Clear();
        _dir = NewScratchDirectory();
    }

    [TearDown]
    public void DeleteDirectory() => DeleteScratchDirectory(_dir);

    private static readonly WarmupCosineSchedule Schedule = new(0.02, 2, 6, 0.001);

    private const string Config = """{"inputs": 4, "hidden": 8, "outputs": 3}""";

    /// <summary>One step on a fresh random batch: 5·4 + 5·3 = 35 normals, an odd count, so the RNG's spare normal carries across steps.</summary>
    private static void TrainStep(TinyNet model, Optimizer opt, Rng data)
    {
        using (TensorScope.Begin())
        {
            var x = Tensor.Randn(new Shape(5, 4), data);
            var y = Tensor.Randn(new Shape(5, 3), data);
            var diff = model.Forward(x) - y;
            Ops.Mean(diff * diff).Backward();
        }
        opt.LearningRate = Schedule.LearningRate(opt.StepCount);
        opt.Step();
        opt.ZeroGrad();
    }

    private static TrainingState State(long step, Optimizer opt, Rng data) => new()
    {
        Step = step,
        LrSchedulePosition = opt.StepCount,
        RngStates = new Dictionary<string, ulong[]> { ["data"] = data.State, ["init"] = [ulong.MaxValue, 1UL << 63, 0, 42, 0, 0] },
        DataLoader = new JsonObject { ["epoch"] = 0, ["batch"] = step, ["order"] = new JsonArray(3, 1, 2) },
        Options = new JsonObject { ["lr"] = 0.02, ["model"] = "tiny", ["save"] = "ckpt" },
    };

    private static void AssertSameOptimizerState(Optimizer expected, Optimizer actual)
    {
        Assert.That(actual.StepCount, Is.EqualTo(expected.StepCount));
        Assert.That(actual.LearningRate, Is.EqualTo(expected.LearningRate));
        for (int i = 0; i < expected.Parameters.Count; i++)
        {
            Assert.That(actual.ParameterStepCount(i), Is.EqualTo(expected.ParameterStepCount(i)), $"parameter {i} step count");
            var e = expected.State(i);
            var a = actual.State(i);
            Assert.That(a.Keys, Is.EquivalentTo(e.Keys));
            foreach (var (name, t) in e) Assert.That(Bits(a[name]), Is.EqualTo(Bits(t)), $"parameter {i} {name}");
        }
    }

    [Test]
    public void Resume_continues_bit_exactly()
    {
        // Reference: 6 uninterrupted steps.
        using var model = new TinyNet(new Rng(11));
        using var opt = new AdamW(model.Parameters(), lr: 0.01, weightDecay: 0.1);
        var data = new Rng(99);
        for (int s = 0; s < 6; s++) TrainStep(model, opt, data);

        // 3 steps, save, throw everything away.
        string ckpt = Path.Combine(_dir, "ckpt");
        using (var first = new TinyNet(new Rng(11)))
        using (var firstOpt = new AdamW(first.Parameters(), lr: 0.01, weightDecay: 0.1))
        {
            var firstData = new Rng(99);
            for (int s = 0; s < 3; s++) TrainStep(first, firstOpt, firstData);
            TrainingCheckpoint.Save(ckpt, first, firstOpt, State(3, firstOpt, firstData), Config);
        }

        // Fresh objects (different initial weights), rebuilt from the checkpoint, then 3 more steps.
        var info = TrainingCheckpoint.ReadInfo(ckpt);
        Assert.That(info.ModelConfig, Is.EqualTo(Config));
        using var resumed = new TinyNet(new Rng(12345));
        using var resumedOpt = info.Optimizer.Create(resumed.Parameters());
        var loaded = TrainingCheckpoint.Load(ckpt, resumed, resumedOpt);
        Assert.That(loaded.State.Step, Is.EqualTo(3));
        Assert.That(loaded.State.LrSchedulePosition, Is.EqualTo(3));
        var resumedData = new Rng(0) { State = loaded.State.RngStates["data"] };
        for (int s = 3; s < 6; s++) TrainStep(resumed, resumedOpt, resumedData);

        foreach (var ((name, expected), (_, actual)) in ModuleCheckpoint.StateDict(model).Zip(ModuleCheckpoint.StateDict(resumed)))
        {
            Assert.That(Bits(actual), Is.EqualTo(Bits(expected)), name);
        }
        AssertSameOptimizerState(opt, resumedOpt);
        Assert.That(resumedData.State, Is.EqualTo(data.State));
        Assert.That(Directory.GetFileSystemEntries(_dir).Select(Path.GetFileName), Is.EqualTo(new[] { "ckpt" }), "no temporary directories are left");
    }

    [Test]
    public void Directory_holds_the_three_files_in_the_documented_layout()
    {
        using var model = new TinyNet(new Rng(1));
        using var opt = new AdamW(model.Parameters(), lr: 0.01, beta1: 0.8, beta2: 0.95, eps: 1e-6, weightDecay: 0.05);
        var data = new Rng(5);
        TrainStep(model, opt, data);
        string ckpt = Path.Combine(_dir, "nested", "ckpt") + Path.DirectorySeparatorChar;
        var state = State(1, opt, data);
        TrainingCheckpoint.Save(ckpt, model, opt, state, Config);

        string dir = Path.Combine(_dir, "nested", "ckpt");
        Assert.That(FileNames(dir), Is.EqualTo(new[] { "model.safetensors", "optimizer.safetensors", "state.json" }));
        using (var m = SafeTensorsFile.Read(Path.Combine(dir, "model.safetensors")))
        {
            Assert.That(m.Metadata["config"], Is.EqualTo(Config));
            Assert.That(m.Names, Is.EqualTo(ModuleCheckpoint.StateDict(model).Select(e => e.Name)));
        }
        using (var o = SafeTensorsFile.Read(Path.Combine(dir, "optimizer.safetensors")))
        {
            Assert.That(o.Metadata["optimizer"], Is.EqualTo("AdamW"));
            Assert.That(o.Names, Does.Contain("layers.0.weight.exp_avg").And.Contain("layers.0.weight.exp_avg_sq").And.Contain("gain.step"));
            Assert.That(o.Count, Is.EqualTo(3 * 5), "exp_avg, exp_avg_sq and step for each of the 5 parameters");
            var step = o.Info("layers.1.bias.step");
            Assert.That((step.DType, step.Shape.Rank), Is.EqualTo((SafeTensorsDType.I64, 0)));
            Assert.That(o.Load("layers.1.bias.step", DType.Int64).Item(), Is.EqualTo(1));
            int gain = opt.Parameters.ToList().IndexOf(model.Gain);
            Assert.That(Bits(o.Load("gain.exp_avg_sq")), Is.EqualTo(Bits(opt.State(gain)["exp_avg_sq"])));
        }

        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "state.json")))!.AsObject();
        Assert.That((string?)json["format"], Is.EqualTo("sdp.training_state"));
        Assert.That((int?)json["version"], Is.EqualTo(1));
        Assert.That((long?)json["step"], Is.EqualTo(1));
        Assert.That((long?)json["lr_schedule"]!["position"], Is.EqualTo(1));
        Assert.That((string?)json["optimizer"]!["kind"], Is.EqualTo("AdamW"));
        Assert.That((long?)json["optimizer"]!["step_count"], Is.EqualTo(1));
        Assert.That((double?)json["optimizer"]!["learning_rate"], Is.EqualTo(opt.LearningRate));
        Assert.That((double?)json["optimizer"]!["hyperparameters"]!["beta2"], Is.EqualTo(0.95));
        Assert.That(json["rng"]!["init"]!.AsArray().Select(n => (ulong)n!), Is.EqualTo(new ulong[] { ulong.MaxValue, 1UL << 63, 0, 42, 0, 0 }));
        Assert.That(JsonNode.DeepEquals(json["data_loader"], state.DataLoader), Is.True);
        Assert.That(JsonNode.DeepEquals(json["options"], state.Options), Is.True);

        var info = TrainingCheckpoint.ReadInfo(dir);
        Assert.That(info.Optimizer.Hyperparameters, Is.EquivalentTo(new Dictionary<string, double> { ["beta1"] = 0.8, ["beta2"] = 0.95, ["eps"] = 1e-6, ["weight_decay"] = 0.05 }));
        Assert.That(info.State.RngStates["data"], Is.EqualTo(data.State));
        Assert.That(JsonNode.DeepEquals(info.State.DataLoader, state.DataLoader), Is.True);
        Assert.That(info.State.DataLoader!.Parent, Is.Null, "returned objects are detached, ready to use");
    }

    [Test]
    public void Sgd_checkpoints_round_trip_their_settings_and_momentum()
    {
        using var model = new TinyNet(new Rng(1));
        using var opt = new Sgd(model.Parameters(), lr: 0.1, momentum: 0.9, nesterov: true, weightDecay: 1e-4);
        var data = new Rng(2);
        TrainStep(model, opt, data);
        string ckpt = Path.Combine(_dir, "sgd");
        TrainingCheckpoint.Save(ckpt, model, opt, State(1, opt, data));

        var info = TrainingCheckpoint.ReadInfo(ckpt);
        Assert.That(info.ModelConfig, Is.Null);
        using var model2 = new TinyNet(new Rng(3));
        using var opt2 = (Sgd)info.Optimizer.Create(model2.Parameters());
        Assert.That((opt2.Momentum, opt2.Dampening, opt2.Nesterov, opt2.WeightDecay), Is.EqualTo((0.9, 0.0, true, 1e-4)));
        TrainingCheckpoint.Load(ckpt, model2, opt2);
        AssertSameOptimizerState(opt, opt2);
    }

    [Test]
    public void Saving_again_replaces_the_directory_and_leaves_nothing_else()
    {
        using var model = new TinyNet(new Rng(1));
        using var opt = new AdamW(model.Parameters());
        var data = new Rng(2);
        string ckpt = Path.Combine(_dir, "ckpt");
        TrainingCheckpoint.Save(ckpt, model, opt, State(0, opt, data));
        File.WriteAllText(Path.Combine(ckpt, "stale.txt"), "from an older save");
        TrainStep(model, opt, data);
        TrainingCheckpoint.Save(ckpt, model, opt, State(1, opt, data));

        Assert.That(FileNames(ckpt), Is.EqualTo(new[] { "model.safetensors", "optimizer.safetensors", "state.json" }));
        Assert.That(TrainingCheckpoint.ReadInfo(ckpt).State.Step, Is.EqualTo(1));
        Assert.That(Directory.GetFileSystemEntries(_dir).Select(Path.GetFileName), Is.EqualTo(new[] { "ckpt" }));
    }

    [Test]
    public void A_failed_save_keeps_the_previous_checkpoint_intact()
    {
        using var model = new TinyNet(new Rng(1));
        using var opt = new AdamW(model.Parameters());
        var data = new Rng(2);
        string ckpt = Path.Combine(_dir, "ckpt");
        TrainingCheckpoint.Save(ckpt, model, opt, State(0, opt, data));
        var before = Directory.GetFiles(ckpt).Order().Select(File.ReadAllBytes).ToList();

        // The optimizer file fails after the model file was written into the temporary directory.
        using var stranger = new TinyNet(new Rng(3));
        using var strangerOpt = new AdamW(stranger.Parameters());
        var ex = Assert.Throws<ArgumentException>(() => TrainingCheckpoint.Save(ckpt, model, strangerOpt, State(5, strangerOpt, data)));
        Assert.That(ex!.Message, Does.Contain("optimizer parameter 0").And.Contain("is not a parameter of the model"));
        var bad = Assert.Throws<ArgumentException>(() => TrainingCheckpoint.Save(ckpt, model, opt, State(5, opt, data), "{not json"));
        Assert.That(bad!.Message, Does.Contain("model config is not valid JSON"));

        Assert.That(Directory.GetFiles(ckpt).Order().Select(File.ReadAllBytes), Is.EqualTo(before));
        Assert.That(Directory.GetFileSystemEntries(_dir).Select(Path.GetFileName), Is.EqualTo(new[] { "ckpt" }), "the temporary directory was removed");
    }

    [Test]
    public void Load_reports_mismatches_before_changing_anything()
    {
        using var model = new TinyNet(new Rng(1));
        using var opt = new AdamW(model.Parameters());
        var data = new Rng(2);
        TrainStep(model, opt, data);
        string ckpt = Path.Combine(_dir, "ckpt");
        TrainingCheckpoint.Save(ckpt, model, opt, State(1, opt, data));

        using var wider = new TinyNet(new Rng(3), hidden: 6);
        using var widerOpt = new AdamW(wider.Parameters());
        var shape = Assert.Throws<InvalidDataException>(() => TrainingCheckpoint.Load(ckpt, wider, widerOpt));
        Assert.That(shape!.Message, Does.Contain("layers.0.weight: checkpoint (8, 4) vs model (6, 4)").And.Contain("layers.1.weight: checkpoint (3, 8) vs model (3, 6)"));

        using var sgd = new Sgd(model.Parameters(), 0.1);
        var kind = Assert.Throws<InvalidDataException>(() => TrainingCheckpoint.Load(ckpt, model, sgd));
        Assert.That(kind!.Message, Does.Contain("holds AdamW state but the optimizer is Sgd"));

        // Tamper with the optimizer file: drop one moment, add a stray tensor.
        string optPath = Path.Combine(ckpt, TrainingCheckpoint.OptimizerFileName);
        using (var scope = TensorScope.Begin())
        {
            List<(string, Tensor)> kept;
            using (var o = SafeTensorsFile.Read(optPath))
            {
                kept = [.. o.Names.Where(n => n != "gain.exp_avg_sq").Select(n => (n, o.Load(n, o.Info(n).DType == SafeTensorsDType.I64 ? DType.Int64 : DType.Float32)))];
            }
            kept.Add(("stray.exp_avg", Tensor.Zeros(new Shape(1))));
            SafeTensorsFile.Write(optPath, kept);
        }
        using var fresh = new TinyNet(new Rng(4));
        using var freshOpt = new AdamW(fresh.Parameters());
        var untouched = ModuleCheckpoint.StateDict(fresh).Select(e => Bits(e.Tensor)).ToList();
        var tampered = Assert.Throws<InvalidDataException>(() => TrainingCheckpoint.Load(ckpt, fresh, freshOpt));
        Assert.That(tampered!.Message, Does.Contain("does not match the AdamW optimizer (2 problems)")
            .And.Contain("gain: incomplete AdamW state, missing exp_avg_sq")
            .And.Contain("unexpected in the checkpoint: stray.exp_avg"));
        Assert.That(ModuleCheckpoint.StateDict(fresh).Select(e => Bits(e.Tensor)), Is.EqualTo(untouched), "the model was not changed");
        Assert.That(freshOpt.StepCount, Is.Zero);
    }

    [Test]
    public void Missing_or_corrupt_checkpoints_fail_clearly()
    {
        string ckpt = Path.Combine(_dir, "ckpt");
        var missing = Assert.Throws<DirectoryNotFoundException>(() => TrainingCheckpoint.ReadInfo(ckpt));
        Assert.That(missing!.Message, Does.Contain($"'{ckpt}' does not exist"));

        Directory.CreateDirectory(ckpt + ".old-4242"); // what an interrupted save leaves behind
        var hint = Assert.Throws<DirectoryNotFoundException>(() => TrainingCheckpoint.ReadInfo(ckpt));
        Assert.That(hint!.Message, Does.Contain("ckpt.old-4242").And.Contain("interrupted save"));

        using var model = new TinyNet(new Rng(1));
        using var opt = new AdamW(model.Parameters());
        TrainingCheckpoint.Save(ckpt, model, opt, State(0, opt, new Rng(2)));
        string statePath = Path.Combine(ckpt, TrainingCheckpoint.StateFileName);
        File.WriteAllText(statePath, "{\"format\": \"sdp.training_state\", \"version\": 1, \"step\": \"three\"}");
        var corrupt = Assert.Throws<InvalidDataException>(() => TrainingCheckpoint.ReadInfo(ckpt));
        Assert.That(corrupt!.Message, Does.Contain($"training state '{statePath}'"));
        File.WriteAllText(statePath, "{\"format\": \"something else\", \"version\": 7}");
        var version = Assert.Throws<InvalidDataException>(() => TrainingCheckpoint.ReadInfo(ckpt));
        Assert.That(version!.Message, Does.Contain("'something else' version 7"));
        File.Delete(statePath);
        var gone = Assert.Throws<InvalidDataException>(() => TrainingCheckpoint.ReadInfo(ckpt));
        Assert.That(gone!.Message, Does.Contain("the file is missing"));
    }
}
