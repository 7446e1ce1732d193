using Sdp.Engine.Autograd;
using Sdp.Engine.Memory;
using Sdp.Engine.Nn;

namespace Sdp.Engine.Subnetworks;

/// <summary>
/// Moves tensor values between the dense model and the workers' copies, by name: a worker's tensor is
/// either the dense one (same shape) or, for a sliced binding, its held slices in ascending unit order.
/// </summary>
public static class SubnetworkTensors
{
    /// <summary>Every parameter and buffer of a module by dotted name.</summary>
    public static Dictionary<string, Tensor> Named(Module module)
    {
        ArgumentNullException.ThrowIfNull(module);
        var all = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, t) in module.NamedParameters().Concat(module.NamedBuffers())) all[name] = t;
        return all;
    }

    /// <summary>
    /// Sets every tensor of <paramref name="worker"/> from <paramref name="dense"/>: a same-shaped copy, or
    /// the worker's held slices of a sliced tensor (needs <paramref name="layout"/>; without one, every
    /// tensor must have its dense shape). A worker tensor the dense model lacks is an error.
    /// </summary>
    public static void CopyFromDense(Module dense, Module worker, WorkerLayout? layout)
    {
        // The dense model and the worker may live on different devices: each source is moved to the
        // target's device first (a no-op handle when they share one).
        int rank = layout?.Worker ?? 0;
        var source = Named(dense);
        using var noGrad = GradMode.Disable();
        foreach (var (name, target) in Named(worker))
        {
            if (!source.TryGetValue(name, out var denseTensor)) throw new ArgumentException($"SubnetworkTensors: worker {rank} has tensor {name} {target.Shape}, which the dense model does not have");
            using var full = denseTensor.ToDeviceOf(target);
            if (full.Shape == target.Shape)
            {
                full.Backend.Copy(full, target);
                continue;
            }
            var binding = layout?.BindingOf(name);
            if (layout is null || binding is null || binding.IsWhole)
                throw new ArgumentException($"SubnetworkTensors: worker {rank}'s {name} is {target.Shape} but the dense tensor is {full.Shape}, and it is not sliced into units");
            using var index = SliceIndex(layout.HeldSliceIndices(binding), full.Backend);
            if (full.Shape.With(binding.Axis, index.Numel == 0 ? 0 : (int)index.Numel) != target.Shape)
                throw new ArgumentException($"SubnetworkTensors: worker {layout.Worker}'s {name} is {target.Shape}; its {index.Numel} held slices of the dense {full.Shape} along axis {binding.Axis} do not have that shape");
            full.Backend.IndexSelect(full, binding.Axis, index, target, accumulate: false);
        }
        worker.TensorsReplaced();
    }

    /// <summary>
    /// Overwrites every tensor of <paramref name="dense"/> from the workers: shared tensors from worker 0,
    /// each unit from the lowest-ranked worker that holds it (all holders agree, A13/A18). Worker i is
    /// <paramref name="layouts"/>[i].Worker. The workers may be a subset, the ones a process of a multi-process job
    /// runs: what none of them contributes is set to −0.0, the exact identity of addition (x + −0.0 = x for every x,
    /// signed zeros included), so summing every process's partial assembly (an all-reduce) gives the assembled
    /// model bit for bit.
    /// </summary>
    public static void AssembleDense(Module dense, IReadOnlyList<Module> workers, IReadOnlyList<WorkerLayout> layouts)
    {
        ArgumentNullException.ThrowIfNull(workers);
        ArgumentNullException.ThrowIfNull(layouts);
        if (workers.Count != layouts.Count || workers.Count == 0) throw new ArgumentException($"SubnetworkTensors.AssembleDense: {workers.Count} workers but {layouts.Count} layouts");
        var copies = workers.Select(Named).ToArray();
        var plan = layouts[0].Plan;
        var ranks = layouts.Select(l => l.Worker).ToArray();
        int LocalIndex(int worker) => Array.IndexOf(ranks, worker);
        using var noGrad = GradMode.Disable();
        foreach (var (name, target) in Named(dense))
        {
            var binding = layouts[0].BindingOf(name);
            if (binding is null || binding.Unit is not null)
            {
                int from = binding?.Unit is { } unit ? plan.HoldersOf(binding.Group, unit)[0] : 0;
                int local = LocalIndex(from);
                if (local < 0)
                {
                    target.Backend.Fill(target, -0.0);
                    continue;
                }
                using var source = Find(copies[local], name, from).ToDeviceOf(target);
                if (source.Shape != target.Shape) throw new ArgumentException($"SubnetworkTensors.AssembleDense: worker {from}'s {name} is {source.Shape}, the dense tensor {target.Shape}");
                target.Backend.Copy(source, target);
                continue;
            }
            int per = binding.SlicesPerUnit, units = layouts[0].Units.Groups[binding.Group].UnitCount;
            target.Backend.Fill(target, -0.0);
            for (int i = 0; i < workers.Count; i++)
            {
                // The slices this worker contributes: units whose lowest holder it is, at their position in
                // its own tensor (compact: rank among its held units; full: the dense index).
                int w = layouts[i].Worker;
                var held = layouts[i].HeldUnits[binding.Group];
                if (held.Length == 0) continue;
                using var source = Find(copies[i], name, w).ToDeviceOf(target);
                bool compact = source.Shape[binding.Axis] != units * per;
                var from = new List<int>();
                var to = new List<int>();
                for (int h = 0; h < held.Length; h++)
                {
                    if (plan.HoldersOf(binding.Group, held[h])[0] != w) continue;
                    for (int s = 0; s < per; s++)
                    {
                        from.Add((compact ? h : held[h]) * per + s);
                        to.Add(held[h] * per + s);
                    }
                }
                if (from.Count == 0) continue;
                using var fromIndex = SliceIndex(from, target.Backend);
                using var toIndex = SliceIndex(to, target.Backend);
                using (MemoryAccount.Use(MemoryCategory.Workspace))
                using (var gathered = Tensor.Empty(target.Shape.With(binding.Axis, from.Count), target.DType, target.Backend))
                {
                    target.Backend.IndexSelect(source, binding.Axis, fromIndex, gathered, accumulate: false);
                    target.Backend.IndexAdd(gathered, binding.Axis, toIndex, target);
                }
            }
        }
        dense.TensorsReplaced();
    }

    /// <summary>
    /// Backward masking on a worker's dense copy: a sliced parameter trains only its held slices
    /// (<see cref="Tensor.Held"/>), a whole unit the worker does not hold (or a sliced one it holds nothing
    /// of) gets no gradient at all. Returns the parameters that still require grad, for the optimizer.
    /// </summary>
    public static IReadOnlyList<Tensor> ApplyBackwardMasking(Module worker, WorkerLayout layout)
    {
        ArgumentNullException.ThrowIfNull(worker);
        ArgumentNullException.ThrowIfNull(layout);
        var trained = new List<Tensor>();
        foreach (var (name, p) in worker.NamedParameters())
        {
            var binding = layout.BindingOf(name);
            if (!layout.HoldsAny(name)) p.RequiresGrad = false;
            else if (binding is { Unit: null })
            {
                var slices = layout.HeldSliceIndices(binding);
                if (slices.Length < p.Shape[binding.Axis]) p.Held = new HeldSlices(binding.Axis, slices);
            }
            if (p.RequiresGrad) trained.Add(p);
        }
        return trained;
    }

    private static Tensor Find(Dictionary<string, Tensor> tensors, string name, int worker)
        => tensors.TryGetValue(name, out var t) ? t : throw new ArgumentException($"SubnetworkTensors.AssembleDense: worker {worker} should hold {name} but has no such tensor");

    private static Tensor SliceIndex(IReadOnlyList<int> indices, Backends.IBackend backend)
    {
        using (MemoryAccount.Use(MemoryCategory.Workspace))
        {
            return Tensor.FromArray(indices.ToArray(), new Shape(indices.Count), backend);
        }
    }
}
