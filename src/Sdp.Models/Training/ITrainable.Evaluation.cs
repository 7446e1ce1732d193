using Sdp.Engine;

namespace Sdp.Models.Training;

/// <summary>
/// A model whose evaluation goes through its logits, so several models' logits can be averaged before scoring
/// (the subnetwork ensemble, <see cref="EvalRule.Ensemble"/>). <c>Score(Logits(x), y)</c> is
/// <see cref="ITrainable.Evaluate"/>.
/// </summary>
public interface ILogitModel
{
    /// <summary>The model's logits, grad mode as the caller set it: images (N, C, H, W) -> (N, classes); ids (B, T) -> (B, T, V).</summary>
    Tensor Logits(Tensor inputs);

    /// <summary>Summed loss, count and (for classifiers) correct predictions of these logits against the targets.</summary>
    BatchEvaluation Score(Tensor logits, Tensor targets);
}

/// <summary>
/// A model whose block-level units are residual branches, y = shortcut(x) + s·branch(x), each with a factor s
/// (1 unless set): the stochastic-depth rules (<see cref="EvalRule.Scale"/>, <see cref="EvalRule.InverseScale"/>)
/// set it per unit. Unit names are the labels of the block group of the model's <c>MaskableUnits</c>
/// (layer1.0 for ResNet-18; model.layers.3, or model.layers.3.self_attn / .mlp with split sub-layers, for LLaMA).
/// </summary>
public interface IResidualBranches
{
    /// <summary>Sets the factor on unit <paramref name="unit"/>'s residual branch; a unit this subnetwork does not hold is ignored (it has no branch).</summary>
    void ScaleBranch(string unit, double factor);

    /// <summary>The factor on unit <paramref name="unit"/>'s residual branch.</summary>
    double BranchScale(string unit);
}
