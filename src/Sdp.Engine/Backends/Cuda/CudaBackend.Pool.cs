using Sdp.Kernels.Cuda;

namespace Sdp.Engine.Backends.Cuda;

/// <summary>
/// Max and adaptive average pooling (kernels.cu §8c): one thread per output element forward; backward one
/// thread per dx element (adaptive) or per plane (max, whose window geometry the method is not given), so
/// every gradient is summed in the CPU's order without atomics.
/// </summary>
public sealed partial class CudaBackend
{
    public void MaxPool2d(Tensor x, Tensor y, Tensor argmax, int kernel, int stride, int padding)
    {
        long planes = x.Shape.Product(0, 2);
        Launch1D($"maxpool2d_forward_{Sfx(x.DType)}", y.Numel,
            new KernelArgs().Add(Ptr(x)).Add(Ptr(y)).Add(Ptr(argmax)).Add(argmax.DType == DType.Int64 ? 1 : 0).Add(planes)
                .Add(x.Shape[2]).Add(x.Shape[3]).Add(y.Shape[2]).Add(y.Shape[3]).Add(kernel).Add(stride).Add(padding));
    }

    public void MaxPool2dBackward(Tensor dy, Tensor argmax, Tensor dx)
    {
        long planes = dx.Shape.Product(0, 2), inPlane = dx.Shape.Product(2, 4), outPlane = dy.Shape.Product(2, 4);
        if (inPlane == 0 || outPlane == 0) return;
        Launch1D($"maxpool2d_backward_{Sfx(dx.DType)}", planes,
            new KernelArgs().Add(Ptr(dy)).Add(Ptr(argmax)).Add(argmax.DType == DType.Int64 ? 1 : 0).Add(Ptr(dx)).Add(planes).Add(inPlane).Add(outPlane));
    }

    public void AdaptiveAvgPool2d(Tensor x, Tensor y)
    {
        long planes = x.Shape.Product(0, 2);
        Launch1D($"adaptive_avgpool2d_forward_{Sfx(x.DType)}", y.Numel,
            new KernelArgs().Add(Ptr(x)).Add(Ptr(y)).Add(planes).Add(x.Shape[2]).Add(x.Shape[3]).Add(y.Shape[2]).Add(y.Shape[3]));
    }

    public void AdaptiveAvgPool2dBackward(Tensor dy, Tensor dx)
    {
        long planes = dx.Shape.Product(0, 2);
        if (dy.Numel == 0) return;
        Launch1D($"adaptive_avgpool2d_backward_{Sfx(dx.DType)}", dx.Numel,
            new KernelArgs().Add(Ptr(dy)).Add(Ptr(dx)).Add(planes).Add(dx.Shape[2]).Add(dx.Shape[3]).Add(dy.Shape[2]).Add(dy.Shape[3]));
    }
}
