using Sdp.Engine.Subnetworks;

namespace Sdp.Models.Training;

/// <summary>
/// How an SDP run's model is evaluated (method reference §10 items 3 and 7, a reconstruction [I]). Under
/// block-level forward masking each worker trains with about a fraction C of the residual branches, so the
/// dense model assembled from the holders, in which every branch adds to the residual stream, is not the
/// function any worker trained; these rules correct for that. Flags combine (<c>scale+recalibrate</c>);
/// <see cref="EvaluationRules.Check"/> says which combinations make sense.
/// </summary>
[Flags]
public enum EvalRule
{
    /// <summary>The assembled dense model as it is (its BatchNorm statistics the holder-averaged ones).</summary>
    Dense = 0,

    /// <summary>(a) Stochastic depth's test-time rule: in the assembled model, unit u's residual branch × p_u = holders(u) / W.</summary>
    Scale = 1,

    /// <summary>(b) Inverted stochastic depth: a worker holding unit u multiplies its branch by 1 / p_u in training; the assembled model is unscaled.</summary>
    InverseScale = 2,

    /// <summary>(c) BatchNorm statistics re-estimated on training batches before evaluating (<see cref="BatchNormRecalibration"/>).</summary>
    Recalibrate = 4,

    /// <summary>(d) The mean of the W subnetworks' logits on the same batches, instead of the assembled model.</summary>
    Ensemble = 8,
}

/// <summary>Names, defaults and admissible uses of <see cref="EvalRule"/>.</summary>
public static class EvaluationRules
{
    private static readonly (EvalRule Rule, string Name)[] Names =
    [
        (EvalRule.Scale, "scale"), (EvalRule.InverseScale, "inverse-scale"), (EvalRule.Recalibrate, "recalibrate"), (EvalRule.Ensemble, "ensemble"),
    ];

    /// <summary>The command-line names: dense, or parts joined by '+'.</summary>
    public static IReadOnlyList<string> PartNames { get; } = ["dense", .. Names.Select(n => n.Name)];

    /// <summary>
    /// The rule for block-level forward masking when none is chosen: the residual branches scaled by their
    /// coverage, and BatchNorm recalibrated when recalibration data is given (docs/results/evaluation.md has
    /// the comparison behind the choice). Every other variant evaluates the assembled model as it is.
    /// </summary>
    public const EvalRule BlockForwardDefault = EvalRule.Scale | EvalRule.Recalibrate;

    /// <summary>
    /// The rule of a run that names none: <see cref="BlockForwardDefault"/> for block-level forward-masked SDP
    /// (without recalibration when the model has no BatchNorm, without scaling when its block units are not
    /// residual branches it can scale, as in a program's own model without <see cref="IResidualBranches"/>),
    /// else <see cref="EvalRule.Dense"/>.
    /// </summary>
    public static EvalRule DefaultFor(ParallelMode mode, SubnetLevel level, Masking masking, bool hasBatchNorm, bool residualBranches = true)
    {
        if (mode != ParallelMode.Sdp || level != SubnetLevel.Block || masking != Masking.Forward) return EvalRule.Dense;
        var rule = hasBatchNorm ? BlockForwardDefault : BlockForwardDefault & ~EvalRule.Recalibrate;
        return residualBranches ? rule : rule & ~EvalRule.Scale;
    }

    /// <summary>"dense", or the parts joined by '+' (scale+recalibrate).</summary>
    public static string Name(EvalRule rule)
        => rule == EvalRule.Dense ? "dense" : string.Join('+', Names.Where(n => rule.HasFlag(n.Rule)).Select(n => n.Name));

    /// <summary>Parses "dense" or parts joined by '+'; throws <see cref="FormatException"/> naming the bad part or the clash.</summary>
    public static EvalRule Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var parts = text.Split('+', StringSplitOptions.TrimEntries);
        if (parts is ["dense"]) return EvalRule.Dense;
        var rule = EvalRule.Dense;
        foreach (var part in parts)
        {
            var match = Names.Where(n => n.Name == part).Select(n => (EvalRule?)n.Rule).FirstOrDefault()
                ?? throw new FormatException($"'{part}' is not a rule; use dense, or one or more of {string.Join(", ", Names.Select(n => n.Name))} joined by '+'");
            if (rule.HasFlag(match)) throw new FormatException($"'{part}' is named twice in '{text}'");
            rule |= match;
        }
        if (rule.HasFlag(EvalRule.Scale) && rule.HasFlag(EvalRule.InverseScale))
            throw new FormatException("scale and inverse-scale are two ways of the same correction (at test time, or in training); choose one");
        if (rule.HasFlag(EvalRule.Scale) && rule.HasFlag(EvalRule.Ensemble))
            throw new FormatException("scale applies to the assembled dense model, which ensemble does not evaluate; choose one");
        return rule;
    }

    /// <summary>
    /// Why <paramref name="rule"/> cannot evaluate this run, or null when it can. <paramref name="residualBranches"/>:
    /// the model's block units are residual branches it can scale (<see cref="IResidualBranches"/>);
    /// <paramref name="logits"/>: it exposes logits (<see cref="ILogitModel"/>); <paramref name="multiProcess"/>:
    /// one worker per process (<see cref="JobRank"/>).
    /// </summary>
    public static string? Check(EvalRule rule, ParallelMode mode, SubnetLevel level, Masking masking, bool hasBatchNorm, bool residualBranches, bool logits, bool multiProcess)
    {
        string name = Name(rule);
        bool scales = rule.HasFlag(EvalRule.Scale) || rule.HasFlag(EvalRule.InverseScale);
        if ((scales || rule.HasFlag(EvalRule.Ensemble)) && mode != ParallelMode.Sdp)
            return $"{name} needs --mode sdp: in DP every worker trains the whole model, so there is no dropped branch to correct and no subnetwork to ensemble";
        if (scales && level != SubnetLevel.Block)
            return $"{name} scales residual branches, the units of block level; at neuron level use --neuron-scale inverse-coverage";
        if ((scales || rule.HasFlag(EvalRule.Ensemble)) && masking != Masking.Forward)
            return $"{name} needs --masking forward: under backward masking every worker runs the dense forward, so no branch is dropped and every worker's model is the dense model";
        if (scales && !residualBranches) return $"{name} needs a model whose block units are residual branches (resnet18, llama)";
        if (rule.HasFlag(EvalRule.Ensemble) && !logits) return $"{name} needs a model that exposes its logits (resnet18, llama)";
        if (rule.HasFlag(EvalRule.Ensemble) && multiProcess)
            return $"{name} needs every worker's subnetwork in one process, but under --launcher mpi each process holds only its own; use the in-process workers (--launcher none) or another rule";
        if (rule.HasFlag(EvalRule.Recalibrate) && !hasBatchNorm) return $"{name} re-estimates BatchNorm statistics, and the model has no BatchNorm";
        return null;
    }
}
