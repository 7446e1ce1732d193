using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Checkpoints;
using Sdp.Models.Training;
using static Sdp.Tests.SdpTraining.SdpTestSupport;

namespace Sdp.Tests.Reliability.Corruption;

/// <summary>
/// A training-state directory as `sdp train --resume DIR` reads it: <see cref="SdpCheckpoint.ReadInfo"/>, then
/// <see cref="Trainer.Resume"/> of the run that saved it (a small LLaMA, SDP with 2 workers at block level, after one
/// step): sdp.json, the dense model.safetensors (read for its metadata) and per worker state.json, model.safetensors
/// and optimizer.safetensors (loaded strictly). The rules of each file are stated in its oracle below.
/// </summary>
public sealed class TrainingStateSubject : CorruptionSubject
{
    private const string SdpJson = "sdp.json";
    private const string DenseModel = "model.safetensors";
    private const int Workers = 2;

    private readonly Trainer _trainer;
    private readonly Dictionary<string, Dictionary<string, ExpectedTensor>> _expected = [];
    private readonly JsonObject _sdp;
    private readonly JsonObject _state;

    public TrainingStateSubject() : base("training-state")
    {
        _trainer = new Trainer(LlamaModel(SubnetLevel.Block), SdpRun(Workers, SubnetLevel.Block, Masking.Forward, 0.5), AdamW, w => Tokens(w, Workers), Options(4));
        _trainer.TrainStep();
        _trainer.Save(Root);
        Keep(SdpJson);
        Keep(DenseModel);
        for (int w = 0; w < Workers; w++)
        {
            foreach (string name in (string[])[TrainingCheckpoint.StateFileName, TrainingCheckpoint.ModelFileName, TrainingCheckpoint.OptimizerFileName])
            {
                string file = $"{SdpCheckpoint.WorkerDirectory(w)}/{name}";
                Keep(file);
                if (name.EndsWith(".safetensors", StringComparison.Ordinal)) _expected[file] = SafeTensorsOracle.ExpectedFrom(Originals[file]);
            }
        }
        _sdp = JsonNode.Parse(Originals[SdpJson])!.AsObject();
        _state = JsonNode.Parse(Originals[Worker0State])!.AsObject();
    }

    private static string Worker0State => $"{SdpCheckpoint.WorkerDirectory(0)}/{TrainingCheckpoint.StateFileName}";

    private static string Worker1Optimizer => $"{SdpCheckpoint.WorkerDirectory(1)}/{TrainingCheckpoint.OptimizerFileName}";

    public override void Read()
    {
        SdpCheckpoint.ReadInfo(Root);
        _trainer.Resume(Root);
    }

    /// <summary>A checkpoint of another run (a changed sdp.json field) is refused as such: an ArgumentException naming the checkpoint, which the CLI reports as a usage error.</summary>
    public override bool IsBadInput(Exception e) => base.IsBadInput(e) || (e.GetType() == typeof(ArgumentException) && e.Message.Contains(Root, StringComparison.Ordinal));

    /// <summary>The file, or (for the JSON files, whose values are checked against the run and the other files) the checkpoint directory holding it.</summary>
    public override IReadOnlyList<string> Mentions(Mutation m)
        => m.File.EndsWith(".json", StringComparison.Ordinal) ? [m.File, Path.GetDirectoryName(PathOf(m.File))!] : [m.File];

    /// <summary>Resume loads into the workers' own accounts: their peaks count too.</summary>
    public override (long Managed, long Native, Exception? Error) Measure(Action read)
    {
        var accounts = _trainer.LocalWorkers.Select(_trainer.WorkerAccount).ToArray();
        var before = accounts.Select(a => a.CurrentTotal).ToArray();
        foreach (var a in accounts) a.ResetPeaks();
        var (managed, native, error) = base.Measure(read);
        return (managed, native + accounts.Select((a, i) => a.PeakTotal - before[i]).Sum(), error);
    }

    protected override int HotBytes(string file) => file.EndsWith(".safetensors", StringComparison.Ordinal) ? 8 + SafeTensorsOracle.HeaderLength(Originals[file]) : Originals[file].Length;

    public override Expect Judge(string file, byte[] bytes)
    {
        if (file == SdpJson) return JudgeSdpJson(bytes);
        if (file == DenseModel) return SafeTensorsOracle.Judge(bytes, null, ConfigIsAnObject);
        if (file.EndsWith(TrainingCheckpoint.StateFileName, StringComparison.Ordinal)) return JudgeState(bytes);
        if (file.EndsWith(TrainingCheckpoint.OptimizerFileName, StringComparison.Ordinal)) return SafeTensorsOracle.Judge(bytes, _expected[file], dataValid: PositiveStepCounts);
        return SafeTensorsOracle.Judge(bytes, _expected[file]);
    }

    /// <summary>The dense model's "config" metadata is the model configuration as a JSON object, never a name or a path to follow.</summary>
    private static bool ConfigIsAnObject(JsonObject metadata)
        => !metadata.TryGetPropertyValue(TrainingCheckpoint.ConfigMetadataKey, out var config) || (JsonOracle.TryParse(Encoding.UTF8.GetBytes((string)config!), out var node) && node is JsonObject);

    /// <summary>Every parameter has taken one step and holds AdamW state, so its ".step" count must stay a positive integer (read as int64).</summary>
    private static bool PositiveStepCounts(string name, string dtype, ReadOnlySpan<byte> data)
    {
        if (!name.EndsWith(".step", StringComparison.Ordinal)) return true;
        return dtype switch
        {
            "I64" => BinaryPrimitives.ReadInt64LittleEndian(data) > 0,
            "U64" => BinaryPrimitives.ReadUInt64LittleEndian(data) is > 0 and <= long.MaxValue,
            _ => false,
        };
    }

    /// <summary>sdp.json: format and version, and the run (workers, mode, level, masking, coverage, plan seed) and step equal to what this run and the workers' states say; other keys are ignored.</summary>
    private Expect JudgeSdpJson(byte[] bytes)
    {
        if (!JsonOracle.TryParse(bytes, out var node) || node is not JsonObject o) return Expect.Reject;
        bool valid = JsonOracle.IsString(o["format"], (string)_sdp["format"]!) && JsonOracle.IsIntegerIn(o["version"], 1, 1)
            && JsonOracle.IsInteger(o["step"], out var step) && step == (long)_sdp["step"]!
            && JsonOracle.IsInteger(o["workers"], out var workers) && workers == Workers
            && JsonOracle.IsString(o["mode"], (string)_sdp["mode"]!) && JsonOracle.IsString(o["level"], (string)_sdp["level"]!) && JsonOracle.IsString(o["masking"], (string)_sdp["masking"]!)
            && JsonOracle.IsNumber(o["coverage"], out double coverage) && coverage == (double)_sdp["coverage"]!
            && JsonOracle.IsInteger(o["plan_seed"], out var seed) && seed == (ulong)_sdp["plan_seed"]!;
        return JsonOracle.AcceptIf(valid);
    }

    /// <summary>
    /// A worker's state.json: format and version; the step of sdp.json; lr_schedule.position &gt;= 0; optimizer kind
    /// AdamW with a finite learning rate &gt;= 0, step count &gt;= 0 and valid hyperparameters beta1, beta2 in [0, 1), eps and
    /// weight_decay finite &gt;= 0 (others ignored); rng arrays of unsigned 64-bit integers; data_loader null, or integer
    /// epoch, shard and batch that the synthetic source takes (epoch 0, shard 0, batch &gt;= 0); options null or an object;
    /// loss_window null or finite numbers. Other keys are ignored.
    /// </summary>
    private Expect JudgeState(byte[] bytes)
    {
        if (!JsonOracle.TryParse(bytes, out var node) || node is not JsonObject o) return Expect.Reject;
        if (!JsonOracle.IsString(o["format"], (string)_state["format"]!) || !JsonOracle.IsIntegerIn(o["version"], 1, 1)) return Expect.Reject;
        if (!JsonOracle.IsInteger(o["step"], out var step) || step != (long)_state["step"]!) return Expect.Reject;
        if (o["lr_schedule"] is not JsonObject schedule || !JsonOracle.IsIntegerIn(schedule["position"], 0, long.MaxValue)) return Expect.Reject;
        if (o["optimizer"] is not JsonObject optimizer || !JsonOracle.IsString(optimizer["kind"], "AdamW")) return Expect.Reject;
        if (!JsonOracle.IsFiniteNumber(optimizer["learning_rate"], out double lr) || lr < 0 || !JsonOracle.IsIntegerIn(optimizer["step_count"], 0, long.MaxValue)) return Expect.Reject;
        if (optimizer["hyperparameters"] is not JsonObject hyper || hyper.Any(p => !JsonOracle.IsNumber(p.Value, out _))) return Expect.Reject;
        bool Hyper(string key, Func<double, bool> valid) => JsonOracle.IsFiniteNumber(hyper[key], out double v) && valid(v);
        if (!Hyper("beta1", b => b is >= 0 and < 1) || !Hyper("beta2", b => b is >= 0 and < 1) || !Hyper("eps", e => e >= 0) || !Hyper("weight_decay", d => d >= 0)) return Expect.Reject;
        if (o["rng"] is not JsonObject rng || rng.Any(p => p.Value is not JsonArray words || words.Any(word => !JsonOracle.IsIntegerIn(word, 0, ulong.MaxValue)))) return Expect.Reject;
        if (!JsonOracle.IsAbsent(o, "data_loader"))
        {
            if (o["data_loader"] is not JsonObject data || !JsonOracle.IsIntegerIn(data["epoch"], long.MinValue, long.MaxValue) || !JsonOracle.IsInt32(data["shard"])
                || !JsonOracle.IsIntegerIn(data["batch"], long.MinValue, long.MaxValue)) return Expect.Reject;
            if ((long)data["epoch"]! != 0 || (int)data["shard"]! != 0 || (long)data["batch"]! < 0) return Expect.Reject;
        }
        if (!JsonOracle.IsAbsent(o, "options") && o["options"] is not JsonObject) return Expect.Reject;
        if (!JsonOracle.IsAbsent(o, "loss_window") && (o["loss_window"] is not JsonArray window || window.Any(l => !JsonOracle.IsFiniteNumber(l, out _)))) return Expect.Reject;
        return Expect.Accept;
    }

    public override IEnumerable<Mutation> FixedMutations()
    {
        foreach (string file in Originals.Keys)
        {
            foreach (var m in NotARegularFile(file)) yield return m;
            var original = Originals[file];
            if (file.EndsWith(".safetensors", StringComparison.Ordinal))
            {
                int n = SafeTensorsOracle.HeaderLength(original);
                foreach (var m in TruncationsAround(file, [0, 8, 8 + n, original.Length])) yield return m;
            }
            else
            {
                foreach (var m in TruncationsAround(file, [0, original.Length / 3, original.Length / 2, original.Length - 2])) yield return m;
            }
        }
        foreach (var m in SdpJsonEdits()) yield return m;
        foreach (var m in StateEdits()) yield return m;
        foreach (var m in TensorFileEdits()) yield return m;
    }

    private Mutation Edited(string file, string detail, Action<JsonObject> edit, Expect expect)
    {
        var root = JsonNode.Parse(Originals[file])!.AsObject();
        edit(root);
        return Stated(file, "document edit", detail, JsonOracle.Compact(root), expect);
    }

    private Mutation Text(string file, string detail, string find, string replacement, Expect expect)
    {
        string text = Encoding.UTF8.GetString(Originals[file]);
        if (!text.Contains(find, StringComparison.Ordinal)) throw new InvalidOperationException($"{file} has no '{find}'");
        return Stated(file, "text edit", detail, Encoding.UTF8.GetBytes(text.Replace(find, replacement, StringComparison.Ordinal)), expect);
    }

    private IEnumerable<Mutation> SdpJsonEdits()
    {
        foreach (var (key, value) in ((string, string)[])[("workers", "3"), ("workers", "-1"), ("workers", "2147483647"), ("workers", "2.0"), ("workers", "\"2\""),
                     ("mode", "\"dp\""), ("level", "\"neuron\""), ("masking", "\"backward\""), ("coverage", "0.75"), ("coverage", "\"0.5\""), ("coverage", "1e400"),
                     ("plan_seed", "-1"), ("plan_seed", "18446744073709551616"), ("plan_seed", "6"), ("step", "2"), ("step", "-1"), ("step", "1.5"),
                     ("format", "\"sdp.training_state\""), ("version", "2"), ("version", "1.0"), ("format", "null")])
        {
            yield return Edited(SdpJson, $"{key} {value}", o => o[key] = JsonNode.Parse(value), Expect.Reject);
        }
        yield return Edited(SdpJson, "workers removed", o => o.Remove("workers"), Expect.Reject);
        yield return Edited(SdpJson, "coverage 5e-1", o => o["coverage"] = JsonNode.Parse("5e-1"), Expect.Accept);
        yield return Edited(SdpJson, "an unknown key", o => o["host"] = "elsewhere", Expect.Accept);
        yield return Edited(SdpJson, "a worker directory named ../../etc (ignored: worker directories are worker-{w})", o => o["worker_dirs"] = new JsonArray("../../etc", "/etc"), Expect.Accept);
        yield return Text(SdpJson, "workers twice", "\"workers\": 2,", "\"workers\": 2, \"workers\": 2,", Expect.Reject);
        yield return Stated(SdpJson, "invalid UTF-8", "0xFF inside the mode value", Encoding.UTF8.GetBytes(Encoding.UTF8.GetString(Originals[SdpJson]).Replace("\"sdp\"", "\"sd\u0001\"", StringComparison.Ordinal)).Select(b => b == 1 ? (byte)0xFF : b).ToArray(), Expect.Reject);
        yield return Stated(SdpJson, "document", "100,000 nested '['", Encoding.UTF8.GetBytes(new string('[', 100_000)), Expect.Reject);
    }

    private IEnumerable<Mutation> StateEdits()
    {
        string f = Worker0State;
        JsonNode? V(string json) => JsonNode.Parse(json);
        yield return Edited(f, "step 2", o => o["step"] = 2, Expect.Reject);
        yield return Edited(f, "step \"1\"", o => o["step"] = "1", Expect.Reject);
        yield return Edited(f, "lr_schedule.position -1", o => o["lr_schedule"]!["position"] = -1, Expect.Reject);
        yield return Edited(f, "lr_schedule null", o => o["lr_schedule"] = null, Expect.Reject);
        foreach (string kind in (string[])["\"Sgd\"", "\"Lion\"", "null", "1"]) yield return Edited(f, $"optimizer.kind {kind}", o => o["optimizer"]!["kind"] = V(kind), Expect.Reject);
        foreach (string lr in (string[])["-1", "1e400", "\"0.01\"", "null"]) yield return Edited(f, $"optimizer.learning_rate {lr}", o => o["optimizer"]!["learning_rate"] = V(lr), Expect.Reject);
        yield return Edited(f, "optimizer.learning_rate 0", o => o["optimizer"]!["learning_rate"] = 0, Expect.Accept);
        yield return Edited(f, "optimizer.step_count -1", o => o["optimizer"]!["step_count"] = -1, Expect.Reject);
        foreach (var (key, value) in ((string, string)[])[("beta1", "1.5"), ("beta1", "1"), ("beta2", "-0.1"), ("eps", "-1"), ("eps", "1e400"), ("weight_decay", "-0.1"), ("beta1", "\"0.9\""), ("beta1", "null")])
            yield return Edited(f, $"hyperparameter {key} {value}", o => o["optimizer"]!["hyperparameters"]![key] = V(value), Expect.Reject);
        yield return Edited(f, "hyperparameter beta2 removed", o => o["optimizer"]!["hyperparameters"]!.AsObject().Remove("beta2"), Expect.Reject);
        yield return Edited(f, "an unknown hyperparameter", o => o["optimizer"]!["hyperparameters"]!["amsgrad"] = 0, Expect.Accept);
        yield return Edited(f, "an unknown hyperparameter that is not a number", o => o["optimizer"]!["hyperparameters"]!["amsgrad"] = "no", Expect.Reject);
        foreach (string word in (string[])["-1", "1.5", "18446744073709551616", "\"7\""])
            yield return Edited(f, $"an RNG word {word}", o => o["rng"] = new JsonObject { ["data"] = new JsonArray(V(word)) }, Expect.Reject);
        yield return Edited(f, "an RNG word 2^64 - 1", o => o["rng"] = new JsonObject { ["data"] = new JsonArray(V("18446744073709551615")) }, Expect.Accept);
        foreach (var (key, value) in ((string, string)[])[("epoch", "1"), ("batch", "-1"), ("shard", "\"0\""), ("shard", "2147483648"), ("epoch", "1.0")])
            yield return Edited(f, $"data_loader.{key} {value}", o => o["data_loader"]![key] = V(value), Expect.Reject);
        yield return Edited(f, "data_loader.batch removed", o => o["data_loader"]!.AsObject().Remove("batch"), Expect.Reject);
        yield return Edited(f, "data_loader.batch 10^12 (a later batch of the endless synthetic stream)", o => o["data_loader"]!["batch"] = 1_000_000_000_000, Expect.Accept);
        yield return Edited(f, "data_loader 7", o => o["data_loader"] = 7, Expect.Reject);
        yield return Edited(f, "data_loader null", o => o["data_loader"] = null, Expect.Accept);
        yield return Edited(f, "options 1", o => o["options"] = 1, Expect.Reject);
        yield return Edited(f, "options naming paths (never followed)", o => o["options"] = new JsonObject { ["data"] = "/etc/passwd", ["save"] = "../../x" }, Expect.Accept);
        yield return Edited(f, "loss_window [1e400]", o => o["loss_window"] = new JsonArray(V("1e400")), Expect.Reject);
        yield return Edited(f, "loss_window \"x\"", o => o["loss_window"] = "x", Expect.Reject);
        yield return Edited(f, "loss_window [1, 2]", o => o["loss_window"] = new JsonArray(1, 2), Expect.Accept);
        yield return Text(f, "an ignored key 70 arrays deep", "\"options\": ", "\"deep\": " + new string('[', 70) + new string(']', 70) + ", \"options\": ", Expect.Reject);
        yield return Text(f, "step twice", "\"step\": 1,", "\"step\": 1, \"step\": 1,", Expect.Reject);
        yield return Text(f, "NaN for the learning rate", "\"learning_rate\": ", "\"learning_rate\": NaN, \"x\": ", Expect.Reject);
        yield return Stated(f, "invalid UTF-8", "0xFF inside the optimizer kind", Encoding.UTF8.GetBytes(Encoding.UTF8.GetString(Originals[f]).Replace("\"AdamW\"", "\"Adam\u0001\"", StringComparison.Ordinal)).Select(b => b == 1 ? (byte)0xFF : b).ToArray(), Expect.Reject);
    }

    private IEnumerable<Mutation> TensorFileEdits()
    {
        // The dense model's config metadata: a JSON object, never a preset name or a path to follow.
        var dense = Originals[DenseModel];
        foreach (var (config, expect) in ((string, Expect)[])[("/etc/passwd", Expect.Reject), ("../../config.json", Expect.Reject), ("tiny", Expect.Reject), ("{", Expect.Reject), ("[]", Expect.Reject), ("{}", Expect.Accept)])
        {
            var header = SafeTensorsOracle.Header(dense);
            header["__metadata__"]![TrainingCheckpoint.ConfigMetadataKey] = config;
            yield return Stated(DenseModel, "config metadata", $"\"{config}\"", SafeTensorsOracle.WithHeader(dense, JsonOracle.Compact(header)), expect);
        }
        // An optimizer step count: 0 contradicts the state beside it, a negative one is no count, a large one is a count.
        var optimizer = Originals[Worker1Optimizer];
        var stepEntry = SafeTensorsOracle.Header(optimizer).First(p => p.Key.EndsWith(".step", StringComparison.Ordinal));
        int at = 8 + SafeTensorsOracle.HeaderLength(optimizer) + (int)stepEntry.Value!["data_offsets"]![0]!;
        foreach (var (count, expect) in ((long, Expect)[])[(0, Expect.Reject), (-1, Expect.Reject), (long.MinValue, Expect.Reject), (long.MaxValue, Expect.Accept), (7, Expect.Accept)])
        {
            var bytes = (byte[])optimizer.Clone();
            BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(at), count);
            yield return Stated(Worker1Optimizer, "step count", $"{stepEntry.Key} = {count}", bytes, expect);
        }
        var withFloatStep = SafeTensorsOracle.Header(optimizer);
        withFloatStep[stepEntry.Key]!["dtype"] = "F64";
        yield return Stated(Worker1Optimizer, "header edit", $"{stepEntry.Key} as F64", SafeTensorsOracle.WithHeader(optimizer, JsonOracle.Compact(withFloatStep)), Expect.Reject);
        withFloatStep[stepEntry.Key]!["dtype"] = "U64";
        yield return Stated(Worker1Optimizer, "header edit", $"{stepEntry.Key} as U64", SafeTensorsOracle.WithHeader(optimizer, JsonOracle.Compact(withFloatStep)), Expect.Accept);
    }

    public override void Dispose()
    {
        _trainer.Dispose();
        base.Dispose();
    }
}
