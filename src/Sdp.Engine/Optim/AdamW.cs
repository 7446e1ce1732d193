namespace Sdp.Engine.Optim;

/// <summary>
/// Adam with decoupled weight decay, with the exact semantics of torch.optim.AdamW (amsgrad = false,
/// maximize = false). Per parameter, with g its gradient and t the number of updates this parameter has
/// received including this one:
/// <code>
/// p = p·(1 - lr·weightDecay)
/// m = beta1·m + (1 - beta1)·g;   v = beta2·v + (1 - beta2)·g²
/// p = p - lr · (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
/// </code>
/// Like PyTorch, t counts per parameter, so a parameter that had no gradient at some steps is
/// bias-corrected by its own count (see <see cref="ParameterStepCount"/>).
/// State: "exp_avg" (m) and "exp_avg_sq" (v), each shaped like the parameter's gradient (compact for a
/// parameter with <see cref="Tensor.Held"/> slices, whose update then touches only those slices).
/// </summary>
public sealed class AdamW : Optimizer
{
    private readonly Tensor?[] _m;
    private readonly Tensor?[] _v;
    private readonly long[] _steps;

    public AdamW(IReadOnlyList<Tensor> parameters, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weightDecay = 0.01)
        : base(parameters, lr)
    {
        CheckHyperparameters(beta1, beta2, eps, weightDecay);
        Beta1 = beta1;
        Beta2 = beta2;
        Eps = eps;
        WeightDecay = weightDecay;
        _m = new Tensor?[parameters.Count];
        _v = new Tensor?[parameters.Count];
        _steps = new long[parameters.Count];
    }

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first hyperparameter AdamW does not take (also used to check a saved optimizer before it is rebuilt).</summary>
    public static void CheckHyperparameters(double beta1, double beta2, double eps, double weightDecay)
    {
        if (!(beta1 >= 0 && beta1 < 1)) throw new ArgumentOutOfRangeException(nameof(beta1), beta1, "AdamW: beta1 must be in [0, 1)");
        if (!(beta2 >= 0 && beta2 < 1)) throw new ArgumentOutOfRangeException(nameof(beta2), beta2, "AdamW: beta2 must be in [0, 1)");
        if (!double.IsFinite(eps) || eps < 0) throw new ArgumentOutOfRangeException(nameof(eps), eps, "AdamW: eps must be finite and >= 0");
        if (!double.IsFinite(weightDecay) || weightDecay < 0) throw new ArgumentOutOfRangeException(nameof(weightDecay), weightDecay, "AdamW: weight decay must be finite and >= 0");
    }

    public double Beta1 { get; }

    public double Beta2 { get; }

    public double Eps { get; }

    public double WeightDecay { get; }

    private static readonly string[] Names = ["exp_avg", "exp_avg_sq"];

    public override IReadOnlyList<string> StateNames => Names;

    /// <summary>How many updates parameter <paramref name="parameterIndex"/> has received (PyTorch's state["step"]).</summary>
    public override long ParameterStepCount(int parameterIndex)
    {
        CheckIndex(parameterIndex);
        return _steps[parameterIndex];
    }

    public override IReadOnlyDictionary<string, Tensor> State(int parameterIndex)
    {
        CheckIndex(parameterIndex);
        var m = _m[parameterIndex];
        var v = _v[parameterIndex];
        return m is null || v is null ? new Dictionary<string, Tensor>() : new Dictionary<string, Tensor> { ["exp_avg"] = m, ["exp_avg_sq"] = v };
    }

    protected override void Update(int index, Tensor param, Tensor grad)
    {
        var m = _m[index] ??= AllocateState(param, "exp_avg");
        var v = _v[index] ??= AllocateState(param, "exp_avg_sq");
        long step = ++_steps[index];
        param.Backend.AdamWStep(param, grad, m, v, LearningRate, Beta1, Beta2, Eps, WeightDecay, step);
    }

    protected override void ValidateLoadedState(int parameterIndex, bool hasState, long parameterStepCount)
    {
        // Moments exist exactly when the parameter has been updated at least once.
        if (hasState != parameterStepCount > 0)
        {
            throw new ArgumentException(hasState
                ? $"AdamW.LoadState: parameter {parameterIndex} has moments but a step count of 0; the step count must be >= 1 once moments exist"
                : $"AdamW.LoadState: parameter {parameterIndex} has a step count of {parameterStepCount} but no moments (exp_avg, exp_avg_sq)");
        }
    }

    protected override void RestoreState(int index, IReadOnlyDictionary<string, Tensor> state, long parameterStepCount)
    {
        _m[index]?.Dispose();
        _v[index]?.Dispose();
        _m[index] = state.GetValueOrDefault("exp_avg");
        _v[index] = state.GetValueOrDefault("exp_avg_sq");
        _steps[index] = parameterStepCount;
    }

    protected override void FreeState()
    {
        for (int i = 0; i < _m.Length; i++)
        {
            _m[i]?.Dispose();
            _v[i]?.Dispose();
            _m[i] = null;
            _v[i] = null;
        }
    }
}
