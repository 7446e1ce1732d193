namespace Sdp.Engine.Nn;

/// <summary>torch.nn.Conv2d (NCHW, square kernel), same names; weights U(±1/√fan_in) unless re-initialised.</summary>
public sealed class Conv2d : Module
{
    public Conv2d(int inChannels, int outChannels, int kernel, int stride, int padding, bool bias, Rng rng, DType dtype = DType.Float32)
    {
        (Stride, Padding) = (stride, padding);
        double bound = 1.0 / Math.Sqrt(inChannels * kernel * kernel);
        Weight = RegisterParameter("weight", Init.Uniform(NewParameterTensor(new Shape(outChannels, inChannels, kernel, kernel), dtype), rng, bound));
        if (bias) Bias = RegisterParameter("bias", Init.Uniform(NewParameterTensor(new Shape(outChannels), dtype), rng, bound));
    }

    public int Stride { get; }

    public int Padding { get; }

    public Tensor Weight { get; }

    public Tensor? Bias { get; }

    /// <summary>x (N, C, H, W) -> y (N, O, OH, OW).</summary>
    public Tensor Forward(Tensor x) => Ops.Conv2d(x, Weight, Bias, Stride, Padding);
}

/// <summary>
/// torch.nn.BatchNorm2d with torchvision's names: weight, bias, running_mean, running_var and
/// num_batches_tracked. Training mode normalises with batch statistics and updates the running ones.
/// </summary>
public sealed class BatchNorm2d : Module
{
    public BatchNorm2d(int channels, double momentum = 0.1, double eps = 1e-5, DType dtype = DType.Float32)
    {
        (Momentum, Eps) = (momentum, eps);
        var shape = new Shape(channels);
        Weight = RegisterParameter("weight", Init.Constant(NewParameterTensor(shape, dtype), 1));
        Bias = RegisterParameter("bias", Init.Constant(NewParameterTensor(shape, dtype), 0));
        RunningMean = RegisterBuffer("running_mean", Init.Constant(NewParameterTensor(shape, dtype), 0));
        RunningVar = RegisterBuffer("running_var", Init.Constant(NewParameterTensor(shape, dtype), 1));
        NumBatchesTracked = RegisterBuffer("num_batches_tracked", Init.Constant(NewParameterTensor(Shape.Scalar, DType.Int64), 0));
    }

    public double Momentum { get; }

    public double Eps { get; }

    public Tensor Weight { get; }

    public Tensor Bias { get; }

    public Tensor RunningMean { get; }

    public Tensor RunningVar { get; }

    public Tensor NumBatchesTracked { get; }

    /// <summary>x (N, C, H, W) -> y (N, C, H, W).</summary>
    public Tensor Forward(Tensor x)
    {
        if (IsTraining) NumBatchesTracked.Backend.Fill(NumBatchesTracked, NumBatchesTracked.Item() + 1);
        return Ops.BatchNorm2d(x, Weight, Bias, RunningMean, RunningVar, IsTraining, Momentum, Eps);
    }
}
