using System.Numerics;
using System.Numerics.Tensors;

namespace Sdp.Engine.Backends.Cpu;

/// <summary>Max and adaptive average pooling on the CPU, parallel over (image, channel) planes.</summary>
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
                    for (int j = 0; j < ow; j++)
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
                        long o = (long)i * ow + j;
                        y[o] = best;
                        if (wide) ((long*)ap)[pl * oh * ow + o] = at;
                        else ((int*)ap)[pl * oh * ow + o] = at;
                    }
                }
            }
        });
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
