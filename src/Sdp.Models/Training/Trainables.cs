using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Nn;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;

namespace Sdp.Models.Training;

/// <summary>A causal language model trained on next-token prediction; loss in nats per token.</summary>
public sealed class LlamaTrainable(LlamaForCausalLM model) : ITrainable, ILogitModel, IResidualBranches
{
    public LlamaForCausalLM Model { get; } = model;

    public Module Module => Model;

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

    /// <summary>ids (B, T) -> logits (B, T, V).</summary>
    public Tensor Logits(Tensor inputs) => Model.Forward(inputs);

    /// <summary>logits (B, T, V), targets (B, T) -> summed next-token cross-entropy over B·T, as <see cref="Evaluate"/> counts it.</summary>
    public BatchEvaluation Score(Tensor logits, Tensor targets)
    {
        using var _ = GradMode.Disable();
        using var loss = Ops.CrossEntropy(logits, targets, ignoreIndex: -100);
        return new BatchEvaluation(loss.Item() * targets.Numel, targets.Numel, null);
    }

    /// <summary>Unit model.layers.{l} scales both of layer l's branches; model.layers.{l}.self_attn or .mlp (split sub-layers) one of them.</summary>
    public void ScaleBranch(string unit, double factor)
    {
        var (layer, attention, mlp) = Branches(unit);
        if (layer is null) return;
        if (attention && layer.HasAttention) layer.AttentionBranchScale = factor;
        if (mlp && layer.HasMlp) layer.MlpBranchScale = factor;
    }

    public double BranchScale(string unit)
    {
        var (layer, attention, _) = Branches(unit);
        if (layer is null) return 1.0;
        return attention && layer.HasAttention ? layer.AttentionBranchScale : layer.MlpBranchScale;
    }

    /// <summary>The layer of a block unit (null when this subnetwork lacks it) and which of its branches the unit covers.</summary>
    private (LlamaDecoderLayer? Layer, bool Attention, bool Mlp) Branches(string unit)
    {
        ArgumentNullException.ThrowIfNull(unit);
        const string prefix = "model.layers.";
        var rest = unit.StartsWith(prefix, StringComparison.Ordinal) ? unit[prefix.Length..] : throw UnknownUnit(unit);
        int dot = rest.IndexOf('.');
        string index = dot < 0 ? rest : rest[..dot], part = dot < 0 ? "" : rest[(dot + 1)..];
        if (!int.TryParse(index, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int l) || l >= Model.Config.NumHiddenLayers
            || part is not ("" or "self_attn" or "mlp"))
            throw UnknownUnit(unit);
        var layer = Model.Layers[l];
        return (layer.IsDropped ? null : layer, part is "" or "self_attn", part is "" or "mlp");
    }

    private static ArgumentException UnknownUnit(string unit)
        => new($"LlamaTrainable: '{unit}' is not a block unit (model.layers.{{l}}, or model.layers.{{l}}.self_attn / .mlp)", nameof(unit));

    public void Dispose() => Model.Dispose();
}

/// <summary>An image classifier; loss is mean cross-entropy, evaluation also counts correct top-1 predictions.</summary>
public sealed class ResNetTrainable(ResNet18 model) : ITrainable, ILogitModel, IResidualBranches
{
    public ResNet18 Model { get; } = model;

    public Module Module => Model;

    public string ItemUnit => "images";

    /// <summary>x (N, C, H, W), labels (N) -> mean cross-entropy.</summary>
    public Tensor Loss(Tensor inputs, Tensor targets) => Model.Loss(inputs, targets);

    /// <summary>x (N, C, H, W) -> logits (N, classes).</summary>
    public Tensor Logits(Tensor inputs) => Model.Forward(inputs);

    /// <summary>logits (N, classes), labels (N) -> summed cross-entropy and correct top-1 predictions.</summary>
    public BatchEvaluation Score(Tensor logits, Tensor targets) => Classifier.TopOne(logits, targets);

    /// <summary>Unit layer{s}.{i}: BasicBlock i of stage s; a block whose branch this subnetwork lacks is left alone.</summary>
    public void ScaleBranch(string unit, double factor)
    {
        var block = Block(unit);
        if (block.HasBranch) block.BranchScale = factor;
    }

    public double BranchScale(string unit) => Block(unit).BranchScale;

    private BasicBlock Block(string unit)
    {
        ArgumentNullException.ThrowIfNull(unit);
        for (int b = 0; b < Model.Blocks.Count; b++)
        {
            if (unit == $"layer{b / 2 + 1}.{b % 2}") return Model.Blocks[b];
        }
        throw new ArgumentException($"ResNetTrainable: '{unit}' is not a block unit (layer1.0 ... layer4.1)", nameof(unit));
    }

    public void Dispose() => Model.Dispose();
}

/// <summary>
/// Any module that maps inputs (N, ...) to class logits (N, classes), or to logits for every position (N, ..., classes)
/// as a language model does, trained on mean cross-entropy against class ids (N) or (N, ...); evaluation adds top-1
/// accuracy. Owns the module. For a user's own model:
/// <c>new Classifier(net, net.Forward)</c>.
/// </summary>
public sealed class Classifier(Module module, Func<Tensor, Tensor> logits) : ITrainable, ILogitModel
{
    public Module Module { get; } = module ?? throw new ArgumentNullException(nameof(module));

    /// <summary>inputs (N, ...), class ids (N) or (N, ...) -> mean cross-entropy.</summary>
    public Tensor Loss(Tensor inputs, Tensor targets)
    {
        using var z = Logits(inputs);
        return Ops.CrossEntropy(z, targets);
    }

    /// <summary>inputs (N, ...) -> logits (N, classes) or (N, ..., classes).</summary>
    public Tensor Logits(Tensor inputs) => logits(inputs);

    public BatchEvaluation Score(Tensor logits, Tensor targets) => TopOne(logits, targets);

    /// <summary>logits (..., classes), class ids (...) -> summed cross-entropy and correct top-1 predictions (ties to the lowest class).</summary>
    public static BatchEvaluation TopOne(Tensor logits, Tensor targets)
    {
        using var _ = GradMode.Disable();
        using var loss = Ops.CrossEntropy(logits, targets);
        var values = logits.ToDoubles();
        var labels = targets.ToDoubles();
        int classes = logits.Shape[-1];
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

    public void Dispose() => Module.Dispose();
}
