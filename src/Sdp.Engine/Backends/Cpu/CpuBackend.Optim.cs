using System.Numerics;

namespace Sdp.Engine.Backends.Cpu;

public sealed unsafe partial class CpuBackend
{
    // Optimizer updates are elementwise and independent per element, so chunks run in parallel and
    // the result does not depend on the split. Each chunk runs a Vector<T> body and a scalar tail that
    // perform the same operations in the same order (no fused multiply-add), so every element gets
    // bit-identical results whichever path handles it.

    public void SgdStep(Tensor param, Tensor grad, Tensor? momentumBuffer, double lr, double momentum, double dampening, bool nesterov, double weightDecay, bool firstStep)
    {
        var h = new SgdHyper(lr, momentum, dampening, nesterov, weightDecay, firstStep);
        if (param.DType == DType.Float32)
        {
            SgdCore<float>((nint)Ptr<float>(param), (nint)Ptr<float>(grad), momentumBuffer is null ? 0 : (nint)Ptr<float>(momentumBuffer), param.Numel, h);
        }
        else
        {
            SgdCore<double>((nint)Ptr<double>(param), (nint)Ptr<double>(grad), momentumBuffer is null ? 0 : (nint)Ptr<double>(momentumBuffer), param.Numel, h);
        }
    }

    private readonly record struct SgdHyper(double Lr, double Momentum, double Dampening, bool Nesterov, double WeightDecay, bool FirstStep);

    private static void SgdCore<T>(nint pp, nint gp, nint bp, long n, SgdHyper h) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T lr = T.CreateChecked(h.Lr), mu = T.CreateChecked(h.Momentum), keep = T.CreateChecked(1 - h.Dampening), wd = T.CreateChecked(h.WeightDecay);
        bool decay = h.WeightDecay != 0, hasBuf = bp != 0, first = h.FirstStep, nesterov = h.Nesterov;
        CpuParallel.For(n, ElementwiseGrain, (s, e) =>
        {
            T* p = (T*)pp, g = (T*)gp, b = (T*)bp;
            long i = s;
            if (Vector.IsHardwareAccelerated && Vector<T>.IsSupported)
            {
                int w = Vector<T>.Count;
                Vector<T> vlr = new(lr), vmu = new(mu), vkeep = new(keep), vwd = new(wd);
                for (; i + w <= e; i += w)
                {
                    var pi = Vector.Load(p + i);
                    var d = Vector.Load(g + i);
                    if (decay) d += vwd * pi;
                    if (hasBuf)
                    {
                        var buf = first ? d : vmu * Vector.Load(b + i) + vkeep * d;
                        buf.Store(b + i);
                        d = nesterov ? d + vmu * buf : buf;
                    }
                    (pi - vlr * d).Store(p + i);
                }
            }
            for (; i < e; i++)
            {
                T d = g[i];
                if (decay) d += wd * p[i];
                if (hasBuf)
                {
                    T buf = first ? d : mu * b[i] + keep * d;
                    b[i] = buf;
                    d = nesterov ? d + mu * buf : buf;
                }
                p[i] = p[i] - lr * d;
            }
        });
    }

    public void AdamWStep(Tensor param, Tensor grad, Tensor m, Tensor v, double lr, double beta1, double beta2, double eps, double weightDecay, long step)
    {
        // Scalars are computed once in float64, as PyTorch does, then rounded to the tensor's dtype.
        double bias1 = 1 - Math.Pow(beta1, step);
        double bias2Sqrt = Math.Sqrt(1 - Math.Pow(beta2, step));
        var h = new AdamWHyper(1 - lr * weightDecay, weightDecay != 0, 1 - beta1, beta2, 1 - beta2, eps, lr / bias1, bias2Sqrt);
        if (param.DType == DType.Float32)
        {
            AdamWCore<float>((nint)Ptr<float>(param), (nint)Ptr<float>(grad), (nint)Ptr<float>(m), (nint)Ptr<float>(v), param.Numel, h);
        }
        else
        {
            AdamWCore<double>((nint)Ptr<double>(param), (nint)Ptr<double>(grad), (nint)Ptr<double>(m), (nint)Ptr<double>(v), param.Numel, h);
        }
    }

    private readonly record struct AdamWHyper(double Decay, bool HasDecay, double Lerp1, double Beta2, double OneMinusBeta2, double Eps, double StepSize, double Bias2Sqrt);

    private static void AdamWCore<T>(nint pp, nint gp, nint mp, nint vp, long n, AdamWHyper h) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T decay = T.CreateChecked(h.Decay), w1 = T.CreateChecked(h.Lerp1), oneMinusW1 = T.One - w1;
        T b2 = T.CreateChecked(h.Beta2), c2 = T.CreateChecked(h.OneMinusBeta2), eps = T.CreateChecked(h.Eps);
        T negStep = T.CreateChecked(-h.StepSize), bias2Sqrt = T.CreateChecked(h.Bias2Sqrt);
        bool hasDecay = h.HasDecay;
        // Lerp as torch.lerp computes it: from the nearer end, which is exact at weights 0 and 1.
        bool lerpFromStart = h.Lerp1 < 0.5;
        CpuParallel.For(n, ElementwiseGrain, (s, e) =>
        {
            T* p = (T*)pp, g = (T*)gp, m = (T*)mp, v = (T*)vp;
            long i = s;
            if (Vector.IsHardwareAccelerated && Vector<T>.IsSupported)
            {
                int w = Vector<T>.Count;
                Vector<T> vdecay = new(decay), vw1 = new(w1), vOneMinusW1 = new(oneMinusW1), vb2 = new(b2), vc2 = new(c2);
                Vector<T> veps = new(eps), vneg = new(negStep), vbias2 = new(bias2Sqrt);
                for (; i + w <= e; i += w)
                {
                    var pi = Vector.Load(p + i);
                    var gi = Vector.Load(g + i);
                    var mi = Vector.Load(m + i);
                    var vi = Vector.Load(v + i);
                    if (hasDecay) pi *= vdecay;
                    mi = lerpFromStart ? mi + vw1 * (gi - mi) : gi - (gi - mi) * vOneMinusW1;
                    vi = vi * vb2 + vc2 * gi * gi;
                    var denom = Vector.SquareRoot(vi) / vbias2 + veps;
                    pi += vneg * mi / denom;
                    pi.Store(p + i);
                    mi.Store(m + i);
                    vi.Store(v + i);
                }
            }
            for (; i < e; i++)
            {
                T pi = p[i], gi = g[i], mi = m[i], vi = v[i];
                if (hasDecay) pi *= decay;
                mi = lerpFromStart ? mi + w1 * (gi - mi) : gi - (gi - mi) * oneMinusW1;
                vi = vi * b2 + c2 * gi * gi;
                T denom = T.Sqrt(vi) / bias2Sqrt + eps;
                pi += negStep * mi / denom;
                p[i] = pi;
                m[i] = mi;
                v[i] = vi;
            }
        });
    }
}
