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
        var run = new StepRunOptions(defaultModel: "resnet18", resnetConfig: "{\"width\":64}", defaultBatch: 32, defaultSeq: 128);
        var steps = new Option<int>("--steps") { Description = "Measured steps, after 5 warm-up", DefaultValueFactory = _ => 10 };
        var cmd = new Command("alloc", "Managed allocation per steady-state training step of one DP worker, and the types allocated") { run.Model, run.Config, run.Batch, run.Seq, steps };
        cmd.SetAction(p =>
        {
            var (m, config, batch, seq) = run.Read(p);
            AllocSteps(Console.Out, m, config, batch, seq, Check.Positive(p.GetValue(steps), "--steps"));
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
