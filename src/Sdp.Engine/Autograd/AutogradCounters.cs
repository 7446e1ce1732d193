namespace Sdp.Engine.Autograd;

/// <summary>
/// Per-thread work counters for backward passes, so tests and benchmarks can tell how much leaf-gradient
/// work a pass did (e.g. that SDP backward masking computed no weight gradient for unheld slices).
/// Backward runs on the calling thread, so a reset before and a read after a backward on one thread
/// measure exactly that pass.
/// </summary>
public static class AutogradCounters
{
    [ThreadStatic] private static long _weightGradElements;

    /// <summary>
    /// Gradient elements written for leaves that require grad (weights, biases, leaf inputs): each time a
    /// backward node asks for a leaf's gradient buffer this grows by that buffer's size, the full numel on
    /// the generic path (even for a leaf with <see cref="Tensor.Held"/>, whose full-size buffer is
    /// transient) and the compact numel on the held-slice fast paths (Linear/matmul weights, conv2d
    /// weights held along axis 0 or 1), which never materialise a full-size gradient.
    /// </summary>
    public static long WeightGradElements => _weightGradElements;

    /// <summary>Sets this thread's counters to zero.</summary>
    public static void Reset() => _weightGradElements = 0;

    internal static void AddWeightGrad(long elements) => _weightGradElements += elements;
}
