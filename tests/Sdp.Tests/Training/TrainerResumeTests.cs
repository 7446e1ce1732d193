using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Engine;
using Sdp.Models.Checkpoints;
using Sdp.Models.Data;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Training;
using Sdp.Tests.Support;
using System.Text.Json.Nodes;
using static Sdp.Tests.Training.TrainingTestSupport;

namespace Sdp.Tests.Training;

/// <summary>
/// Trainer.Save(directory) + Trainer.Resume for one worker: 10 steps, save, rebuild everything from the checkpoint
/// (model from its stored config with other initial weights, optimizer from its stored settings, a new
/// data source), 10 more steps; the result equals 20 uninterrupted steps bit for bit: losses, every
/// parameter and buffer, every optimizer state tensor and the data position.
/// </summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class TrainerResumeTests(IBackend backend) : DeviceFixture(backend)
{
    private const int TotalSteps = 20;
    private const int SplitStep = 10;

    private string _dir = "";
    private readonly List<IDisposable> _owned = [];

    [SetUp]
    public void Setup()
    {
        Tape.Current.Clear();
        _dir = NewScratchDirectory();
    }

    [TearDown]
    public void TearDown()
    {
        foreach (var d in _owned) d.Dispose();
        _owned.Clear();
        DeleteScratchDirectory(_dir);
    }

    /// <summary>How to build one run: a model from a seed, a model from a stored config, an optimizer and a data source.</summary>
    private sealed record Recipe(
        Func<ulong, ITrainable> NewModel,
        Func<string, ulong, ITrainable> ModelFromConfig,
        Func<ITrainable, Optimizer> NewOptimizer,
        Func<IBatchSource> NewData,
        ILrSchedule Schedule,
        double Clip);

    [Test]
    public void Llama_on_the_markov_source_resumes_bit_exactly()
    {
        var chain = new MarkovChain(vocab: 64, successors: 4, seed: 5);
        AssertResumesBitExactly(LlamaRecipe(() => new TokenBatches(new MarkovTokenSource(chain, batch: 4, seq: 16, streamSeed: 17))));
    }

    /// <summary>
    /// Earlier Sdp versions saved a single-worker run as one training checkpoint at the top of the directory
    /// (state.json with the data position as epoch/shard/batch, model.safetensors with the config,
    /// optimizer.safetensors; no sdp.json). A one-worker run continues it bit for bit.
    /// </summary>
    [Test]
    public void A_single_worker_state_of_an_earlier_version_resumes_bit_exactly()
    {
        var chain = new MarkovChain(vocab: 64, successors: 4, seed: 5);
        AssertResumesBitExactly(LlamaRecipe(() => new TokenBatches(new MarkovTokenSource(chain, batch: 4, seq: 16, streamSeed: 17))), earlierFormat: true);
    }

    [Test]
    public void Llama_on_shuffled_token_shards_resumes_bit_exactly_across_shards_and_epochs()
    {
        // Two shards of a Markov stream; batches are 4 rows of 16 tokens. Shard 0: (449-1)/16 = 28 rows = 7 batches;
        // shard 1: (357-1)/16 = 22 rows = 5 batches and 2 rows left over (which rows those are changes per epoch).
        // An epoch is 12 batches, so the run crosses into epoch 1 at step 12 and the split (step 10) falls mid-epoch.
        string data = Path.Combine(_dir, "data");
        Directory.CreateDirectory(data);
        var chain = new MarkovChain(vocab: 64, successors: 4, seed: 6);
        chain.WriteShard(Path.Combine(data, "train_000.bin"), 449, streamSeed: 1);
        chain.WriteShard(Path.Combine(data, "train_001.bin"), 357, streamSeed: 2);
        string glob = Path.Combine(data, "train_*.bin");
        using (var probe = new TokenLoader(glob, batch: 4, seq: 16, shuffle: true, seed: 9))
        {
            Assert.That(probe.BatchesPerEpoch, Is.EqualTo(12));
        }

        IBatchSource NewData()
        {
            var loader = new TokenLoader(glob, batch: 4, seq: 16, shuffle: true, seed: 9);
            _owned.Add(loader);
            return new TokenBatches(loader);
        }

        var (expected, _) = AssertResumesBitExactly(LlamaRecipe(NewData));
        Assert.That(expected.State, Is.EqualTo(new DataLoaderState(1, 1, 3)).Or.EqualTo(new DataLoaderState(1, 1, 1)),
            "20 batches = one 12-batch epoch, then the first shard of epoch 1 (7 or 5 batches) and part of the second");
    }

    [Test]
    public void Resnet_with_batchnorm_and_augmentation_resumes_bit_exactly()
    {
        // 40 images, batch 8: 5 batches per epoch, so 20 steps are 4 shuffled, augmented epochs; BatchNorm running
        // statistics (buffers) and SGD momentum buffers must come back exactly.
        var dataset = ShapesDataset.Create(40, seed: 3, size: 16);
        var recipe = new Recipe(
            seed => new ResNetTrainable(new ResNet18(new ResNetConfig(Width: 3), new Rng(seed))),
            (json, seed) => new ResNetTrainable(new ResNet18(ResNetConfig.FromJson(json), new Rng(seed))),
            m => new Sgd(m.Module.Parameters(), lr: 0.05, momentum: 0.9, weightDecay: 5e-4),
            () => new ImageBatches(new ImageLoader(dataset, batch: 8, shuffle: true, augmentation: ImageAugmentation.CropFlip, seed: 11)),
            new WarmupCosineSchedule(0.05, 3, TotalSteps, 0.005),
            Clip: 2.0);
        var (expected, reference) = AssertResumesBitExactly(recipe);
        Assert.That(expected.State, Is.EqualTo(new DataLoaderState(4, 0, 0)));
        var bn = ((ResNetTrainable)reference).Model.Bn1;
        Assert.That(bn.NumBatchesTracked.ToArray<long>(), Is.EqualTo(new long[] { TotalSteps }), "BatchNorm counted every training batch");
    }

    private static Recipe LlamaRecipe(Func<IBatchSource> newData) => new(
        seed => NewLlama(SmallLlama, seed),
        (json, seed) => NewLlama(LlamaConfig.FromJson(json), seed),
        m => new AdamW(m.Module.Parameters(), lr: 1e-2, beta1: 0.9, beta2: 0.95, weightDecay: 0.1),
        newData,
        new WarmupCosineSchedule(1e-2, 4, TotalSteps, 1e-3),
        Clip: 0.5);

    /// <summary>
    /// Runs the three phases and compares; returns the reference run's data source and model for extra checks.
    /// <paramref name="earlierFormat"/>: the interrupted run is saved as earlier Sdp versions saved single-worker runs.
    /// </summary>
    private (IBatchSource ReferenceData, ITrainable ReferenceModel) AssertResumesBitExactly(Recipe recipe, bool earlierFormat = false)
    {
        var account = new MemoryAccount("resume");
        TrainerOptions Options(long steps) => new() { Steps = steps, Schedule = recipe.Schedule, Clip = recipe.Clip };

        // Reference: 20 uninterrupted steps.
        var reference = Own(recipe.NewModel(1));
        var referenceOpt = Own(recipe.NewOptimizer(reference));
        var referenceData = recipe.NewData();
        using var referenceTrainer = new Trainer(reference, referenceOpt, referenceData, Options(TotalSteps), account);
        var expectedLosses = Record(referenceTrainer);
        referenceTrainer.Run();
        Assert.That(expectedLosses, Has.Count.EqualTo(TotalSteps));
        Assert.That(expectedLosses, Has.All.Matches<double>(double.IsFinite));

        // Interrupted: 10 steps from the same seed, save the full training state, drop everything.
        string ckpt = Path.Combine(_dir, "ckpt");
        List<double> firstLosses;
        using (var first = recipe.NewModel(1))
        using (var firstOpt = recipe.NewOptimizer(first))
        {
            var firstData = recipe.NewData();
            using var firstTrainer = new Trainer(first, firstOpt, firstData, Options(SplitStep), account);
            firstLosses = Record(firstTrainer);
            firstTrainer.Run();
            if (earlierFormat) SaveAsEarlierVersion(ckpt, first, firstOpt, firstData.State);
            else firstTrainer.Save(ckpt);
        }
        Assert.That(SdpCheckpoint.IsSingleWorkerState(ckpt), Is.EqualTo(earlierFormat));
        Assert.That(Bits(firstLosses), Is.EqualTo(Bits(expectedLosses.Take(SplitStep))), "two runs from the same seed agree");

        // Resumed: a model rebuilt from the stored config with other initial weights, the optimizer rebuilt from the stored settings.
        var info = SdpCheckpoint.ReadInfo(ckpt);
        Assert.That(info.Step, Is.EqualTo(SplitStep));
        Assert.That(info.Run, Is.EqualTo(SdpCheckpoint.RunDescription.Dp(1)));
        Assert.That(info.ModelConfig, Is.EqualTo(reference.ConfigJson));
        var resumed = Own(recipe.ModelFromConfig(info.ModelConfig!, 2));
        var resumedOpt = Own(info.Optimizer.Create(resumed.Module.Parameters()));
        var resumedData = recipe.NewData();
        using var resumedTrainer = new Trainer(resumed, resumedOpt, resumedData, Options(TotalSteps), account);
        var before = Bits(resumed.Module.Parameters()[0]);
        resumedTrainer.Resume(ckpt);
        Assert.That(Bits(resumed.Module.Parameters()[0]), Is.Not.EqualTo(before), "the fresh model started from other weights");
        Assert.That(resumedTrainer.Step, Is.EqualTo(SplitStep));
        var resumedLosses = Record(resumedTrainer);
        resumedTrainer.Run();

        Assert.That(Bits(resumedLosses), Is.EqualTo(Bits(expectedLosses.Skip(SplitStep))), "losses of steps 11..20");
        Assert.That(resumedTrainer.Step, Is.EqualTo(TotalSteps));
        AssertSameModuleState(reference, resumed);
        AssertSameOptimizerState(referenceOpt, resumedOpt);
        Assert.That(resumedData.State, Is.EqualTo(referenceData.State), "data position");
        TestContext.Out.WriteLine($"losses {string.Join(", ", expectedLosses.Select(l => l.ToString("F4")))}");
        return (referenceData, reference);
    }

    /// <summary>What the single-worker trainer of earlier Sdp versions wrote for a directory save path.</summary>
    private static void SaveAsEarlierVersion(string directory, ITrainable model, Optimizer optimizer, DataLoaderState data)
    {
        var state = new TrainingState
        {
            Step = SplitStep,
            LrSchedulePosition = SplitStep,
            DataLoader = new JsonObject { ["epoch"] = data.Epoch, ["shard"] = data.Shard, ["batch"] = data.Batch },
            Options = new JsonObject { ["steps"] = SplitStep },
        };
        TrainingCheckpoint.Save(directory, model.Module, optimizer, state, model.ConfigJson);
        Assert.That(File.Exists(Path.Combine(directory, SdpCheckpoint.StateFileName)), Is.False);
    }

    private static List<double> Record(Trainer trainer)
    {
        var losses = new List<double>();
        long expectedStep = trainer.Step;
        trainer.StepCompleted += m =>
        {
            Assert.That(m.Step, Is.EqualTo(++expectedStep));
            losses.Add(m.Loss);
        };
        return losses;
    }

    private T Own<T>(T disposable) where T : IDisposable
    {
        _owned.Add(disposable);
        return disposable;
    }
}
