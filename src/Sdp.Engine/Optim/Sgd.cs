namespace Sdp.Engine.Optim;

/// <summary>
/// Stochastic gradient descent with the exact semantics of torch.optim.SGD (maximize = false). Per
/// parameter, with g its gradient:
/// <code>
/// g = g + weightDecay·p                          (coupled L2 decay, when weightDecay != 0)
/// if momentum != 0:
///     buf = g on the parameter's first update, else momentum·buf + (1 - dampening)·g
///     g   = nesterov ? g + momentum·buf : buf
/// p = p - lr·g
/// </code>
/// State: "momentum_buffer" (one tensor shaped like the parameter's gradient, compact for a parameter with
/// <see cref="Tensor.Held"/> slices) when momentum != 0, none otherwise.
/// </summary>
public sealed class Sgd : Optimizer
{
    private static readonly string[] MomentumNames = ["momentum_buffer"];
    private readonly Tensor?[] _buffers;
    private readonly long[] _steps;

    public Sgd(IReadOnlyList<Tensor> parameters, double lr, double momentum = 0, double dampening = 0, bool nesterov = false, double weightDecay = 0)
        : base(parameters, lr)
    {
        CheckHyperparameters(momentum, dampening, nesterov, weightDecay);
        Momentum = momentum;
        Dampening = dampening;
        Nesterov = nesterov;
        WeightDecay = weightDecay;
        _buffers = new Tensor?[parameters.Count];
        _steps = new long[parameters.Count];
    }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first hyperparameter (or combination) Sgd does not take (also used to check a saved optimizer before it is rebuilt).</summary>
    public static void CheckHyperparameters(double momentum, double dampening, bool nesterov, double weightDecay)
    {
        if (!double.IsFinite(momentum) || momentum < 0) throw new ArgumentOutOfRangeException(nameof(momentum), momentum, "Sgd: momentum must be finite and >= 0");
        if (!double.IsFinite(dampening)) throw new ArgumentOutOfRangeException(nameof(dampening), dampening, "Sgd: dampening must be finite");
        if (!double.IsFinite(weightDecay) || weightDecay < 0) throw new ArgumentOutOfRangeException(nameof(weightDecay), weightDecay, "Sgd: weight decay must be finite and >= 0");
        if (nesterov && (momentum <= 0 || dampening != 0))
        {
            throw new ArgumentException($"Sgd: Nesterov momentum requires momentum > 0 and dampening = 0, got momentum {momentum}, dampening {dampening}", nameof(nesterov));
        }
    }

    public double Momentum { get; }

    public double Dampening { get; }

    public bool Nesterov { get; }

    public double WeightDecay { get; }

    /// <summary>"momentum_buffer" when momentum != 0, nothing otherwise.</summary>
    public override IReadOnlyList<string> StateNames => Momentum != 0 ? MomentumNames : [];

    /// <summary>How many updates parameter <paramref name="parameterIndex"/> has received.</summary>
    public override long ParameterStepCount(int parameterIndex)
    {
        CheckIndex(parameterIndex);
        return _steps[parameterIndex];
    }

    public override IReadOnlyDictionary<string, Tensor> State(int parameterIndex)
    {
        CheckIndex(parameterIndex);
        var buf = _buffers[parameterIndex];
        return buf is null ? new Dictionary<string, Tensor>() : new Dictionary<string, Tensor> { ["momentum_buffer"] = buf };
    }

    protected override void Update(int index, Tensor param, Tensor grad)
    {
        Tensor? buf = null;
        bool first = false;
        if (Momentum != 0)
        {
            buf = _buffers[index];
            if (buf is null)
            {
                buf = _buffers[index] = AllocateState(param, "momentum_buffer");
                first = true;
            }
        }
        _steps[index]++;
        param.Backend.SgdStep(param, grad, buf, LearningRate, Momentum, Dampening, Nesterov, WeightDecay, first);
    }

    protected override void ValidateLoadedState(int parameterIndex, bool hasState, long parameterStepCount)
    {
        // A momentum buffer exists exactly when the parameter has been updated at least once.
        if (Momentum != 0 && hasState != parameterStepCount > 0)
        {
            throw new ArgumentException(hasState
                ? $"Sgd.LoadState: parameter {parameterIndex} has a momentum buffer but a step count of 0; the step count must be >= 1 once the buffer exists"
                : $"Sgd.LoadState: parameter {parameterIndex} has a step count of {parameterStepCount} but no momentum buffer");
        }
    }

    protected override void RestoreState(int index, IReadOnlyDictionary<string, Tensor> state, long parameterStepCount)
    {
        _buffers[index]?.Dispose();
        _buffers[index] = state.GetValueOrDefault("momentum_buffer");
        _steps[index] = parameterStepCount;
    }

    protected override void FreeState()
    {
        for (int i = 0; i < _buffers.Length; i++)
        {
            _buffers[i]?.Dispose();
            _buffers[i] = null;
        }
    }
}
