namespace Sdp.Engine.Backends;

public partial interface IBackend
{
    /// <summary>
    /// One fused torch.optim.SGD update of one parameter, in place. param, grad and momentumBuffer
    /// (when given) have the same shape and dtype. Per element, with d a temporary:
    /// <code>
    /// d = grad (+ weightDecay·param when weightDecay != 0)
    /// if momentumBuffer is given:
    ///     buf = firstStep ? d : momentum·buf + (1 - dampening)·d      (written back)
    ///     d   = nesterov ? d + momentum·buf : buf
    /// param = param - lr·d
    /// </code>
    /// grad is read only. momentumBuffer is null exactly when momentum == 0.
    /// </summary>
    void SgdStep(Tensor param, Tensor grad, Tensor? momentumBuffer, double lr, double momentum, double dampening, bool nesterov, double weightDecay, bool firstStep);

    /// <summary>
    /// One fused torch.optim.AdamW update of one parameter, in place; param, grad, m (exp_avg) and v
    /// (exp_avg_sq) have the same shape and dtype. <paramref name="step"/> is this parameter's step
    /// number, counting this one (1 on the first update), used for bias correction. Per element:
    /// <code>
    /// param = param·(1 - lr·weightDecay)
    /// m     = m + (1 - beta1)·(grad - m)          (lerp towards grad)
    /// v     = beta2·v + (1 - beta2)·grad²
    /// param = param - (lr / (1 - beta1^step)) · m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
    /// </code>
    /// which is param -= lr·m̂/(sqrt(v̂) + eps) with m̂, v̂ the bias-corrected moments. grad is read only.
    /// </summary>
    void AdamWStep(Tensor param, Tensor grad, Tensor m, Tensor v, double lr, double beta1, double beta2, double eps, double weightDecay, long step);
}
