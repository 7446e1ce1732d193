using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Engine.Distributed;
using Sdp.Engine.Nn;

namespace Sdp.Models.Checkpoints;

/// <summary>
/// The training state of a run of W workers (DP or SDP; single-process training is W = 1 DP), in one directory:
/// <code>
/// model.safetensors      the dense model (assembled from the holders in SDP; config in the metadata)
/// sdp.json               format, version, step, and the run's workers/mode/level/masking/coverage/plan seed
/// worker-{w}/            each worker's training checkpoint (its own, possibly compact, model; its optimizer
///                        state over what it holds; its data position), as <see cref="TrainingCheckpoint"/> writes it
/// </code>
/// Written into <c>DIR.tmp-&lt;pid&gt;</c> and exchanged with DIR atomically (see <see cref="TrainingCheckpoint.Swap"/>),
/// so DIR always names a complete checkpoint, the latest; with a history of K (<c>--keep-last K</c>) the K - 1
/// before it stay beside it as complete checkpoints <c>DIR.step-&lt;step&gt;</c> (six digits at least). Leftovers
/// of a save that was killed (<c>DIR.tmp-*</c>, <c>DIR.old-*</c>) are never read, and the next save removes
/// them: one run saves to a DIR at a time. Earlier Sdp versions
/// saved single-worker runs as one <see cref="TrainingCheckpoint"/> at the top of the directory (no sdp.json):
/// <see cref="IsSingleWorkerState"/> recognises that format, which <see cref="ReadInfo"/> and
/// <see cref="WorkerCheckpoint"/> read as worker 0 of a one-worker DP run.
/// </summary>
public static class SdpCheckpoint
{
    public const string StateFileName = "sdp.json";
    public const string StateFormat = "sdp.distributed_training_state";
    public const int StateVersion = 1;

    public static string WorkerDirectory(int worker) => "worker-" + worker.ToString(CultureInfo.InvariantCulture);

    /// <summary>What identifies a run: a checkpoint only resumes into a run with the same description.</summary>
    public sealed record RunDescription(int Workers, string Mode, string Level, string Masking, double Coverage, ulong PlanSeed)
    {
        /// <summary>Data parallelism on <paramref name="workers"/> workers; one worker is single-process training.</summary>
        public static RunDescription Dp(int workers) => new(workers, "dp", "none", "none", 1.0, 0);
    }

    /// <summary>
    /// What a training state holds besides the tensors: the run, the step, the dense model's configuration and
    /// worker 0's optimizer kind and settings (every worker's optimizer is made the same way), enough to
    /// rebuild the model and the optimizers before resuming, and the run options worker 0's state holds (those
    /// `sdp train` stores: model, data, batch, ...; null when the saver gave none).
    /// </summary>
    public sealed record Info(string Directory, RunDescription Run, long Step, string? ModelConfig, OptimizerSnapshot Optimizer, JsonObject? RunOptions = null);

    /// <summary>One worker's part: its model copy, optimizer and state.</summary>
    public sealed record WorkerState(Module Model, Engine.Optim.Optimizer Optimizer, TrainingState State);

    public static void Save(string directory, Module dense, string? configJson, long step, RunDescription run, IReadOnlyList<WorkerState> workers)
    {
        ArgumentNullException.ThrowIfNull(workers);
        Save(directory, dense, configJson, step, run, [.. workers.Select((state, w) => (w, state))], processes: null);
    }

    /// <summary>
    /// Saves the workers this process runs (<paramref name="workers"/>: world rank and state). In a multi-process job
    /// (<paramref name="processes"/>) every process calls it with its own workers: rank 0 makes the temporary
    /// directory (named after its process id, which every process learns), each process writes its workers' parts,
    /// and after a barrier rank 0 writes the dense model and sdp.json and moves the directory into place; a last
    /// barrier lets nobody go on before the checkpoint exists. The directory must be on a file system every
    /// process sees (one node, or a shared file system across nodes). <paramref name="keepLast"/>: how many checkpoints
    /// to keep, DIR and the latest keepLast - 1 DIR.step-N before it.
    /// </summary>
    public static void Save(string directory, Module dense, string? configJson, long step, RunDescription run, IReadOnlyList<(int Worker, WorkerState State)> workers, IProcessGroup? processes, int keepLast = 1)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(keepLast, 1);
        ArgumentNullException.ThrowIfNull(dense);
        ArgumentNullException.ThrowIfNull(run);
        ArgumentNullException.ThrowIfNull(workers);
        bool leader = processes is null || processes.Rank == 0;
        string target = TrainingCheckpoint.FullDirectoryPath(directory);
        long leaderId = processes is null ? Environment.ProcessId : (long)processes.AllGather([Environment.ProcessId])[0];
        string temp = $"{target}.tmp-{leaderId}";
        if (leader)
        {
            if (File.Exists(target)) throw new IOException($"training checkpoint '{target}': a file is in the way of the checkpoint directory");
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            RemoveLeftovers(target);
            Directory.CreateDirectory(temp);
        }
        processes?.Barrier();
        try
        {
            foreach (var (w, state) in workers)
                TrainingCheckpoint.Save(Path.Combine(temp, WorkerDirectory(w)), state.Model, state.Optimizer, state.State);
            processes?.Barrier();
            if (leader)
            {
                var metadata = new Dictionary<string, string>();
                if (configJson is not null) metadata[TrainingCheckpoint.ConfigMetadataKey] = configJson;
                ModuleCheckpoint.Save(dense, Path.Combine(temp, TrainingCheckpoint.ModelFileName), metadata);
                var state = new JsonObject
                {
                    ["format"] = StateFormat, ["version"] = StateVersion, ["step"] = step,
                    ["workers"] = run.Workers, ["mode"] = run.Mode, ["level"] = run.Level, ["masking"] = run.Masking,
                    ["coverage"] = run.Coverage, ["plan_seed"] = run.PlanSeed,
                };
                AtomicFile.Write(Path.Combine(temp, StateFileName), s => JsonSerializer.Serialize(s, state, new JsonSerializerOptions { WriteIndented = true }));
            }
        }
        catch
        {
            // In a job, the failing process ends the job; the leader's next run cleans a stale temporary directory.
            if (leader) TrainingCheckpoint.TryDeleteDirectory(temp);
            throw;
        }
        if (leader)
        {
            long? previous = keepLast > 1 ? SavedStep(target) : null;
            TrainingCheckpoint.Swap(temp, target, previous is { } p && p < step ? HistoryPath(target, p) : null);
            PruneHistory(target, step, keepLast - 1);
        }
        processes?.Barrier();
    }

    /// <summary>Where the checkpoint of <paramref name="step"/> is kept once a later one has replaced it as <paramref name="target"/>.</summary>
    public static string HistoryPath(string target, long step)
        => $"{TrainingCheckpoint.FullDirectoryPath(target)}.step-{step.ToString("D6", CultureInfo.InvariantCulture)}";

    /// <summary>The kept checkpoints before <paramref name="target"/> (DIR.step-N), newest first.</summary>
    public static IReadOnlyList<(long Step, string Directory)> History(string target)
    {
        string full = TrainingCheckpoint.FullDirectoryPath(target);
        string parent = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(parent)) return [];
        string prefix = Path.GetFileName(full) + ".step-";
        var kept = new List<(long, string)>();
        foreach (string dir in Directory.EnumerateDirectories(parent, prefix + "*"))
        {
            if (long.TryParse(Path.GetFileName(dir).AsSpan(prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out long s)) kept.Add((s, dir));
        }
        return [.. kept.OrderByDescending(k => k.Item1)];
    }

    /// <summary>Keeps the <paramref name="keep"/> newest kept checkpoints before <paramref name="step"/>; later ones belong to an earlier, longer run and go too.</summary>
    private static void PruneHistory(string target, long step, int keep)
    {
        int kept = 0;
        foreach (var (s, dir) in History(target))
        {
            if (s < step && kept < keep) kept++;
            else TrainingCheckpoint.TryDeleteDirectory(dir);
        }
    }

    /// <summary>Removes what killed saves leave beside <paramref name="target"/>: DIR.tmp-* being written, DIR.old-* being replaced.</summary>
    private static void RemoveLeftovers(string target)
    {
        string parent = Path.GetDirectoryName(target)!;
        string name = Path.GetFileName(target);
        foreach (string pattern in (string[])[name + ".tmp-*", name + ".old-*"])
            foreach (string dir in Directory.EnumerateDirectories(parent, pattern)) TrainingCheckpoint.DeleteDirectory(dir);
    }

    /// <summary>The step of the checkpoint in <paramref name="directory"/>, or null when there is none or it cannot be read.</summary>
    private static long? SavedStep(string directory)
    {
        if (!Directory.Exists(directory)) return null;
        try
        {
            return ReadInfo(directory).Step;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>
    /// True when <paramref name="directory"/> holds the single-worker training state of an earlier Sdp version:
    /// a <see cref="TrainingCheckpoint"/> (state.json, model.safetensors, optimizer.safetensors) at the top and no sdp.json.
    /// </summary>
    public static bool IsSingleWorkerState(string directory)
        => !File.Exists(Path.Combine(directory, StateFileName)) && File.Exists(Path.Combine(directory, TrainingCheckpoint.StateFileName));

    /// <summary>Worker <paramref name="worker"/>'s training checkpoint: worker-{w}/, or the directory itself for the single-worker state of an earlier version.</summary>
    public static string WorkerCheckpoint(string directory, int worker)
    {
        if (!IsSingleWorkerState(directory)) return Path.Combine(directory, WorkerDirectory(worker));
        if (worker != 0) throw new ArgumentOutOfRangeException(nameof(worker), $"training checkpoint '{directory}' is a single-worker training state from an earlier Sdp version; it has no worker {worker}");
        return directory;
    }

    /// <summary>The run, step, model config and optimizer settings of a saved run; throws <see cref="InvalidDataException"/> naming the file and field when it is not one.</summary>
    public static Info ReadInfo(string directory)
    {
        string dir = TrainingCheckpoint.RequireDirectory(directory);
        if (IsSingleWorkerState(dir))
        {
            var single = TrainingCheckpoint.ReadInfo(dir);
            return new Info(dir, RunDescription.Dp(1), single.State.Step, single.ModelConfig, single.Optimizer, single.State.Options);
        }
        string path = Path.Combine(dir, StateFileName);
        if (!File.Exists(path))
            throw new InvalidDataException($"training checkpoint '{dir}' has no {StateFileName} (nor the {TrainingCheckpoint.StateFileName} of an earlier single-worker Sdp version); it is not a training state");
        JsonObject o;
        try
        {
            o = JsonNode.Parse(InputFile.ReadUtf8(path, "training state").Span, null, InputFile.StrictJson()) as JsonObject ?? throw new InvalidDataException($"'{path}': expected a JSON object");
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
        var worker = TrainingCheckpoint.ReadInfo(Path.Combine(dir, WorkerDirectory(0)));
        using var model = SafeTensorsFile.Read(Path.Combine(dir, TrainingCheckpoint.ModelFileName));
        return new Info(dir, run, Field<long>("step"), TrainingCheckpoint.ModelConfigOf(model), worker.Optimizer, worker.State.Options);
    }
}
