using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;

namespace Sdp.Engine.Backends.Cpu;

public sealed unsafe partial class CpuBackend
{
    public void Dropout(Tensor x, double p, ulong seed, Tensor mask, Tensor y)
    {
        if (x.DType == DType.Float32) DropoutCore<float>(x, p, seed, mask, y);
        else DropoutCore<double>(x, p, seed, mask, y);
    }

    /// <summary>SplitMix64's (index+1)-th output from state <paramref name="seed"/>: the counter-based hash
    /// every backend uses for dropout masks (see <see cref="IBackend.Dropout"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong DropoutHash(ulong seed, ulong index)
    {
        ulong z = seed + (index + 1) * 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Elements whose 53-bit hash is below this are dropped: ceil(p · 2⁵³).</summary>
    internal static ulong DropoutThreshold(double p) => p >= 1 ? 1UL << 53 : (ulong)Math.Ceiling(p * (1UL << 53));

    private static void DropoutCore<T>(Tensor xt, double p, ulong seed, Tensor maskt, Tensor yt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        nint xp = (nint)Ptr<T>(xt), mp = (nint)Ptr<T>(maskt), yp = (nint)Ptr<T>(yt);
        ulong threshold = DropoutThreshold(p);
        T keep = p >= 1 ? T.Zero : T.CreateChecked(1.0 / (1.0 - p));
        CpuParallel.For(xt.Numel, ElementwiseGrain, (s, e) =>
        {
            T* m = (T*)mp;
            for (long i = s; i < e; i++) m[i] = DropoutHash(seed, (ulong)i) >> 11 < threshold ? T.Zero : keep;
            int len = (int)(e - s);
            TensorPrimitives.Multiply(new ReadOnlySpan<T>((T*)xp + s, len), new ReadOnlySpan<T>(m + s, len), new Span<T>((T*)yp + s, len));
        });
    }

    public void DropoutBackward(Tensor dy, Tensor mask, Tensor dx)
    {
        if (dy.DType == DType.Float32) DropoutBackwardCore<float>(dy, mask, dx);
        else DropoutBackwardCore<double>(dy, mask, dx);
    }

    private static void DropoutBackwardCore<T>(Tensor dyt, Tensor maskt, Tensor dxt) where T : unmanaged, IFloatingPointIeee754<T>
    {
        nint dyp = (nint)Ptr<T>(dyt), mp = (nint)Ptr<T>(maskt), dxp = (nint)Ptr<T>(dxt);
        CpuParallel.For(dyt.Numel, ElementwiseGrain, (s, e) =>
        {
            int len = (int)(e - s);
            var dx = new Span<T>((T*)dxp + s, len);
            TensorPrimitives.MultiplyAdd(new ReadOnlySpan<T>((T*)dyp + s, len), new ReadOnlySpan<T>((T*)mp + s, len), dx, dx);
        });
    }
}
