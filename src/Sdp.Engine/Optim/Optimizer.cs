using Sdp.Engine.Autograd;
using Sdp.Engine.Memory;

namespace Sdp.Engine.Optim;

/// <summary>
/// Updates a fixed list of parameters from their gradients, one fused backend call per parameter.
/// Typical step:
/// <code>
/// using (TensorScope.Begin()) { var loss = model.Forward(x); loss.Backward(); }
/// opt.LearningRate = schedule.LearningRate(opt.StepCount);
/// opt.Step();
/// opt.ZeroGrad();
/// </code>
/// Per-parameter state (moments, momentum buffers) is allocated lazily, the first time
/// <see cref="Step"/> sees a gradient for that parameter, outside any <see cref="TensorScope"/>, and is
/// charged to <see cref="MemoryCategory.OptimizerState"/> of the account current on the calling thread.
/// <see cref="Dispose"/> frees it; the parameters themselves belong to the caller.
/// </summary>
public abstract class Optimizer : IDisposable
{
    private readonly Tensor[] _parameters;
    private double _learningRate;
    private bool _disposed;

    protected Optimizer(IReadOnlyList<Tensor> parameters, double lr)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        string name = GetType().Name;
        if (parameters.Count == 0) throw new ArgumentException($"{name}: the parameter list is empty", nameof(parameters));
        var seen = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < parameters.Count; i++)
        {
            var p = parameters[i] ?? throw new ArgumentException($"{name}: parameter {i} is null", nameof(parameters));
            if (p.IsDisposed) throw new ArgumentException($"{name}: parameter {i} ({p.Describe()}) is disposed", nameof(parameters));
            if (!p.DType.IsFloatingPoint()) throw new ArgumentException($"{name}: parameter {i} ({p.Describe()}) must be float32 or float64", nameof(parameters));
            if (!p.IsLeaf) throw new ArgumentException($"{name}: parameter {i} ({p.Describe()}) is not a leaf (it was produced by {p.GradFn!.OpName}); only leaves can be optimized", nameof(parameters));
            if (!seen.Add(p)) throw new ArgumentException($"{name}: parameter {i} ({p.Describe()}) appears more than once", nameof(parameters));
        }
        _parameters = [.. parameters];
        LearningRate = lr;
    }

    public IReadOnlyList<Tensor> Parameters => _parameters;

    /// <summary>The learning rate the next <see cref="Step"/> uses. Finite and &gt;= 0.</summary>
    public double LearningRate
    {
        get => _learningRate;
        set
        {
            CheckLearningRate(value, GetType().Name);
            _learningRate = value;
        }
    }

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> unless <paramref name="lr"/> is a learning rate an optimizer takes (finite, &gt;= 0).</summary>
    public static void CheckLearningRate(double lr, string owner)
    {
        if (!double.IsFinite(lr) || lr < 0) throw new ArgumentOutOfRangeException("value", lr, $"{owner}: the learning rate must be finite and >= 0");
    }

    /// <summary>Number of completed <see cref="Step"/> calls (whether or not any parameter had a gradient).</summary>
    public long StepCount { get; private set; }

    /// <summary>
    /// The names of the state tensors a parameter has once it has been updated ("exp_avg", "exp_avg_sq"
    /// for AdamW; "momentum_buffer" for Sgd with momentum; none for plain Sgd). <see cref="State"/>
    /// returns either none of them or all of them.
    /// </summary>
    public abstract IReadOnlyList<string> StateNames { get; }

    /// <summary>How many updates parameter <paramref name="parameterIndex"/> has received (PyTorch's state["step"]).</summary>
    public abstract long ParameterStepCount(int parameterIndex);

    /// <summary>Sets <see cref="StepCount"/>, e.g. when resuming from a checkpoint.</summary>
    public void RestoreStepCount(long stepCount)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (stepCount < 0) throw new ArgumentOutOfRangeException(nameof(stepCount), stepCount, $"{GetType().Name}: the step count must be >= 0");
        StepCount = stepCount;
    }

    /// <summary>
    /// Replaces the state of parameter <paramref name="parameterIndex"/> with copies of
    /// <paramref name="state"/> and sets its update count, e.g. when resuming from a checkpoint. The
    /// dictionary holds either no tensor (the state a parameter has before its first update) or one per
    /// name in <see cref="StateNames"/>, each shaped like the parameter's gradient (<see cref="Tensor.GradShape"/>:
    /// compact for a parameter with <see cref="Tensor.Held"/> slices), floating-point (converted to the
    /// parameter's dtype) and on its device. The copies are allocated exactly like lazily created state:
    /// outside any scope, charged to <see cref="MemoryCategory.OptimizerState"/> of the current account.
    /// The caller keeps ownership of <paramref name="state"/>. Everything is validated before anything
    /// changes, so a rejected call leaves the optimizer as it was.
    /// </summary>
    public void LoadState(int parameterIndex, IReadOnlyDictionary<string, Tensor> state, long parameterStepCount)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        CheckIndex(parameterIndex);
        ArgumentNullException.ThrowIfNull(state);
        string name = GetType().Name;
        var param = _parameters[parameterIndex];
        string what = $"{name}.LoadState: parameter {parameterIndex} ({param.Describe()})";
        if (parameterStepCount < 0) throw new ArgumentOutOfRangeException(nameof(parameterStepCount), parameterStepCount, $"{what}: the step count must be >= 0");
        var expected = StateNames;
        foreach (var (key, t) in state)
        {
            if (!expected.Contains(key))
            {
                string known = expected.Count == 0 ? "it keeps no state" : "expected " + string.Join(", ", expected);
                throw new ArgumentException($"{what}: unknown state '{key}'; {known}", nameof(state));
            }
            if (t is null || t.IsDisposed) throw new ArgumentException($"{what}: state '{key}' is null or disposed", nameof(state));
            if (t.Shape != param.GradShape || !t.DType.IsFloatingPoint() || t.Device != param.Device)
            {
                throw new ArgumentException($"{what}: state '{key}' is {t.Describe()} on {t.Device}, expected a floating-point tensor of shape {param.GradShape}{HeldNote(param)} on {param.Device}", nameof(state));
            }
        }
        if (state.Count > 0)
        {
            var missing = expected.Where(k => !state.ContainsKey(k)).ToList();
            if (missing.Count > 0) throw new ArgumentException($"{what}: state is incomplete, missing {string.Join(", ", missing)}", nameof(state));
        }
        ValidateLoadedState(parameterIndex, state.Count > 0, parameterStepCount);

        var copies = new Dictionary<string, Tensor>();
        try
        {
            foreach (var key in expected)
            {
                if (!state.TryGetValue(key, out var src)) continue;
                var copy = AllocateState(param, key);
                copies[key] = copy;
                if (src.DType == copy.DType) copy.Backend.Copy(src, copy);
                else copy.Backend.Cast(src, copy);
            }
        }
        catch
        {
            foreach (var t in copies.Values) t.Dispose();
            throw;
        }
        RestoreState(parameterIndex, copies, parameterStepCount);
    }

    /// <summary>Throws when a parameter's loaded state and step count are inconsistent (called before anything changes).</summary>
    protected virtual void ValidateLoadedState(int parameterIndex, bool hasState, long parameterStepCount)
    {
    }

    /// <summary>
    /// Takes ownership of <paramref name="state"/> (validated copies, empty or one per <see cref="StateNames"/>)
    /// as the state of parameter <paramref name="index"/>, disposing the state it replaces.
    /// </summary>
    protected abstract void RestoreState(int index, IReadOnlyDictionary<string, Tensor> state, long parameterStepCount);

    /// <summary>
    /// Applies one update to every parameter that has a gradient; parameters whose Grad is null are
    /// skipped and their state is left as is. Runs with grad mode off, so nothing is recorded.
    /// </summary>
    public void Step()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        using (GradMode.Disable())
        {
            for (int i = 0; i < _parameters.Length; i++)
            {
                var p = _parameters[i];
                var g = p.Grad;
                if (g is null) continue;
                if (g.Shape != p.GradShape || g.DType != p.DType || g.Device != p.Device)
                {
                    throw new InvalidOperationException($"{GetType().Name}: gradient {g.Describe()} on {g.Device} does not match parameter {i} {p.Describe()}{HeldNote(p)} on {p.Device}");
                }
                if (p.Held is null) Update(i, p, g);
                else UpdateHeld(i, p, g);
            }
        }
        StepCount++;
    }

    /// <summary>
    /// Backward masking: the held slices of <paramref name="param"/> are gathered into a compact copy,
    /// updated there by the ordinary fused update with the compact gradient and state, and scattered
    /// back, so unheld slices (and their weight decay) are never touched. The copy is a view of one staging
    /// buffer kept between steps (<see cref="MemoryCategory.EngineBuffers"/>), sized for the largest held
    /// parameter, so a step allocates nothing for it.
    /// </summary>
    private void UpdateHeld(int index, Tensor param, Tensor grad)
    {
        var held = param.Held!;
        foreach (var (key, t) in State(index))
        {
            if (t.Shape != param.GradShape)
            {
                throw new InvalidOperationException($"{GetType().Name}: state '{key}' {t.Describe()} of parameter {index} {param.Describe()} does not match its gradient shape {param.GradShape} ({held}); were the held slices changed after the optimizer's first step?");
            }
        }
        var be = param.Backend;
        using var compact = HeldStaging(param).Alias(param.GradShape, 0, registerInScope: false);
        compact.Name = param.Name; // lazily created state takes its name from the tensor it is created for
        be.GatherHeld(param, held.Axis, param.HeldIndices!, compact, accumulate: false);
        Update(index, compact, grad);
        be.ScatterHeld(compact, held.Axis, param.HeldIndices!, param);
    }

    private Tensor? _heldStaging;

    /// <summary>The staging buffer for <see cref="UpdateHeld"/>: allocated at the first held update for the largest held parameter of that dtype.</summary>
    private Tensor HeldStaging(Tensor param)
    {
        if (_heldStaging is { } s && s.DType == param.DType && s.Backend == param.Backend && s.Numel >= param.GradShape.Numel) return s;
        _heldStaging?.Dispose();
        long largest = _parameters.Where(p => p.Held is not null && p.DType == param.DType && p.Backend == param.Backend).Max(p => p.GradShape.Numel);
        _heldStaging = Tensor.Allocate(new Shape(checked((int)largest)), param.DType, param.Backend, MemoryCategory.EngineBuffers, registerInScope: false);
        return _heldStaging;
    }

    private static string HeldNote(Tensor p) => p.Held is null ? "" : $" holding {p.Held} (compact shape {p.GradShape})";

    /// <summary>Drops every parameter's gradient (<see cref="Tensor.ZeroGrad"/>), freeing its memory until the next backward.</summary>
    public void ZeroGrad()
    {
        foreach (var p in _parameters) p.ZeroGrad();
    }

    /// <summary>
    /// The named state tensors of parameter <paramref name="parameterIndex"/> ("exp_avg", "exp_avg_sq",
    /// "momentum_buffer"), empty until the first step that updated it. The tensors are owned by the
    /// optimizer: do not dispose them.
    /// </summary>
    public abstract IReadOnlyDictionary<string, Tensor> State(int parameterIndex);

    /// <summary>Updates <paramref name="param"/> in place from <paramref name="grad"/> (same shape and dtype).</summary>
    protected abstract void Update(int index, Tensor param, Tensor grad);

    /// <summary>Frees the state tensors. Called once, from <see cref="Dispose()"/>.</summary>
    protected abstract void FreeState();

    /// <summary>A zero-filled state tensor shaped like <paramref name="param"/>'s gradient (<see cref="Tensor.GradShape"/>,
    /// compact for a parameter with held slices), owned by no scope and charged to
    /// <see cref="MemoryCategory.OptimizerState"/> of the current account.</summary>
    protected static Tensor AllocateState(Tensor param, string stateName)
    {
        Tensor t;
        using (MemoryAccount.Use(MemoryCategory.OptimizerState))
        {
            t = Tensor.Allocate(param.GradShape, param.DType, param.Backend, MemoryCategory.OptimizerState, registerInScope: false);
        }
        t.Name = param.Name is null ? stateName : $"{param.Name}.{stateName}";
        t.Backend.Fill(t, 0);
        return t;
    }

    protected void CheckIndex(int parameterIndex)
    {
        if ((uint)parameterIndex >= (uint)_parameters.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(parameterIndex), parameterIndex, $"{GetType().Name}: there are {_parameters.Length} parameters");
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        FreeState();
        _heldStaging?.Dispose();
        _heldStaging = null;
        GC.SuppressFinalize(this);
    }
}
