using Sdp.Engine.Autograd;

namespace Sdp.Engine;

public static partial class Ops
{
    /// <summary>Same storage, new shape of equal size; one dim may be -1. x (...) -> y (dims).</summary>
    public static Tensor Reshape(Tensor x, params int[] dims)
    {
        var shape = ResolveReshape(x, dims);
        var y = x.Alias(shape, x.Offset, registerInScope: true);
        return NeedsGrad(x) ? Record(new ReshapeNode(y, x)) : y;
    }

    /// <summary>Rows [start, start+length) of axis 0, sharing storage. x (N, ...) -> y (length, ...).</summary>
    public static Tensor Narrow(Tensor x, int start, int length)
    {
        if (x.Rank == 0) throw new ArgumentException($"narrow: cannot slice the scalar {x.Describe()}");
        if (start < 0 || length < 0 || start + length > x.Shape[0])
            throw new ArgumentOutOfRangeException(nameof(start), $"narrow: rows [{start}, {start + length}) are outside axis 0 of {x.Describe()}");
        long rowSize = x.Shape.Product(1, x.Rank);
        var y = x.Alias(x.Shape.With(0, length), x.Offset + start * rowSize, registerInScope: true);
        return NeedsGrad(x) ? Record(new NarrowNode(y, x, start)) : y;
    }

    /// <summary>A copy that records autograd (unlike <see cref="Tensor.Detach"/>).</summary>
    public static Tensor Clone(Tensor x)
    {
        var y = EmptyLike(x);
        x.Backend.Copy(x, y);
        return NeedsGrad(x) ? Record(new ReshapeNode(y, x)) : y;
    }

    private static Shape ResolveReshape(Tensor x, int[] dims)
    {
        int infer = -1;
        long known = 1;
        for (int i = 0; i < dims.Length; i++)
        {
            if (dims[i] == -1)
            {
                if (infer >= 0) throw new ArgumentException($"reshape: only one dimension may be -1, got ({string.Join(", ", dims)})");
                infer = i;
            }
            else if (dims[i] < 0) throw new ArgumentException($"reshape: invalid dimension {dims[i]} in ({string.Join(", ", dims)})");
            else known *= dims[i];
        }
        var resolved = (int[])dims.Clone();
        if (infer >= 0)
        {
            if (known == 0 || x.Numel % known != 0) throw new ArgumentException($"reshape: cannot infer -1 in ({string.Join(", ", dims)}) for {x.Describe()}");
            resolved[infer] = (int)(x.Numel / known);
        }
        var shape = new Shape(resolved);
        if (shape.Numel != x.Numel) throw new ArgumentException($"reshape: {x.Describe()} has {x.Numel} elements, shape {shape} needs {shape.Numel}");
        return shape;
    }

    /// <summary>Gradient passes through unchanged, elementwise (reshape, clone).</summary>
    private sealed class ReshapeNode(Tensor y, Tensor x) : TapeNode(y, x)
    {
        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            grads.Adopt(Inputs[0], dy);
        }
    }

    private sealed class NarrowNode(Tensor y, Tensor x, int start) : TapeNode(y, x)
    {
        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var dx = grads.For(Inputs[0]);
            if (dx is null) return;
            using var rows = dx.Alias(dy.Shape, dx.Offset + start * dx.Shape.Product(1, dx.Rank), registerInScope: false);
            rows.Backend.Binary(Backends.BinaryOp.Add, rows, dy, rows);
        }
    }
}
