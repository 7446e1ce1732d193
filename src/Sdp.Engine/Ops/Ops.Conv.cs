using Sdp.Engine.Autograd;

namespace Sdp.Engine;

/// <summary>Convolutional-network layers, NCHW, with PyTorch semantics (torch.nn.functional).</summary>
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
            var dx = grads.For(Inputs[0]);
            var w = Inputs[1];
            // Held output filters (axis 0) or input channels (axis 1): the compact dW is the weight gradient of
            // a smaller convolution, over the held channels of dy or of x, so no full-size dW is formed.
            bool heldWeight = w.IsLeaf && w.RequiresGrad && w.Held is { Axis: 0 or 1 };
            var dw = heldWeight ? null : grads.For(w);
            var db = Inputs.Length > 2 ? grads.For(Inputs[2]) : null;
            var be = dy.Backend;
            if (dx is not null || dw is not null || db is not null) be.Conv2dBackward(_x, _w, dy, dx, dw, db, _stride, _padding);
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

    // ---- batchnorm2d ------------------------------------------------------------------------------

    /// <summary>
    /// Batch normalisation over (N, H, W) per channel, as torch.nn.functional.batch_norm.
    /// x (N, C, H, W), weight (C), bias (C), runningMean (C), runningVar (C) -> y (N, C, H, W).
    /// Training: normalises with the batch mean and biased variance and updates the running statistics in
    /// place (running = (1 - momentum)·running + momentum·batch, with the unbiased variance); the update is
    /// not differentiable and is never recorded. Eval: normalises with the running statistics.
    /// </summary>
    public static Tensor BatchNorm2d(Tensor x, Tensor weight, Tensor bias, Tensor runningMean, Tensor runningVar, bool training, double momentum = 0.1, double eps = 1e-5)
    {
        const string op = "batch_norm2d";
        RequireFloat(op, x);
        RequireRank(op, x, 4, "(N, C, H, W)");
        int c = x.Shape[1];
        var perChannel = new Shape(c);
        foreach (var (t, what) in new[] { (weight, "weight"), (bias, "bias"), (runningMean, "running_mean"), (runningVar, "running_var") })
        {
            RequireSame(op, x, t);
            RequireShape(op, t, perChannel, what);
        }
        if (!(eps > 0)) throw new ArgumentOutOfRangeException(nameof(eps), $"batch_norm2d: eps must be > 0, got {eps}");
        if (!(momentum >= 0 && momentum <= 1)) throw new ArgumentOutOfRangeException(nameof(momentum), $"batch_norm2d: momentum must be in [0, 1], got {momentum}");
        long perChannelCount = x.Shape[0] * x.Shape.Product(2, 4);
        if (training && perChannelCount <= 1)
            throw new ArgumentException($"batch_norm2d: training needs more than 1 value per channel, got input {x.Describe()}");
        if (perChannelCount == 0) throw new ArgumentException($"batch_norm2d: input {x.Describe()} is empty");

        var y = EmptyLike(x);
        var mean = Empty(perChannel, x);
        var rstd = Empty(perChannel, x);
        using (mean)
        using (rstd)
        {
            x.Backend.BatchNorm2d(x, weight, bias, runningMean, runningVar, y, mean, rstd, training, momentum, eps);
            return NeedsGrad(x, weight, bias) ? Record(new BatchNorm2dNode(y, x, weight, bias, mean, rstd, training)) : y;
        }
    }

    private sealed class BatchNorm2dNode : TapeNode
    {
        private readonly Tensor? _x;
        private readonly Tensor? _w;
        private readonly Tensor _mean, _rstd;
        private readonly bool _training;

        public BatchNorm2dNode(Tensor y, Tensor x, Tensor w, Tensor b, Tensor mean, Tensor rstd, bool training) : base(y, x, w, b)
        {
            _training = training;
            if (x.RequiresGrad || w.RequiresGrad) _x = Save(x); // x̂ = (x - mean)·rstd
            if (x.RequiresGrad) _w = Save(w);
            _mean = Save(mean);
            _rstd = Save(rstd);
        }

        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var dx = grads.For(Inputs[0]);
            var dw = grads.For(Inputs[1]);
            var db = grads.For(Inputs[2]);
            if (dx is null && dw is null && db is null) return;
            dy.Backend.BatchNorm2dBackward(_x, _w, _mean, _rstd, dy, dx, dw, db, _training);
        }
    }

    // ---- pooling ------------------------------------------------------------------------------------

    /// <summary>
    /// Max pooling with a square window, as torch.nn.functional.max_pool2d (dilation 1, floor mode).
    /// Padding counts as -inf; the gradient goes to the first maximal element in scan order.
    /// x (N, C, H, W) -> y (N, C, OH, OW), OH = (H + 2p - kernel) / stride + 1.
    /// </summary>
    public static Tensor MaxPool2d(Tensor x, int kernel, int stride, int padding = 0)
    {
        const string op = "max_pool2d";
        RequireFloat(op, x);
        RequireRank(op, x, 4, "(N, C, H, W)");
        if (kernel < 1) throw new ArgumentOutOfRangeException(nameof(kernel), $"max_pool2d: kernel must be >= 1, got {kernel}");
        if (stride < 1) throw new ArgumentOutOfRangeException(nameof(stride), $"max_pool2d: stride must be >= 1, got {stride}");
        if (padding < 0 || padding > kernel / 2)
            throw new ArgumentOutOfRangeException(nameof(padding), $"max_pool2d: padding must be in [0, kernel / 2] = [0, {kernel / 2}], got {padding}");
        int h = x.Shape[2], w = x.Shape[3];
        if (h + 2 * padding < kernel || w + 2 * padding < kernel)
            throw new ArgumentException($"max_pool2d: input {x.Describe()} padded by {padding} is smaller than the kernel {kernel}");
        int oh = (h + 2 * padding - kernel) / stride + 1, ow = (w + 2 * padding - kernel) / stride + 1;

        var y = Empty(new Shape(x.Shape[0], x.Shape[1], oh, ow), x);
        // Int32 plane offsets (h·W + w) halve the saved bytes; int64 only for planes beyond int32 range.
        var indexType = (long)h * w <= int.MaxValue ? DType.Int32 : DType.Int64;
        using var argmax = Tensor.Empty(y.Shape, indexType, x.Backend);
        x.Backend.MaxPool2d(x, y, argmax, kernel, stride, padding);
        return NeedsGrad(x) ? Record(new MaxPool2dNode(y, x, argmax)) : y;
    }

    private sealed class MaxPool2dNode : TapeNode
    {
        private readonly Tensor _argmax;

        public MaxPool2dNode(Tensor y, Tensor x, Tensor argmax) : base(y, x) => _argmax = Save(argmax);

        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var dx = grads.For(Inputs[0]);
            if (dx is not null) dx.Backend.MaxPool2dBackward(dy, _argmax, dx);
        }
    }

    /// <summary>
    /// Adaptive average pooling, as torch.nn.functional.adaptive_avg_pool2d: output cell (i, j) averages
    /// rows [floor(i·H/outH), ceil((i+1)·H/outH)) and the matching columns. (1, 1) is global average pooling.
    /// x (N, C, H, W) -> y (N, C, outH, outW).
    /// </summary>
    public static Tensor AdaptiveAvgPool2d(Tensor x, int outH, int outW)
    {
        const string op = "adaptive_avg_pool2d";
        RequireFloat(op, x);
        RequireRank(op, x, 4, "(N, C, H, W)");
        if (outH < 1 || outW < 1) throw new ArgumentOutOfRangeException(nameof(outH), $"adaptive_avg_pool2d: output size must be >= 1, got ({outH}, {outW})");
        if (x.Shape[2] < 1 || x.Shape[3] < 1) throw new ArgumentException($"adaptive_avg_pool2d: input {x.Describe()} has an empty plane");

        var y = Empty(new Shape(x.Shape[0], x.Shape[1], outH, outW), x);
        x.Backend.AdaptiveAvgPool2d(x, y);
        return NeedsGrad(x) ? Record(new AdaptiveAvgPool2dNode(y, x)) : y;
    }

    private sealed class AdaptiveAvgPool2dNode(Tensor y, Tensor x) : TapeNode(y, x)
    {
        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var dx = grads.For(Inputs[0]);
            if (dx is not null) dx.Backend.AdaptiveAvgPool2dBackward(dy, dx);
        }
    }
}
