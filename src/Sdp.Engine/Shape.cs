using System.Collections;

namespace Sdp.Engine;

/// <summary>Immutable row-major tensor shape. Every tensor is contiguous, so strides derive from the dims.</summary>
public sealed class Shape : IEquatable<Shape>, IReadOnlyList<int>
{
    private readonly int[] _dims;

    public Shape(params ReadOnlySpan<int> dims)
    {
        foreach (var d in dims)
        {
            if (d < 0) throw new ArgumentException($"shape {Format(dims)} has a negative dimension");
        }
        _dims = dims.ToArray();
        long n = 1;
        foreach (var d in _dims) n = checked(n * d);
        Numel = n;
    }

    public static Shape Scalar { get; } = new();

    public int Rank => _dims.Length;

    public long Numel { get; }

    public int Count => _dims.Length;

    public int this[int axis] => _dims[NormalizeAxis(axis)];

    public ReadOnlySpan<int> Dims => _dims;

    public int[] ToArray() => (int[])_dims.Clone();

    /// <summary>Maps a possibly negative axis (-1 = last) onto [0, Rank).</summary>
    public int NormalizeAxis(int axis)
    {
        int a = axis < 0 ? axis + Rank : axis;
        if (a < 0 || a >= Rank) throw new ArgumentOutOfRangeException(nameof(axis), $"axis {axis} is out of range for shape {this}");
        return a;
    }

    /// <summary>Product of dims in [from, to).</summary>
    public long Product(int from, int to)
    {
        long p = 1;
        for (int i = from; i < to; i++) p *= _dims[i];
        return p;
    }

    public long[] Strides()
    {
        var s = new long[Rank];
        long acc = 1;
        for (int i = Rank - 1; i >= 0; i--)
        {
            s[i] = acc;
            acc *= _dims[i];
        }
        return s;
    }

    public Shape With(int axis, int size)
    {
        var d = ToArray();
        d[NormalizeAxis(axis)] = size;
        return new Shape(d);
    }

    /// <summary>NumPy broadcasting of two shapes; null when they are incompatible.</summary>
    public static Shape? TryBroadcast(Shape a, Shape b)
    {
        int rank = Math.Max(a.Rank, b.Rank);
        var dims = new int[rank];
        for (int i = 0; i < rank; i++)
        {
            int da = i < rank - a.Rank ? 1 : a._dims[i - (rank - a.Rank)];
            int db = i < rank - b.Rank ? 1 : b._dims[i - (rank - b.Rank)];
            if (da != db && da != 1 && db != 1) return null;
            dims[i] = da == 1 ? db : da;
        }
        return new Shape(dims);
    }

    public bool Equals(Shape? other) => other is not null && _dims.AsSpan().SequenceEqual(other._dims);

    public override bool Equals(object? obj) => obj is Shape s && Equals(s);

    public override int GetHashCode()
    {
        var h = new HashCode();
        foreach (var d in _dims) h.Add(d);
        return h.ToHashCode();
    }

    public static bool operator ==(Shape? a, Shape? b) => a is null ? b is null : a.Equals(b);

    public static bool operator !=(Shape? a, Shape? b) => !(a == b);

    public static implicit operator Shape(int[] dims) => new(dims);

    public override string ToString() => Format(_dims);

    private static string Format(ReadOnlySpan<int> dims) => "(" + string.Join(", ", dims.ToArray()) + (dims.Length == 1 ? ",)" : ")");

    public IEnumerator<int> GetEnumerator() => ((IEnumerable<int>)_dims).GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => _dims.GetEnumerator();
}
