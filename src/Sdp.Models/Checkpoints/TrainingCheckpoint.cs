using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Engine.Nn;
using Sdp.Engine.Optim;

namespace Sdp.Models.Checkpoints;

/// <summary>
/// Everything needed to resume one worker's training bit-exactly, in one directory (worker-{w}/ of a training
/// state, <see cref="SdpCheckpoint"/>; earlier Sdp versions saved single-worker runs as this alone):
/// <list type="bullet">
/// <item><c>model.safetensors</c>: parameters and buffers by dotted name; metadata "config" holds the model configuration JSON.</item>
/// <item><c>optimizer.safetensors</c>: per optimizer parameter, its state tensors as "&lt;param name&gt;.&lt;state name&gt;"
/// ("layers.0.mlp.up_proj.weight.exp_avg") and its update count as an I64 scalar "&lt;param name&gt;.step".</item>
/// <item><c>state.json</c>: step, optimizer kind, learning rate, step count and hyperparameters, the
/// learning-rate schedule position, RNG states, and the caller's data-loader position and training options.</item>
/// </list>
/// <see cref="Save"/> replaces the directory atomically: everything is written (and flushed) into
/// <c>DIR.tmp-&lt;pid&gt;</c>, then exchanged with an existing DIR in one atomic rename where the system allows
/// (Linux's RENAME_EXCHANGE), else by two renames through <c>DIR.old-&lt;pid&gt;</c>; only then is the old one
/// deleted. A failure before the final rename deletes the temporary directory and leaves DIR as it was. Resume: <see cref="ReadInfo"/> to rebuild the model
/// (from <see cref="TrainingCheckpointInfo.ModelConfig"/>) and the optimizer
/// (<see cref="OptimizerSnapshot.Create"/>), then <see cref="Load"/>, then restore the RNGs and the data loader.
/// </summary>
public static class TrainingCheckpoint
{
    public const string ModelFileName = "model.safetensors";
    public const string OptimizerFileName = "optimizer.safetensors";
    public const string StateFileName = "state.json";
    public const string ConfigMetadataKey = "config";
    public const string StateFormat = "sdp.training_state";
    public const int StateVersion = 1;

    private const string StepSuffix = "step";

    /// <summary>
    /// Saves <paramref name="model"/>, <paramref name="optimizer"/> (whose parameters must all belong to
    /// the model) and <paramref name="state"/> to <paramref name="directory"/>, replacing it atomically.
    /// <paramref name="modelConfigJson"/>, when given, must be valid JSON.
    /// </summary>
    public static void Save(string directory, Module model, Optimizer optimizer, TrainingState state, string? modelConfigJson = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(optimizer);
        ArgumentNullException.ThrowIfNull(state);
        string target = FullDirectoryPath(directory);
        ValidateState(state, target);
        if (modelConfigJson is not null)
        {
            try
            {
                using var _ = JsonDocument.Parse(modelConfigJson);
            }
            catch (JsonException e)
            {
                throw new ArgumentException($"training checkpoint '{target}': the model config is not valid JSON: {e.Message}", nameof(modelConfigJson), e);
            }
        }
        if (File.Exists(target)) throw new IOException($"training checkpoint '{target}': a file is in the way of the checkpoint directory");
        var snapshot = OptimizerSnapshot.Of(optimizer);

        string parent = Path.GetDirectoryName(target)!;
        Directory.CreateDirectory(parent);
        string temp = $"{target}.tmp-{Environment.ProcessId}";
        DeleteDirectory(temp);
        Directory.CreateDirectory(temp);
        try
        {
            var modelMetadata = new Dictionary<string, string>();
            if (modelConfigJson is not null) modelMetadata[ConfigMetadataKey] = modelConfigJson;
            ModuleCheckpoint.Save(model, Path.Combine(temp, ModelFileName), modelMetadata);
            WriteOptimizer(Path.Combine(temp, OptimizerFileName), model, optimizer);
            AtomicFile.Write(Path.Combine(temp, StateFileName), stream => WriteState(stream, state, snapshot));
        }
        catch
        {
            TryDeleteDirectory(temp);
            throw;
        }
        Swap(temp, target);
    }

    /// <summary>Reads state.json and the model config (no tensors), to rebuild the model and optimizer before <see cref="Load"/>.</summary>
    public static TrainingCheckpointInfo ReadInfo(string directory)
    {
        string dir = RequireDirectory(directory);
        var (state, snapshot) = ReadState(Path.Combine(dir, StateFileName));
        using var modelFile = SafeTensorsFile.Read(Path.Combine(dir, ModelFileName));
        return new TrainingCheckpointInfo(dir, state, snapshot, ModelConfigOf(modelFile));
    }

    /// <summary>
    /// Loads the checkpoint into <paramref name="model"/> (strictly: every parameter and buffer, nothing
    /// else) and <paramref name="optimizer"/> (which must be of the saved kind, over parameters of the
    /// model: state tensors, per-parameter step counts, StepCount and learning rate), and returns the
    /// rest for the caller to restore (RNG states, data-loader position). Both files are checked
    /// before anything is changed; each file's problems are all reported in one <see cref="InvalidDataException"/>. Hyperparameters are not compared: build the optimizer with
    /// <see cref="OptimizerSnapshot.Create"/> to continue exactly.
    /// </summary>
    public static TrainingCheckpointInfo Load(string directory, Module model, Optimizer optimizer)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(optimizer);
        string dir = RequireDirectory(directory);
        var (state, snapshot) = ReadState(Path.Combine(dir, StateFileName));
        string kind = optimizer.GetType().Name;
        if (snapshot.Kind != kind)
        {
            throw new InvalidDataException($"training checkpoint '{dir}' holds {snapshot.Kind} state but the optimizer is {kind}");
        }
        string[] names = OptimizerParameterNames(model, optimizer, dir);

        using var modelFile = SafeTensorsFile.Read(Path.Combine(dir, ModelFileName));
        using var optimizerFile = SafeTensorsFile.Read(Path.Combine(dir, OptimizerFileName));
        var modelPlan = ModuleCheckpoint.Plan(model, modelFile);
        modelPlan.ThrowIfInvalid(modelFile.Path, "the model", strict: true);
        var steps = PlanOptimizer(optimizerFile, optimizer, names);

        modelPlan.Execute(modelFile);
        model.TensorsReplaced();
        var stateNames = optimizer.StateNames;
        for (int i = 0; i < names.Length; i++)
        {
            var p = optimizer.Parameters[i];
            var loaded = new Dictionary<string, Tensor>();
            try
            {
                foreach (var s in stateNames)
                {
                    string name = $"{names[i]}.{s}";
                    if (optimizerFile.Contains(name)) loaded[s] = optimizerFile.Load(name, p.DType, p.Backend);
                }
                optimizer.LoadState(i, loaded, steps[i]);
            }
            finally
            {
                foreach (var t in loaded.Values) t.Dispose();
            }
        }
        optimizer.RestoreStepCount(snapshot.StepCount);
        optimizer.LearningRate = snapshot.LearningRate;
        return new TrainingCheckpointInfo(dir, state, snapshot, ModelConfigOf(modelFile));
    }

    /// <summary>
    /// The model configuration a checkpoint stores in its metadata ("config"), or null when it stores none. It must be a
    /// JSON object: a checkpoint never names a preset or a file for the reader to open, so anything else (a name, a path
    /// such as "/etc/passwd", broken JSON) is refused here, before a caller could mistake it for a --config value.
    /// </summary>
    public static string? ModelConfigOf(SafeTensorsFile file)
    {
        ArgumentNullException.ThrowIfNull(file);
        if (!file.Metadata.TryGetValue(ConfigMetadataKey, out var config)) return null;
        try
        {
            using var doc = JsonDocument.Parse(config, InputFile.StrictJson());
            if (doc.RootElement.ValueKind == JsonValueKind.Object) return config;
        }
        catch (JsonException)
        {
        }
        string shown = config.Length <= 60 ? config : config[..60] + "...";
        throw new InvalidDataException($"checkpoint '{file.Path}': the \"{ConfigMetadataKey}\" metadata is not a JSON object (the model configuration is stored inline; a name or path there is never followed): '{shown}'");
    }

    // ---- optimizer file -------------------------------------------------------------------------------

    private static void WriteOptimizer(string path, Module model, Optimizer optimizer)
    {
        string[] names = OptimizerParameterNames(model, optimizer, Path.GetDirectoryName(path)!);
        var stepTensors = new List<Tensor>();
        try
        {
            var entries = new List<(string, Tensor)>();
            for (int i = 0; i < names.Length; i++)
            {
                var step = Tensor.FromArray([optimizer.ParameterStepCount(i)], Shape.Scalar);
                stepTensors.Add(step);
                entries.Add(($"{names[i]}.{StepSuffix}", step));
                foreach (var (stateName, t) in optimizer.State(i)) entries.Add(($"{names[i]}.{stateName}", t));
            }
            var metadata = new Dictionary<string, string> { ["format"] = "sdp", ["optimizer"] = optimizer.GetType().Name };
            SafeTensorsFile.Write(path, entries, metadata);
        }
        finally
        {
            foreach (var t in stepTensors) t.Dispose();
        }
    }

    /// <summary>Checks the optimizer file against the optimizer; returns each parameter's step count.</summary>
    private static long[] PlanOptimizer(SafeTensorsFile file, Optimizer optimizer, string[] names)
    {
        var plan = new ModuleCheckpoint.LoadPlan();
        var expected = new HashSet<string>();
        var steps = new long[names.Length];
        var stateNames = optimizer.StateNames;
        for (int i = 0; i < names.Length; i++)
        {
            var p = optimizer.Parameters[i];
            string stepName = $"{names[i]}.{StepSuffix}";
            expected.Add(stepName);
            if (!file.TryGetInfo(stepName, out var stepInfo)) plan.Missing.Add(stepName);
            else if (stepInfo.Shape.Rank != 0 || stepInfo.DType.IsFloatingPoint()) plan.Mismatched.Add($"{stepName}: expected an integer scalar, found {stepInfo.DTypeName} {stepInfo.Shape}");
            else
            {
                using var t = file.Load(stepName, DType.Int64);
                steps[i] = (long)t.Item();
                if (steps[i] < 0) plan.Mismatched.Add($"{stepName}: negative step count {steps[i]}");
            }

            int present = 0;
            foreach (var s in stateNames)
            {
                string name = $"{names[i]}.{s}";
                expected.Add(name);
                if (!file.TryGetInfo(name, out var info)) continue;
                present++;
                if (info.Shape != p.GradShape) plan.Mismatched.Add($"{name}: checkpoint {info.Shape} vs model {p.GradShape}");
                else if (!info.DType.CanLoadAs(p.DType)) plan.Mismatched.Add($"{name}: checkpoint {info.DTypeName} cannot be loaded into {p.DType.Name()}");
            }
            if (present != 0 && present != stateNames.Count)
            {
                var absent = stateNames.Where(s => !file.Contains($"{names[i]}.{s}"));
                plan.Mismatched.Add($"{names[i]}: incomplete {optimizer.GetType().Name} state, missing {string.Join(", ", absent)}");
            }
            else if (stateNames.Count > 0 && (present > 0) != (steps[i] > 0) && file.Contains(stepName))
            {
                plan.Mismatched.Add(present > 0
                    ? $"{names[i]}: has {optimizer.GetType().Name} state but a step count of 0"
                    : $"{names[i]}: has a step count of {steps[i]} but no {optimizer.GetType().Name} state");
            }
        }
        plan.AddUnexpected(file, expected);
        plan.ThrowIfInvalid(file.Path, $"the {optimizer.GetType().Name} optimizer", strict: true);
        return steps;
    }

    /// <summary>Each optimizer parameter's dotted name in the model.</summary>
    private static string[] OptimizerParameterNames(Module model, Optimizer optimizer, string where)
    {
        var byTensor = new Dictionary<Tensor, string>(ReferenceEqualityComparer.Instance);
        foreach (var (name, t) in model.NamedParameters()) byTensor.TryAdd(t, name);
        var names = new string[optimizer.Parameters.Count];
        for (int i = 0; i < names.Length; i++)
        {
            var p = optimizer.Parameters[i];
            names[i] = byTensor.TryGetValue(p, out var n) ? n
                : throw new ArgumentException($"training checkpoint '{where}': optimizer parameter {i} ({p.Name ?? "unnamed"} {p.Shape}) is not a parameter of the model");
        }
        return names;
    }

    // ---- state.json ---------------------------------------------------------------------------------

    private static void ValidateState(TrainingState state, string where)
    {
        if (state.Step < 0) throw new ArgumentException($"training checkpoint '{where}': step {state.Step} is negative", nameof(state));
        if (state.LrSchedulePosition < 0) throw new ArgumentException($"training checkpoint '{where}': learning-rate schedule position {state.LrSchedulePosition} is negative", nameof(state));
        ArgumentNullException.ThrowIfNull(state.RngStates);
        foreach (var (name, words) in state.RngStates)
        {
            if (string.IsNullOrEmpty(name) || words is null) throw new ArgumentException($"training checkpoint '{where}': RNG states need a name and a state array", nameof(state));
        }
    }

    private static void WriteState(Stream stream, TrainingState state, OptimizerSnapshot optimizer)
    {
        var options = new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        using var w = new Utf8JsonWriter(stream, options);
        w.WriteStartObject();
        w.WriteString("format", StateFormat);
        w.WriteNumber("version", StateVersion);
        w.WriteNumber("step", state.Step);
        w.WriteStartObject("lr_schedule");
        w.WriteNumber("position", state.LrSchedulePosition);
        w.WriteEndObject();
        w.WriteStartObject("optimizer");
        w.WriteString("kind", optimizer.Kind);
        w.WriteNumber("learning_rate", optimizer.LearningRate);
        w.WriteNumber("step_count", optimizer.StepCount);
        w.WriteStartObject("hyperparameters");
        foreach (var (key, value) in optimizer.Hyperparameters) w.WriteNumber(key, value);
        w.WriteEndObject();
        w.WriteEndObject();
        w.WriteStartObject("rng");
        foreach (var (name, words) in state.RngStates)
        {
            w.WriteStartArray(name);
            foreach (var word in words) w.WriteNumberValue(word);
            w.WriteEndArray();
        }
        w.WriteEndObject();
        w.WritePropertyName("data_loader");
        WriteObject(w, state.DataLoader);
        w.WritePropertyName("options");
        WriteObject(w, state.Options);
        if (state.LossWindow is { } window)
        {
            w.WriteStartArray("loss_window");
            foreach (double loss in window) w.WriteNumberValue(loss);
            w.WriteEndArray();
        }
        w.WriteEndObject();
    }

    private static void WriteObject(Utf8JsonWriter w, JsonObject? value)
    {
        if (value is null) w.WriteNullValue();
        else value.WriteTo(w);
    }

    private static (TrainingState State, OptimizerSnapshot Optimizer) ReadState(string path)
    {
        JsonNode? root;
        try
        {
            root = JsonNode.Parse(InputFile.ReadUtf8(path, "training state").Span, null, InputFile.StrictJson());
        }
        catch (JsonException e)
        {
            throw BadState(path, $"not valid JSON: {e.Message}");
        }
        catch (FileNotFoundException)
        {
            throw BadState(path, "the file is missing");
        }
        if (root is not JsonObject obj) throw BadState(path, "expected a JSON object");
        try
        {
            string format = Get<string>(obj, "format", path);
            long version = Get<long>(obj, "version", path);
            if (format != StateFormat || version != StateVersion)
            {
                throw BadState(path, $"format '{format}' version {version} is not '{StateFormat}' version {StateVersion}");
            }
            var schedule = Object(obj, "lr_schedule", path);
            var opt = Object(obj, "optimizer", path);
            var hyper = Object(opt, "hyperparameters", path);
            var hyperparameters = new Dictionary<string, double>();
            foreach (var (key, _) in hyper) hyperparameters[key] = Get<double>(hyper, key, path);
            var snapshot = new OptimizerSnapshot(Get<string>(opt, "kind", path), Get<double>(opt, "learning_rate", path), Get<long>(opt, "step_count", path), hyperparameters);
            // Checked here, so that a bad value is refused naming this file rather than when the optimizer is rebuilt or loaded.
            if (snapshot.Problem() is { } problem) throw BadState(path, $"\"optimizer\": {problem}");
            var rngStates = new Dictionary<string, ulong[]>();
            foreach (var (name, node) in Object(obj, "rng", path))
            {
                if (node is not JsonArray words) throw BadState(path, $"rng.{name} is not an array of unsigned 64-bit integers");
                rngStates[name] = [.. words.Select(word => word is JsonValue v && v.TryGetValue(out ulong u) ? u : throw BadState(path, $"rng.{name} holds {word?.ToJsonString() ?? "null"}, not an unsigned 64-bit integer"))];
            }
            var state = new TrainingState
            {
                Step = Get<long>(obj, "step", path),
                LrSchedulePosition = Get<long>(schedule, "position", path),
                RngStates = rngStates,
                DataLoader = OptionalObject(obj, "data_loader", path),
                Options = OptionalObject(obj, "options", path),
                LossWindow = obj["loss_window"] switch
                {
                    null => null,
                    JsonArray losses => [.. losses.Select(l => l is JsonValue v && v.TryGetValue(out double d) && double.IsFinite(d) ? d : throw BadState(path, $"loss_window holds {l?.ToJsonString() ?? "null"}, not a finite number"))],
                    var other => throw BadState(path, $"\"loss_window\" is a {other.GetValueKind().ToString().ToLowerInvariant()}, expected an array of numbers"),
                },
            };
            if (state.Step < 0 || state.LrSchedulePosition < 0 || snapshot.StepCount < 0) throw BadState(path, "step counts must be >= 0");
            return (state, snapshot);
        }
        catch (Exception e) when (e is FormatException or InvalidOperationException)
        {
            throw BadState(path, e.Message);
        }
    }

    private static T Get<T>(JsonObject obj, string key, string path)
    {
        if (obj[key] is JsonValue v && v.TryGetValue(out T? value) && value is not null) return value;
        throw BadState(path, $"\"{key}\" is missing or not a {typeof(T).Name}");
    }

    private static JsonObject Object(JsonObject obj, string key, string path)
        => obj[key] as JsonObject ?? throw BadState(path, $"\"{key}\" is missing or not an object");

    private static JsonObject? OptionalObject(JsonObject obj, string key, string path) => obj[key] switch
    {
        null => null,
        JsonObject o => (JsonObject)o.DeepClone(),
        var other => throw BadState(path, $"\"{key}\" is a {other.GetValueKind().ToString().ToLowerInvariant()}, expected an object or null"),
    };

    private static InvalidDataException BadState(string path, string problem) => new($"training state '{path}': {problem}");

    // ---- directories --------------------------------------------------------------------------------

    internal static string FullDirectoryPath(string directory) => Path.TrimEndingDirectorySeparator(Path.GetFullPath(directory));

    internal static string RequireDirectory(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        string dir = FullDirectoryPath(directory);
        if (Directory.Exists(dir)) return dir;
        string message = $"training checkpoint directory '{dir}' does not exist";
        string? parent = Path.GetDirectoryName(dir);
        if (parent is not null && Directory.Exists(parent))
        {
            var old = Directory.GetDirectories(parent, Path.GetFileName(dir) + ".old-*");
            if (old.Length > 0) message += $"; '{old[0]}' may hold the previous checkpoint of an interrupted save";
        }
        throw new DirectoryNotFoundException(message);
    }

    /// <summary>
    /// Moves a fully written temporary directory into place as <paramref name="target"/>. An existing target is
    /// exchanged with the new one atomically where the system allows (<see cref="DirectoryExchange"/>), so the
    /// target names a complete checkpoint at every instant; elsewhere it is renamed to <c>target.old-&lt;pid&gt;</c>
    /// first, and a kill between the two renames leaves the previous checkpoint there. The previous directory is
    /// then moved to <paramref name="keepPreviousAs"/> (null: deleted).
    /// </summary>
    internal static void Swap(string temp, string target, string? keepPreviousAs = null)
    {
        if (!Directory.Exists(target))
        {
            MoveOrCleanUp(temp, target);
            return;
        }
        string previous;
        if (DirectoryExchange.TryExchange(temp, target))
        {
            previous = temp;
        }
        else
        {
            previous = $"{target}.old-{Environment.ProcessId}";
            DeleteDirectory(previous);
            try
            {
                Directory.Move(target, previous);
            }
            catch
            {
                TryDeleteDirectory(temp);
                throw;
            }
            try
            {
                Directory.Move(temp, target);
            }
            catch
            {
                Directory.Move(previous, target);
                TryDeleteDirectory(temp);
                throw;
            }
        }
        if (keepPreviousAs is null)
        {
            TryDeleteDirectory(previous);
            return;
        }
        DeleteDirectory(keepPreviousAs);
        Directory.Move(previous, keepPreviousAs);
    }

    private static void MoveOrCleanUp(string temp, string target)
    {
        try
        {
            Directory.Move(temp, target);
        }
        catch
        {
            TryDeleteDirectory(temp);
            throw;
        }
    }

    internal static void DeleteDirectory(string path)
    {
        if (Directory.Exists(path)) Directory.Delete(path, recursive: true);
    }

    internal static void TryDeleteDirectory(string path)
    {
        try
        {
            DeleteDirectory(path);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
