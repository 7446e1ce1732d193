using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;

namespace Sdp.Engine;

public static partial class Ops
{
    /// <summary>Sum of all elements. x (...) -> y ().</summary>
    public static Tensor Sum(Tensor x) => Sum(x, Enumerable.Range(0, x.Rank).ToArray(), keepDim: false);

    /// <summary>Mean of all elements. x (...) -> y ().</summary>
    public static Tensor Mean(Tensor x) => Scale(Sum(x), 1.0 / Math.Max(1, x.Numel));

    /// <summary>Sum over <paramref name="axes"/>. x (...) -> y (x's shape with those axes 1, or removed).</summary>
    public static Tensor Sum(Tensor x, int[] axes, bool keepDim = false) => ReduceAxes("sum", ReduceOp.Sum, x, axes, keepDim);

    public static Tensor Sum(Tensor x, int axis, bool keepDim = false) => Sum(x, [axis], keepDim);

    public static Tensor Mean(Tensor x, int[] axes, bool keepDim = false)
    {
        var norm = NormalizeAxes("mean", x, axes);
        long count = 1;
        foreach (var a in norm) count *= x.Shape[a];
        return Scale(Sum(x, axes, keepDim), 1.0 / Math.Max(1, count));
    }

    public static Tensor Mean(Tensor x, int axis, bool keepDim = false) => Mean(x, [axis], keepDim);

    /// <summary>Max over <paramref name="axes"/>; the gradient flows to the first maximal element.</summary>
    public static Tensor Max(Tensor x, int[] axes, bool keepDim = false) => ReduceAxes("max", ReduceOp.Max, x, axes, keepDim);

    public static Tensor Max(Tensor x, int axis, bool keepDim = false) => Max(x, [axis], keepDim);

    private static int[] NormalizeAxes(string name, Tensor x, int[] axes)
    {
        var norm = new SortedSet<int>();
        foreach (var a in axes)
        {
            int n = a < 0 ? a + x.Rank : a;
            if (n < 0 || n >= x.Rank) throw new ArgumentOutOfRangeException(nameof(axes), $"{name}: axis {a} is out of range for {x.Describe()}");
            if (!norm.Add(n)) throw new ArgumentException($"{name}: axis {a} is repeated in ({string.Join(", ", axes)})");
        }
        return [.. norm];
    }

    /// <summary>Reduces one axis at a time (each a differentiable step), innermost axis first.</summary>
    private static Tensor ReduceAxes(string name, ReduceOp op, Tensor x, int[] axes, bool keepDim)
    {
        RequireFloat(name, x);
        var norm = NormalizeAxes(name, x, axes);
        var result = x;
        for (int i = norm.Length - 1; i >= 0; i--)
        {
            var next = ReduceOneAxis(op, result, norm[i]);
            if (result != x) result.Dispose(); // a tape node that needs it holds its own reference
            result = next;
        }
        if (norm.Length == 0) result = Clone(x);
        if (keepDim) return result;
        using var reduced = result;
        var dims = new List<int>();
        for (int a = 0; a < x.Rank; a++)
        {
            if (!norm.Contains(a)) dims.Add(x.Shape[a]);
        }
        return Reshape(result, [.. dims]);
    }

    /// <summary>x (..., r, ...) -> y (..., 1, ...).</summary>
    private static Tensor ReduceOneAxis(ReduceOp op, Tensor x, int axis)
    {
        var y = Empty(x.Shape.With(axis, 1), x);
        Tensor? argmax = op == ReduceOp.Max ? Tensor.Empty(y.Shape, DType.Int64, x.Backend) : null;
        if (op == ReduceOp.Max && x.Shape[axis] == 0) throw new ArgumentException($"max: cannot reduce the empty axis {axis} of {x.Describe()}");
        x.Backend.ReduceAxis(op, x, axis, y, argmax);
        using (argmax)
        {
            if (!NeedsGrad(x)) return y;
            return Record(op == ReduceOp.Sum ? new SumNode(y, x) : new MaxNode(y, x, axis, argmax!));
        }
    }

    private sealed class SumNode(Tensor y, Tensor x) : TapeNode(y, x)
    {
        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var dx = grads.For(Inputs[0]);
            if (dx is not null) dx.Backend.Binary(BinaryOp.Add, dx, dy, dx); // dy broadcasts over the reduced axis
        }
    }

    private sealed class MaxNode : TapeNode
    {
        private readonly int _axis;
        private readonly Tensor _argmax;

        public MaxNode(Tensor y, Tensor x, int axis, Tensor argmax) : base(y, x)
        {
            _axis = axis;
            _argmax = Save(argmax);
        }

        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var dx = grads.For(Inputs[0]);
            if (dx is not null) dx.Backend.MaxAxisBackward(dy, _argmax, _axis, dx);
        }
    }
}
