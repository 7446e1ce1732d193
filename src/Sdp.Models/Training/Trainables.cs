using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Nn;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;

namespace Sdp.Models.Training;

/// <summary>A causal language model trained on next-token prediction; loss in nats per token.</summary>
public sealed class LlamaTrainable(LlamaForCausalLM model) : ITrainable
{
    public LlamaForCausalLM Model { get; } = model;

    public Module Module => Model;

    public string ConfigJson => Model.Config.ToJson();

    public string ItemUnit => "tokens";

    public long ItemsIn(Tensor inputs) => inputs.Numel;

    /// <summary>ids (B, T), targets (B, T) -> mean cross-entropy over B·T.</summary>
    public Tensor Loss(Tensor inputs, Tensor targets) => Model.Loss(inputs, targets);

    public BatchEvaluation Evaluate(Tensor inputs, Tensor targets)
    {
        using var _ = GradMode.Disable();
        using var loss = Model.Loss(inputs, targets);
        return new BatchEvaluation(loss.Item() * targets.Numel, targets.Numel, null);
    }

    public void Dispose() => Model.Dispose();
}

/// <summary>An image classifier; loss is mean cross-entropy, evaluation also counts correct top-1 predictions.</summary>
public sealed class ResNetTrainable(ResNet18 model) : ITrainable
{
    public ResNet18 Model { get; } = model;

    public Module Module => Model;

    public string ConfigJson => Model.Config.ToJson();

    public string ItemUnit => "images";

    public long ItemsIn(Tensor inputs) => inputs.Shape[0];

    /// <summary>x (N, C, H, W), labels (N) -> mean cross-entropy.</summary>
    public Tensor Loss(Tensor inputs, Tensor targets) => Model.Loss(inputs, targets);

    public BatchEvaluation Evaluate(Tensor inputs, Tensor targets)
    {
        using var _ = GradMode.Disable();
        using var logits = Model.Forward(inputs);
        using var loss = Ops.CrossEntropy(logits, targets);
        var values = logits.ToDoubles();
        var labels = targets.ToDoubles();
        int classes = logits.Shape[1];
        long correct = 0;
        for (int i = 0; i < labels.Length; i++)
        {
            var row = values.AsSpan(i * classes, classes);
            int best = 0;
            for (int c = 1; c < classes; c++)
            {
                if (row[c] > row[best]) best = c;
            }
            if (best == (int)labels[i]) correct++;
        }
        return new BatchEvaluation(loss.Item() * labels.Length, labels.Length, correct);
    }

    public void Dispose() => Model.Dispose();
}
