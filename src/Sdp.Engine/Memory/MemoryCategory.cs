namespace Sdp.Engine.Memory;

/// <summary>What an allocation is for. Every byte an Sdp backend allocates is charged to exactly one category.</summary>
public enum MemoryCategory
{
    Parameters,
    Gradients,
    OptimizerState,

    /// <summary>Tensors saved by the autograd tape for backward. An op output becomes an activation
    /// while at least one tape node holds it, and falls back to workspace when the last one lets go.</summary>
    Activations,

    /// <summary>Everything transient: op outputs nobody saved, activation gradients, kernel scratch.</summary>
    Workspace,

    /// <summary>Engine-owned tensors a worker keeps between steps so that a step allocates none: held-slice
    /// index tensors, the optimizer's compact staging copy, gradient-sync staging buffers.</summary>
    EngineBuffers,
}
