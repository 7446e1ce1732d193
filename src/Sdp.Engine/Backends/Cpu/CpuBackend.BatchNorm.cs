using System.Numerics;
using System.Numerics.Tensors;

namespace Sdp.Engine.Backends.Cpu;

/// <summary>
/// Batch normalisation on the CPU, parallel over channels; per-channel sums run vectorised in T over blocks
/// of <see cref="BatchNormBlock"/> elements and are carried across blocks in float64.
/// </summary>
public sealed unsafe partial class CpuBackend
{
    // ---- batchnorm2d ------------------------------------------------------------------------------------

    /// <summary>Elements summed in T before the running total is carried in float64.</summary>
    private const int BatchNormBlock = 1024;

    public void BatchNorm2d(Tensor x, Tensor weight, Tensor bias, Tensor runningMean, Tensor runningVar, Tensor y, Tensor mean, Tensor rstd, bool training, double momentum, double eps)
    {
        if (x.DType == DType.Float32) BatchNorm2dCore<float>(x, weight, bias, runningMean, runningVar, y, mean, rstd, training, momentum, eps);
        else BatchNorm2dCore<double>(x, weight, bias, runningMean, runningVar, y, mean, rstd, training, momentum, eps);
    }

    private static void BatchNorm2dCore<T>(Tensor xt, Tensor wt, Tensor bt, Tensor rmt, Tensor rvt, Tensor yt, Tensor meant, Tensor rstdt, bool training, double momentum, double eps)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int n = xt.Shape[0], channels = xt.Shape[1];
        int plane = (int)xt.Shape.Product(2, 4);
        long m = (long)n * plane;
        nint xp = (nint)Ptr<T>(xt), wp = (nint)Ptr<T>(wt), bp = (nint)Ptr<T>(bt), rmp = (nint)Ptr<T>(rmt), rvp = (nint)Ptr<T>(rvt);
        nint yp = (nint)Ptr<T>(yt), meanp = (nint)Ptr<T>(meant), rstdp = (nint)Ptr<T>(rstdt);
        CpuParallel.For(channels, Math.Max(1, ElementwiseGrain / Math.Max(1, m)), (c0, c1) =>
        {
            T* rm = (T*)rmp, rv = (T*)rvp;
            for (long c = c0; c < c1; c++)
            {
                double mu, rs;
                if (training)
                {
                    double sum = 0;
                    for (long i = 0; i < n; i++) sum += BlockedSum((T*)xp + (i * channels + c) * plane, plane);
                    mu = sum / m;
                    double sq = 0;
                    for (long i = 0; i < n; i++) sq += BlockedSumSquaredDeviation((T*)xp + (i * channels + c) * plane, plane, T.CreateTruncating(mu));
                    double variance = sq / m;
                    rs = 1.0 / Math.Sqrt(variance + eps);
                    rm[c] = T.CreateTruncating((1 - momentum) * double.CreateTruncating(rm[c]) + momentum * mu);
                    rv[c] = T.CreateTruncating((1 - momentum) * double.CreateTruncating(rv[c]) + momentum * variance * m / (m - 1));
                }
                else
                {
                    mu = double.CreateTruncating(rm[c]);
                    rs = 1.0 / Math.Sqrt(double.CreateTruncating(rv[c]) + eps);
                }
                ((T*)meanp)[c] = T.CreateTruncating(mu);
                ((T*)rstdp)[c] = T.CreateTruncating(rs);
                double scale = double.CreateTruncating(((T*)wp)[c]) * rs;
                T ts = T.CreateTruncating(scale), tb = T.CreateTruncating(double.CreateTruncating(((T*)bp)[c]) - mu * scale);
                for (long i = 0; i < n; i++)
                {
                    long off = (i * channels + c) * plane;
                    ScaleShift((T*)xp + off, ts, tb, (T*)yp + off, plane);
                }
            }
        });
    }

    /// <summary>y = (x·scale) + shift in one pass, rounded after each operation (never fused, as two passes would be).</summary>
    private static void ScaleShift<T>(T* x, T scale, T shift, T* y, int len) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var vs = new Vector<T>(scale);
        var vb = new Vector<T>(shift);
        int i = 0;
        for (; i + Vector<T>.Count <= len; i += Vector<T>.Count) Vector.Store(Vector.Load(x + i) * vs + vb, y + i);
        for (; i < len; i++) y[i] = x[i] * scale + shift;
    }

    /// <summary>Σ p[0..len), vectorised in T over blocks, blocks accumulated in float64.</summary>
    private static double BlockedSum<T>(T* p, int len) where T : unmanaged, IFloatingPointIeee754<T>
    {
        double total = 0;
        for (int s = 0; s < len; s += BatchNormBlock) total += double.CreateTruncating(TensorPrimitives.Sum(new ReadOnlySpan<T>(p + s, Math.Min(BatchNormBlock, len - s))));
        return total;
    }

    /// <summary>Σ (p - mu)² over [0, len), vectorised in T over blocks, blocks accumulated in float64.</summary>
    private static double BlockedSumSquaredDeviation<T>(T* p, int len, T mu) where T : unmanaged, IFloatingPointIeee754<T>
    {
        double total = 0;
        var vmu = new Vector<T>(mu);
        for (int s = 0; s < len; s += BatchNormBlock)
        {
            int e = Math.Min(len, s + BatchNormBlock), i = s;
            var acc = Vector<T>.Zero;
            for (; i + Vector<T>.Count <= e; i += Vector<T>.Count)
            {
                var d = Vector.Load(p + i) - vmu;
                acc += d * d;
            }
            T tail = Vector.Sum(acc);
            for (; i < e; i++)
            {
                T d = p[i] - mu;
                tail += d * d;
            }
            total += double.CreateTruncating(tail);
        }
        return total;
    }

    /// <summary>Σ dy·(x - mu) over [0, len), vectorised in T over blocks, blocks accumulated in float64.</summary>
    private static double BlockedDotDeviation<T>(T* dy, T* x, int len, T mu) where T : unmanaged, IFloatingPointIeee754<T>
    {
        double total = 0;
        var vmu = new Vector<T>(mu);
        for (int s = 0; s < len; s += BatchNormBlock)
        {
            int e = Math.Min(len, s + BatchNormBlock), i = s;
            var acc = Vector<T>.Zero;
            for (; i + Vector<T>.Count <= e; i += Vector<T>.Count) acc += Vector.Load(dy + i) * (Vector.Load(x + i) - vmu);
            T tail = Vector.Sum(acc);
            for (; i < e; i++) tail += dy[i] * (x[i] - mu);
            total += double.CreateTruncating(tail);
        }
        return total;
    }

    public void BatchNorm2dBackward(Tensor? x, Tensor? weight, Tensor mean, Tensor rstd, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, bool training, bool overwrite = false)
    {
        if (dy.DType == DType.Float32) BatchNorm2dBackwardCore<float>(x, weight, mean, rstd, dy, dx, dweight, dbias, training, overwrite);
        else BatchNorm2dBackwardCore<double>(x, weight, mean, rstd, dy, dx, dweight, dbias, training, overwrite);
    }

    private static void BatchNorm2dBackwardCore<T>(Tensor? xt, Tensor? wt, Tensor meant, Tensor rstdt, Tensor dyt, Tensor? dxt, Tensor? dwt, Tensor? dbt, bool training, bool overwrite)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int n = dyt.Shape[0], channels = dyt.Shape[1];
        int plane = (int)dyt.Shape.Product(2, 4);
        long m = (long)n * plane;
        nint xp = xt is null ? 0 : (nint)Ptr<T>(xt), wp = wt is null ? 0 : (nint)Ptr<T>(wt), meanp = (nint)Ptr<T>(meant), rstdp = (nint)Ptr<T>(rstdt);
        nint dyp = (nint)Ptr<T>(dyt), dxp = dxt is null ? 0 : (nint)Ptr<T>(dxt), dwp = dwt is null ? 0 : (nint)Ptr<T>(dwt), dbp = dbt is null ? 0 : (nint)Ptr<T>(dbt);
        bool needDyX = dwp != 0 || (dxp != 0 && training);
        bool needDy = dbp != 0 || (dxp != 0 && training);
        CpuParallel.For(channels, Math.Max(1, ElementwiseGrain / Math.Max(1, m)), (c0, c1) =>
        {
            for (long c = c0; c < c1; c++)
            {
                double mu = double.CreateTruncating(((T*)meanp)[c]), rs = double.CreateTruncating(((T*)rstdp)[c]);
                T tmu = ((T*)meanp)[c];
                double sumDy = 0, sumDyXc = 0; // Σ dy and Σ dy·(x - mean)
                for (long i = 0; i < n; i++)
                {
                    long off = (i * channels + c) * plane;
                    if (needDy) sumDy += BlockedSum((T*)dyp + off, plane);
                    if (needDyX) sumDyXc += BlockedDotDeviation((T*)dyp + off, (T*)xp + off, plane, tmu);
                }
                // Overwriting stores what adding to zero would: 0 + v is v.
                if (dbp != 0) ((T*)dbp)[c] = (overwrite ? T.Zero : ((T*)dbp)[c]) + T.CreateTruncating(sumDy);
                if (dwp != 0) ((T*)dwp)[c] = (overwrite ? T.Zero : ((T*)dwp)[c]) + T.CreateTruncating(sumDyXc * rs);
                if (dxp == 0) continue;

                double k = double.CreateTruncating(((T*)wp)[c]) * rs;
                if (!training)
                {
                    T tk = T.CreateTruncating(k);
                    for (long i = 0; i < n; i++)
                    {
                        long off = (i * channels + c) * plane;
                        var d = new Span<T>((T*)dxp + off, plane);
                        if (overwrite) TensorPrimitives.Multiply(new ReadOnlySpan<T>((T*)dyp + off, plane), tk, d);
                        else TensorPrimitives.MultiplyAdd(new ReadOnlySpan<T>((T*)dyp + off, plane), tk, d, d);
                    }
                    continue;
                }
                // dx += k·(dy - Σdy/M - x̂·Σ(dy·x̂)/M) = k·dy + B·x + C0 with x̂ = (x - mean)·rstd,
                // B = -k·rstd²·Σ(dy·(x - mean))/M, C0 = -k·Σdy/M - B·mean.
                double bcoef = -k * rs * rs * sumDyXc / m;
                double c0coef = -k * sumDy / m - bcoef * mu;
                T a = T.CreateTruncating(k), b = T.CreateTruncating(bcoef), c0v = T.CreateTruncating(c0coef);
                Vector<T> va = new(a), vb = new(b), vc = new(c0v);
                for (long i = 0; i < n; i++)
                {
                    long off = (i * channels + c) * plane;
                    T* dy = (T*)dyp + off, x = (T*)xp + off, dx = (T*)dxp + off;
                    int j = 0;
                    if (overwrite)
                    {
                        // (dx + a·dy + b·x) + c with dx = 0, in the same order.
                        for (; j + Vector<T>.Count <= plane; j += Vector<T>.Count)
                            Vector.Store(va * Vector.Load(dy + j) + vb * Vector.Load(x + j) + vc, dx + j);
                        for (; j < plane; j++) dx[j] = a * dy[j] + b * x[j] + c0v;
                        continue;
                    }
                    for (; j + Vector<T>.Count <= plane; j += Vector<T>.Count)
                        Vector.Store(Vector.Load(dx + j) + va * Vector.Load(dy + j) + vb * Vector.Load(x + j) + vc, dx + j);
                    for (; j < plane; j++) dx[j] += a * dy[j] + b * x[j] + c0v;
                }
            }
        });
    }
}
