using System.Numerics;
using Sdp.Kernels.Cpu;

namespace Sdp.Engine.Backends.Cpu;

public sealed unsafe partial class CpuBackend
{
    public void GatherHeld(Tensor full, int axis, Tensor indices, Tensor compact, bool accumulate)
    {
        // Same row gather as IndexSelect, minus the validation (held indices were checked when set).
        var kernel = new IndexSelectKernel((nint)Ptr<byte>(full), (nint)Ptr<byte>(compact), (nint)Ptr<int>(indices), false,
            full.Shape.Product(0, axis), full.Shape[axis], indices.Numel, full.Shape.Product(axis + 1, full.Rank));
        CpuStoreDispatch.Run(full.DType, accumulate, kernel);
    }

    public void ScatterHeld(Tensor compact, int axis, Tensor indices, Tensor full)
    {
        var kernel = new ScatterHeldKernel((nint)Ptr<byte>(compact), (nint)Ptr<byte>(full), (nint)Ptr<int>(indices),
            full.Shape.Product(0, axis), full.Shape[axis], indices.Numel, full.Shape.Product(axis + 1, full.Rank));
        CpuStoreDispatch.Run(full.DType, accumulate: false, kernel);
    }

    public void MatMulWeightGradHeld(Tensor dy, Tensor x, int axis, Tensor indices, Tensor dwCompact)
    {
        int outDim = dy.Shape[-1], inDim = x.Shape[-1];
        int tokens = checked((int)(x.Numel / Math.Max(1, inDim)));
        if (tokens == 0) return;
        var idx = Span<int>(indices);
        if (dy.DType == DType.Float32)
        {
            float* dyp = Ptr<float>(dy), xp = Ptr<float>(x), dwp = Ptr<float>(dwCompact);
            if (axis == 0)
                MaskedGemm.SgemmWeightGradRows(tokens, inDim, dyp, outDim, dyFull: true, xp, inDim, idx, outDim, dwp, inDim, dwFull: false, alpha: 1f, beta: 1f);
            else
                MaskedGemm.SgemmWeightGradCols(tokens, outDim, dyp, outDim, xp, inDim, xFull: true, idx, inDim, dwp, idx.Length, dwFull: false, alpha: 1f, beta: 1f);
            return;
        }

        // Float64 (gradient checks): gather the held columns of the operand they come from, then one GEMM.
        int k = idx.Length;
        var staged = new double[(long)tokens * k];
        bool rows = axis == 0;
        double* src = rows ? Ptr<double>(dy) : Ptr<double>(x);
        int width = rows ? outDim : inDim;
        fixed (double* sp = staged)
        {
            for (long t = 0; t < tokens; t++)
            {
                double* from = src + t * width;
                double* to = sp + t * k;
                for (int j = 0; j < k; j++) to[j] = from[idx[j]];
            }
            if (rows) Gemm.Dgemm(true, false, k, inDim, tokens, 1.0, sp, k, Ptr<double>(x), inDim, 1.0, Ptr<double>(dwCompact), inDim);
            else Gemm.Dgemm(true, false, outDim, k, tokens, 1.0, Ptr<double>(dy), outDim, sp, k, 1.0, Ptr<double>(dwCompact), k);
        }
    }

    /// <summary>full (outer, N, inner) rows at the held indices = compact (outer, K, inner) rows; distinct indices, so rows never race.</summary>
    private readonly struct ScatterHeldKernel(nint sp, nint dp, nint ip, long outer, long n, long k, long inner) : ICpuStoreKernel
    {
        public void Run<T, TStore>() where T : unmanaged, INumberBase<T> where TStore : struct, ICpuElementStore<T>
        {
            nint sb = sp, db = dp, ib = ip;
            long size = n, count = k, row = inner;
            if (row == 0) return;
            CpuParallel.For(outer * count, Math.Max(1, ElementwiseGrain / row), (r0, r1) =>
            {
                for (long r = r0; r < r1; r++)
                {
                    long o = r / count, j = r % count;
                    long at = ((int*)ib)[j];
                    TStore.Row(new ReadOnlySpan<T>((T*)sb + r * row, (int)row), new Span<T>((T*)db + (o * size + at) * row, (int)row));
                }
            });
        }
    }
}
