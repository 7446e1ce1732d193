using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;

namespace Sdp.Engine;

public static partial class Ops
{
    /// <summary>
    /// Gathers slices along <paramref name="axis"/> (PyTorch index_select): y[..., k, ...] = x[..., indices[k], ...].
    /// indices: int32 or int64, rank 1, each in [0, n); repeats allowed (their gradients add up).
    /// Any dtype; differentiable in x. x (..., n, ...), indices (K) -> y (..., K, ...).
    /// </summary>
    public static Tensor IndexSelect(Tensor x, int axis, Tensor indices)
    {
        const string op = "index_select";
        int a = ShapeOpAxis(op, x, axis);
        CheckIndices(op, x, indices);
        if (indices.Numel > int.MaxValue) throw new ArgumentException($"{op}: too many indices in {indices.Describe()}");
        var y = Empty(x.Shape.With(a, (int)indices.Numel), x);
        try
        {
            x.Backend.IndexSelect(x, a, indices, y, accumulate: false);
        }
        catch (ArgumentOutOfRangeException e)
        {
            y.Dispose();
            throw new ArgumentOutOfRangeException(nameof(indices), $"{op}: {e.Message} in {x.Describe()}");
        }
        return NeedsGrad(x) ? Record(new IndexSelectNode(y, x, a, indices)) : y;
    }

    /// <summary>
    /// A copy of <paramref name="dst"/> with src's slices added at <paramref name="indices"/> along
    /// <paramref name="axis"/> (PyTorch index_add): y = dst; y[..., indices[k], ...] += src[..., k, ...].
    /// Repeated indices accumulate. Differentiable in dst and src.
    /// dst (..., n, ...), indices (K), src (..., K, ...) -> y (..., n, ...).
    /// </summary>
    public static Tensor ScatterAdd(Tensor dst, int axis, Tensor indices, Tensor src)
    {
        const string op = "scatter_add";
        int a = ShapeOpAxis(op, dst, axis);
        RequireSame(op, dst, src);
        CheckIndices(op, dst, indices);
        if (indices.Numel > int.MaxValue) throw new ArgumentException($"{op}: too many indices in {indices.Describe()}");
        var expected = dst.Shape.With(a, (int)indices.Numel);
        if (src.Shape != expected) throw new ArgumentException($"{op}: src {src.Describe()} must have shape {expected} (dst {dst.Describe()} with axis {axis} replaced by the {indices.Numel} indices)");
        var y = EmptyLike(dst);
        dst.Backend.Copy(dst, y);
        try
        {
            dst.Backend.IndexAdd(src, a, indices, y);
        }
        catch (ArgumentOutOfRangeException e)
        {
            y.Dispose();
            throw new ArgumentOutOfRangeException(nameof(indices), $"{op}: {e.Message} in {dst.Describe()}");
        }
        return NeedsGrad(dst, src) ? Record(new ScatterAddNode(y, dst, src, a, indices)) : y;
    }

    private static void CheckIndices(string op, Tensor x, Tensor indices)
    {
        RequireIndex(op, indices);
        RequireRank(op, indices, 1, "of indices (K)");
        if (indices.Device != x.Device) throw new ArgumentException($"{op}: indices {indices.Describe()} are on {indices.Device} but {x.Describe()} is on {x.Device}");
    }

    private sealed class IndexSelectNode : TapeNode
    {
        private readonly int _axis;
        private readonly Tensor _indices;

        public IndexSelectNode(Tensor y, Tensor x, int axis, Tensor indices) : base(y, x)
        {
            _axis = axis;
            _indices = Save(indices);
        }

        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var dx = grads.For(Inputs[0]);
            dx?.Backend.IndexAdd(dy, _axis, _indices, dx);
        }
    }

    private sealed class ScatterAddNode : TapeNode
    {
        private readonly int _axis;
        private readonly Tensor _indices;

        public ScatterAddNode(Tensor y, Tensor dst, Tensor src, int axis, Tensor indices) : base(y, dst, src)
        {
            _axis = axis;
            _indices = Save(indices);
        }

        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var ddst = grads.For(Inputs[0]);
            var dsrc = grads.For(Inputs[1]);
            ddst?.Backend.Binary(BinaryOp.Add, ddst, dy, ddst);
            dsrc?.Backend.IndexSelect(dy, _axis, _indices, dsrc, accumulate: true);
        }
    }
}
