using System.Collections.Immutable;

namespace Sdp.Engine;

/// <summary>
/// The slices (hidden units) along <see cref="Axis"/> of a leaf parameter that this worker trains under SDP
/// backward masking: the forward pass still uses the full weight, but backward computes, and the optimizer
/// keeps state for, only these slices (<see cref="Tensor.Held"/>, <see cref="Tensor.GradShape"/>).
/// Indices are strictly increasing, non-negative and non-empty; the record keeps its own copy, so the
/// caller's list may change afterwards. Whether they fit a tensor's shape is checked when the record is
/// assigned to <see cref="Tensor.Held"/>. Two records are equal when axis and indices are.
/// </summary>
public sealed record HeldSlices(int Axis, IReadOnlyList<int> Indices)
{
    private readonly int _axis = CheckAxis(Axis);
    private readonly ImmutableArray<int> _indices = CheckIndices(Indices);

    /// <summary>The axis of the parameter the indices refer to (&gt;= 0).</summary>
    public int Axis
    {
        get => _axis;
        init => _axis = CheckAxis(value);
    }

    /// <summary>The held slice indices, strictly increasing.</summary>
    public IReadOnlyList<int> Indices
    {
        get => _indices;
        init => _indices = CheckIndices(value);
    }

    /// <summary>Number of held slices, the size of <see cref="Axis"/> in a compact gradient.</summary>
    public int Count => _indices.Length;

    /// <summary>The indices as a span, for backends.</summary>
    public ReadOnlySpan<int> Span => _indices.AsSpan();

    public bool Equals(HeldSlices? other) => other is not null && _axis == other._axis && _indices.AsSpan().SequenceEqual(other._indices.AsSpan());

    public override int GetHashCode()
    {
        var h = new HashCode();
        h.Add(_axis);
        foreach (var i in _indices) h.Add(i);
        return h.ToHashCode();
    }

    public override string ToString() => $"HeldSlices(axis {_axis}, {_indices.Length} indices [{Preview()}])";

    private string Preview() => _indices.Length <= 8 ? string.Join(", ", _indices) : string.Join(", ", _indices.Take(8)) + ", ...";

    private static int CheckAxis(int axis)
        => axis >= 0 ? axis : throw new ArgumentOutOfRangeException(nameof(Axis), axis, $"HeldSlices: axis must be >= 0, got {axis}");

    private static ImmutableArray<int> CheckIndices(IReadOnlyList<int> indices)
    {
        ArgumentNullException.ThrowIfNull(indices, nameof(Indices));
        if (indices.Count == 0) throw new ArgumentException("HeldSlices: the index list is empty; a worker that holds no slice of a tensor should not train it", nameof(Indices));
        var copy = indices.ToArray();
        if (copy[0] < 0) throw new ArgumentOutOfRangeException(nameof(Indices), $"HeldSlices: index {copy[0]} at position 0 is negative");
        for (int i = 1; i < copy.Length; i++)
        {
            if (copy[i] <= copy[i - 1])
                throw new ArgumentException($"HeldSlices: indices must be strictly increasing (sorted, distinct), but position {i} holds {copy[i]} after {copy[i - 1]}", nameof(Indices));
        }
        return [.. copy];
    }
}
