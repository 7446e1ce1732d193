using System.Numerics;
using System.Numerics.Tensors;

namespace Sdp.Engine.Backends.Cpu;

public sealed unsafe partial class CpuBackend
{
    /// <summary>Elements per stack buffer when a row's exponentials are formed block by block.</summary>
    private const int SoftmaxBlock = 256;

    public void Softmax(Tensor x, Tensor y, bool log)
    {
        if (x.DType == DType.Float32) SoftmaxCore<float>(x, y, log);
        else SoftmaxCore<double>(x, y, log);
    }

    private static void SoftmaxCore<T>(Tensor xt, Tensor yt, bool log) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int v = xt.Shape[-1];
        if (v == 0) return;
        long rows = xt.Numel / v;
        nint xp = (nint)Ptr<T>(xt), yp = (nint)Ptr<T>(yt);
        CpuParallel.For(rows, Math.Max(1, ElementwiseGrain / 4 / v), (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                var x = new ReadOnlySpan<T>((T*)xp + r * v, v);
                var y = new Span<T>((T*)yp + r * v, v);
                T max = TensorPrimitives.Max(x);
                TensorPrimitives.Subtract(x, max, y);
                TensorPrimitives.Exp(y, y);
                T sum = TensorPrimitives.Sum<T>(y);
                if (log) TensorPrimitives.Subtract(x, max + T.Log(sum), y);
                else TensorPrimitives.Multiply(y, T.One / sum, y);
            }
        });
    }

    public void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx, bool log)
    {
        if (y.DType == DType.Float32) SoftmaxBackwardCore<float>(y, dy, dx, log);
        else SoftmaxBackwardCore<double>(y, dy, dx, log);
    }

    private static void SoftmaxBackwardCore<T>(Tensor yt, Tensor dyt, Tensor dxt, bool log) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int v = yt.Shape[-1];
        if (v == 0) return;
        long rows = yt.Numel / v;
        nint yp = (nint)Ptr<T>(yt), dyp = (nint)Ptr<T>(dyt), dxp = (nint)Ptr<T>(dxt);
        CpuParallel.For(rows, Math.Max(1, ElementwiseGrain / 4 / v), (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                T* y = (T*)yp + r * v, dy = (T*)dyp + r * v, dx = (T*)dxp + r * v;
                if (log)
                {
                    // y = log p: dx = dy - p · Σ dy
                    T total = TensorPrimitives.Sum<T>(new ReadOnlySpan<T>(dy, v));
                    for (int i = 0; i < v; i++) dx[i] += dy[i] - T.Exp(y[i]) * total;
                }
                else
                {
                    // y = p: dx = p ⊙ (dy - ⟨dy, p⟩)
                    T dot = TensorPrimitives.Dot<T>(new ReadOnlySpan<T>(dy, v), new ReadOnlySpan<T>(y, v));
                    for (int i = 0; i < v; i++) dx[i] += y[i] * (dy[i] - dot);
                }
            }
        });
    }

    public void CrossEntropy(Tensor logits, Tensor targets, int ignoreIndex, CrossEntropyReduction reduction, Tensor loss, Tensor lse)
    {
        ValidateTargets(targets, logits.Shape[-1], ignoreIndex);
        if (logits.DType == DType.Float32) CrossEntropyCore<float>(logits, targets, ignoreIndex, reduction, loss, lse);
        else CrossEntropyCore<double>(logits, targets, ignoreIndex, reduction, loss, lse);
    }

    /// <summary>Sequential pre-pass: the first bad target throws, unwrapped, before any write.</summary>
    private static void ValidateTargets(Tensor targets, int v, int ignoreIndex)
    {
        nint tp = (nint)Ptr<byte>(targets);
        bool int64 = targets.DType == DType.Int64;
        long n = targets.Numel;
        for (long r = 0; r < n; r++)
        {
            long t = IndexAt(tp, int64, r);
            if (t != ignoreIndex && (ulong)t >= (ulong)v)
                throw new ArgumentOutOfRangeException(null, $"target {t} at row {r} is outside [0, {v}) and is not the ignore index {ignoreIndex}");
        }
    }

    /// <summary>Rows whose target is not the ignore index (the Mean divisor).</summary>
    private static long CountTargets(nint tp, bool int64, long n, int ignoreIndex)
    {
        long count = 0;
        for (long r = 0; r < n; r++)
        {
            if (IndexAt(tp, int64, r) != ignoreIndex) count++;
        }
        return count;
    }

    private static void CrossEntropyCore<T>(Tensor lt, Tensor tt, int ignoreIndex, CrossEntropyReduction reduction, Tensor losst, Tensor lset) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int v = lt.Shape[-1];
        long n = tt.Numel;
        nint xp = (nint)Ptr<T>(lt), tp = (nint)Ptr<byte>(tt), lp = (nint)Ptr<T>(losst), sp = (nint)Ptr<T>(lset);
        bool int64 = tt.DType == DType.Int64;
        bool perRow = reduction == CrossEntropyReduction.None;
        CpuParallel.For(n, Math.Max(1, ElementwiseGrain / 4 / Math.Max(1, v)), (r0, r1) =>
        {
            Span<T> buf = stackalloc T[SoftmaxBlock];
            for (long r = r0; r < r1; r++)
            {
                T* x = (T*)xp + r * v;
                T max = TensorPrimitives.Max(new ReadOnlySpan<T>(x, v));
                // Σ exp(x - max) a block at a time, blocks summed in order: vectorised and deterministic.
                T sum = T.Zero;
                for (int b = 0; b < v; b += SoftmaxBlock)
                {
                    int len = Math.Min(SoftmaxBlock, v - b);
                    var part = buf[..len];
                    TensorPrimitives.Subtract(new ReadOnlySpan<T>(x + b, len), max, part);
                    TensorPrimitives.Exp(part, part);
                    sum += TensorPrimitives.Sum<T>(part);
                }
                T lse = max + T.Log(sum);
                ((T*)sp)[r] = lse;
                if (perRow)
                {
                    long t = IndexAt(tp, int64, r);
                    ((T*)lp)[r] = t == ignoreIndex ? T.Zero : lse - x[t];
                }
            }
        });
        if (perRow) return;

        // Sum or Mean: one sequential pass in row order, accumulated in float64.
        T* logits = (T*)xp, lses = (T*)sp;
        double total = 0;
        long count = 0;
        for (long r = 0; r < n; r++)
        {
            long t = IndexAt(tp, int64, r);
            if (t == ignoreIndex) continue;
            total += double.CreateChecked(lses[r] - logits[r * v + t]);
            count++;
        }
        if (reduction == CrossEntropyReduction.Mean) total = count == 0 ? 0 : total / count;
        ((T*)lp)[0] = T.CreateChecked(total);
    }

    public void CrossEntropyBackward(Tensor logits, Tensor targets, int ignoreIndex, CrossEntropyReduction reduction, Tensor lse, Tensor dloss, Tensor dlogits)
    {
        if (logits.DType == DType.Float32) CrossEntropyBackwardCore<float>(logits, targets, ignoreIndex, reduction, lse, dloss, dlogits);
        else CrossEntropyBackwardCore<double>(logits, targets, ignoreIndex, reduction, lse, dloss, dlogits);
    }

    private static void CrossEntropyBackwardCore<T>(Tensor lt, Tensor tt, int ignoreIndex, CrossEntropyReduction reduction, Tensor lset, Tensor dlosst, Tensor dxt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int v = lt.Shape[-1];
        long n = tt.Numel;
        nint xp = (nint)Ptr<T>(lt), tp = (nint)Ptr<byte>(tt), sp = (nint)Ptr<T>(lset), gp = (nint)Ptr<T>(dlosst), dxp = (nint)Ptr<T>(dxt);
        bool int64 = tt.DType == DType.Int64;
        bool perRow = reduction == CrossEntropyReduction.None;
        T shared = perRow ? T.Zero : ((T*)gp)[0];
        if (reduction == CrossEntropyReduction.Mean)
        {
            long count = CountTargets(tp, int64, n, ignoreIndex);
            shared = count == 0 ? T.Zero : shared / T.CreateChecked(count);
        }
        CpuParallel.For(n, Math.Max(1, ElementwiseGrain / 4 / Math.Max(1, v)), (r0, r1) =>
        {
            Span<T> buf = stackalloc T[SoftmaxBlock];
            for (long r = r0; r < r1; r++)
            {
                long t = IndexAt(tp, int64, r);
                if (t == ignoreIndex) continue;
                T g = perRow ? ((T*)gp)[r] : shared;
                T lse = ((T*)sp)[r];
                T* x = (T*)xp + r * v, dx = (T*)dxp + r * v;
                // dx += softmax · g, a block at a time, then the one-hot term.
                for (int b = 0; b < v; b += SoftmaxBlock)
                {
                    int len = Math.Min(SoftmaxBlock, v - b);
                    var p = buf[..len];
                    TensorPrimitives.Subtract(new ReadOnlySpan<T>(x + b, len), lse, p);
                    TensorPrimitives.Exp(p, p);
                    var d = new Span<T>(dx + b, len);
                    TensorPrimitives.MultiplyAdd(p, g, d, d);
                }
                dx[t] -= g;
            }
        });
    }
}
