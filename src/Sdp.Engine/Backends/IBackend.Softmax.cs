namespace Sdp.Engine.Backends;

public partial interface IBackend
{
    /// <summary>
    /// Row-wise softmax over the last axis, numerically stable (the row max is subtracted first):
    /// y = exp(x - max) / Σ exp(x - max), or for <paramref name="log"/> y = x - max - log Σ exp(x - max).
    /// x (rows, V) -> y (rows, V); float32/float64. y may not alias x.
    /// </summary>
    void Softmax(Tensor x, Tensor y, bool log);

    /// <summary>
    /// From the saved forward output y: softmax dx += y ⊙ (dy - Σ_v dy·y); log-softmax
    /// dx += dy - exp(y) · Σ_v dy. y, dy, dx (rows, V).
    /// </summary>
    void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx, bool log);

    /// <summary>
    /// Fused softmax cross-entropy forward. logits (N, V) (any leading dims, flattened), targets (N)
    /// int32/int64. Writes lse[n] = log Σ_v exp(logits[n, v]) (N) and, per
    /// <paramref name="reduction"/>, loss: None (N) ℓ_n = lse[n] - logits[n, t_n], and 0 where
    /// t_n == ignoreIndex; Sum () Σ ℓ_n; Mean () Σ ℓ_n / count with count the number of non-ignored
    /// rows (0 when every row is ignored). Reductions run in row order (deterministic).
    /// A target outside [0, V) that is not ignoreIndex throws <see cref="ArgumentOutOfRangeException"/>
    /// (no parameter name) naming the row and value, before anything is written.
    /// </summary>
    void CrossEntropy(Tensor logits, Tensor targets, int ignoreIndex, CrossEntropyReduction reduction, Tensor loss, Tensor lse);

    /// <summary>
    /// dlogits[n, v] += (exp(logits[n, v] - lse[n]) - [v == t_n]) · g_n, with g_n = dloss[n] (None),
    /// dloss (Sum) or dloss / count (Mean); rows with t_n == ignoreIndex get nothing. Recomputes the
    /// softmax from the saved logits and lse instead of storing it.
    /// </summary>
    void CrossEntropyBackward(Tensor logits, Tensor targets, int ignoreIndex, CrossEntropyReduction reduction, Tensor lse, Tensor dloss, Tensor dlogits);
}
