using Sdp.Engine.Autograd;

namespace Sdp.Engine;

public static partial class Ops
{
    /// <summary>
    /// Batched matrix product: a (..., M, K) · b (..., K, N) -> c (..., M, N), with either operand's
    /// matrices transposed on the fly. Leading (batch) dims must be equal, or one operand may be a single
    /// rank-2 matrix shared by the whole batch (a weight).
    /// </summary>
    public static Tensor MatMul(Tensor a, Tensor b, bool transA = false, bool transB = false)
    {
        const string op = "matmul";
        RequireFloat(op, a);
        RequireSame(op, a, b);
        if (a.Rank < 2 || b.Rank < 2) throw new ArgumentException($"{op}: both operands need rank >= 2, got {a.Describe()} and {b.Describe()}");
        int m = transA ? a.Shape[-1] : a.Shape[-2], ka = transA ? a.Shape[-2] : a.Shape[-1];
        int kb = transB ? b.Shape[-1] : b.Shape[-2], n = transB ? b.Shape[-2] : b.Shape[-1];
        if (ka != kb) throw new ArgumentException($"{op}: inner dimensions differ: {a.Describe()}{(transA ? "ᵀ" : "")} · {b.Describe()}{(transB ? "ᵀ" : "")} ({ka} vs {kb})");
        var batchA = a.Shape.Dims[..^2].ToArray();
        var batchB = b.Shape.Dims[..^2].ToArray();
        int[] batchDims;
        if (batchA.AsSpan().SequenceEqual(batchB) || b.Rank == 2) batchDims = batchA;
        else if (a.Rank == 2) batchDims = batchB;
        else throw new ArgumentException($"{op}: batch dims of {a.Describe()} and {b.Describe()} differ; they must be equal or one operand must be a rank-2 matrix");
        var c = Empty(new Shape([.. batchDims, m, n]), a);
        int batch = (int)new Shape(batchDims).Numel;
        a.Backend.MatMul(a, b, c, batch, m, n, ka, transA, transB, 1.0, accumulate: false);
        return NeedsGrad(a, b) ? Record(new MatMulNode(c, a, b, transA, transB, batch, m, n, ka)) : c;
    }

    /// <summary>y = x·Wᵀ + bias, the PyTorch/Hugging Face layout. x (..., in), w (out, in), bias (out) -> y (..., out).</summary>
    public static Tensor Linear(Tensor x, Tensor w, Tensor? bias = null)
    {
        const string op = "linear";
        RequireRank(op, w, 2, "(out_features, in_features)");
        if (x.Rank < 1 || x.Shape[-1] != w.Shape[1]) throw new ArgumentException($"{op}: input {x.Describe()} must end in in_features = {w.Shape[1]} of weight {w.Describe()}");
        if (bias is not null) RequireShape(op, bias, new Shape(w.Shape[0]), "bias");
        var outDims = x.Shape.ToArray();
        outDims[^1] = w.Shape[0];
        using var rows = Reshape(x, -1, w.Shape[1]);
        using var product = MatMul(rows, w, transB: true);
        if (bias is null) return Reshape(product, outDims);
        using var biased = Add(product, bias);
        return Reshape(biased, outDims);
    }

    private sealed class MatMulNode : TapeNode
    {
        private readonly Tensor? _a;
        private readonly Tensor? _b;
        private readonly bool _transA, _transB;
        private readonly int _batch, _m, _n, _k;

        public MatMulNode(Tensor c, Tensor a, Tensor b, bool transA, bool transB, int batch, int m, int n, int k) : base(c, a, b)
        {
            (_transA, _transB, _batch, _m, _n, _k) = (transA, transB, batch, m, n, k);
            if (b.RequiresGrad) _a = Save(a); // dB reads A
            if (a.RequiresGrad) _b = Save(b); // dA reads B
        }

        protected internal override void Backward(Tensor dc, GradSink grads)
        {
            var (da, daFresh) = grads.ForWrite(Inputs[0]);
            var w = Inputs[1];
            // Linear with a held-slice weight (y = x·Wᵀ, W (out, in) shared by the batch): compute only the
            // held rows/columns of dW, straight into the compact gradient; no full-size dW exists.
            bool heldWeight = _transB && !_transA && w.Rank == 2 && w.IsLeaf && w.RequiresGrad && w.Held is not null;
            var (db, dbFresh) = heldWeight ? (null, false) : grads.ForWrite(w);
            var be = dc.Backend;
            if (heldWeight)
            {
                var dwCompact = grads.CompactFor(w)!;
                int tokens = _batch * _m;
                // dy (..., M, N) and x (..., M, K) are contiguous, so all batches flatten to token rows.
                using var dy2 = dc.Alias(new Shape(tokens, _n), dc.Offset, registerInScope: false);
                using var x2 = _a!.Alias(new Shape(tokens, _k), _a.Offset, registerInScope: false);
                be.MatMulWeightGradHeld(dy2, x2, w.Held!.Axis, w.HeldIndices!, dwCompact);
            }
            // dA (M,K) = dC · op(B)ᵀ, stored transposed when A was; dB (K,N) = op(A)ᵀ · dC likewise.
            if (da is not null)
            {
                bool shared = _batch > 1 && da.Numel == (long)_m * _k;
                if (!_transA) Product(be, dc, _b!, da, _m, _k, _n, false, !_transB, shared, overwrite: daFresh);
                else Product(be, _b!, dc, da, _k, _m, _n, _transB, true, shared, overwrite: daFresh);
            }
            if (db is not null)
            {
                bool shared = _batch > 1 && db.Numel == (long)_k * _n;
                if (!_transB) Product(be, _a!, dc, db, _k, _n, _m, !_transA, false, shared, overwrite: dbFresh);
                else Product(be, dc, _a!, db, _n, _k, _m, true, _transA, shared, overwrite: dbFresh);
            }
        }

        /// <summary>c += op(x)·op(y) per batch (c = when overwriting); a shared c sums over the batch.</summary>
        private void Product(Backends.IBackend be, Tensor x, Tensor y, Tensor c, int rows, int cols, int inner, bool tx, bool ty, bool sharedOutput, bool overwrite = false)
        {
            if (!sharedOutput)
            {
                be.MatMul(x, y, c, _batch, rows, cols, inner, tx, ty, 1.0, accumulate: !overwrite);
                return;
            }
            if (overwrite) be.Fill(c, 0);
            long xs = x.Numel == (long)rows * inner ? 0 : (long)rows * inner;
            long ys = y.Numel == (long)inner * cols ? 0 : (long)inner * cols;
            for (int i = 0; i < _batch; i++)
            {
                using var xi = x.Alias(new Shape(tx ? inner : rows, tx ? rows : inner), x.Offset + i * xs, registerInScope: false);
                using var yi = y.Alias(new Shape(ty ? cols : inner, ty ? inner : cols), y.Offset + i * ys, registerInScope: false);
                be.MatMul(xi, yi, c, 1, rows, cols, inner, tx, ty, 1.0, accumulate: true);
            }
        }
    }
}
