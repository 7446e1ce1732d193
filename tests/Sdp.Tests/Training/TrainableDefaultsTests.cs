using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Memory;
using Sdp.Engine.Nn;
using Sdp.Engine.Optim;
using Sdp.Models.Data;
using Sdp.Models.Llama;
using Sdp.Models.Training;

namespace Sdp.Tests.Training;

/// <summary>A model the trainer drives needs only its module and its loss; the rest of <see cref="ITrainable"/> has defaults.</summary>
public class TrainableDefaultsTests
{
    [TearDown]
    public void ClearTape() => Tape.Current.Clear();

    /// <summary>Only the two required members: a linear regression on mean squared error.</summary>
    private sealed class Regression(Linear layer) : ITrainable
    {
        public Module Module => layer;

        public Tensor Loss(Tensor inputs, Tensor targets)
        {
            using var y = layer.Forward(inputs);
            using var error = Ops.Sub(y, targets);
            using var squared = Ops.Mul(error, error);
            return Ops.Mean(squared);
        }

        public void Dispose() => layer.Dispose();
    }

    /// <summary>Rows x ~ N(0, 1) of 3 features with targets x·(1, -2, 0.5).</summary>
    private sealed class Lines(ulong seed) : IBatchSource
    {
        private readonly Rng _rng = new(seed);

        public DataLoaderState State { get; set; } = DataLoaderState.Start;

        public (Tensor Inputs, Tensor Targets) NextBatch()
        {
            var x = Enumerable.Range(0, 8 * 3).Select(_ => (float)_rng.NextNormal()).ToArray();
            var y = Enumerable.Range(0, 8).Select(i => x[3 * i] - 2 * x[3 * i + 1] + 0.5f * x[3 * i + 2]).ToArray();
            return (Tensor.FromArray(x, new Shape(8, 3)), Tensor.FromArray(y, new Shape(8, 1)));
        }
    }

    [Test]
    public void A_model_with_only_a_module_and_a_loss_trains_and_evaluates_with_the_defaults()
    {
        ITrainable model = new Regression(new Linear(3, 1, bias: false, new Rng(1)));
        Assert.That(model.ConfigJson, Is.EqualTo("{}"), "a module without a configuration");
        Assert.That(model.ItemUnit, Is.EqualTo("samples"));
        using (var batch = Tensor.Zeros(new Shape(5, 3))) Assert.That(model.ItemsIn(batch), Is.EqualTo(5));

        var account = new MemoryAccount("defaults");
        using var optimizer = new AdamW(model.Module.Parameters(), 0.05);
        using var trainer = new Trainer(model, optimizer, new Lines(2), new TrainerOptions { Steps = 200, Schedule = new ConstantSchedule(0.05) }, account);
        var first = trainer.Evaluate(new Lines(3), 4);
        trainer.Run();
        var last = trainer.Evaluate(new Lines(3), 4);
        Assert.That(first.Count, Is.EqualTo(32), "4 batches of 8 targets");
        Assert.That(first.Accuracy, Is.Null, "no accuracy without class logits");
        Assert.That(last.MeanLoss, Is.LessThan(first.MeanLoss / 100), $"{first.MeanLoss} -> {last.MeanLoss}");
        model.Dispose();
    }

    [Test]
    public void A_classifier_from_a_module_and_its_forward_scores_top_one_accuracy()
    {
        // Logits that are the inputs themselves: the accuracy is that of argmax over each row.
        var identity = new Linear(3, 3, bias: false, new Rng(1));
        identity.Weight.Backend.Upload<float>([1, 0, 0, 0, 1, 0, 0, 0, 1], identity.Weight);
        using ITrainable classifier = new Classifier(identity, identity.Forward);
        using var x = Tensor.FromArray(new float[] { 3, 1, 0, 0, 2, 5, 1, 4, 2, 9, 0, 0 }, new Shape(4, 3));
        using var labels = Tensor.FromArray(new long[] { 0, 2, 0, 0 }, new Shape(4));
        var score = classifier.Evaluate(x, labels);
        Assert.That(score.Correct, Is.EqualTo(3), "rows 0, 1 and 3 pick their label; row 2 picks class 1");
        Assert.That(score.Count, Is.EqualTo(4));
        using var loss = Ops.CrossEntropy(x, labels);
        Assert.That(score.LossSum, Is.EqualTo(4 * loss.Item()).Within(1e-9));
    }

    [Test]
    public void The_built_in_models_take_their_configuration_from_the_module()
    {
        var config = new LlamaConfig(vocabSize: 16, hiddenSize: 8, intermediateSize: 8, numHiddenLayers: 1, numAttentionHeads: 2);
        using ITrainable llama = new LlamaTrainable(new LlamaForCausalLM(config, new Rng(0)));
        Assert.That(llama.ConfigJson, Is.EqualTo(config.ToJson()));
        Assert.That(llama.ItemUnit, Is.EqualTo("tokens"));
    }
}
