using System.CommandLine;
using System.Diagnostics.Tracing;
using System.Globalization;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;

namespace Sdp.Cli.Commands;

/// <summary>
/// `sdp bench alloc`: one DP worker's steady-state training steps (as `sdp bench step` runs them), the managed bytes
/// they allocate per step (all threads, outside tensor storage) and, from the runtime's sampled allocation events
/// (one per ~100 KB allocated), the types that account for them.
/// </summary>
public static partial class BenchCommand
{
    private static Command AllocCommand()
    {
        var model = new Option<string>("--model") { Description = "llama (tiny) or resnet18", DefaultValueFactory = _ => "resnet18" };
        model.AcceptOnlyFromAmong(RunSetup.Models);
        var config = new Option<string?>("--config") { Description = "Model config (default: tiny for llama, {\"width\":64} for resnet18)" };
        var batch = new Option<int>("--batch") { Description = "Batch", DefaultValueFactory = _ => 32 };
        var seq = new Option<int>("--seq") { Description = "Tokens per sequence (llama)", DefaultValueFactory = _ => 128 };
        var steps = new Option<int>("--steps") { Description = "Measured steps, after 5 warm-up", DefaultValueFactory = _ => 10 };
        var cmd = new Command("alloc", "Managed allocation per steady-state training step of one DP worker, and the types allocated") { model, config, batch, seq, steps };
        cmd.SetAction(p =>
        {
            string m = p.GetValue(model)!;
            AllocSteps(Console.Out, m, p.GetValue(config) ?? (m == "llama" ? "tiny" : "{\"width\":64}"), Check.Positive(p.GetValue(batch), "--batch"),
                Check.Positive(p.GetValue(seq), "--seq"), Check.Positive(p.GetValue(steps), "--steps"));
            return 0;
        });
        return cmd;
    }

    private static void AllocSteps(TextWriter output, string model, string config, int batch, int seq, int steps)
    {
        var inv = CultureInfo.InvariantCulture;
        var (data, _, description) = RunSetup.BuildData(model, "synthetic", batch, seq, shuffle: false, seed: 0, train: true);
        var subnetwork = RunSetup.BuildSubnetworkModel(model, config, 0, 3, 10, SubnetLevel.Block, new SubnetOptions(), null, "--config");
        using var step = IsolatedWorkerStep.Create(subnetwork, StepVariant.Dp, 4, data);
        for (int s = 0; s < 5; s++) step.Run();
        using var listener = new AllocationListener();
        long before = GC.GetTotalAllocatedBytes(precise: true);
        for (int s = 0; s < steps; s++) step.Run();
        long perStep = (GC.GetTotalAllocatedBytes(precise: true) - before) / steps;
        output.WriteLine($"{model} ({config}) on {description}, batch {batch}, AdamW, one DP worker: {steps} steps after 5 warm-up");
        output.WriteLine(string.Create(inv, $"managed allocation: {perStep / 1024.0:F1} KiB per step (all threads, outside tensor storage)"));
        output.WriteLine("sampled allocations (about one event per 100 KB), by type:");
        foreach (var (type, bytes) in listener.ByType.OrderByDescending(kv => kv.Value).Take(25).Select(kv => (kv.Key, kv.Value)))
            output.WriteLine(string.Create(inv, $"  {bytes / 1024.0 / steps,10:F1} KiB/step  {type}"));
    }

    /// <summary>Collects the runtime's GCAllocationTick events (type name and the bytes the sample stands for).</summary>
    private sealed class AllocationListener : EventListener
    {
        private readonly object _gate = new();
        private bool _enabled;

        public Dictionary<string, long> ByType { get; } = [];

        protected override void OnEventSourceCreated(EventSource source)
        {
            if (source.Name == "Microsoft-Windows-DotNETRuntime")
            {
                _enabled = true;
                EnableEvents(source, EventLevel.Verbose, (EventKeywords)0x1); // GC keyword
            }
        }

        protected override void OnEventWritten(EventWrittenEventArgs e)
        {
            if (!_enabled || !e.EventName!.StartsWith("GCAllocationTick", StringComparison.Ordinal) || e.Payload is null) return;
            int typeIndex = e.PayloadNames!.IndexOf("TypeName"), amountIndex = e.PayloadNames.IndexOf("AllocationAmount64");
            if (typeIndex < 0) return;
            string type = e.Payload[typeIndex] as string ?? "?";
            long amount = amountIndex >= 0 ? Convert.ToInt64(e.Payload[amountIndex], CultureInfo.InvariantCulture) : 100_000;
            lock (_gate) ByType[type] = ByType.GetValueOrDefault(type) + amount;
        }
    }
}
