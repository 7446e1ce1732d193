namespace Sdp.Engine.Nn;

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

    /// <summary>The saved form of <see cref="BatchesTracked"/> (int64 scalar on the module's device).</summary>
    public Tensor NumBatchesTracked { get; }

    // The counter lives on the host, so a training forward never reads the device; the tensor is written
    // (a fill, no read) for checkpoints. Null after TensorsReplaced: re-read once from the tensor.
    private long? _batchesTracked = 0;

    /// <summary>Training-mode forward passes so far (torchvision's num_batches_tracked).</summary>
    public long BatchesTracked => _batchesTracked ??= (long)NumBatchesTracked.Item();

    protected override void OnTensorsReplaced() => _batchesTracked = null;

    /// <summary>x (N, C, H, W) -> y (N, C, H, W).</summary>
    public Tensor Forward(Tensor x)
    {
        if (IsTraining)
        {
            _batchesTracked = BatchesTracked + 1;
            NumBatchesTracked.Backend.Fill(NumBatchesTracked, _batchesTracked.Value);
        }
        return Ops.BatchNorm2d(x, Weight, Bias, RunningMean, RunningVar, IsTraining, Momentum, Eps);
    }
}
