using Sdp.Engine;
using Sdp.Engine.Nn;
using Sdp.Engine.Subnetworks;

namespace Sdp.Tests.Subnetworks;

/// <summary>
/// Moves weights between a dense model and its forward-masked subnetworks by tensor name through the
/// unit bindings, as the SDP runtime does: a sliced tensor keeps the slices of its held units in
/// ascending unit order; whole and unbound tensors are copied as they are.
/// </summary>
internal static class SubnetworkWeights
{
    /// <summary>Every parameter and buffer of <paramref name="module"/> by dotted name.</summary>
    public static Dictionary<string, Tensor> Tensors(Module module)
        => module.NamedParameters().Concat(module.NamedBuffers()).ToDictionary(p => p.Name, p => p.Tensor, StringComparer.Ordinal);

    public static Dictionary<string, UnitBinding> Bindings(MaskableUnits units)
        => units.TensorBindings.ToDictionary(b => b.Tensor, StringComparer.Ordinal);

    /// <summary>Positions along the binding's axis owned by <paramref name="unitsHeld"/>, ascending.</summary>
    public static int[] Positions(UnitBinding binding, int[] unitsHeld)
        => [.. unitsHeld.SelectMany(u => Enumerable.Range(u * binding.SlicesPerUnit, binding.SlicesPerUnit))];

    /// <summary>The entries of a row-major tensor (<paramref name="dims"/>) whose index along <paramref name="axis"/> is in <paramref name="positions"/>.</summary>
    public static double[] Gather(double[] values, ReadOnlySpan<int> dims, int axis, int[] positions)
    {
        long outer = 1, inner = 1;
        for (int d = 0; d < axis; d++) outer *= dims[d];
        for (int d = axis + 1; d < dims.Length; d++) inner *= dims[d];
        int n = dims[axis];
        var result = new double[outer * positions.Length * inner];
        for (long o = 0; o < outer; o++)
        {
            for (int j = 0; j < positions.Length; j++)
            {
                Array.Copy(values, (o * n + positions[j]) * inner, result, (o * positions.Length + j) * inner, inner);
            }
        }
        return result;
    }

    /// <summary>The held part of a dense tensor's values (all of it when unbound or bound whole).</summary>
    public static double[] HeldPart(string name, double[] denseValues, ReadOnlySpan<int> denseDims, MaskableUnits units, IReadOnlyList<int[]> held)
    {
        if (!Bindings(units).TryGetValue(name, out var b) || b.IsWhole) return denseValues;
        return Gather(denseValues, denseDims, b.Axis, Positions(b, held[b.Group]));
    }

    /// <summary>Overwrites every tensor of <paramref name="sub"/> with the held part of the same-named tensor of <paramref name="dense"/>.</summary>
    public static void CopyFromDense(Module dense, Module sub, MaskableUnits units, IReadOnlyList<int[]> held)
    {
        var source = Tensors(dense);
        foreach (var (name, dst) in Tensors(sub))
        {
            Assert.That(source.ContainsKey(name), Is.True, $"subnetwork tensor {name} is not in the dense model");
            var src = source[name];
            var values = HeldPart(name, src.ToDoubles(), src.Shape.Dims, units, held);
            Assert.That(values, Has.Length.EqualTo(dst.Numel), $"{name}: held part of dense {src.Shape} vs subnetwork {dst.Shape}");
            if (dst.DType == src.DType && values.Length == src.Numel)
            {
                dst.Backend.Copy(src, dst);
                continue;
            }
            using var staged = Tensor.FromDoubles(values, dst.Shape, dst.DType);
            dst.Backend.Copy(staged, dst);
        }
    }

    /// <summary>
    /// The masked dense model θ ⊙ m: zeroes the unheld slices of every sliced parameter of
    /// <paramref name="dense"/>, and multiplies its held slices by <paramref name="heldFactor"/> of the
    /// binding (1 when null).
    /// </summary>
    public static void Mask(Module dense, MaskableUnits units, IReadOnlyList<int[]> held, Func<UnitBinding, double>? heldFactor = null)
    {
        var parameters = dense.NamedParameters().ToDictionary(p => p.Name, p => p.Tensor, StringComparer.Ordinal);
        foreach (var b in units.TensorBindings)
        {
            if (b.IsWhole || !parameters.TryGetValue(b.Tensor, out var t)) continue;
            var keep = new HashSet<int>(Positions(b, held[b.Group]));
            double factor = heldFactor?.Invoke(b) ?? 1.0;
            var values = t.ToDoubles();
            var dims = t.Shape.Dims;
            long inner = 1;
            for (int d = b.Axis + 1; d < dims.Length; d++) inner *= dims[d];
            for (long i = 0; i < values.Length; i++)
            {
                int position = (int)(i / inner % dims[b.Axis]);
                values[i] = keep.Contains(position) ? values[i] * factor : 0;
            }
            using var staged = Tensor.FromDoubles(values, t.Shape, t.DType);
            t.Backend.Copy(staged, t);
        }
    }
}
