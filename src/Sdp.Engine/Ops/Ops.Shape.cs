using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;

namespace Sdp.Engine;

public static partial class Ops
{
    /// <summary>
    /// Reorders axes, materialised as a contiguous copy: y.Shape[a] = x.Shape[perm[a]]. Negative axes
    /// count from the end. Any dtype; differentiable for floats.
    /// x (d_0, ..., d_{r-1}) -> y (d_perm[0], ..., d_perm[r-1]), e.g. (B, T, H, D) with (0, 2, 1, 3) -> (B, H, T, D).
    /// </summary>
    public static Tensor Permute(Tensor x, params int[] perm)
    {
        const string op = "permute";
        ArgumentNullException.ThrowIfNull(perm);
        if (perm.Length != x.Rank) throw new ArgumentException($"{op}: permutation ({string.Join(", ", perm)}) has {perm.Length} axes but {x.Describe()} has rank {x.Rank}");
        var norm = new int[perm.Length];
        var seen = new bool[perm.Length];
        for (int i = 0; i < perm.Length; i++)
        {
            int a = perm[i] < 0 ? perm[i] + x.Rank : perm[i];
            if (a < 0 || a >= x.Rank) throw new ArgumentOutOfRangeException(nameof(perm), $"{op}: axis {perm[i]} in ({string.Join(", ", perm)}) is out of range for {x.Describe()}");
            if (seen[a]) throw new ArgumentException($"{op}: ({string.Join(", ", perm)}) is not a permutation of the axes of {x.Describe()}: axis {perm[i]} repeats");
            seen[a] = true;
            norm[i] = a;
        }
        var dims = new int[norm.Length];
        for (int i = 0; i < norm.Length; i++) dims[i] = x.Shape[norm[i]];
        var y = Empty(new Shape(dims), x);
        x.Backend.Permute(x, norm, y, accumulate: false);
        return NeedsGrad(x) ? Record(new PermuteNode(y, x, norm)) : y;
    }

    /// <summary>Swaps two axes (a contiguous copy). x (..., a, ..., b, ...) -> y (..., b, ..., a, ...).</summary>
    public static Tensor Transpose(Tensor x, int axis0, int axis1)
    {
        int a0 = ShapeOpAxis("transpose", x, axis0), a1 = ShapeOpAxis("transpose", x, axis1);
        var perm = Enumerable.Range(0, x.Rank).ToArray();
        (perm[a0], perm[a1]) = (perm[a1], perm[a0]);
        return Permute(x, perm);
    }

    /// <summary>
    /// Elements [start, start + length) along <paramref name="axis"/>, copied. Any dtype.
    /// x (..., n, ...) -> y (..., length, ...). (<see cref="Narrow"/> is the zero-copy view for axis 0.)
    /// </summary>
    public static Tensor Slice(Tensor x, int axis, int start, int length)
    {
        const string op = "slice";
        int a = ShapeOpAxis(op, x, axis);
        int size = x.Shape[a];
        if (start < 0 || length < 0 || (long)start + length > size)
            throw new ArgumentOutOfRangeException(nameof(start), $"{op}: [{start}, {(long)start + length}) is outside axis {axis} of {x.Describe()} (size {size})");
        var y = Empty(x.Shape.With(a, length), x);
        x.Backend.ReadSlice(x, a, start, y, accumulate: false);
        return NeedsGrad(x) ? Record(new SliceNode(y, x, a, start)) : y;
    }

    /// <summary>
    /// Joins tensors along <paramref name="axis"/>; all other dims, the dtype and the device must match.
    /// Any dtype. xs[i] (..., n_i, ...) -> y (..., Σ n_i, ...).
    /// </summary>
    public static Tensor Concat(IReadOnlyList<Tensor> xs, int axis)
    {
        const string op = "concat";
        ArgumentNullException.ThrowIfNull(xs);
        if (xs.Count == 0) throw new ArgumentException($"{op}: needs at least one tensor");
        var first = xs[0];
        int a = ShapeOpAxis(op, first, axis);
        long total = 0;
        for (int i = 0; i < xs.Count; i++)
        {
            var x = xs[i];
            RequireSame(op, first, x);
            bool fits = x.Rank == first.Rank;
            for (int d = 0; fits && d < x.Rank; d++) fits = d == a || x.Shape[d] == first.Shape[d];
            if (!fits) throw new ArgumentException($"{op}: tensor {i} {x.Describe()} does not match tensor 0 {first.Describe()} outside axis {axis}");
            total += x.Shape[a];
        }
        if (total > int.MaxValue) throw new ArgumentException($"{op}: axis {axis} would have {total} elements");
        var y = Empty(first.Shape.With(a, (int)total), first);
        var offsets = new int[xs.Count];
        int offset = 0;
        for (int i = 0; i < xs.Count; i++)
        {
            offsets[i] = offset;
            first.Backend.WriteSlice(xs[i], a, offset, y, accumulate: false);
            offset += xs[i].Shape[a];
        }
        return NeedsGrad([.. xs]) ? Record(new ConcatNode(y, [.. xs], a, offsets)) : y;
    }

    /// <summary>Normalises a possibly negative axis, or throws naming the op.</summary>
    private static int ShapeOpAxis(string op, Tensor x, int axis)
    {
        int a = axis < 0 ? axis + x.Rank : axis;
        if (a < 0 || a >= x.Rank) throw new ArgumentOutOfRangeException(nameof(axis), $"{op}: axis {axis} is out of range for {x.Describe()}");
        return a;
    }

    private sealed class PermuteNode : TapeNode
    {
        private readonly int[] _inverse;

        public PermuteNode(Tensor y, Tensor x, int[] perm) : base(y, x)
        {
            _inverse = new int[perm.Length];
            for (int i = 0; i < perm.Length; i++) _inverse[perm[i]] = i;
        }

        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var (dx, fresh) = grads.ForWrite(Inputs[0]);
            dx?.Backend.Permute(dy, _inverse, dx, accumulate: !fresh);
        }
    }

    private sealed class SliceNode(Tensor y, Tensor x, int axis, int start) : TapeNode(y, x)
    {
        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var dx = grads.For(Inputs[0]);
            dx?.Backend.WriteSlice(dy, axis, start, dx, accumulate: true);
        }
    }

    private sealed class ConcatNode(Tensor y, Tensor[] xs, int axis, int[] offsets) : TapeNode(y, xs)
    {
        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            for (int i = 0; i < Inputs.Length; i++)
            {
                var (dx, fresh) = grads.ForWrite(Inputs[i]);
                dx?.Backend.ReadSlice(dy, axis, offsets[i], dx, accumulate: !fresh);
            }
        }
    }
}
