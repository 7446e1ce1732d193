namespace Sdp.Engine.Backends;

public enum UnaryOp
{
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,

    /// <summary>x^p for the scalar exponent p.</summary>
    Pow,
    Relu,

    /// <summary>x·sigmoid(x), the SwiGLU gate activation.</summary>
    Silu,

    /// <summary>The tanh approximation 0.5x(1 + tanh(√(2/π)(x + 0.044715x³))), as in GPT-2 and llm.c
    /// (PyTorch GELU(approximate='tanh')).</summary>
    Gelu,
    Tanh,
    Sigmoid,

    /// <summary>p·x.</summary>
    Scale,

    /// <summary>x + p.</summary>
    AddScalar,
}

public enum BinaryOp
{
    Add,
    Sub,
    Mul,
    Div,
}

public enum ReduceOp
{
    Sum,
    Max,
}

public partial interface IBackend
{
    /// <summary>y = op(x; p). y may alias x. Shapes equal.</summary>
    void Unary(UnaryOp op, Tensor x, Tensor y, double p = 0);

    /// <summary>dx += dy · op'(x). y is op's forward output (some derivatives are cheapest from it).</summary>
    void UnaryBackward(UnaryOp op, Tensor x, Tensor y, Tensor dy, Tensor dx, double p = 0);

    /// <summary>y = a op b, with a and b broadcast (NumPy rules) to y's shape. y may alias a or b when
    /// that operand already has y's shape.</summary>
    void Binary(BinaryOp op, Tensor a, Tensor b, Tensor y);

    /// <summary>dst += src summed over the axes where dst, right-aligned against src, has size 1 or no
    /// axis at all: the gradient of a broadcast.</summary>
    void SumToShape(Tensor src, Tensor dst);

    /// <summary>y (outer, inner) = reduce over r of x (outer, r, inner), splitting x at <paramref name="axis"/>.
    /// For Max, <paramref name="argmax"/> (int64, y's shape) receives the first index attaining the max.</summary>
    void ReduceAxis(ReduceOp op, Tensor x, int axis, Tensor y, Tensor? argmax);

    /// <summary>dx (outer, r, inner) += dy (outer, inner) at r = argmax (outer, inner).</summary>
    void MaxAxisBackward(Tensor dy, Tensor argmax, int axis, Tensor dx);

    /// <summary>
    /// total += (Σ x²) / divisor, with Σ x² accumulated in float64 and total a float64 scalar on this
    /// device: the building block of gradient norms. The sum stays on the device, so a norm over many
    /// parameters costs one host read (of total), not one per parameter.
    /// </summary>
    void AddSumOfSquares(Tensor x, double divisor, Tensor total);
}
