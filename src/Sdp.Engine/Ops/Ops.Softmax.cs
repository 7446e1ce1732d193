using Sdp.Engine.Autograd;

namespace Sdp.Engine;

/// <summary>How <see cref="Ops.CrossEntropy"/> combines the per-row losses.</summary>
public enum CrossEntropyReduction
{
    /// <summary>Σ ℓ_n / (number of rows whose target is not the ignore index); 0 when every row is ignored.</summary>
    Mean,

    /// <summary>Σ ℓ_n over the rows whose target is not the ignore index.</summary>
    Sum,

    /// <summary>One loss per row, 0 for ignored rows.</summary>
    None,
}

public static partial class Ops
{
    /// <summary>Softmax over the last axis, numerically stable (the row max is subtracted). x (..., V) -> y (..., V).</summary>
    public static Tensor Softmax(Tensor x) => SoftmaxFamily("softmax", x, log: false);

    /// <summary>log(softmax(x)) over the last axis, computed as x - max - log Σ exp(x - max). x (..., V) -> y (..., V).</summary>
    public static Tensor LogSoftmax(Tensor x) => SoftmaxFamily("log_softmax", x, log: true);

    private static Tensor SoftmaxFamily(string op, Tensor x, bool log)
    {
        RequireFloat(op, x);
        if (x.Rank == 0) throw new ArgumentException($"{op}: needs at least one axis (the last is normalised), got the scalar {x.Describe()}");
        var y = EmptyLike(x);
        x.Backend.Softmax(x, y, log);
        return NeedsGrad(x) ? Record(new SoftmaxNode(y, x, log)) : y;
    }

    /// <summary>
    /// Fused log-softmax + negative log-likelihood: ℓ_n = logsumexp(logits[n, :]) - logits[n, t_n].
    /// logits (N, V) or (..., V) (leading dims flattened to N), targets int32/int64 with the leading
    /// shape (...) or (N) -> loss () for Mean and Sum, (...) for None.
    /// Rows whose target equals <paramref name="ignoreIndex"/> contribute no loss and no gradient; Mean
    /// divides by the number of other rows, and when every row is ignored the loss is 0 and all
    /// gradients are 0 (not NaN, unlike 0/0). Other targets must lie in [0, V).
    /// Only logits, targets and the per-row logsumexp (N) are kept for backward, never the softmax.
    /// <para>
    /// Hand check, logits [[0, 0, ln 2], [1, 1, 1]], targets [2, 0], Mean: row 0 has Σ exp = 1 + 1 + 2 = 4,
    /// so ℓ_0 = ln 4 - ln 2 = ln 2 ≈ 0.693147 and softmax (¼, ¼, ½); row 1 has lse = 1 + ln 3, so
    /// ℓ_1 = ln 3 ≈ 1.098612 and softmax (⅓, ⅓, ⅓). Loss = (ln 2 + ln 3) / 2 = ln 6 / 2 ≈ 0.895880;
    /// dlogits = (softmax - onehot) / 2 = [[⅛, ⅛, -¼], [-⅓, ⅙, ⅙]].
    /// </para>
    /// </summary>
    public static Tensor CrossEntropy(Tensor logits, Tensor targets, int ignoreIndex = -100, CrossEntropyReduction reduction = CrossEntropyReduction.Mean)
    {
        const string op = "cross_entropy";
        RequireFloat(op, logits);
        RequireIndex(op, targets);
        if (logits.Rank == 0 || logits.Shape[-1] == 0) throw new ArgumentException($"{op}: logits must be (N, V) or (..., V) with V >= 1, got {logits.Describe()}");
        if (targets.Device != logits.Device) throw new ArgumentException($"{op}: targets {targets.Describe()} are on {targets.Device} but logits {logits.Describe()} are on {logits.Device}");
        var lead = new Shape(logits.Shape.Dims[..^1]);
        if (targets.Shape != lead && !(targets.Rank == 1 && targets.Numel == lead.Numel))
            throw new ArgumentException($"{op}: targets {targets.Describe()} must have shape {lead} (or ({lead.Numel},)) to match logits {logits.Describe()}");
        if (!Enum.IsDefined(reduction)) throw new ArgumentOutOfRangeException(nameof(reduction), $"{op}: unknown reduction {reduction}");

        var loss = Empty(reduction == CrossEntropyReduction.None ? lead : Shape.Scalar, logits);
        using var lse = Empty(new Shape(checked((int)lead.Numel)), logits);
        try
        {
            logits.Backend.CrossEntropy(logits, targets, ignoreIndex, reduction, loss, lse);
        }
        catch (ArgumentOutOfRangeException e)
        {
            loss.Dispose();
            throw new ArgumentOutOfRangeException(nameof(targets), $"{op}: {e.Message} (logits {logits.Describe()})");
        }
        return NeedsGrad(logits) ? Record(new CrossEntropyNode(loss, logits, targets, lse, ignoreIndex, reduction)) : loss;
    }

    private sealed class SoftmaxNode : TapeNode
    {
        private readonly Tensor _y;
        private readonly bool _log;

        public SoftmaxNode(Tensor y, Tensor x, bool log) : base(y, x)
        {
            _y = Save(y);
            _log = log;
        }

        public override string OpName => _log ? "LogSoftmax" : "Softmax";

        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var dx = grads.For(Inputs[0]);
            dx?.Backend.SoftmaxBackward(_y, dy, dx, _log);
        }
    }

    private sealed class CrossEntropyNode : TapeNode
    {
        private readonly Tensor _logits;
        private readonly Tensor _targets;
        private readonly Tensor _lse;
        private readonly int _ignoreIndex;
        private readonly CrossEntropyReduction _reduction;

        public CrossEntropyNode(Tensor loss, Tensor logits, Tensor targets, Tensor lse, int ignoreIndex, CrossEntropyReduction reduction) : base(loss, logits)
        {
            _logits = Save(logits);
            _targets = Save(targets);
            _lse = Save(lse);
            _ignoreIndex = ignoreIndex;
            _reduction = reduction;
        }

        protected internal override void Backward(Tensor dloss, GradSink grads)
        {
            var dlogits = grads.For(Inputs[0]);
            dlogits?.Backend.CrossEntropyBackward(_logits, _targets, _ignoreIndex, _reduction, _lse, dloss, dlogits);
        }
    }
}
