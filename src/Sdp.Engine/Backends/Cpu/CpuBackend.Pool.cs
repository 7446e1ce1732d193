using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Sdp.Kernels.Cpu;

namespace Sdp.Engine.Backends.Cpu;

/// <summary>Max and adaptive average pooling on the CPU, parallel over (image, channel) planes; max pooling's forward
/// takes 8 outputs of a row at a time (AVX2, float32, stride 1 or 2) where their windows lie inside the row.</summary>
public sealed unsafe partial class CpuBackend
{
    // ---- max pooling ------------------------------------------------------------------------------------

    public void MaxPool2d(Tensor x, Tensor y, Tensor argmax, int kernel, int stride, int padding)
    {
        if (x.DType == DType.Float32) MaxPool2dCore<float>(x, y, argmax, kernel, stride, padding);
        else MaxPool2dCore<double>(x, y, argmax, kernel, stride, padding);
    }

    private static void MaxPool2dCore<T>(Tensor xt, Tensor yt, Tensor argt, int kernel, int stride, int padding) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int h = xt.Shape[2], w = xt.Shape[3], oh = yt.Shape[2], ow = yt.Shape[3];
        long planes = xt.Shape.Product(0, 2);
        bool wide = argt.DType == DType.Int64;
        nint xp = (nint)Ptr<T>(xt), yp = (nint)Ptr<T>(yt), ap = wide ? (nint)Ptr<long>(argt) : (nint)Ptr<int>(argt);
        long work = (long)oh * ow * kernel * kernel;
        CpuParallel.For(planes, Math.Max(1, ElementwiseGrain / Math.Max(1, work)), (p0, p1) =>
        {
            for (long pl = p0; pl < p1; pl++)
            {
                T* x = (T*)xp + pl * h * w, y = (T*)yp + pl * oh * ow;
                for (int i = 0; i < oh; i++)
                {
                    int hs = i * stride - padding, he = Math.Min(hs + kernel, h);
                    hs = Math.Max(hs, 0);
                    long rowOut = pl * oh * ow + (long)i * ow;
                    int j = 0;
                    if (typeof(T) == typeof(float) && Avx2.IsSupported && (stride == 1 || stride == 2))
                    {
                        // Windows whole inside the row, 8 outputs at a time; the rest (the padded edges) below.
                        int jLo = (padding + stride - 1) / stride;
                        // The last lane's window must end inside the row (stride-2 loads read no further than that).
                        int jHi = w + padding - kernel < 0 ? 0 : Math.Min(ow, (w + padding - kernel) / stride + 1);
                        for (; j < jLo && j < ow; j++) MaxPoolOne(x, y, ap, wide, rowOut, i, j, hs, he, w, ow, kernel, stride, padding);
                        for (; j + 8 <= jHi; j += 8)
                            MaxPool8((float*)x, (float*)y + (long)i * ow + j, ap, wide, rowOut + j, hs, he, w, j * stride - padding, kernel, stride);
                    }
                    for (; j < ow; j++) MaxPoolOne(x, y, ap, wide, rowOut, i, j, hs, he, w, ow, kernel, stride, padding);
                }
            }
        });
    }

    /// <summary>One output of max pooling: the first maximum in scan order (a NaN wins, the last one seen).</summary>
    private static void MaxPoolOne<T>(T* x, T* y, nint ap, bool wide, long rowOut, int i, int j, int hs, int he, int w, int ow, int kernel, int stride, int padding)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int ws = j * stride - padding, we = Math.Min(ws + kernel, w);
        ws = Math.Max(ws, 0);
        T best = T.NegativeInfinity;
        int at = hs * w + ws;
        for (int r = hs; r < he; r++)
        {
            for (int q = ws; q < we; q++)
            {
                T v = x[r * w + q];
                if (v > best || T.IsNaN(v))
                {
                    best = v;
                    at = r * w + q;
                }
            }
        }
        y[(long)i * ow + j] = best;
        if (wide) ((long*)ap)[rowOut + j] = at;
        else ((int*)ap)[rowOut + j] = at;
    }

    /// <summary>
    /// Eight adjacent outputs whose windows lie inside the row (first column ws0 for the first), lane by lane the same
    /// comparisons in the same order as <see cref="MaxPoolOne{T}"/>: v &gt; best or v is NaN takes v and its index.
    /// </summary>
    private static void MaxPool8(float* x, float* y, nint ap, bool wide, long outIndex, int hs, int he, int w, int ws0, int kernel, int stride)
    {
        var lane = Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7) * stride;
        var best = Vector256.Create(float.NegativeInfinity);
        var at = Vector256.Create(hs * w + ws0) + lane;
        for (int r = hs; r < he; r++)
        {
            for (int q = 0; q < kernel; q++)
            {
                int first = r * w + ws0 + q;
                float* src = x + first;
                Vector256<float> v = stride == 1 ? Vector256.Load(src) : ConvGemm.EvenLanes(src);
                Vector256<float> take = Avx.Or(Avx.CompareGreaterThan(v, best), Avx.CompareUnordered(v, v));
                best = Avx.BlendVariable(best, v, take);
                at = Avx.BlendVariable(at.AsSingle(), (Vector256.Create(first) + lane).AsSingle(), take).AsInt32();
            }
        }
        Vector256.Store(best, y);
        if (wide)
        {
            long* dst = (long*)ap + outIndex;
            Vector256.Store(Avx2.ConvertToVector256Int64(at.GetLower()), dst);
            Vector256.Store(Avx2.ConvertToVector256Int64(at.GetUpper()), dst + 4);
        }
        else
        {
            Vector256.Store(at, (int*)ap + outIndex);
        }
    }


    public void MaxPool2dBackward(Tensor dy, Tensor argmax, Tensor dx)
    {
        if (dx.DType == DType.Float32) MaxPool2dBackwardCore<float>(dy, argmax, dx);
        else MaxPool2dBackwardCore<double>(dy, argmax, dx);
    }

    private static void MaxPool2dBackwardCore<T>(Tensor dyt, Tensor argt, Tensor dxt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long planes = dxt.Shape.Product(0, 2), inPlane = dxt.Shape.Product(2, 4), outPlane = dyt.Shape.Product(2, 4);
        bool wide = argt.DType == DType.Int64;
        nint dyp = (nint)Ptr<T>(dyt), dxp = (nint)Ptr<T>(dxt), ap = wide ? (nint)Ptr<long>(argt) : (nint)Ptr<int>(argt);
        // One plane per task: overlapping windows scatter into the same plane, never across planes.
        CpuParallel.For(planes, Math.Max(1, ElementwiseGrain / Math.Max(1, outPlane)), (p0, p1) =>
        {
            for (long pl = p0; pl < p1; pl++)
            {
                T* dy = (T*)dyp + pl * outPlane, dx = (T*)dxp + pl * inPlane;
                long ao = pl * outPlane;
                if (wide)
                {
                    long* arg = (long*)ap + ao;
                    for (long o = 0; o < outPlane; o++) dx[arg[o]] += dy[o];
                }
                else
                {
                    int* arg = (int*)ap + ao;
                    for (long o = 0; o < outPlane; o++) dx[arg[o]] += dy[o];
                }
            }
        });
    }

    // ---- adaptive average pooling -----------------------------------------------------------------------

    private static int BinStart(int i, int inSize, int outSize) => (int)((long)i * inSize / outSize);

    private static int BinEnd(int i, int inSize, int outSize) => (int)(((long)(i + 1) * inSize + outSize - 1) / outSize);

    public void AdaptiveAvgPool2d(Tensor x, Tensor y)
    {
        if (x.DType == DType.Float32) AdaptiveAvgPool2dCore<float>(x, y, backward: false);
        else AdaptiveAvgPool2dCore<double>(x, y, backward: false);
    }

    public void AdaptiveAvgPool2dBackward(Tensor dy, Tensor dx)
    {
        if (dx.DType == DType.Float32) AdaptiveAvgPool2dCore<float>(dx, dy, backward: true);
        else AdaptiveAvgPool2dCore<double>(dx, dy, backward: true);
    }

    /// <summary>Forward: y = bin means of x. Backward: x += y / bin size over each bin (x is dx, y is dy).</summary>
    private static void AdaptiveAvgPool2dCore<T>(Tensor xt, Tensor yt, bool backward) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int h = xt.Shape[2], w = xt.Shape[3], oh = yt.Shape[2], ow = yt.Shape[3];
        long planes = xt.Shape.Product(0, 2);
        nint xp = (nint)Ptr<T>(xt), yp = (nint)Ptr<T>(yt);
        CpuParallel.For(planes, Math.Max(1, ElementwiseGrain / Math.Max(1, (long)h * w)), (p0, p1) =>
        {
            for (long pl = p0; pl < p1; pl++)
            {
                T* x = (T*)xp + pl * h * w, y = (T*)yp + pl * oh * ow;
                for (int i = 0; i < oh; i++)
                {
                    int hs = BinStart(i, h, oh), he = BinEnd(i, h, oh);
                    for (int j = 0; j < ow; j++)
                    {
                        int ws = BinStart(j, w, ow), we = BinEnd(j, w, ow);
                        T count = T.CreateTruncating((he - hs) * (we - ws));
                        if (backward)
                        {
                            T g = y[i * ow + j] / count;
                            for (int r = hs; r < he; r++)
                            {
                                var row = new Span<T>(x + r * w + ws, we - ws);
                                TensorPrimitives.Add(row, g, row);
                            }
                        }
                        else
                        {
                            T acc = T.Zero;
                            for (int r = hs; r < he; r++) acc += TensorPrimitives.Sum(new ReadOnlySpan<T>(x + r * w + ws, we - ws));
                            y[i * ow + j] = acc / count;
                        }
                    }
                }
            }
        });
    }
}
