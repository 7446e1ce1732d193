using Sdp.Engine.Autograd;

namespace Sdp.Engine;

/// <summary>Pooling of NCHW activations, with PyTorch semantics (torch.nn.functional).</summary>
public static partial class Ops
{
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
