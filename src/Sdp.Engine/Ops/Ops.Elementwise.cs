using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;

namespace Sdp.Engine;

public static partial class Ops
{
    // ---- unary: x (...) -> y (...) ----------------------------------------------------------------

    public static Tensor Neg(Tensor x) => Unary("neg", UnaryOp.Neg, x);

    public static Tensor Exp(Tensor x) => Unary("exp", UnaryOp.Exp, x);

    public static Tensor Log(Tensor x) => Unary("log", UnaryOp.Log, x);

    public static Tensor Sqrt(Tensor x) => Unary("sqrt", UnaryOp.Sqrt, x);

    public static Tensor Rsqrt(Tensor x) => Unary("rsqrt", UnaryOp.Rsqrt, x);

    public static Tensor Pow(Tensor x, double exponent) => Unary("pow", UnaryOp.Pow, x, exponent);

    public static Tensor Relu(Tensor x) => Unary("relu", UnaryOp.Relu, x);

    public static Tensor Silu(Tensor x) => Unary("silu", UnaryOp.Silu, x);

    /// <summary>GELU, tanh approximation (see <see cref="UnaryOp.Gelu"/>).</summary>
    public static Tensor Gelu(Tensor x) => Unary("gelu", UnaryOp.Gelu, x);

    public static Tensor Tanh(Tensor x) => Unary("tanh", UnaryOp.Tanh, x);

    public static Tensor Sigmoid(Tensor x) => Unary("sigmoid", UnaryOp.Sigmoid, x);

    public static Tensor Scale(Tensor x, double factor) => Unary("scale", UnaryOp.Scale, x, factor);

    public static Tensor AddScalar(Tensor x, double value) => Unary("add_scalar", UnaryOp.AddScalar, x, value);

    private static Tensor Unary(string name, UnaryOp op, Tensor x, double p = 0)
    {
        RequireFloat(name, x);
        var y = EmptyLike(x);
        x.Backend.Unary(op, x, y, p);
        return NeedsGrad(x) ? Record(new UnaryNode(op, p, x, y)) : y;
    }

    private sealed class UnaryNode : TapeNode
    {
        private readonly UnaryOp _op;
        private readonly double _p;
        private readonly Tensor? _x;
        private readonly Tensor? _y;

        public UnaryNode(UnaryOp op, double p, Tensor x, Tensor y) : base(y, x)
        {
            _op = op;
            _p = p;
            // Save only what the derivative reads, so e.g. exp keeps its output and not its input.
            bool needsX = op is UnaryOp.Log or UnaryOp.Rsqrt or UnaryOp.Pow or UnaryOp.Relu or UnaryOp.Silu or UnaryOp.Gelu;
            bool needsY = op is UnaryOp.Exp or UnaryOp.Sqrt or UnaryOp.Rsqrt or UnaryOp.Tanh or UnaryOp.Sigmoid;
            _x = needsX ? Save(x) : null;
            _y = needsY ? Save(y) : null;
        }

        public override string OpName => _op.ToString();

        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var dx = grads.For(Inputs[0]);
            if (dx is null) return;
            // Unused operands are passed as dy: the kernel does not read them for this op.
            dx.Backend.UnaryBackward(_op, _x ?? dy, _y ?? dy, dy, dx, _p);
        }
    }

    // ---- binary with broadcasting: a (...), b (...) -> y (broadcast shape) ----------------------------

    public static Tensor Add(Tensor a, Tensor b) => Binary("add", BinaryOp.Add, a, b);

    public static Tensor Sub(Tensor a, Tensor b) => Binary("sub", BinaryOp.Sub, a, b);

    public static Tensor Mul(Tensor a, Tensor b) => Binary("mul", BinaryOp.Mul, a, b);

    public static Tensor Div(Tensor a, Tensor b) => Binary("div", BinaryOp.Div, a, b);

    private static Tensor Binary(string name, BinaryOp op, Tensor a, Tensor b)
    {
        RequireFloat(name, a);
        RequireSame(name, a, b);
        var shape = Shape.TryBroadcast(a.Shape, b.Shape)
            ?? throw new ArgumentException($"{name}: shapes {a.Shape} and {b.Shape} cannot be broadcast together (each dim must match or be 1)");
        var y = Empty(shape, a);
        a.Backend.Binary(op, a, b, y);
        return NeedsGrad(a, b) ? Record(new BinaryNode(op, a, b, y)) : y;
    }

    private sealed class BinaryNode : TapeNode
    {
        private readonly BinaryOp _op;
        private readonly Tensor? _a;
        private readonly Tensor? _b;

        public BinaryNode(BinaryOp op, Tensor a, Tensor b, Tensor y) : base(y, a, b)
        {
            _op = op;
            if (op == BinaryOp.Mul && b.RequiresGrad) _a = Save(a);
            if (op == BinaryOp.Div && b.RequiresGrad) _a = Save(a);
            if (op is BinaryOp.Mul or BinaryOp.Div) _b = Save(b);
        }

        public override string OpName => _op.ToString();

        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            switch (_op)
            {
                case BinaryOp.Add:
                    // The first input takes dy itself (no copy) where it can: a non-leaf of dy's shape. Only one may,
                    // or a later accumulation into one input's gradient would change the other's.
                    if (!Inputs[0].IsLeaf && Inputs[0].Shape == dy.Shape) grads.Adopt(Inputs[0], dy);
                    else GiveGradient(grads, Inputs[0], dy);
                    GiveGradient(grads, Inputs[1], dy);
                    return;
                case BinaryOp.Mul:
                    GiveProduct(grads, Inputs[0], dy, _b!);
                    GiveProduct(grads, Inputs[1], dy, _a!);
                    return;
            }
            var da = grads.For(Inputs[0]);
            var db = grads.For(Inputs[1]);
            switch (_op)
            {
                case BinaryOp.Sub:
                    if (da is not null) AccumulateReduced(dy, da);
                    if (db is not null) AccumulateReduced(Neg(dy), db);
                    break;
                case BinaryOp.Div:
                    if (da is not null) AccumulateReduced(Div(dy, _b!), da);
                    // d(a/b)/db = -a/b²
                    if (db is not null) AccumulateReduced(Neg(Div(Mul(dy, _a!), Mul(_b!, _b!))), db);
                    break;
            }
        }
    }

    /// <summary>input's gradient += dy (summed over broadcast axes); a fresh gradient buffer is copied into, not zeroed and added to.</summary>
    private static void GiveGradient(GradSink grads, Tensor input, Tensor dy)
    {
        if (input.Shape != dy.Shape)
        {
            var target = grads.For(input);
            if (target is not null) AccumulateReduced(dy, target);
            return;
        }
        var (g, fresh) = grads.ForWrite(input);
        if (g is null) return;
        if (fresh) g.Backend.Copy(dy, g);
        else g.Backend.Binary(BinaryOp.Add, g, dy, g);
    }

    /// <summary>input's gradient += dy ⊙ other (summed over broadcast axes); a fresh gradient buffer takes the product directly.</summary>
    private static void GiveProduct(GradSink grads, Tensor input, Tensor dy, Tensor other)
    {
        if (input.Shape != dy.Shape)
        {
            var target = grads.For(input);
            if (target is not null) AccumulateReduced(Mul(dy, other), target);
            return;
        }
        var (g, fresh) = grads.ForWrite(input);
        if (g is null) return;
        if (fresh) g.Backend.Binary(BinaryOp.Mul, dy, other, g);
        else AccumulateReduced(Mul(dy, other), g);
    }

    /// <summary>dst += src, summing src over the axes that broadcasting expanded.</summary>
    internal static void AccumulateReduced(Tensor src, Tensor dst)
    {
        if (src.Shape == dst.Shape) dst.Backend.Binary(BinaryOp.Add, dst, src, dst);
        else dst.Backend.SumToShape(src, dst);
    }
}
