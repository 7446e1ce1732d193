using Sdp.Engine.Autograd;

namespace Sdp.Engine;

/// <summary>
/// Differentiable tensor operations. Each op validates its inputs (errors name the op, the shapes and
/// what was expected), allocates its output, asks the backend to compute it, and, when grad mode is
/// on and an input requires grad, records a node whose Backward is the op's other half. Ops are
/// grouped by family in Ops.*.cs, each forward next to its backward node.
/// </summary>
public static partial class Ops
{
    /// <summary>True when an op over these inputs must record a tape node.</summary>
    internal static bool NeedsGrad(Tensor a) => GradMode.IsEnabled && a.RequiresGrad;

    internal static bool NeedsGrad(Tensor a, Tensor b) => GradMode.IsEnabled && (a.RequiresGrad || b.RequiresGrad);

    internal static bool NeedsGrad(params ReadOnlySpan<Tensor?> inputs)
    {
        if (!GradMode.IsEnabled) return false;
        foreach (var t in inputs)
        {
            if (t is not null && t.RequiresGrad) return true;
        }
        return false;
    }

    /// <summary>Records <paramref name="node"/> on this thread's tape and returns its output.</summary>
    internal static Tensor Record(TapeNode node)
    {
        Tape.Record(node);
        return node.Output;
    }

    // ---- validation ------------------------------------------------------------------------------

    internal static void RequireFloat(string op, Tensor t)
    {
        if (!t.DType.IsFloatingPoint()) throw new ArgumentException($"{op}: expected a float32 or float64 tensor, got {t.Describe()}");
    }

    internal static void RequireIndex(string op, Tensor t)
    {
        if (t.DType is not (DType.Int32 or DType.Int64)) throw new ArgumentException($"{op}: expected an int32 or int64 index tensor, got {t.Describe()}");
    }

    /// <summary>Same device and same dtype, the precondition of every binary op.</summary>
    internal static void RequireSame(string op, Tensor a, Tensor b)
    {
        if (a.Device != b.Device) throw new ArgumentException($"{op}: operands are on different devices: {a.Describe()} on {a.Device}, {b.Describe()} on {b.Device}");
        if (a.DType != b.DType) throw new ArgumentException($"{op}: operands have different dtypes: {a.Describe()} and {b.Describe()}");
    }

    internal static void RequireRank(string op, Tensor t, int rank, string layout)
    {
        if (t.Rank != rank) throw new ArgumentException($"{op}: expected a rank-{rank} tensor {layout}, got {t.Describe()}");
    }

    internal static void RequireShape(string op, Tensor t, Shape expected, string what)
    {
        if (t.Shape != expected) throw new ArgumentException($"{op}: {what} must have shape {expected}, got {t.Describe()}");
    }

    internal static Tensor EmptyLike(Tensor t) => Tensor.Empty(t.Shape, t.DType, t.Backend);

    internal static Tensor Empty(Shape shape, Tensor like) => Tensor.Empty(shape, like.DType, like.Backend);
}
