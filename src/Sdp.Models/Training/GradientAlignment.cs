using Sdp.Engine;
using Sdp.Engine.Memory;
using Sdp.Engine.Nn;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Subnetworks;

namespace Sdp.Models.Training;

/// <summary>
/// The alignment of one SDP variant's synchronised gradient with the DP gradient at the same weights and on the same
/// batches (the paper's gradient-alignment analysis; method reference §6.1, §6.3, A23).
/// </summary>
/// <param name="Step">The training step whose weights were probed.</param>
/// <param name="Cosine">cos(ĝ, g_DP) over every trained parameter, each counted once.</param>
/// <param name="SdpNorm">‖ĝ‖.</param>
/// <param name="DpNorm">‖g_DP‖.</param>
public sealed record AlignmentMetrics(long Step, double Cosine, double SdpNorm, double DpNorm);

/// <summary>
/// Both gradients of one probe, in the dense model's layout: by parameter name, every element of the dense tensor.
/// <see cref="Dp"/>: g_DP = (1/W) Σ_i ∇L(θ; B_i), what W data-parallel workers average. <see cref="Sdp"/>: ĝ_j =
/// (1/n_j) Σ_{i holds j} g_i[j], the per-parameter mean over the holders (§2.4), where g_i is worker i's gradient on
/// its batch B_i: of its subnetwork under forward masking, of the dense model restricted to its held parameters
/// under backward masking.
/// </summary>
public sealed record GradientPair(IReadOnlyDictionary<string, double[]> Dp, IReadOnlyDictionary<string, double[]> Sdp)
{
    /// <summary>cos(ĝ, g_DP), ‖ĝ‖ and ‖g_DP‖, summed in float64 in parameter order.</summary>
    public AlignmentMetrics Compare(long step)
    {
        double dot = 0, sdp = 0, dp = 0;
        foreach (var (name, d) in Dp)
        {
            var s = Sdp[name];
            for (int i = 0; i < d.Length; i++)
            {
                dot += s[i] * d[i];
                sdp += s[i] * s[i];
                dp += d[i] * d[i];
            }
        }
        // Zero gradients (nothing to align) read as NaN rather than as a perfect or absent alignment.
        double cosine = sdp > 0 && dp > 0 ? dot / Math.Sqrt(sdp * dp) : double.NaN;
        return new AlignmentMetrics(step, cosine, Math.Sqrt(sdp), Math.Sqrt(dp));
    }
}

/// <summary>
/// Measures how well an SDP variant's synchronised gradient ĝ points along the DP gradient g_DP at given weights θ
/// and batches B_0..B_{W−1} (one per worker): "the same batch" means that DP and SDP see exactly the same W batches
/// at the same θ, so the cosine isolates what the masking does to the gradient. Computed from the definitions, on
/// models of its own (the trainer's workers are not touched, and their BatchNorm statistics do not move):
/// <code>
/// g_i    = ∇L(θ; B_i) on the dense model                 (DP; and backward masking's g_i before masking)
/// g_DP   = (1/W) Σ_i g_i
/// ĝ_j    = (1/n_j) Σ_{i ∈ H_j} g_i[j]                    backward masking: the dense gradients, held parts only
/// ĝ_j    = (1/n_j) Σ_{i ∈ H_j} ∇L(θ ⊙ m_i; B_i)[j]        forward masking: each worker's subnetwork
/// </code>
/// Every parameter has n_j ≥ 1 holders (A1), so ĝ is defined everywhere. At C = 1 every worker holds everything and
/// ĝ = g_DP (cosine 1); under backward masking with the same batch on every worker, ĝ = g_DP too (A8).
/// The models run in training mode (batch statistics in BatchNorm, as in a training step); residual branches are
/// unscaled, as they train unless the inverse-scale evaluation rule is chosen.
/// </summary>
public sealed class GradientAlignment : IDisposable
{
    private readonly SubnetworkModel _model;
    private readonly Masking _masking;
    private readonly WorkerLayout[] _layouts;
    private readonly MemoryAccount _account = new("gradient alignment");
    private readonly ITrainable _dense;

    /// <summary>Forward masking: each worker's subnetwork (null under backward masking, whose workers run the dense model).</summary>
    private readonly ITrainable[]? _subnetworks;

    /// <summary>n_j, per parameter and element, in the dense layout.</summary>
    private readonly Dictionary<string, double[]> _holders;

    /// <summary>Builds the probe's dense model and, under forward masking, every worker's subnetwork (once; each probe copies θ into them).</summary>
    public GradientAlignment(SubnetworkModel model, SubnetworkPlan plan, Masking masking)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(plan);
        (_model, _masking) = (model, masking);
        _layouts = [.. Enumerable.Range(0, plan.Workers).Select(w => new WorkerLayout(model.Units, plan, w))];
        using var active = _account.Activate();
        using (MemoryAccount.Use(MemoryCategory.Parameters))
        {
            _dense = model.Build(null);
            _subnetworks = masking == Masking.Forward ? [.. _layouts.Select(l => model.Build(l.HeldUnits))] : null;
        }
        _holders = Trained(_dense.Module).ToDictionary(p => p.Name, p => new double[p.Tensor.Numel]);
        foreach (var layout in _layouts)
        {
            foreach (var (name, p) in Trained(_dense.Module))
            {
                var ones = new double[p.Numel];
                Array.Fill(ones, 1.0);
                AddHeld(layout, name, p.Shape, p.Shape, ones, _holders[name]);
            }
        }
        foreach (var (name, counts) in _holders)
        {
            if (counts.Contains(0)) throw new ArgumentException($"GradientAlignment: an element of {name} has no holder in the plan; every parameter must be held by at least one worker (A1)");
        }
    }

    public int Workers => _layouts.Length;

    /// <summary>
    /// ĝ and g_DP at the weights of <paramref name="weights"/> (a dense model: the trainer's assembled one) on
    /// <paramref name="batches"/>, batch i being worker i's.
    /// </summary>
    public GradientPair Gradients(Module weights, IReadOnlyList<(Tensor Inputs, Tensor Targets)> batches)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(batches);
        if (batches.Count != Workers) throw new ArgumentException($"GradientAlignment: {batches.Count} batches for {Workers} workers; give one per worker");
        using var active = _account.Activate();
        SubnetworkTensors.CopyFromDense(weights, _dense.Module, null);
        var dp = Zeros();
        var sdp = Zeros();
        for (int i = 0; i < Workers; i++)
        {
            var gradient = GradientOf(_dense, batches[i]);
            foreach (var (name, g) in gradient)
            {
                var sum = dp[name];
                for (int e = 0; e < g.Length; e++) sum[e] += g[e];
            }
            if (_masking == Masking.Backward) AddWorker(i, gradient, _dense.Module, sdp);
        }
        if (_subnetworks is not null)
        {
            for (int i = 0; i < Workers; i++)
            {
                SubnetworkTensors.CopyFromDense(weights, _subnetworks[i].Module, _layouts[i]);
                AddWorker(i, GradientOf(_subnetworks[i], batches[i]), _subnetworks[i].Module, sdp);
            }
        }
        foreach (var (name, sum) in dp)
        {
            for (int e = 0; e < sum.Length; e++) sum[e] /= Workers;
            var mean = sdp[name];
            var n = _holders[name];
            for (int e = 0; e < mean.Length; e++) mean[e] /= n[e];
        }
        return new GradientPair(dp, sdp);
    }

    /// <summary>cos(ĝ, g_DP) at the weights of <paramref name="weights"/> on <paramref name="batches"/> (see <see cref="Gradients"/>).</summary>
    public AlignmentMetrics Measure(Module weights, IReadOnlyList<(Tensor Inputs, Tensor Targets)> batches, long step = 0)
        => Gradients(weights, batches).Compare(step);

    /// <summary>Adds worker <paramref name="worker"/>'s gradient (by name, in its own model's layout) into the dense-layout sum of its held elements.</summary>
    private void AddWorker(int worker, Dictionary<string, double[]> gradient, Module model, Dictionary<string, double[]> sum)
    {
        var shapes = model.NamedParameters().ToDictionary(p => p.Name, p => p.Tensor.GradShape);
        foreach (var (name, p) in Trained(_dense.Module))
        {
            if (gradient.TryGetValue(name, out var g)) AddHeld(_layouts[worker], name, p.Shape, shapes[name], g, sum[name]);
        }
    }

    /// <summary>
    /// Adds <paramref name="source"/> (a worker's tensor <paramref name="name"/> of shape <paramref name="sourceShape"/>)
    /// into <paramref name="target"/> (the dense tensor of <paramref name="dense"/> shape) at the elements the worker
    /// holds: all of a shared tensor; all of a whole unit it holds, none of one it does not; of a sliced tensor the held
    /// slices, which sit compact (in ascending unit order) in a subnetwork's tensor and at their dense index in a dense one.
    /// </summary>
    private static void AddHeld(WorkerLayout layout, string name, Shape dense, Shape sourceShape, double[] source, double[] target)
    {
        var binding = layout.BindingOf(name);
        if (binding is null || binding.IsWhole)
        {
            if (binding is not null && !layout.HoldsAny(name)) return;
            if (sourceShape != dense) throw new ArgumentException($"GradientAlignment: worker {layout.Worker}'s {name} is {sourceShape}, the dense tensor {dense}");
            for (int e = 0; e < source.Length; e++) target[e] += source[e];
            return;
        }
        var slices = layout.HeldSliceIndices(binding);
        if (slices.Length == 0) return;
        int axis = binding.Axis < 0 ? binding.Axis + dense.Rank : binding.Axis;
        bool compact = sourceShape[axis] == slices.Length;
        if (!compact && sourceShape != dense)
            throw new ArgumentException($"GradientAlignment: worker {layout.Worker}'s {name} is {sourceShape}; expected the dense {dense} or its {slices.Length} held slices along axis {axis}");
        long outer = dense.Product(0, axis), inner = dense.Product(axis + 1, dense.Rank);
        int size = dense[axis], width = sourceShape[axis];
        for (long o = 0; o < outer; o++)
        {
            for (int k = 0; k < slices.Length; k++)
            {
                long from = ((o * width) + (compact ? k : slices[k])) * inner, to = ((o * size) + slices[k]) * inner;
                for (long e = 0; e < inner; e++) target[to + e] += source[from + e];
            }
        }
    }

    /// <summary>The gradient of every trained parameter of <paramref name="model"/> on one batch, by name, in float64 (a parameter the loss does not reach: zeros).</summary>
    private static Dictionary<string, double[]> GradientOf(ITrainable model, (Tensor Inputs, Tensor Targets) batch)
    {
        var parameters = Trained(model.Module).ToList();
        foreach (var (_, p) in parameters) p.ZeroGrad();
        using (TensorScope.Begin())
        {
            var loss = model.Loss(batch.Inputs, batch.Targets);
            loss.Backward();
        }
        var result = new Dictionary<string, double[]>(StringComparer.Ordinal);
        foreach (var (name, p) in parameters)
        {
            result[name] = p.Grad?.ToDoubles() ?? new double[p.GradShape.Numel];
            p.ZeroGrad();
        }
        return result;
    }

    private Dictionary<string, double[]> Zeros() => _holders.ToDictionary(p => p.Key, p => new double[p.Value.Length], StringComparer.Ordinal);

    private static IEnumerable<(string Name, Tensor Tensor)> Trained(Module module) => module.NamedParameters().Where(p => p.Tensor.RequiresGrad);

    public void Dispose()
    {
        using var active = _account.Activate();
        _dense.Dispose();
        foreach (var s in _subnetworks ?? []) s.Dispose();
    }
}
