using System.Globalization;
using System.Text.Json.Nodes;
using Sdp.Models.Checkpoints;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;

namespace Sdp.Cli.Commands;

/// <summary>
/// `sdp train ... --resume DIR`: the very command that saved DIR may be run again with --resume added. Every option
/// that shapes the trajectory and is given again must equal what the checkpoint was saved with; an option left out
/// takes the checkpoint's value (the model, the optimizer and its settings) or does not matter to it. --steps, the
/// evaluation and the saving options may change.
/// </summary>
public static partial class TrainCommand
{
    /// <summary>Options compared with the run options stored in worker 0's state.json: the option, its key there, and its value in this run.</summary>
    private static IEnumerable<(string Option, string Key, object Value)> StoredRunOptions(Options o) =>
    [
        ("--model", "model", o.Model), ("--data", "data", o.Data), ("--batch", "batch", o.Batch), ("--seq", "seq", o.Seq),
        ("--optimizer", "optimizer", o.Optimizer), ("--lr", "lr", o.Lr), ("--schedule", "schedule", o.Schedule),
        ("--warmup", "warmup", o.WarmupSteps), ("--clip", "clip", o.Clip), ("--seed", "seed", o.Seed),
    ];

    /// <summary>Throws a usage error naming every option given with a value other than the checkpoint's, with both values.</summary>
    private static void CheckMatchesCheckpoint(Options o, SdpCheckpoint.Info saved)
    {
        var conflicts = new List<string>();
        var inv = CultureInfo.InvariantCulture;
        if (saved.RunOptions is { } stored)
        {
            foreach (var (option, key, value) in StoredRunOptions(o))
            {
                if (!o.Given.Contains(option) || stored[key] is not JsonValue savedValue) continue;
                bool same = value is string text
                    ? savedValue.TryGetValue(out string? savedText) && savedText == text
                    : savedValue.TryGetValue(out double savedNumber) && savedNumber == Convert.ToDouble(value, inv);
                if (!same) conflicts.Add($"{option} {Convert.ToString(value, inv)} (the checkpoint has {savedValue.ToJsonString()})");
            }
        }
        foreach (var (option, key) in (ReadOnlySpan<(string, string)>)[("--momentum", "momentum"), ("--weight-decay", "weight_decay")])
        {
            double value = option == "--momentum" ? o.Momentum : o.WeightDecay;
            if (o.Given.Contains(option) && saved.Optimizer.Hyperparameters.TryGetValue(key, out double savedValue) && savedValue != value)
                conflicts.Add(string.Create(inv, $"{option} {value} (the checkpoint's {saved.Optimizer.Kind} has {savedValue})"));
        }
        if (o.Config is not null && saved.ModelConfig is not null && ConfigDifferences(o, saved.ModelConfig) is { Count: > 0 } differences)
            conflicts.Add($"--config {o.Config} ({string.Join(", ", differences)})");
        if (conflicts.Count > 0)
            throw new UsageException($"--resume: checkpoint '{saved.Directory}' was saved with other options than given: {string.Join("; ", conflicts)}; give the checkpoint's values or leave the options out");
    }

    /// <summary>"key given vs key saved" for every field where --config describes another model than the checkpoint's configuration.</summary>
    private static List<string> ConfigDifferences(Options o, string savedJson)
    {
        string given, saved;
        if (o.Model == "llama")
        {
            saved = LlamaConfig.FromJson(savedJson, $"--resume checkpoint '{o.Resume}'").ToJson();
            given = RunSetup.LlamaConfigFrom(o.Config!, "--config").ToJson();
        }
        else
        {
            var savedConfig = ResNetConfig.FromJson(savedJson);
            saved = savedConfig.ToJson();
            // The image shape comes from the data, which the checkpoint's run read.
            given = RunSetup.ResNetConfigFrom(o.Config, savedConfig.InChannels, savedConfig.NumClasses, "--config").ToJson();
        }
        var a = (JsonObject)JsonNode.Parse(given)!;
        var b = (JsonObject)JsonNode.Parse(saved)!;
        return [.. a.Select(p => p.Key).Union(b.Select(p => p.Key)).Where(k => !JsonNode.DeepEquals(a[k], b[k]))
            .Select(k => $"{k} {a[k]?.ToJsonString() ?? "absent"}, the checkpoint's {b[k]?.ToJsonString() ?? "absent"}")];
    }
}
