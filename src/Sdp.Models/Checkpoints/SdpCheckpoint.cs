using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sdp.Engine.Nn;

namespace Sdp.Models.Checkpoints;

/// <summary>
/// The training state of a multi-worker (DP or SDP) run, in one directory:
/// <code>
/// model.safetensors      the dense model assembled from the holders (config in the metadata)
/// sdp.json               format, version, step, and the run's workers/mode/level/masking/coverage/plan seed
/// worker-{w}/            each worker's training checkpoint (its own, possibly compact, model; its optimizer
///                        state over what it holds; its data position), as <see cref="TrainingCheckpoint"/> writes it
/// </code>
/// Written into a temporary directory and moved into place, like every checkpoint.
/// </summary>
public static class SdpCheckpoint
{
    public const string StateFileName = "sdp.json";
    public const string StateFormat = "sdp.distributed_training_state";
    public const int StateVersion = 1;

    public static string WorkerDirectory(int worker) => "worker-" + worker.ToString(CultureInfo.InvariantCulture);

    /// <summary>What identifies a run: a checkpoint only resumes into a run with the same description.</summary>
    public sealed record RunDescription(int Workers, string Mode, string Level, string Masking, double Coverage, ulong PlanSeed);

    /// <summary>One worker's part: its model copy, optimizer and state.</summary>
    public sealed record WorkerState(Module Model, Engine.Optim.Optimizer Optimizer, TrainingState State);

    public static void Save(string directory, Module dense, string? configJson, long step, RunDescription run, IReadOnlyList<WorkerState> workers)
    {
        ArgumentNullException.ThrowIfNull(dense);
        ArgumentNullException.ThrowIfNull(run);
        ArgumentNullException.ThrowIfNull(workers);
        string target = TrainingCheckpoint.FullDirectoryPath(directory);
        if (File.Exists(target)) throw new IOException($"training checkpoint '{target}': a file is in the way of the checkpoint directory");
        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        string temp = $"{target}.tmp-{Environment.ProcessId}";
        TrainingCheckpoint.DeleteDirectory(temp);
        Directory.CreateDirectory(temp);
        try
        {
            var metadata = new Dictionary<string, string>();
            if (configJson is not null) metadata[TrainingCheckpoint.ConfigMetadataKey] = configJson;
            ModuleCheckpoint.Save(dense, Path.Combine(temp, TrainingCheckpoint.ModelFileName), metadata);
            for (int w = 0; w < workers.Count; w++)
                TrainingCheckpoint.Save(Path.Combine(temp, WorkerDirectory(w)), workers[w].Model, workers[w].Optimizer, workers[w].State);
            var state = new JsonObject
            {
                ["format"] = StateFormat, ["version"] = StateVersion, ["step"] = step,
                ["workers"] = run.Workers, ["mode"] = run.Mode, ["level"] = run.Level, ["masking"] = run.Masking,
                ["coverage"] = run.Coverage, ["plan_seed"] = run.PlanSeed,
            };
            AtomicFile.Write(Path.Combine(temp, StateFileName), s => JsonSerializer.Serialize(s, state, new JsonSerializerOptions { WriteIndented = true }));
        }
        catch
        {
            TrainingCheckpoint.TryDeleteDirectory(temp);
            throw;
        }
        TrainingCheckpoint.Swap(temp, target);
    }

    /// <summary>The run description and step of a saved run; throws <see cref="InvalidDataException"/> naming the file and field when it is not one.</summary>
    public static (RunDescription Run, long Step) Read(string directory)
    {
        string dir = TrainingCheckpoint.RequireDirectory(directory);
        string path = Path.Combine(dir, StateFileName);
        if (!File.Exists(path)) throw new InvalidDataException($"training checkpoint '{dir}' has no {StateFileName}; it is not a multi-worker training state (single-worker states resume with --workers 1 --mode dp)");
        JsonObject o;
        try
        {
            o = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"'{path}': expected a JSON object");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"'{path}': not valid JSON: {e.Message}", e);
        }
        T Field<T>(string name)
        {
            try
            {
                return o[name] is { } node ? node.GetValue<T>() : throw new InvalidDataException($"'{path}': field \"{name}\" is missing");
            }
            catch (Exception e) when (e is InvalidOperationException or FormatException)
            {
                throw new InvalidDataException($"'{path}': field \"{name}\" must be a {typeof(T).Name}");
            }
        }
        if (Field<string>("format") != StateFormat || Field<int>("version") != StateVersion)
            throw new InvalidDataException($"'{path}': expected format \"{StateFormat}\" version {StateVersion}");
        var run = new RunDescription(Field<int>("workers"), Field<string>("mode"), Field<string>("level"), Field<string>("masking"), Field<double>("coverage"), Field<ulong>("plan_seed"));
        return (run, Field<long>("step"));
    }
}
