using System.Runtime.Intrinsics;
using System.Numerics;
using System.Numerics.Tensors;

namespace Sdp.Engine.Backends.Cpu;

public sealed unsafe partial class CpuBackend
{
    /// <summary>Elements per parallel chunk for streaming elementwise work.</summary>
    private const long ElementwiseGrain = 1 << 16;

    public void Unary(UnaryOp op, Tensor x, Tensor y, double p = 0)
    {
        if (x.DType == DType.Float32) UnaryCore<float>(op, (nint)Ptr<float>(x), (nint)Ptr<float>(y), x.Numel, p);
        else UnaryCore<double>(op, (nint)Ptr<double>(x), (nint)Ptr<double>(y), x.Numel, p);
    }

    private static void UnaryCore<T>(UnaryOp op, nint xp, nint yp, long n, double p) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T pt = T.CreateChecked(p);
        CpuParallel.For(n, ElementwiseGrain, (s, e) =>
        {
            var x = new ReadOnlySpan<T>((T*)xp + s, (int)(e - s));
            var y = new Span<T>((T*)yp + s, (int)(e - s));
            switch (op)
            {
                case UnaryOp.Neg: TensorPrimitives.Negate(x, y); break;
                case UnaryOp.Exp: TensorPrimitives.Exp(x, y); break;
                case UnaryOp.Log: TensorPrimitives.Log(x, y); break;
                case UnaryOp.Sqrt: TensorPrimitives.Sqrt(x, y); break;
                case UnaryOp.Rsqrt: TensorPrimitives.ReciprocalSqrt(x, y); break;
                case UnaryOp.Pow: TensorPrimitives.Pow(x, pt, y); break;
                case UnaryOp.Relu: TensorPrimitives.Max(x, T.Zero, y); break;
                case UnaryOp.Tanh: TensorPrimitives.Tanh(x, y); break;
                case UnaryOp.Sigmoid: TensorPrimitives.Sigmoid(x, y); break;
                case UnaryOp.Scale: TensorPrimitives.Multiply(x, pt, y); break;
                case UnaryOp.AddScalar: TensorPrimitives.Add(x, pt, y); break;
                case UnaryOp.Silu:
                    // x / (1 + exp(-x)), in vectorised passes over the chunk.
                    TensorPrimitives.Negate(x, y);
                    TensorPrimitives.Exp(y, y);
                    TensorPrimitives.Add(y, T.One, y);
                    TensorPrimitives.Divide(x, y, y);
                    break;
                case UnaryOp.Gelu:
                    for (int i = 0; i < x.Length; i++) y[i] = Gelu(x[i]);
                    break;
                default: throw new NotSupportedException($"unary op {op}");
            }
        });
    }

    private static T Gelu<T>(T x) where T : IFloatingPointIeee754<T>
    {
        T c = T.CreateChecked(0.7978845608028654); // sqrt(2/pi)
        T inner = c * (x + T.CreateChecked(0.044715) * x * x * x);
        return T.CreateChecked(0.5) * x * (T.One + T.Tanh(inner));
    }

    private static T GeluDerivative<T>(T x) where T : IFloatingPointIeee754<T>
    {
        T c = T.CreateChecked(0.7978845608028654);
        T k = T.CreateChecked(0.044715);
        T th = T.Tanh(c * (x + k * x * x * x));
        T sech2 = T.One - th * th;
        T half = T.CreateChecked(0.5);
        return half * (T.One + th) + half * x * sech2 * c * (T.One + T.CreateChecked(3) * k * x * x);
    }

    public void UnaryBackward(UnaryOp op, Tensor x, Tensor y, Tensor dy, Tensor dx, double p = 0)
    {
        if (x.DType == DType.Float32) UnaryBackwardCore<float>(op, x, y, dy, dx, p);
        else UnaryBackwardCore<double>(op, x, y, dy, dx, p);
    }

    private static void UnaryBackwardCore<T>(UnaryOp op, Tensor xt, Tensor yt, Tensor dyt, Tensor dxt, double p) where T : unmanaged, IFloatingPointIeee754<T>
    {
        nint xp = (nint)Ptr<T>(xt), yp = (nint)Ptr<T>(yt), dyp = (nint)Ptr<T>(dyt), dxp = (nint)Ptr<T>(dxt);
        T pt = T.CreateChecked(p);
        CpuParallel.For(xt.Numel, ElementwiseGrain, (s, e) =>
        {
            T* x = (T*)xp, y = (T*)yp, dy = (T*)dyp, dx = (T*)dxp;
            if (LinearBackward(op, pt, x + s, y + s, dy + s, dx + s, (int)(e - s))) return;
            for (long i = s; i < e; i++)
            {
                T d = op switch
                {
                    UnaryOp.Neg => -T.One,
                    UnaryOp.Exp => y[i],
                    UnaryOp.Log => T.One / x[i],
                    UnaryOp.Sqrt => T.CreateChecked(0.5) / y[i],
                    UnaryOp.Rsqrt => T.CreateChecked(-0.5) * y[i] / x[i],
                    UnaryOp.Pow => pt * T.Pow(x[i], pt - T.One),
                    UnaryOp.Relu => x[i] > T.Zero ? T.One : T.Zero,
                    UnaryOp.Tanh => T.One - y[i] * y[i],
                    UnaryOp.Sigmoid => y[i] * (T.One - y[i]),
                    UnaryOp.Scale => pt,
                    UnaryOp.AddScalar => T.One,
                    UnaryOp.Gelu => GeluDerivative(x[i]),
                    _ => throw new NotSupportedException($"unary op {op}"),
                };
                dx[i] += d * dy[i];
            }
        });
    }

    /// <summary>SIMD paths for the hot derivatives: dx += dy·(const | y | [x &gt; 0] | SiLU'(x)).</summary>
    private static bool LinearBackward<T>(UnaryOp op, T p, T* x, T* y, T* dy, T* dx, int n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var dys = new ReadOnlySpan<T>(dy, n);
        var dxs = new Span<T>(dx, n);
        switch (op)
        {
            case UnaryOp.AddScalar: TensorPrimitives.Add(dxs, dys, dxs); return true;
            case UnaryOp.Neg: TensorPrimitives.Subtract(dxs, dys, dxs); return true;
            case UnaryOp.Scale: TensorPrimitives.MultiplyAdd(dys, p, dxs, dxs); return true;
            case UnaryOp.Exp: TensorPrimitives.MultiplyAdd(dys, new ReadOnlySpan<T>(y, n), dxs, dxs); return true;
            case UnaryOp.Silu: SiluBackward(new ReadOnlySpan<T>(x, n), dys, dxs); return true;
            case UnaryOp.Relu:
                int i = 0;
                if (Vector.IsHardwareAccelerated)
                {
                    for (; i <= n - Vector<T>.Count; i += Vector<T>.Count)
                    {
                        var keep = Vector.GreaterThan(Vector.Load(x + i), Vector<T>.Zero);
                        (Vector.Load(dx + i) + Vector.ConditionalSelect(keep, Vector.Load(dy + i), Vector<T>.Zero)).Store(dx + i);
                    }
                }
                for (; i < n; i++)
                {
                    if (x[i] > T.Zero) dx[i] += dy[i];
                }
                return true;
            default:
                return false;
        }
    }

    /// <summary>Elements per block of the vectorised SiLU backward (two stack buffers of this size).</summary>
    private const int SiluBlock = 512;

    /// <summary>dx += dy · σ(x)·(1 + x·(1 − σ(x))), σ(x) = 1 / (1 + exp(−x)), a block at a time in vectorised passes.</summary>
    private static void SiluBackward<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx) where T : unmanaged, IFloatingPointIeee754<T>
    {
        Span<T> sigmoid = stackalloc T[SiluBlock];
        Span<T> slope = stackalloc T[SiluBlock];
        for (int b = 0; b < x.Length; b += SiluBlock)
        {
            int len = Math.Min(SiluBlock, x.Length - b);
            var xs = x.Slice(b, len);
            var sig = sigmoid[..len];
            var d = slope[..len];
            TensorPrimitives.Negate(xs, sig);
            TensorPrimitives.Exp(sig, sig);
            TensorPrimitives.Add(sig, T.One, sig);
            TensorPrimitives.Divide(T.One, sig, sig);
            TensorPrimitives.Subtract(T.One, sig, d);
            TensorPrimitives.MultiplyAdd(xs, d, T.One, d);
            TensorPrimitives.Multiply(sig, d, d);
            var dxs = dx.Slice(b, len);
            TensorPrimitives.MultiplyAdd(dy.Slice(b, len), d, dxs, dxs);
        }
    }

    public void Binary(BinaryOp op, Tensor a, Tensor b, Tensor y)
    {
        if (y.DType == DType.Float32) BinaryCore<float>(op, a, b, y);
        else BinaryCore<double>(op, a, b, y);
    }

    private static void BinaryCore<T>(BinaryOp op, Tensor at, Tensor bt, Tensor yt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        nint ap = (nint)Ptr<T>(at), bp = (nint)Ptr<T>(bt), yp = (nint)Ptr<T>(yt);
        long n = yt.Numel;
        if (at.Numel == n && bt.Numel == n)
        {
            CpuParallel.For(n, ElementwiseGrain, (s, e) => SameShape<T>(op, new((T*)ap + s, (int)(e - s)), new((T*)bp + s, (int)(e - s)), new((T*)yp + s, (int)(e - s))));
            return;
        }

        // General broadcast: view both operands with y's rank and zero strides on broadcast axes, then
        // run the innermost axis as a strided loop (a contiguous row in the common bias/scale cases).
        var shape = yt.Shape;
        int rank = shape.Rank;
        var sa = BroadcastStrides(at.Shape, shape);
        var sb = BroadcastStrides(bt.Shape, shape);
        int inner = rank == 0 ? 1 : shape[rank - 1];
        long ia = rank == 0 ? 0 : sa[rank - 1], ib = rank == 0 ? 0 : sb[rank - 1];
        long rows = inner == 0 ? 0 : n / inner;
        CpuParallel.For(rows, Math.Max(1, ElementwiseGrain / Math.Max(1, inner)), (r0, r1) =>
        {
            T* a = (T*)ap, b = (T*)bp, y = (T*)yp;
            for (long r = r0; r < r1; r++)
            {
                long offA = 0, offB = 0, rem = r;
                for (int ax = rank - 2; ax >= 0; ax--)
                {
                    long idx = rem % shape[ax];
                    rem /= shape[ax];
                    offA += idx * sa[ax];
                    offB += idx * sb[ax];
                }
                T* yr = y + r * inner;
                if (ia == 1 && ib == 1)
                {
                    SameShape<T>(op, new(a + offA, inner), new(b + offB, inner), new(yr, inner));
                    continue;
                }
                for (int j = 0; j < inner; j++) yr[j] = Apply(op, a[offA + j * ia], b[offB + j * ib]);
            }
        });
    }

    private static void SameShape<T>(BinaryOp op, ReadOnlySpan<T> a, ReadOnlySpan<T> b, Span<T> y) where T : unmanaged, IFloatingPointIeee754<T>
    {
        switch (op)
        {
            case BinaryOp.Add: TensorPrimitives.Add(a, b, y); break;
            case BinaryOp.Sub: TensorPrimitives.Subtract(a, b, y); break;
            case BinaryOp.Mul: TensorPrimitives.Multiply(a, b, y); break;
            case BinaryOp.Div: TensorPrimitives.Divide(a, b, y); break;
        }
    }

    private static T Apply<T>(BinaryOp op, T a, T b) where T : IFloatingPointIeee754<T> => op switch
    {
        BinaryOp.Add => a + b,
        BinaryOp.Sub => a - b,
        BinaryOp.Mul => a * b,
        _ => a / b,
    };

    /// <summary>Strides of <paramref name="src"/> viewed with <paramref name="target"/>'s rank; 0 on broadcast axes.</summary>
    internal static long[] BroadcastStrides(Shape src, Shape target)
    {
        var strides = new long[target.Rank];
        var own = src.Strides();
        int lead = target.Rank - src.Rank;
        for (int i = 0; i < src.Rank; i++) strides[lead + i] = src[i] == 1 ? 0 : own[i];
        return strides;
    }

    public void SumToShape(Tensor src, Tensor dst)
    {
        if (src.DType == DType.Float32) SumToShapeCore<float>(src, dst);
        else SumToShapeCore<double>(src, dst);
    }

    private static void SumToShapeCore<T>(Tensor st, Tensor dt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* s = Ptr<T>(st), d = Ptr<T>(dt);
        var shape = st.Shape;
        int rank = shape.Rank;
        var sd = BroadcastStrides(dt.Shape, shape);
        long n = st.Numel;
        // Sequential accumulation in source order: deterministic, and exact enough since callers reduce
        // modest batch axes. Parallelising over destination elements would need a transposed walk.
        var idx = new int[rank];
        long off = 0;
        for (long i = 0; i < n; i++)
        {
            d[off] += s[i];
            for (int ax = rank - 1; ax >= 0; ax--)
            {
                idx[ax]++;
                off += sd[ax];
                if (idx[ax] < shape[ax]) break;
                off -= sd[ax] * shape[ax];
                idx[ax] = 0;
            }
        }
    }

    public void ReduceAxis(ReduceOp op, Tensor x, int axis, Tensor y, Tensor? argmax)
    {
        if (x.DType == DType.Float32) ReduceAxisCore<float>(op, x, axis, y, argmax);
        else ReduceAxisCore<double>(op, x, axis, y, argmax);
    }

    private static void ReduceAxisCore<T>(ReduceOp op, Tensor xt, int axis, Tensor yt, Tensor? argt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long outer = xt.Shape.Product(0, axis), r = xt.Shape[axis], inner = xt.Shape.Product(axis + 1, xt.Rank);
        nint xp = (nint)Ptr<T>(xt), yp = (nint)Ptr<T>(yt), ap = argt is null ? 0 : (nint)Ptr<long>(argt);
        CpuParallel.For(outer * inner, Math.Max(1, ElementwiseGrain / Math.Max(1, r)), (s, e) =>
        {
            T* x = (T*)xp, y = (T*)yp;
            long* arg = (long*)ap;
            for (long oi = s; oi < e; oi++)
            {
                long o = oi / inner, i = oi % inner;
                T* col = x + o * r * inner + i;
                if (op == ReduceOp.Sum)
                {
                    T acc = T.Zero;
                    for (long k = 0; k < r; k++) acc += col[k * inner];
                    y[oi] = acc;
                }
                else
                {
                    T best = T.NegativeInfinity;
                    long bestAt = 0;
                    for (long k = 0; k < r; k++)
                    {
                        T v = col[k * inner];
                        if (v > best || T.IsNaN(v) && !T.IsNaN(best))
                        {
                            best = v;
                            bestAt = k;
                        }
                    }
                    y[oi] = best;
                    if (arg != null) arg[oi] = bestAt;
                }
            }
        });
    }

    public void MaxAxisBackward(Tensor dy, Tensor argmax, int axis, Tensor dx)
    {
        if (dx.DType == DType.Float32) MaxAxisBackwardCore<float>(dy, argmax, axis, dx);
        else MaxAxisBackwardCore<double>(dy, argmax, axis, dx);
    }

    private static void MaxAxisBackwardCore<T>(Tensor dyt, Tensor argt, int axis, Tensor dxt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long r = dxt.Shape[axis], inner = dxt.Shape.Product(axis + 1, dxt.Rank);
        T* dy = Ptr<T>(dyt), dx = Ptr<T>(dxt);
        long* arg = Ptr<long>(argt);
        long n = dyt.Numel;
        for (long oi = 0; oi < n; oi++)
        {
            long o = oi / inner, i = oi % inner;
            dx[(o * r + arg[oi]) * inner + i] += dy[oi];
        }
    }

    public void AddSumOfSquares(Tensor x, double divisor, Tensor total)
    {
        double sum;
        if (x.DType == DType.Float32)
        {
            sum = SumOfSquaresWidened(Span<float>(x));
        }
        else
        {
            var d = Span<double>(x);
            sum = TensorPrimitives.Dot(d, d);
        }
        Span<double>(total)[0] += sum / divisor;
    }

    /// <summary>
    /// Σ s[i]² with every term widened to float64, so the total does not depend on float32 partial sums. Eight float64
    /// lanes accumulate and are summed in a fixed order (Vector256 gives the same results with or without hardware support), so the
    /// result is the same on every machine; it is read for gradient clipping, where it must be reproducible.
    /// </summary>
    private static double SumOfSquaresWidened(ReadOnlySpan<float> s)
    {
        var lo = Vector256<double>.Zero;
        var hi = Vector256<double>.Zero;
        int i = 0;
        for (; i + Vector256<float>.Count <= s.Length; i += Vector256<float>.Count)
        {
            var (l, h) = Vector256.Widen(Vector256.Create(s.Slice(i, Vector256<float>.Count)));
            lo += l * l;
            hi += h * h;
        }
        var lanes = lo + hi;
        double sum = lanes.GetElement(0) + lanes.GetElement(1) + lanes.GetElement(2) + lanes.GetElement(3); // in this order everywhere
        for (; i < s.Length; i++) sum += (double)s[i] * s[i];
        return sum;
    }
}
