using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Nn;
using Sdp.Models.Data;

namespace Sdp.Models.Training;

/// <summary>
/// A model the trainer can drive: its parameters (<see cref="Module"/>) and its loss on a batch. The rest has
/// defaults: the configuration comes from the module when it has one (<see cref="IModuleConfig"/>), items are
/// counted as batch rows ("samples"), and evaluation scores the logits of an <see cref="ILogitModel"/> (mean
/// loss, and accuracy for a classifier) or else sums the loss. <see cref="Classifier"/> makes one from a module and its forward.
/// </summary>
public interface ITrainable : IDisposable
{
    Module Module { get; }

    /// <summary>Mean loss over the batch, recorded on the tape.</summary>
    Tensor Loss(Tensor inputs, Tensor targets);

    /// <summary>The configuration JSON stored in checkpoints: the module's own (<see cref="IModuleConfig"/>; a Hugging Face config.json for LLaMA), else "{}".</summary>
    string ConfigJson => Module is IModuleConfig configured ? configured.ConfigJson : "{}";

    /// <summary>What throughput is counted in: "tokens", "images", or by default "samples" (batch rows).</summary>
    string ItemUnit => "samples";

    /// <summary>Items in a batch with these inputs: by default its rows (the first dimension).</summary>
    long ItemsIn(Tensor inputs) => inputs.Rank == 0 ? 1 : inputs.Shape[0];

    /// <summary>
    /// Summed loss, count and (for classifiers) correct predictions, with grad mode off: by default the
    /// <see cref="ILogitModel"/>'s score of its logits, else the mean loss times the number of targets.
    /// </summary>
    BatchEvaluation Evaluate(Tensor inputs, Tensor targets)
    {
        using var noGrad = GradMode.Disable();
        if (this is ILogitModel scored)
        {
            using var logits = scored.Logits(inputs);
            return scored.Score(logits, targets);
        }
        using var loss = Loss(inputs, targets);
        return new BatchEvaluation(loss.Item() * targets.Numel, targets.Numel, null);
    }
}

/// <summary>A module that carries its configuration as JSON (stored in checkpoints beside its weights).</summary>
public interface IModuleConfig
{
    string ConfigJson { get; }
}

/// <summary>One batch's contribution to an evaluation: mean loss = LossSum / Count.</summary>
public readonly record struct BatchEvaluation(double LossSum, long Count, long? Correct);

/// <summary>A stream of (inputs, targets) batches whose position can be saved and restored.</summary>
public interface IBatchSource
{
    (Tensor Inputs, Tensor Targets) NextBatch();

    DataLoaderState State { get; set; }
}
