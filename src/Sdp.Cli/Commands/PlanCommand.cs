using System.CommandLine;
using System.Globalization;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Subnetworks;

namespace Sdp.Cli.Commands;

/// <summary>`sdp plan`: which worker holds which units of a model under SDP, without building the model.</summary>
public static class PlanCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "llama or resnet18", DefaultValueFactory = _ => "llama" };
        model.AcceptOnlyFromAmong(RunSetup.Models);
        var config = new Option<string?>("--config") { Description = "LLaMA preset or config.json (default tiny); resnet18: 'cifar' or a ResNet config JSON file" };
        var workers = new Option<int>("--workers") { Description = "Workers W", Required = true };
        var coverage = new Option<double>("--coverage") { Description = "Coverage C: each unit is held by C·W workers (a whole number in [1, W])", Required = true };
        var subnet = new Option<string>("--subnet") { Description = "neuron or block", DefaultValueFactory = _ => "neuron" };
        subnet.AcceptOnlyFromAmong("neuron", "block");
        var seed = new Option<ulong>("--seed") { Description = "Seed of the unit permutations and tie-breaks", DefaultValueFactory = _ => 0UL };
        var keepDownsample = new Option<bool>("--keep-downsample-blocks") { Description = "resnet18 block level: never drop the downsampling blocks (they become shared)" };
        var maskHeads = new Option<bool>("--mask-heads") { Description = "llama neuron level: also mask attention heads (per key/value head group)" };
        var splitSublayers = new Option<bool>("--split-sublayers") { Description = "llama block level: attention and MLP sub-blocks are separate units" };
        var json = new Option<bool>("--json") { Description = "Print the plan as JSON" };
        var maxMemory = new Option<string?>(MemoryBudget.Option) { Description = MemoryBudget.Description + " (AdamW, forward masking, with --batch and --seq)" };
        var batch = new Option<int?>("--batch") { Description = "With --max-memory: per-worker batch, sequences (llama, default 8) or 32x32 images (resnet18, default 64)" };
        var seq = new Option<int>("--seq") { Description = "With --max-memory: tokens per sequence (llama)", DefaultValueFactory = _ => 1024 };
        var cmd = new Command("plan", "Show the SDP subnetwork plan: holders per unit, per-worker parameters, connectivity")
            { model, config, workers, coverage, subnet, seed, keepDownsample, maskHeads, splitSublayers, json, maxMemory, batch, seq };
        cmd.SetAction(p =>
        {
            string modelKind = p.GetValue(model)!;
            int w = Check.Positive(p.GetValue(workers), "--workers");
            double c = p.GetValue(coverage);
            var level = SubnetworkPlan.ParseLevel(p.GetValue(subnet)!);
            Check.Coverage(w, c);
            var subnetOptions = new SubnetOptions
            {
                MaskHeads = p.GetValue(maskHeads), SplitSublayers = p.GetValue(splitSublayers),
                Downsample = p.GetValue(keepDownsample) ? DownsampleBlocks.AlwaysKeep : DownsampleBlocks.DropBranchKeepShortcut,
            };
            MemoryWorkload workload = modelKind == "llama"
                ? new LlamaWorkload(RunSetup.LlamaConfigFrom(p.GetValue(config) ?? "tiny", "--config"), Check.Positive(p.GetValue(batch) ?? 8, "--batch"), Check.Positive(p.GetValue(seq), "--seq"))
                : new ResNetWorkload(RunSetup.ResNetConfigFrom(p.GetValue(config), null, null, "--config"), Check.Positive(p.GetValue(batch) ?? 64, "--batch"), 32);
            if (p.GetValue(maxMemory) is { } size)
            {
                var variant = new SdpVariant(level, Masking.Forward, c, p.GetValue(seed), subnetOptions);
                MemoryBudget.Require(MemoryModel.Estimate(workload, OptimizerMemory.AdamW, w, variant), MemoryBudget.Parse(size));
            }
            var units = workload.Units(level, subnetOptions);
            var plan = SubnetworkPlan.Create(units, w, c, p.GetValue(seed));
            if (p.GetValue(json)) Console.WriteLine(plan.ToJson());
            else Print(plan, modelKind);
            return 0;
        });
        return cmd;
    }

    private static void Print(SubnetworkPlan plan, string model)
    {
        var inv = CultureInfo.InvariantCulture;
        int unitCount = plan.Groups.Sum(g => g.UnitCount);
        Console.WriteLine(string.Create(inv, $"plan           {model}, {SubnetworkPlan.LevelName(plan.Level)} level, W = {plan.Workers}, C = {plan.Coverage:0.######}, seed {plan.Seed}"));
        Console.WriteLine(string.Create(inv, $"units          {unitCount} in {plan.Groups.Count} group(s), each held by exactly {plan.HoldersPerUnit} worker(s)"));
        if (plan.Level == SubnetLevel.Block)
        {
            for (int gi = 0; gi < plan.Groups.Count; gi++)
            {
                var g = plan.Groups[gi];
                for (int u = 0; u < g.UnitCount; u++)
                    Console.WriteLine(string.Create(inv, $"  {g.UnitLabel(u),-16} {g.ParamsPerUnit[u],12:N0} params  holders [{string.Join(", ", plan.HoldersOf(gi, u))}]"));
            }
        }
        else
        {
            var g0 = plan.Groups[0];
            int shown = Math.Min(g0.UnitCount, 4);
            string sample = string.Join("; ", Enumerable.Range(0, shown).Select(u => "[" + string.Join(", ", plan.HoldersOf(0, u)) + "]"));
            Console.WriteLine($"  e.g. {g0.Name}: units 0..{shown - 1} held by {sample}");
        }
        long total = plan.TotalParams;
        Console.WriteLine(string.Create(inv, $"parameters     {total:N0} total ({total * 4L:N0} bytes float32), {plan.SharedParams:N0} shared"));
        long max = 0, min = long.MaxValue;
        for (int w = 0; w < plan.Workers; w++)
        {
            long held = plan.HeldParams(w);
            max = Math.Max(max, held);
            min = Math.Min(min, held);
            Console.WriteLine(string.Create(inv,
                $"  worker {w,-4} {held,14:N0} params  {plan.HeldBytes(w),16:N0} bytes  {100.0 * held / total,6:0.0}% of DDP  units {Enumerable.Range(0, plan.Groups.Count).Sum(g => plan.UnitsHeld(w, g))}"));
        }
        Console.WriteLine(string.Create(inv, $"balance        max/min held parameters {(double)max / min:0.000}"));
        Console.WriteLine(string.Create(inv, $"holder groups  {plan.DistinctHolderGroups} distinct holder sets"));
        Console.WriteLine(string.Create(inv, $"connectivity   {(plan.IsConnected ? "connected" : "DISCONNECTED")}, algebraic connectivity {plan.AlgebraicConnectivity:0.######} (normalised {plan.NormalizedAlgebraicConnectivity:0.######})"));
    }
}
