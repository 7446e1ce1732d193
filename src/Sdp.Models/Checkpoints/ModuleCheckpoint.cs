using System.Text;
using Sdp.Engine;
using Sdp.Engine.Nn;

namespace Sdp.Models.Checkpoints;

/// <summary>What <see cref="ModuleCheckpoint.LoadInto(Module, SafeTensorsFile, bool)"/> did: names loaded, and (non-strict loads only) names skipped.</summary>
public sealed record ModuleLoadResult(IReadOnlyList<string> Loaded, IReadOnlyList<string> Missing, IReadOnlyList<string> Unexpected);

/// <summary>
/// A <see cref="Module"/>'s parameters and buffers as a safetensors file, keyed by their dotted
/// PyTorch-style names ("layers.0.mlp.gate_proj.weight"), so the files interoperate with PyTorch
/// state dicts saved by the <c>safetensors</c> library.
/// </summary>
public static class ModuleCheckpoint
{
    /// <summary>Every parameter, then every buffer, with its dotted name: what <see cref="Save"/> writes.</summary>
    public static IEnumerable<(string Name, Tensor Tensor)> StateDict(Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return model.NamedParameters().Concat(model.NamedBuffers());
    }

    /// <summary>
    /// Writes the model's parameters and buffers to <paramref name="path"/> atomically (see
    /// <see cref="SafeTensorsFile.Write"/>). The metadata gets "format": "pt" unless it sets "format",
    /// which tells Hugging Face tools that the names are a PyTorch state dict.
    /// </summary>
    public static void Save(Module model, string path, IReadOnlyDictionary<string, string>? metadata = null, SafeTensorsDType? storeAs = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        var meta = metadata is null ? new Dictionary<string, string>() : new Dictionary<string, string>(metadata);
        meta.TryAdd("format", "pt");
        SafeTensorsFile.Write(path, StateDict(model), meta, storeAs);
    }

    /// <summary>Opens <paramref name="path"/> and loads it as <see cref="LoadInto(Module, SafeTensorsFile, bool)"/> does.</summary>
    public static ModuleLoadResult LoadInto(Module model, string path, bool strict = true)
    {
        using var file = SafeTensorsFile.Read(path);
        return LoadInto(model, file, strict);
    }

    /// <summary>
    /// Overwrites every parameter and buffer of <paramref name="model"/> with the tensor of the same name
    /// in <paramref name="file"/>, converted to the model tensor's dtype. Everything is checked before
    /// anything is written, and all problems are reported together in one
    /// <see cref="InvalidDataException"/>: names the checkpoint lacks ("missing"), names the model lacks
    /// ("unexpected"), shapes that differ ("name: checkpoint (a, b) vs model (c, d)") and dtypes that do
    /// not convert (floating-point values into an integer tensor). With <paramref name="strict"/> false,
    /// missing and unexpected names are allowed (and returned) but shape and dtype mismatches still fail,
    /// as in PyTorch's load_state_dict.
    /// </summary>
    public static ModuleLoadResult LoadInto(Module model, SafeTensorsFile file, bool strict = true)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(file);
        var plan = Plan(model, file);
        plan.ThrowIfInvalid(file.Path, "the model", strict);
        plan.Execute(file);
        model.TensorsReplaced();
        return new ModuleLoadResult(plan.Loaded, plan.Missing, plan.Unexpected);
    }

    internal static LoadPlan Plan(Module model, SafeTensorsFile file)
    {
        var plan = new LoadPlan();
        var seen = new HashSet<string>();
        foreach (var (name, tensor) in StateDict(model))
        {
            if (!seen.Add(name))
            {
                plan.Mismatched.Add($"{name}: the model has two tensors with this name");
                continue;
            }
            plan.Expect(file, name, tensor);
        }
        plan.AddUnexpected(file, seen);
        return plan;
    }

    /// <summary>Which file tensors go into which model tensors, and what does not fit; built before anything is written.</summary>
    internal sealed class LoadPlan
    {
        public List<(string Name, Tensor Target)> Copies { get; } = [];

        public List<string> Loaded { get; } = [];

        public List<string> Missing { get; } = [];

        public List<string> Unexpected { get; } = [];

        public List<string> Mismatched { get; } = [];

        /// <summary>Plans loading file tensor <paramref name="name"/> into <paramref name="target"/>.</summary>
        public void Expect(SafeTensorsFile file, string name, Tensor target)
        {
            if (!file.TryGetInfo(name, out var info))
            {
                Missing.Add(name);
                return;
            }
            if (info.Shape != target.Shape)
            {
                Mismatched.Add($"{name}: checkpoint {info.Shape} vs model {target.Shape}");
                return;
            }
            if (!info.DType.CanLoadAs(target.DType))
            {
                Mismatched.Add($"{name}: checkpoint {info.DTypeName} cannot be loaded into {target.DType.Name()}");
                return;
            }
            Copies.Add((name, target));
            Loaded.Add(name);
        }

        public void AddUnexpected(SafeTensorsFile file, IReadOnlySet<string> expected)
        {
            foreach (var name in file.Names)
            {
                if (!expected.Contains(name)) Unexpected.Add(name);
            }
        }

        public void ThrowIfInvalid(string path, string target, bool strict)
        {
            int problems = Mismatched.Count + (strict ? Missing.Count + Unexpected.Count : 0);
            if (problems == 0) return;
            var sb = new StringBuilder($"checkpoint '{path}' does not match {target} ({problems} problem{(problems == 1 ? "" : "s")}):");
            if (strict)
            {
                foreach (var name in Missing) sb.Append("\n  missing from the checkpoint: ").Append(name);
                foreach (var name in Unexpected) sb.Append("\n  unexpected in the checkpoint: ").Append(name);
            }
            foreach (var m in Mismatched) sb.Append("\n  mismatch: ").Append(m);
            throw new InvalidDataException(sb.ToString());
        }

        public void Execute(SafeTensorsFile file)
        {
            foreach (var (name, target) in Copies) file.LoadInto(name, target);
        }
    }
}
