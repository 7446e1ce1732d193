namespace Sdp.Engine.Nn;

/// <summary>
/// torch.nn.BatchNorm2d with torchvision's names: weight, bias, running_mean, running_var and
/// num_batches_tracked. Training mode normalises with batch statistics and updates the running ones.
/// </summary>
public sealed class BatchNorm2d : Module
{
    public BatchNorm2d(int channels, double? momentum = 0.1, double eps = 1e-5, DType dtype = DType.Float32)
    {
        (Momentum, Eps) = (momentum, eps);
        var shape = new Shape(channels);
        Weight = RegisterParameter("weight", Init.Constant(NewParameterTensor(shape, dtype), 1));
        Bias = RegisterParameter("bias", Init.Constant(NewParameterTensor(shape, dtype), 0));
        RunningMean = RegisterBuffer("running_mean", Init.Constant(NewParameterTensor(shape, dtype), 0));
        RunningVar = RegisterBuffer("running_var", Init.Constant(NewParameterTensor(shape, dtype), 1));
        NumBatchesTracked = RegisterBuffer("num_batches_tracked", Init.Constant(NewParameterTensor(Shape.Scalar, DType.Int64), 0));
    }

    /// <summary>
    /// Weight of a training batch's statistics in the running ones (torch's momentum): running = (1 - m)·running
    /// + m·batch. Null is torch's momentum=None, a cumulative average: the b-th batch since
    /// <see cref="ResetRunningStats"/> weighs 1/b, so the running statistics are the plain mean of the batches'.
    /// </summary>
    public double? Momentum
    {
        get => _momentum;
        set => _momentum = value is null or (>= 0 and <= 1) ? value : throw new ArgumentOutOfRangeException(nameof(value), $"BatchNorm2d: momentum must be in [0, 1] or null (cumulative average), got {value}");
    }

    private double? _momentum;

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

    // Pixels of the last input (N·H·W): a channel's normalisation and affine cost 2 FLOPs on each.
    private long _pixels = 1;

    protected internal override long FlopsPerElement(string name) => name == "weight" ? 2 * _pixels : 0;

    /// <summary>Running mean 0, variance 1 and no batches tracked, as at construction (torch's reset_running_stats).</summary>
    public void ResetRunningStats()
    {
        RunningMean.Backend.Fill(RunningMean, 0);
        RunningVar.Backend.Fill(RunningVar, 1);
        NumBatchesTracked.Backend.Fill(NumBatchesTracked, 0);
        _batchesTracked = 0;
    }

    /// <summary>x (N, C, H, W) -> y (N, C, H, W).</summary>
    public Tensor Forward(Tensor x)
    {
        double momentum = 0; // unused in eval mode
        if (IsTraining)
        {
            _batchesTracked = BatchesTracked + 1;
            NumBatchesTracked.Backend.Fill(NumBatchesTracked, _batchesTracked.Value);
            momentum = Momentum ?? 1.0 / _batchesTracked.Value;
        }
        _pixels = x.Rank == 4 ? (long)x.Shape[0] * x.Shape[2] * x.Shape[3] : 1;
        return Ops.BatchNorm2d(x, Weight, Bias, RunningMean, RunningVar, IsTraining, momentum, Eps);
    }
}
