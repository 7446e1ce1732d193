using Sdp.Engine;
using Sdp.Engine.Nn;
using Sdp.Models.Data;

namespace Sdp.Models.Training;

/// <summary>A model the trainer can drive: its parameters, its loss on a batch, and how it is described.</summary>
public interface ITrainable : IDisposable
{
    Module Module { get; }

    /// <summary>The configuration JSON stored in checkpoints (a Hugging Face config.json for LLaMA).</summary>
    string ConfigJson { get; }

    /// <summary>"tokens" or "images": what throughput is counted in.</summary>
    string ItemUnit { get; }

    /// <summary>Items (tokens or images) in a batch with these inputs.</summary>
    long ItemsIn(Tensor inputs);

    /// <summary>Mean loss over the batch, recorded on the tape.</summary>
    Tensor Loss(Tensor inputs, Tensor targets);

    /// <summary>Summed loss, count and (for classifiers) correct predictions, with grad mode off.</summary>
    BatchEvaluation Evaluate(Tensor inputs, Tensor targets);
}

/// <summary>One batch's contribution to an evaluation: mean loss = LossSum / Count.</summary>
public readonly record struct BatchEvaluation(double LossSum, long Count, long? Correct);

/// <summary>A stream of (inputs, targets) batches whose position can be saved and restored.</summary>
public interface IBatchSource
{
    (Tensor Inputs, Tensor Targets) NextBatch();

    DataLoaderState State { get; set; }
}
