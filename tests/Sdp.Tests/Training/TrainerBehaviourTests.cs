using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Memory;
using Sdp.Engine.Nn;
using Sdp.Engine.Optim;
using Sdp.Engine;
using Sdp.Models.Checkpoints;
using Sdp.Models.Data;
using Sdp.Models.ResNet;
using Sdp.Models.Training;
using Sdp.Tests.Support;
using static Sdp.Tests.Training.TrainingTestSupport;

namespace Sdp.Tests.Training;

/// <summary>Trainer: when it evaluates and saves, what it reports per step, and what memory it leaves behind.</summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class TrainerBehaviourTests(IBackend backend) : DeviceFixture(backend)
{
    private static readonly MarkovChain Chain = new(vocab: 64, successors: 4, seed: 3);

    private string _dir = "";

    [SetUp]
    public void Setup()
    {
        Tape.Current.Clear();
        _dir = NewScratchDirectory();
    }

    [TearDown]
    public void TearDown() => DeleteScratchDirectory(_dir);

    private static TokenBatches TrainData() => new(new MarkovTokenSource(Chain, batch: 2, seq: 8, streamSeed: 1));

    private static TokenBatches EvalData() => new(new MarkovTokenSource(Chain, batch: 2, seq: 8, streamSeed: 2));

    // ---- events -----------------------------------------------------------------------------------------

    [TestCase(12, new long[] { 4, 8, 12 }, new long[] { 5, 10, 12 })]
    [TestCase(10, new long[] { 4, 8, 10 }, new long[] { 5, 10 })]
    [TestCase(3, new long[] { 3 }, new long[] { 3 })]
    public void Eval_and_save_fire_every_k_steps_and_once_at_the_end(int steps, long[] evalSteps, long[] saveSteps)
    {
        // EvalEvery 4, SaveEvery 5: periodically after those steps, and once more after the last step
        // (never twice for the same step when the last step is a multiple of K).
        string ckpt = Path.Combine(_dir, "ckpt");
        using var model = NewLlama(SmallLlama, 1);
        using var opt = new AdamW(model.Module.Parameters(), lr: 1e-3);
        using var trainer = new Trainer(model, opt, TrainData(), new TrainerOptions
        {
            Steps = steps, Schedule = new ConstantSchedule(1e-3), EvalEvery = 4, EvalBatches = 2, SavePath = ckpt, SaveEvery = 5,
        }, new MemoryAccount("events"), EvalData());
        var log = new List<string>();
        trainer.StepCompleted += m => log.Add($"step {m.Step}");
        trainer.Evaluated += e =>
        {
            Assert.That(e.Step, Is.EqualTo(trainer.Step));
            Assert.That(e.Count, Is.EqualTo(2 * 2 * 8), "EvalBatches batches of 2x8 tokens");
            Assert.That(e.Accuracy, Is.Null, "a language model reports no accuracy");
            log.Add($"eval {e.Step}");
        };
        trainer.Saved += path =>
        {
            Assert.That(path, Is.EqualTo(ckpt));
            Assert.That(SdpCheckpoint.ReadInfo(ckpt).Step, Is.EqualTo(trainer.Step), "the checkpoint is complete when Saved fires");
            log.Add($"save {trainer.Step}");
        };
        trainer.Run();

        var expected = new List<string>();
        for (long s = 1; s <= steps; s++)
        {
            expected.Add($"step {s}");
            if (s < steps && s % 4 == 0) expected.Add($"eval {s}");
            if (s < steps && s % 5 == 0) expected.Add($"save {s}");
        }
        expected.Add($"eval {steps}");
        expected.Add($"save {steps}");
        Assert.That(log, Is.EqualTo(expected));
        Assert.That(log.Where(l => l.StartsWith("eval", StringComparison.Ordinal)), Is.EqualTo(evalSteps.Select(s => $"eval {s}")));
        Assert.That(log.Where(l => l.StartsWith("save", StringComparison.Ordinal)), Is.EqualTo(saveSteps.Select(s => $"save {s}")));
        Assert.That(Directory.GetFileSystemEntries(_dir).Select(Path.GetFileName), Is.EqualTo(new[] { "ckpt" }), "saves replace the one directory");
    }

    [Test]
    public void Without_an_eval_source_or_save_path_nothing_is_evaluated_or_saved()
    {
        using var model = NewLlama(SmallLlama, 1);
        using var opt = new AdamW(model.Module.Parameters(), lr: 1e-3);
        using var trainer = new Trainer(model, opt, TrainData(), new TrainerOptions
        {
            Steps = 4, Schedule = new ConstantSchedule(1e-3), EvalEvery = 1, SaveEvery = 1,
        }, new MemoryAccount("quiet"));
        int evaluations = 0, saves = 0;
        trainer.Evaluated += _ => evaluations++;
        trainer.Saved += _ => saves++;
        trainer.Run();
        Assert.That((trainer.Step, evaluations, saves), Is.EqualTo((4L, 0, 0)));
    }

    [Test]
    public void A_safetensors_save_path_writes_the_weights_and_config_only()
    {
        string file = Path.Combine(_dir, "model.safetensors");
        using var model = NewLlama(SmallLlama, 1);
        using var opt = new AdamW(model.Module.Parameters(), lr: 1e-3);
        using var trainer = new Trainer(model, opt, TrainData(), new TrainerOptions { Steps = 2, Schedule = new ConstantSchedule(1e-3), SavePath = file },
            new MemoryAccount("weights"));
        trainer.Run();

        Assert.That(Directory.GetFileSystemEntries(_dir).Select(Path.GetFileName), Is.EqualTo(new[] { "model.safetensors" }));
        using (var st = SafeTensorsFile.Read(file))
        {
            Assert.That(st.Metadata[TrainingCheckpoint.ConfigMetadataKey], Is.EqualTo(((ITrainable)model).ConfigJson));
        }
        using var copy = NewLlama(SmallLlama, 2);
        ModuleCheckpoint.LoadInto(copy.Module, file);
        AssertSameModuleState(model, copy);
    }

    [Test]
    public void Periodic_evaluations_use_the_same_held_out_batches()
    {
        // With no training in between (learning rate 0 and no weight decay), every evaluation sees the same model,
        // so it must report the same loss: the held-out source is rewound before each evaluation.
        using var model = NewLlama(SmallLlama, 1);
        using var opt = new AdamW(model.Module.Parameters(), lr: 0, weightDecay: 0);
        using var trainer = new Trainer(model, opt, TrainData(), new TrainerOptions
        {
            Steps = 3, Schedule = new ConstantSchedule(0), EvalEvery = 1, EvalBatches = 2,
        }, new MemoryAccount("eval"), EvalData());
        var losses = new List<double>();
        trainer.Evaluated += e => losses.Add(e.MeanLoss);
        trainer.Run();
        Assert.That(losses, Has.Count.EqualTo(3));
        Assert.That(Bits(losses).Distinct().Count(), Is.EqualTo(1), $"evaluation losses {string.Join(", ", losses)}");
    }

    [Test]
    public void A_resumed_run_reports_the_evaluations_of_the_uninterrupted_run()
    {
        TrainerOptions Options(long steps) => new() { Steps = steps, Schedule = new WarmupCosineSchedule(5e-3, 2, 8, 5e-4), EvalEvery = 2, EvalBatches = 2 };
        var account = new MemoryAccount("resume-eval");

        using var reference = NewLlama(SmallLlama, 1);
        using var referenceOpt = new AdamW(reference.Module.Parameters(), lr: 5e-3);
        using var referenceTrainer = new Trainer(reference, referenceOpt, TrainData(), Options(8), account, EvalData());
        var expected = new List<(long, double)>();
        referenceTrainer.Evaluated += e => expected.Add((e.Step, e.MeanLoss));
        referenceTrainer.Run();

        string ckpt = Path.Combine(_dir, "ckpt");
        using (var first = NewLlama(SmallLlama, 1))
        using (var firstOpt = new AdamW(first.Module.Parameters(), lr: 5e-3))
        {
            using var firstTrainer = new Trainer(first, firstOpt, TrainData(), Options(5), account, EvalData());
            firstTrainer.Run();
            firstTrainer.Save(ckpt);
        }
        using var resumed = NewLlama(SmallLlama, 2);
        using var resumedOpt = SdpCheckpoint.ReadInfo(ckpt).Optimizer.Create(resumed.Module.Parameters());
        using var resumedTrainer = new Trainer(resumed, resumedOpt, TrainData(), Options(8), account, EvalData());
        resumedTrainer.Resume(ckpt);
        var actual = new List<(long, double)>();
        resumedTrainer.Evaluated += e => actual.Add((e.Step, e.MeanLoss));
        resumedTrainer.Run();

        Assert.That(expected.Select(e => e.Item1), Is.EqualTo(new long[] { 2, 4, 6, 8 }));
        Assert.That(actual, Is.EqualTo(expected.Skip(2)), "evaluations at steps 6 and 8, bit for bit");
    }

    [Test]
    public void Evaluate_leaves_the_weights_buffers_and_mode_unchanged_and_counts_accuracy()
    {
        var dataset = ShapesDataset.Create(20, seed: 1, size: 16);
        using var model = new ResNetTrainable(new ResNet18(new ResNetConfig(Width: 2), new Rng(1)));
        using var opt = new Sgd(model.Module.Parameters(), lr: 0.05, momentum: 0.9);
        using var trainer = new Trainer(model, opt, new ImageBatches(new ImageLoader(dataset, batch: 4, seed: 2)),
            new TrainerOptions { Steps = 2, Schedule = new ConstantSchedule(0.05) }, new MemoryAccount("resnet-eval"));
        trainer.Run();
        using var before = NewResNetCopy(model);

        var eval = trainer.Evaluate(new ImageBatches(new ImageLoader(dataset, batch: 5, shuffle: false)), 3);
        Assert.That(model.Module.IsTraining, Is.True, "training mode is restored");
        AssertSameModuleState(before, model);
        Assert.That((eval.Step, eval.Count), Is.EqualTo((2L, 15L)));
        Assert.That(eval.Accuracy, Is.Not.Null);
        Assert.That(eval.Accuracy!.Value * 15, Is.EqualTo(Math.Round(eval.Accuracy.Value * 15)).Within(1e-9), "accuracy is a fraction of the 15 images");
        Assert.That(eval.MeanLoss, Is.Positive.And.LessThan(10));

        model.Module.Eval();
        trainer.Evaluate(new ImageBatches(new ImageLoader(dataset, batch: 5, shuffle: false)), 1);
        Assert.That(model.Module.IsTraining, Is.False, "evaluation mode is kept too");
    }

    [Test]
    public void Batchnorm_recalibration_is_the_mean_of_the_batch_means_and_unbiased_variances()
    {
        // Training moves the running statistics away from the reset (mean 0, variance 1) with momentum 0.1; the
        // recalibration must leave nothing of them nor of the reset: the statistics evaluated with are exactly
        // the float64 average, over its 5 batches of 6 images, of each batch's per-channel mean and unbiased
        // variance. Afterwards the model, its momentum and the recalibration data are as they were.
        var dataset = ShapesDataset.Create(60, seed: 3, size: 8);
        IBatchSource Recalibration() => new ImageBatches(new ImageLoader(dataset, batch: 6, shuffle: true, ImageAugmentation.CropFlip, seed: 4));
        const int batches = 5;
        using var probe = new BatchNormProbe(3);
        using var opt = new Sgd(probe.Module.Parameters(), lr: 0.05);
        var recalibration = Recalibration();
        recalibration.NextBatch(); // recalibration reads on from where its data stands
        using var trainer = new Trainer(probe, opt, new ImageBatches(new ImageLoader(dataset, batch: 4, seed: 2)),
            new TrainerOptions { Steps = 3, Schedule = new ConstantSchedule(0.05), BnRecalibration = new BatchNormRecalibration(recalibration, batches) }, new MemoryAccount("bn-probe"));
        trainer.Run();
        var before = ModuleCheckpoint.StateDict(probe.Module).ToDictionary(e => e.Name, e => Bits(e.Tensor));
        var position = recalibration.State;

        trainer.Evaluate(new ImageBatches(new ImageLoader(dataset, batch: 10, shuffle: false)), 1);

        var reference = Recalibration();
        reference.NextBatch();
        var mean = new double[3];
        var variance = new double[3];
        for (int b = 0; b < batches; b++)
        {
            var (x, _) = reference.NextBatch();
            var values = x.ToArray<float>();
            int n = x.Shape[0], plane = x.Shape[2] * x.Shape[3], count = n * plane;
            for (int c = 0; c < 3; c++)
            {
                var channel = Enumerable.Range(0, n).SelectMany(i => values.Skip((i * 3 + c) * plane).Take(plane)).Select(v => (double)v).ToArray();
                double mu = channel.Average();
                mean[c] += mu / batches;
                variance[c] += channel.Sum(v => (v - mu) * (v - mu)) / (count - 1) / batches;
            }
        }
        var (evaluatedMean, evaluatedVariance, _) = probe.Evaluated.Single();
        Assert.That(evaluatedMean, Is.EqualTo(mean).Within(1e-6), "running mean");
        Assert.That(evaluatedVariance, Is.EqualTo(variance).Within(1e-6), "running variance");
        Assert.That(ModuleCheckpoint.StateDict(probe.Module).ToDictionary(e => e.Name, e => Bits(e.Tensor)), Is.EqualTo(before), "statistics and counter put back");
        Assert.That(probe.Norm.Momentum, Is.EqualTo(0.1), "momentum put back");
        Assert.That(recalibration.State, Is.EqualTo(position), "recalibration data put back");
    }

    [Test]
    public void Final_evaluation_reads_every_test_image_once_and_periodic_ones_the_same_sample()
    {
        // 23 one-pixel-per-id images (image i is all i) in evaluation batches of 5 kept to the end: 5 batches, the
        // last of 3. Periodic evaluations (steps 2 and 4) read the first EvalBatches = 2 batches; the final one
        // (step 5) reads FinalEvalBatches = one pass, every image exactly once.
        var ids = new ImageDataset("ids", [.. Enumerable.Range(0, 23).SelectMany(i => Enumerable.Repeat((byte)i, 4))], [.. Enumerable.Range(0, 23).Select(i => (byte)(i % 10))],
            1, 2, 2, 10, [0], [1 / 255.0]);
        var test = new ImageLoader(ids, batch: 5, shuffle: false, dropLast: false);
        using var probe = new BatchNormProbe(1);
        using var opt = new Sgd(probe.Module.Parameters(), lr: 0.05);
        using var trainer = new Trainer(probe, opt, new ImageBatches(new ImageLoader(ids, batch: 4, seed: 2)),
            new TrainerOptions { Steps = 5, Schedule = new ConstantSchedule(0.05), EvalEvery = 2, EvalBatches = 2, FinalEvalBatches = (int)test.BatchesPerEpoch },
            new MemoryAccount("eval-probe"), new ImageBatches(test));
        var evaluations = new List<EvalMetrics>();
        trainer.Evaluated += evaluations.Add;
        trainer.Run();

        Assert.That(evaluations.Select(e => (e.Step, e.Count)), Is.EqualTo(new[] { (2L, 10L), (4L, 10L), (5L, 23L) }));
        var images = probe.Evaluated.Select(e => e.Images).ToList();
        Assert.That(images, Has.Count.EqualTo(2 + 2 + 5), "batches evaluated");
        Assert.That(images.Take(2).SelectMany(i => i), Is.EqualTo(images.Skip(2).Take(2).SelectMany(i => i)).And.EqualTo(Enumerable.Range(0, 10)), "the same sample each time");
        Assert.That(images.Skip(4).SelectMany(i => i).Order(), Is.EqualTo(Enumerable.Range(0, 23)), "the whole split, each image once");
    }

    /// <summary>
    /// One BatchNorm2d on the raw images. Evaluating a batch records the running statistics it normalises with
    /// and the images' first values (an image id for sets whose image i is all i).
    /// </summary>
    private sealed class BatchNormProbe(int channels) : ITrainable
    {
        public BatchNorm2d Norm { get; } = new(channels);

        public List<(double[] Mean, double[] Variance, int[] Images)> Evaluated { get; } = [];

        public Module Module => Norm;

        public string ConfigJson => "{}";

        public string ItemUnit => "images";

        public long ItemsIn(Tensor inputs) => inputs.Shape[0];

        public Tensor Loss(Tensor inputs, Tensor targets) => Ops.Mean(Norm.Forward(inputs));

        public BatchEvaluation Evaluate(Tensor inputs, Tensor targets)
        {
            var values = inputs.ToArray<float>();
            int imageSize = values.Length / inputs.Shape[0];
            Evaluated.Add((Array.ConvertAll(Norm.RunningMean.ToArray<float>(), v => (double)v), Array.ConvertAll(Norm.RunningVar.ToArray<float>(), v => (double)v),
                [.. Enumerable.Range(0, inputs.Shape[0]).Select(i => (int)values[i * imageSize])]));
            return new BatchEvaluation(0, inputs.Shape[0], null);
        }

        public void Dispose() => Norm.Dispose();
    }

    private static ResNetTrainable NewResNetCopy(ResNetTrainable model)
    {
        var copy = new ResNetTrainable(new ResNet18(model.Model.Config, new Rng(99)));
        var source = ModuleCheckpoint.StateDict(model.Module).ToList();
        var target = ModuleCheckpoint.StateDict(copy.Module).ToList();
        for (int i = 0; i < source.Count; i++) target[i].Tensor.Backend.Copy(source[i].Tensor, target[i].Tensor);
        return copy;
    }

    // ---- per-step metrics -------------------------------------------------------------------------------

    [Test]
    public void Each_step_reports_the_scheduled_learning_rate_and_the_norm_before_clipping()
    {
        // The trainer against the documented loop written out by hand on a twin model: lr = schedule(step),
        // clip the global norm, step, zero the gradients. The twin also measures the norm itself, in double
        // precision, before and after clipping.
        const int steps = 8;
        const double clip = 0.25;
        var schedule = new WarmupCosineSchedule(1e-2, 3, steps, 1e-3);
        using var model = NewLlama(SmallLlama, 4);
        using var opt = new AdamW(model.Module.Parameters(), lr: 123, weightDecay: 0.1);
        using var trainer = new Trainer(model, opt, TrainData(), new TrainerOptions { Steps = steps, Schedule = schedule, Clip = clip }, new MemoryAccount("metrics"));
        var metrics = new List<StepMetrics>();
        trainer.StepCompleted += m =>
        {
            Assert.That(opt.LearningRate, Is.EqualTo(schedule.LearningRate(m.Step - 1)), "the optimizer's rate while the event fires");
            metrics.Add(m);
        };
        trainer.Run();

        using var twin = NewLlama(SmallLlama, 4);
        using var twinOpt = new AdamW(twin.Module.Parameters(), lr: 123, weightDecay: 0.1);
        var data = TrainData();
        var parameters = twin.Module.Parameters();
        for (int step = 0; step < steps; step++)
        {
            double loss;
            using (TensorScope.Begin())
            {
                var (x, y) = data.NextBatch();
                var l = twin.Loss(x, y);
                loss = l.Item();
                l.Backward();
            }
            double before = GlobalNorm(parameters);
            twinOpt.LearningRate = schedule.LearningRate(step);
            double reported = GradClip.ClipGlobalNorm(parameters, clip);
            double after = GlobalNorm(parameters);
            twinOpt.Step();
            twinOpt.ZeroGrad();

            var m = metrics[step];
            Assert.That(m.Step, Is.EqualTo(step + 1));
            Assert.That(m.Loss, Is.EqualTo(loss), $"loss of step {step + 1}");
            Assert.That(m.LearningRate, Is.EqualTo(schedule.LearningRate(step)), $"learning rate of step {step + 1}");
            Assert.That(m.GradNorm, Is.EqualTo(reported), $"grad norm of step {step + 1}");
            Assert.That(m.GradNorm, Is.EqualTo(before).Within(1e-9 * before), $"step {step + 1} reports the norm before clipping");
            Assert.That(before, Is.GreaterThan(clip), "clipping is active in this test");
            Assert.That(after, Is.EqualTo(clip).Within(1e-5), "the gradients the optimizer saw were clipped");
            Assert.That(m.ItemUnit, Is.EqualTo("tokens"));
            Assert.That(m.ItemsPerSecond, Is.Positive);
            Assert.That(m.StepMs, Is.Positive);
        }
        Assert.That(metrics.Select(m => m.LearningRate).Distinct().Count(), Is.EqualTo(steps), "the rate changes every step");
        AssertSameModuleState(twin, model);
    }

    [Test]
    public void Without_clipping_the_norm_is_still_reported_and_the_gradients_are_untouched()
    {
        using var model = NewLlama(SmallLlama, 4);
        using var opt = new Sgd(model.Module.Parameters(), lr: 0.1);
        using var trainer = new Trainer(model, opt, TrainData(), new TrainerOptions { Steps = 1, Schedule = new ConstantSchedule(0.1), Clip = 0 }, new MemoryAccount("noclip"));
        var m = trainer.TrainStep();

        using var twin = NewLlama(SmallLlama, 4);
        using var twinOpt = new Sgd(twin.Module.Parameters(), lr: 0.1);
        using (TensorScope.Begin())
        {
            var (x, y) = TrainData().NextBatch();
            twin.Loss(x, y).Backward();
        }
        double norm = GlobalNorm(twin.Module.Parameters());
        twinOpt.Step();
        twinOpt.ZeroGrad();
        Assert.That(m.GradNorm, Is.EqualTo(norm).Within(1e-9 * norm));
        AssertSameModuleState(twin, model);
    }

    /// <summary>sqrt(Σ g²) over every parameter's gradient, accumulated in double in a plain loop.</summary>
    private static double GlobalNorm(IEnumerable<Tensor> parameters)
    {
        double sum = 0;
        foreach (var p in parameters)
        {
            Assert.That(p.Grad, Is.Not.Null, $"{p.Name} has a gradient");
            foreach (var g in p.Grad!.ToDoubles()) sum += g * g;
        }
        return Math.Sqrt(sum);
    }

    // ---- memory -----------------------------------------------------------------------------------------

    [Test]
    public void After_a_run_the_account_holds_only_parameters_and_optimizer_state([Values("llama", "resnet")] string kind)
    {
        var account = new MemoryAccount(kind);
        ITrainable model;
        IBatchSource train, eval;
        using (account.Activate())
        {
            if (kind == "llama")
            {
                model = NewLlama(SmallLlama, 1);
                (train, eval) = (TrainData(), EvalData());
            }
            else
            {
                var dataset = ShapesDataset.Create(16, seed: 1, size: 16);
                model = new ResNetTrainable(new ResNet18(new ResNetConfig(Width: 2), new Rng(1)));
                (train, eval) = (new ImageBatches(new ImageLoader(dataset, batch: 4, augmentation: ImageAugmentation.CropFlip, seed: 1)), new ImageBatches(new ImageLoader(dataset, batch: 4, shuffle: false)));
            }
        }
        using (model)
        {
            long parameterBytes = model.Module.Parameters().Sum(p => p.ByteLength);
            long bufferBytes = model.Module.NamedBuffers().Sum(b => b.Tensor.ByteLength);
            Assert.That(account.CurrentBytes(MemoryCategory.Parameters), Is.EqualTo(parameterBytes + bufferBytes), "the model, built under the account");
            using var opt = new AdamW(model.Module.Parameters(), lr: 1e-3);
            using var trainer = new Trainer(model, opt, train, new TrainerOptions
            {
                Steps = 4, Schedule = new ConstantSchedule(1e-3), Clip = 1.0, EvalEvery = 2, EvalBatches = 2, SavePath = Path.Combine(_dir, "ckpt"), SaveEvery = 2,
            }, account, eval);
            var perStep = new List<MemorySnapshot>();
            trainer.StepCompleted += m => perStep.Add(m.Workers.Single().Memory);
            trainer.Run();

            Assert.Multiple(() =>
            {
                Assert.That(account.CurrentBytes(MemoryCategory.Parameters), Is.EqualTo(parameterBytes + bufferBytes), "parameters and buffers");
                Assert.That(account.CurrentBytes(MemoryCategory.OptimizerState), Is.EqualTo(2 * parameterBytes), "AdamW's two moments");
                Assert.That(account.CurrentBytes(MemoryCategory.Gradients), Is.Zero, "gradients are dropped by ZeroGrad");
                Assert.That(account.CurrentBytes(MemoryCategory.Activations), Is.Zero, "activations");
                Assert.That(account.CurrentBytes(MemoryCategory.Workspace), Is.Zero, "workspace");
                Assert.That(account.CurrentBytes(MemoryCategory.EngineBuffers), Is.EqualTo(sizeof(double)), "the gradient norm's float64 scalar, kept between steps (one worker: no sync staging)");
                Assert.That(account.CurrentTotal, Is.EqualTo(3 * parameterBytes + bufferBytes + sizeof(double)));
                Assert.That(account.PeakBytes(MemoryCategory.Activations), Is.Positive, "backward needed saved activations");
                Assert.That(account.PeakBytes(MemoryCategory.Gradients), Is.EqualTo(parameterBytes), "one gradient per parameter at the peak");
                Assert.That(account.PeakBytes(MemoryCategory.Workspace), Is.Positive);
                Assert.That(Tape.Current.Count, Is.Zero, "the tape is empty");
            });
            Assert.That(perStep, Has.Count.EqualTo(4));
            foreach (var s in perStep)
            {
                Assert.That(s.CurrentBytes(MemoryCategory.Gradients), Is.Zero, "no gradients are held when a step is reported");
                Assert.That(s.CurrentBytes(MemoryCategory.Activations) + s.CurrentBytes(MemoryCategory.Workspace), Is.Zero, "nothing transient outlives a step");
                Assert.That(s.PeakBytes(MemoryCategory.Activations), Is.Positive);
            }
        }
        Assert.That(account.CurrentBytes(MemoryCategory.Parameters), Is.Zero, "disposing the model frees its parameters and buffers");
    }

    // ---- non-finite gradients ---------------------------------------------------------------------------

    /// <summary>Scales the wrapped model's loss by a constant, to make every gradient non-finite on demand.</summary>
    private sealed class ScaledLoss(ITrainable inner, double factor) : ITrainable
    {
        public Sdp.Engine.Nn.Module Module => inner.Module;

        public string ConfigJson => inner.ConfigJson;

        public string ItemUnit => inner.ItemUnit;

        public long ItemsIn(Tensor inputs) => inner.ItemsIn(inputs);

        public Tensor Loss(Tensor inputs, Tensor targets) => Sdp.Engine.Ops.Scale(inner.Loss(inputs, targets), factor);

        public BatchEvaluation Evaluate(Tensor inputs, Tensor targets) => inner.Evaluate(inputs, targets);

        public void Dispose() => inner.Dispose();
    }

    [Test]
    public void A_non_finite_gradient_skips_the_update_and_is_reported()
    {
        using var model = new ScaledLoss(NewLlama(SmallLlama, 1), double.NaN);
        using var opt = new AdamW(model.Module.Parameters(), lr: 1e-2);
        var before = model.Module.Parameters().Select(Bits).ToList();
        var options = new TrainerOptions { Steps = 2, Schedule = new ConstantSchedule(1e-2), Clip = 1, OnNonFinite = NonFinitePolicy.Skip };
        using var trainer = new Trainer(model, opt, TrainData(), options, new MemoryAccount("nan"));
        var norms = new List<double>();
        trainer.StepCompleted += m => norms.Add(m.GradNorm);
        trainer.Run();
        Assert.That(norms, Has.Count.EqualTo(2).And.All.NaN);
        Assert.That(trainer.Step, Is.EqualTo(2));
        Assert.That(opt.StepCount, Is.Zero, "no optimizer update was applied");
        var after = model.Module.Parameters().Select(Bits).ToList();
        for (int i = 0; i < before.Count; i++) Assert.That(after[i], Is.EqualTo(before[i]), $"parameter {i} changed");
    }
}
