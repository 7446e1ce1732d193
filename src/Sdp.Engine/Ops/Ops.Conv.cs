using Sdp.Engine.Autograd;

namespace Sdp.Engine;

/// <summary>2-D convolution of NCHW activations, with PyTorch semantics (torch.nn.functional).</summary>
public static partial class Ops
{
    // ---- conv2d -----------------------------------------------------------------------------------

    /// <summary>
    /// 2-D convolution (cross-correlation, as in PyTorch), square stride and zero padding, no dilation or groups.
    /// x (N, C, H, W), weight (O, C, KH, KW), bias (O) -> y (N, O, OH, OW), OH = (H + 2p - KH) / s + 1.
    /// </summary>
    public static Tensor Conv2d(Tensor x, Tensor weight, Tensor? bias, int stride = 1, int padding = 0)
    {
        const string op = "conv2d";
        RequireFloat(op, x);
        RequireRank(op, x, 4, "(N, C, H, W)");
        RequireRank(op, weight, 4, "weight (O, C, KH, KW)");
        RequireSame(op, x, weight);
        int n = x.Shape[0], c = x.Shape[1], h = x.Shape[2], w = x.Shape[3];
        int o = weight.Shape[0], kh = weight.Shape[2], kw = weight.Shape[3];
        if (weight.Shape[1] != c) throw new ArgumentException($"conv2d: weight {weight.Describe()} expects {weight.Shape[1]} input channels, but input {x.Describe()} has {c}");
        if (o < 1 || c < 1 || kh < 1 || kw < 1) throw new ArgumentException($"conv2d: weight {weight.Describe()} and input {x.Describe()} need at least one channel and a non-empty kernel");
        if (bias is not null)
        {
            RequireSame(op, x, bias);
            RequireShape(op, bias, new Shape(o), "bias");
        }
        if (stride < 1) throw new ArgumentOutOfRangeException(nameof(stride), $"conv2d: stride must be >= 1, got {stride}");
        if (padding < 0) throw new ArgumentOutOfRangeException(nameof(padding), $"conv2d: padding must be >= 0, got {padding}");
        if (h + 2 * padding < kh || w + 2 * padding < kw)
            throw new ArgumentException($"conv2d: input {x.Describe()} padded by {padding} is smaller than the kernel ({kh}, {kw}) of weight {weight.Describe()}");
        int oh = (h + 2 * padding - kh) / stride + 1, ow = (w + 2 * padding - kw) / stride + 1;

        var y = Empty(new Shape(n, o, oh, ow), x);
        x.Backend.Conv2d(x, weight, bias, y, stride, padding);
        return NeedsGrad(x, weight, bias) ? Record(new Conv2dNode(y, x, weight, bias, stride, padding)) : y;
    }

    private sealed class Conv2dNode : TapeNode
    {
        private readonly Tensor? _x;
        private readonly Tensor? _w;
        private readonly int _stride, _padding;

        public Conv2dNode(Tensor y, Tensor x, Tensor w, Tensor? bias, int stride, int padding)
            : base(y, bias is null ? [x, w] : [x, w, bias])
        {
            (_stride, _padding) = (stride, padding);
            if (w.RequiresGrad) _x = Save(x); // dW = dY · colsᵀ reads x
            if (x.RequiresGrad) _w = Save(w); // dX = col2im(Wᵀ · dY) reads W
        }

        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var w = Inputs[1];
            // Held output filters (axis 0) or input channels (axis 1): the compact dW is the weight gradient of
            // a smaller convolution, over the held channels of dy or of x, so no full-size dW is formed.
            bool heldWeight = w.IsLeaf && w.RequiresGrad && w.Held is { Axis: 0 or 1 };
            var (dx, dw, db, overwrite) = grads.ForWriteTogether(Inputs[0], heldWeight ? null : w, Inputs.Length > 2 ? Inputs[2] : null);
            var be = dy.Backend;
            if (dx is not null || dw is not null || db is not null) be.Conv2dBackward(_x, _w, dy, dx, dw, db, _stride, _padding, overwrite);
            if (heldWeight) HeldWeightGrad(be, dy, w.Held!.Axis, w.HeldIndices!, grads.CompactFor(w)!);
        }

        /// <summary>dwCompact += the conv weight gradient of the held filters (dy channels) or held input channels (x channels).</summary>
        private void HeldWeightGrad(Backends.IBackend be, Tensor dy, int heldAxis, Tensor indices, Tensor dwCompact)
        {
            // Held filters are dy's channels; held input channels are x's: both are axis 1 of an NCHW tensor.
            var source = heldAxis == 0 ? dy : _x!;
            using var gathered = Tensor.Allocate(source.Shape.With(1, (int)indices.Numel), source.DType, be, Memory.MemoryCategory.Workspace, registerInScope: false);
            be.GatherHeld(source, 1, indices, gathered, accumulate: false);
            if (heldAxis == 0) be.Conv2dBackward(_x, null, gathered, null, dwCompact, null, _stride, _padding);
            else be.Conv2dBackward(gathered, null, dy, null, dwCompact, null, _stride, _padding);
        }
    }
}
