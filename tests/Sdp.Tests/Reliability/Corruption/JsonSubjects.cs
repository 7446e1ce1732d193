using System.Numerics;
using System.Text;
using System.Text.Json.Nodes;
using Sdp.Cli;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Subnetworks;

namespace Sdp.Tests.Reliability.Corruption;

/// <summary>Mutations shared by the JSON subjects: edits of the document tree, and text-level damage the tree cannot express.</summary>
public abstract class JsonSubject(string name) : CorruptionSubject(name)
{
    /// <summary>Positions of the structural characters ({}[],:) of <paramref name="file"/>: truncating there cuts the document between tokens.</summary>
    protected IEnumerable<int> StructuralPositions(string file)
        => Originals[file].Select((b, i) => (b, i)).Where(x => x.b is (byte)'{' or (byte)'}' or (byte)'[' or (byte)']' or (byte)',' or (byte)':').Select(x => x.i);

    /// <summary>The document of <paramref name="file"/> edited by <paramref name="edit"/>, written compactly, with the test's stated outcome.</summary>
    protected Mutation Edited(string file, string detail, Action<JsonObject> edit, Expect expect)
    {
        var root = JsonNode.Parse(Originals[file])!.AsObject();
        edit(root);
        return Stated(file, "document edit", detail, JsonOracle.Compact(root), expect);
    }

    /// <summary>The original text with <paramref name="find"/> replaced (which must occur), with the test's stated outcome.</summary>
    protected Mutation Replaced(string file, string detail, string find, string replacement, Expect expect)
    {
        string text = Encoding.UTF8.GetString(Originals[file]);
        if (!text.Contains(find, StringComparison.Ordinal)) throw new InvalidOperationException($"{file} has no '{find}'");
        return Stated(file, "text edit", detail, Encoding.UTF8.GetBytes(text.Replace(find, replacement, StringComparison.Ordinal)), expect);
    }

    /// <summary>The original bytes with byte 0xFF in place of the first <paramref name="marker"/> character (which must occur once the text is encoded).</summary>
    protected Mutation InvalidUtf8(string file, string detail, string find)
    {
        var bytes = Originals[file];
        var target = Encoding.UTF8.GetBytes(find);
        int at = bytes.AsSpan().IndexOf(target);
        if (at < 0) throw new InvalidOperationException($"{file} has no '{find}'");
        return Stated(file, "invalid UTF-8", detail, Edit.Overwrite(bytes, at + target.Length - 1, [0xFF]), Expect.Reject);
    }

    /// <summary>Documents that are not what the format's top level must be, or nest without end.</summary>
    protected IEnumerable<Mutation> HostileDocuments(string file)
    {
        foreach (string text in (string[])["[]", "\"x\"", "1", "null", "true", "", " ", "{", "{}}", "NaN", "Infinity", "{\"a\":NaN}", "{\"a\":1e400}"])
        {
            var bytes = Encoding.UTF8.GetBytes(text);
            yield return new Mutation(file, "document", $"'{text}'", bytes, Judge(file, bytes));
        }
        yield return Stated(file, "document", "100,000 nested '['", Encoding.UTF8.GetBytes(new string('[', 100_000)), Expect.Reject);
        yield return Stated(file, "document", "100,000 nested '{\"a\":'", Encoding.UTF8.GetBytes(string.Concat(Enumerable.Repeat("{\"a\":", 100_000))), Expect.Reject);
        yield return Stated(file, "document", "UTF-16 text", Encoding.Unicode.GetBytes(Encoding.UTF8.GetString(Originals[file])), Expect.Reject);
    }
}

/// <summary>
/// A Hugging Face config.json as `--config` reads it: <see cref="LlamaConfig.Load"/> of the file and
/// <see cref="LlamaConfig.Parse"/> of its folder. Valid, as the class documents it: a JSON object (comments and trailing
/// commas allowed, a byte-order mark skipped) with positive int32 vocab_size, hidden_size, intermediate_size,
/// num_hidden_layers and num_attention_heads; optional (absent or null) num_key_value_heads and max_position_embeddings
/// (positive int32), rms_norm_eps, rope_theta and initializer_range (positive finite numbers), tie_word_embeddings
/// (a boolean), head_dim (= hidden_size / num_attention_heads); model_type "llama", hidden_act "silu", attention_bias and
/// mlp_bias false, rope_scaling null when present; hidden_size divisible by the heads, the heads by the key/value
/// heads, an even head_dim; and a parameter count that fits 64 bits. Other fields are ignored.
/// </summary>
public sealed class LlamaConfigSubject : JsonSubject
{
    public const string File = "config.json";

    private static readonly string[] RequiredInts = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"];

    public LlamaConfigSubject() : base("llama-config")
    {
        new LlamaConfig(vocabSize: 64, hiddenSize: 16, intermediateSize: 32, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2).Save(PathOf(File));
        Keep(File);
    }

    public override void Read()
    {
        LlamaConfig.Load(PathOf(File));
        LlamaConfig.Parse(Root);
    }

    public override Expect Judge(string file, byte[] bytes)
    {
        if (!JsonOracle.TryParse(bytes, out var node, commentsAndTrailingCommas: true, byteOrderMark: true) || node is not JsonObject o) return Expect.Reject;
        bool Present(string key) => !JsonOracle.IsAbsent(o, key);
        bool PositiveInt(string key) => JsonOracle.IsInt32(o[key], 1);
        bool PositiveFinite(string key) => !Present(key) || (JsonOracle.IsFiniteNumber(o[key], out double v) && v > 0);
        if (Present("model_type") && !JsonOracle.IsString(o["model_type"], "llama")) return Expect.Reject;
        if (Present("hidden_act") && !JsonOracle.IsString(o["hidden_act"], "silu")) return Expect.Reject;
        foreach (string flag in (string[])["attention_bias", "mlp_bias", "tie_word_embeddings"])
            if (Present(flag) && (!JsonOracle.IsBool(o[flag], out bool on) || (on && flag != "tie_word_embeddings"))) return Expect.Reject;
        if (Present("rope_scaling")) return Expect.Reject;
        if (RequiredInts.Any(k => !PositiveInt(k))) return Expect.Reject;
        foreach (string optional in (string[])["num_key_value_heads", "max_position_embeddings"])
            if (Present(optional) && !PositiveInt(optional)) return Expect.Reject;
        if (!PositiveFinite("rms_norm_eps") || !PositiveFinite("rope_theta") || !PositiveFinite("initializer_range")) return Expect.Reject;
        long vocab = (long)o["vocab_size"]!, hidden = (long)o["hidden_size"]!, inter = (long)o["intermediate_size"]!, layers = (long)o["num_hidden_layers"]!;
        long heads = (long)o["num_attention_heads"]!, kv = Present("num_key_value_heads") ? (long)o["num_key_value_heads"]! : heads;
        if (hidden % heads != 0 || heads % kv != 0 || hidden / heads % 2 != 0) return Expect.Reject;
        if (Present("head_dim") && !(JsonOracle.IsInt32(o["head_dim"]) && (long)o["head_dim"]! == hidden / heads)) return Expect.Reject;
        // q, k, v, o, the three MLP matrices and two norms per layer; the embedding, lm_head (untied) and the final norm.
        bool tied = Present("tie_word_embeddings") && (bool)o["tie_word_embeddings"]!;
        BigInteger layer = (BigInteger)hidden * hidden * 2 + 2 * (BigInteger)hidden * (kv * (hidden / heads)) + 3 * (BigInteger)hidden * inter + 2 * hidden;
        BigInteger total = (BigInteger)vocab * hidden * (tied ? 1 : 2) + layers * layer + hidden;
        return JsonOracle.AcceptIf(total <= long.MaxValue);
    }

    public override IEnumerable<Mutation> FixedMutations()
    {
        foreach (var m in TruncationsAround(File, StructuralPositions(File))) yield return m;
        foreach (var m in NotARegularFile(File)) yield return m;
        foreach (var m in HostileDocuments(File)) yield return m;
        JsonNode? V(string json) => JsonNode.Parse(json);
        string[] badInts = ["0", "-1", "-9223372036854775808", "2147483648", "1e18", "1e400", "1.5", "2.0", "\"8\"", "true", "[]", "{}"];
        foreach (string key in RequiredInts)
        {
            foreach (string value in badInts.Append("null")) yield return Edited(File, $"{key} {value}", o => o[key] = V(value), Expect.Reject);
            yield return Edited(File, $"{key} removed", o => o.Remove(key), Expect.Reject);
        }
        foreach (string key in (string[])["num_key_value_heads", "max_position_embeddings"])
        {
            foreach (string value in badInts) yield return Edited(File, $"{key} {value}", o => o[key] = V(value), Expect.Reject);
            yield return Edited(File, $"{key} null", o => o[key] = null, Expect.Accept);
            yield return Edited(File, $"{key} removed", o => o.Remove(key), Expect.Accept);
        }
        foreach (string key in (string[])["rms_norm_eps", "rope_theta", "initializer_range"])
        {
            foreach (string value in (string[])["0", "-1e-5", "1e400", "-1e400", "\"1e-5\"", "true", "[]"]) yield return Edited(File, $"{key} {value}", o => o[key] = V(value), Expect.Reject);
            foreach (string value in (string[])["1e-300", "5", "null"]) yield return Edited(File, $"{key} {value}", o => o[key] = V(value), Expect.Accept);
        }
        yield return Edited(File, "head_dim 3", o => o["head_dim"] = 3, Expect.Reject);
        yield return Edited(File, "head_dim \"4\"", o => o["head_dim"] = "4", Expect.Reject);
        yield return Edited(File, "head_dim null", o => o["head_dim"] = null, Expect.Accept);
        yield return Edited(File, "tie_word_embeddings 1", o => o["tie_word_embeddings"] = 1, Expect.Reject);
        yield return Edited(File, "tie_word_embeddings \"true\"", o => o["tie_word_embeddings"] = "true", Expect.Reject);
        yield return Edited(File, "tie_word_embeddings true", o => o["tie_word_embeddings"] = true, Expect.Accept);
        yield return Edited(File, "attention_bias true", o => o["attention_bias"] = true, Expect.Reject);
        yield return Edited(File, "mlp_bias true", o => o["mlp_bias"] = true, Expect.Reject);
        yield return Edited(File, "rope_scaling linear", o => o["rope_scaling"] = V("""{"type":"linear","factor":2}"""), Expect.Reject);
        yield return Edited(File, "model_type mistral", o => o["model_type"] = "mistral", Expect.Reject);
        yield return Edited(File, "model_type 1", o => o["model_type"] = 1, Expect.Reject);
        yield return Edited(File, "hidden_act gelu", o => o["hidden_act"] = "gelu", Expect.Reject);
        yield return Edited(File, "hidden_size 18 (not divisible by 4 heads)", o => { o["hidden_size"] = 18; o.Remove("head_dim"); }, Expect.Reject);
        yield return Edited(File, "hidden_size 12 (odd head_dim 3)", o => { o["hidden_size"] = 12; o.Remove("head_dim"); }, Expect.Reject);
        yield return Edited(File, "hidden_size 32 against head_dim 4", o => o["hidden_size"] = 32, Expect.Reject);
        yield return Edited(File, "num_key_value_heads 3", o => o["num_key_value_heads"] = 3, Expect.Reject);
        yield return Edited(File, "2^31 - 1 layers of width 2^30: more than 2^63 parameters", o =>
        {
            o["hidden_size"] = 1 << 30;
            o["num_hidden_layers"] = int.MaxValue;
            o["vocab_size"] = int.MaxValue;
            o.Remove("head_dim");
        }, Expect.Reject);
        yield return Edited(File, "a 9-trillion-parameter config (read, never allocated)", o =>
        {
            o["vocab_size"] = int.MaxValue;
            o["hidden_size"] = 4096;
            o["intermediate_size"] = 11008;
            o["num_hidden_layers"] = 32;
            o.Remove("head_dim");
        }, Expect.Accept);
        yield return Edited(File, "an unknown nested field", o => o["quantization"] = V("""{"bits":[4,8],"group":{"size":128}}"""), Expect.Accept);
        yield return Edited(File, "an ignored field 60 arrays deep", o => o["deep"] = V(new string('[', 60) + new string(']', 60)), Expect.Accept);
        yield return Replaced(File, "an ignored field 70 arrays deep", "\"use_cache\": true", "\"use_cache\": " + new string('[', 70) + new string(']', 70), Expect.Reject);
        yield return Replaced(File, "hidden_size twice", "\"hidden_size\": 16,", "\"hidden_size\": 16, \"hidden_size\": 16,", Expect.Reject);
        yield return Replaced(File, "a comment", "\"hidden_size\": 16,", "// the width\n  \"hidden_size\": 16, /* block */", Expect.Accept);
        yield return Replaced(File, "a trailing comma", "\"use_cache\": true", "\"use_cache\": true,", Expect.Accept);
        yield return Replaced(File, "NaN for rms_norm_eps", "\"rms_norm_eps\": 1E-06", "\"rms_norm_eps\": NaN", Expect.Reject);
        yield return Replaced(File, "an escaped control character in a string", "\"float32\"", "\"float\\u000032\"", Expect.Accept);
        // RFC 8259's grammar allows any \\uXXXX escape, a lone surrogate too; the field is one the reader ignores.
        yield return Replaced(File, "a lone surrogate escape in an ignored string", "\"float32\"", "\"float\\uD800\"", Expect.Accept);
        yield return InvalidUtf8(File, "0xFF inside the torch_dtype value", "\"float");
        yield return InvalidUtf8(File, "0xFF inside a key", "\"vocab");
        yield return Stated(File, "byte-order mark", "EF BB BF before the text", [0xEF, 0xBB, 0xBF, .. Originals[File]], Expect.Accept);
    }

    /// <summary>Errors name the file; LlamaConfig.Parse of the folder names the config.json inside it.</summary>
    public override IReadOnlyList<string> Mentions(Mutation m) => [File];
}

/// <summary>
/// A ResNet config JSON as `--model resnet18 --config FILE` reads it (<see cref="RunSetup.ResNetConfigFrom"/>, which reads
/// it with <see cref="ResNetConfig.Load"/>). Valid: a JSON object with only the keys model ("resnet18"), width (1 to
/// int.MaxValue / 8), num_classes and in_channels (positive int32), whose model's parameter count fits 64 bits.
/// </summary>
public sealed class ResNetConfigSubject : JsonSubject
{
    public const string File = "resnet.json";

    public ResNetConfigSubject() : base("resnet-config")
    {
        Keep(File, Encoding.UTF8.GetBytes(new ResNetConfig(Width: 4, NumClasses: 10, InChannels: 3).ToJson()));
    }

    public override void Read() => RunSetup.ResNetConfigFrom(PathOf(File), null, null, "--config");

    public override bool IsBadInput(Exception e) => base.IsBadInput(e) || e is UsageException;

    public override Expect Judge(string file, byte[] bytes)
    {
        if (!JsonOracle.TryParse(bytes, out var node, byteOrderMark: true) || node is not JsonObject o) return Expect.Reject;
        if (o.Any(p => p.Key is not ("model" or "width" or "num_classes" or "in_channels"))) return Expect.Reject;
        if (o.ContainsKey("model") && !JsonOracle.IsString(o["model"], "resnet18")) return Expect.Reject;
        if (o.ContainsKey("width") && !JsonOracle.IsIntegerIn(o["width"], 1, int.MaxValue / 8)) return Expect.Reject;
        if (o.ContainsKey("num_classes") && !JsonOracle.IsInt32(o["num_classes"], 1)) return Expect.Reject;
        if (o.ContainsKey("in_channels") && !JsonOracle.IsInt32(o["in_channels"], 1)) return Expect.Reject;
        BigInteger w = o.ContainsKey("width") ? (long)o["width"]! : 64, classes = o.ContainsKey("num_classes") ? (long)o["num_classes"]! : 10;
        BigInteger inputs = o.ContainsKey("in_channels") ? (long)o["in_channels"]! : 3;
        // Stem conv and BN; per stage two blocks of two 3x3 convs with BN, a 1x1 projection with BN where the width changes; fc.
        BigInteger total = 9 * inputs * w + 2 * w, inC = w;
        for (int s = 0; s < 4; s++)
        {
            BigInteger outC = w << s;
            total += 9 * inC * outC + 2 * outC + 9 * outC * outC + 2 * outC + (s > 0 ? inC * outC + 2 * outC : 0);
            total += 2 * (9 * outC * outC + 2 * outC);
            inC = outC;
        }
        total += 8 * w * classes + classes;
        return JsonOracle.AcceptIf(total <= long.MaxValue);
    }

    public override IEnumerable<Mutation> FixedMutations()
    {
        foreach (var m in TruncationsAround(File, StructuralPositions(File))) yield return m;
        foreach (var m in NotARegularFile(File)) yield return m;
        foreach (var m in HostileDocuments(File)) yield return m;
        foreach (string value in (string[])["0", "-1", "268435456", "2147483648", "1.5", "\"4\"", "null", "true", "[]"])
            yield return Edited(File, $"width {value}", o => o["width"] = JsonNode.Parse(value), Expect.Reject);
        yield return Edited(File, "width 268435455: more than 2^63 parameters", o => o["width"] = 268435455, Expect.Reject);
        yield return Edited(File, "width 1", o => o["width"] = 1, Expect.Accept);
        yield return Edited(File, "width 100000 (read, never allocated)", o => o["width"] = 100000, Expect.Accept);
        foreach (string key in (string[])["num_classes", "in_channels"])
        {
            foreach (string value in (string[])["0", "-3", "2147483648", "2.5", "\"10\""]) yield return Edited(File, $"{key} {value}", o => o[key] = JsonNode.Parse(value), Expect.Reject);
            yield return Edited(File, $"{key} 1", o => o[key] = 1, Expect.Accept);
            yield return Edited(File, $"{key} removed", o => o.Remove(key), Expect.Accept);
        }
        foreach (string value in (string[])["\"resnet50\"", "null", "18"]) yield return Edited(File, $"model {value}", o => o["model"] = JsonNode.Parse(value), Expect.Reject);
        yield return Edited(File, "model removed", o => o.Remove("model"), Expect.Accept);
        yield return Edited(File, "an unknown key", o => o["depth"] = 18, Expect.Reject);
        yield return Stated(File, "document", "{}", "{}"u8.ToArray(), Expect.Accept);
        yield return Replaced(File, "width twice", "\"width\": 4,", "\"width\": 4, \"width\": 8,", Expect.Reject);
        yield return Replaced(File, "a comment", "\"width\": 4,", "\"width\": 4, // narrow", Expect.Reject);
        yield return InvalidUtf8(File, "0xFF inside the model value", "\"resnet");
        yield return Stated(File, "byte-order mark", "EF BB BF before the text", [0xEF, 0xBB, 0xBF, .. Originals[File]], Expect.Accept);
    }
}

/// <summary>
/// `sdp plan --json` output read back (<see cref="SubnetworkPlan.Load"/> against the model's units): a neuron-level plan
/// of a small LLaMA and a block-level plan of a narrow ResNet-18, 4 workers at coverage 0.5. Valid: exactly the keys
/// workers (positive int32), coverage (C·W a whole number k in [1, W]), subnet (the units' level) and groups (the
/// model's groups in order, by name and units), every unit with k distinct worker ids in [0, W) in increasing order,
/// and every worker holding at least one unit.
/// </summary>
public sealed class PlanSubject : JsonSubject
{
    public const string NeuronFile = "plan-neuron.json";
    public const string BlockFile = "plan-block.json";

    private readonly Dictionary<string, MaskableUnits> _units = [];

    public PlanSubject() : base("plan")
    {
        var llama = new LlamaConfig(vocabSize: 32, hiddenSize: 16, intermediateSize: 12, numHiddenLayers: 2, numAttentionHeads: 4);
        _units[NeuronFile] = SubnetworkModels.Llama(llama, SubnetLevel.Neuron, new SubnetOptions { MaskHeads = true }, seed: 0).Units;
        _units[BlockFile] = SubnetworkModels.ResNet18(new ResNetConfig(Width: 4), SubnetLevel.Block, new SubnetOptions(), seed: 0).Units;
        foreach (var (file, units) in _units) Keep(file, Encoding.UTF8.GetBytes(SubnetworkPlan.Create(units, 4, 0.5, 9).ToJson(indented: true)));
    }

    public override void Read()
    {
        foreach (var (file, units) in _units) SubnetworkPlan.Load(PathOf(file), units);
    }

    public override Expect Judge(string file, byte[] bytes)
    {
        var units = _units[file];
        if (!JsonOracle.TryParse(bytes, out var node) || node is not JsonObject o) return Expect.Reject;
        if (o.Count != 4 || !o.ContainsKey("workers") || !o.ContainsKey("coverage") || !o.ContainsKey("subnet") || !o.ContainsKey("groups")) return Expect.Reject;
        if (!JsonOracle.IsInt32(o["workers"], 1) || !JsonOracle.IsNumber(o["coverage"], out double coverage)) return Expect.Reject;
        int workers = (int)o["workers"]!;
        double k = coverage * workers, rounded = Math.Round(k);
        if (!double.IsFinite(k) || Math.Abs(k - rounded) > 1e-9 * Math.Max(1, workers) || rounded < 1 || rounded > workers) return Expect.Reject;
        if (!JsonOracle.IsString(o["subnet"], units.Level == SubnetLevel.Neuron ? "neuron" : "block")) return Expect.Reject;
        if (o["groups"] is not JsonArray groups || groups.Count != units.Groups.Count) return Expect.Reject;
        var holding = new HashSet<int>();
        for (int g = 0; g < groups.Count; g++)
        {
            var model = units.Groups[g];
            if (groups[g] is not JsonObject group || !JsonOracle.IsString(group["name"], model.Name)) return Expect.Reject;
            if (group["units"] is not JsonArray names || names.Count != model.UnitCount || group["holders"] is not JsonArray holders || holders.Count != model.UnitCount) return Expect.Reject;
            for (int u = 0; u < model.UnitCount; u++)
            {
                bool unit = model.UnitNames is { } unitNames ? JsonOracle.IsString(names[u], unitNames[u]) : JsonOracle.IsIntegerIn(names[u], u, u);
                if (!unit || holders[u] is not JsonArray set || set.Count != (int)rounded) return Expect.Reject;
                for (int i = 0; i < set.Count; i++)
                {
                    if (!JsonOracle.IsIntegerIn(set[i], 0, workers - 1) || (i > 0 && (int)set[i]! <= (int)set[i - 1]!)) return Expect.Reject;
                    holding.Add((int)set[i]!);
                }
            }
        }
        return JsonOracle.AcceptIf(holding.Count == workers);
    }

    public override IEnumerable<Mutation> FixedMutations()
    {
        foreach (string file in _units.Keys)
        {
            foreach (var m in TruncationsAround(file, StructuralPositions(file).Where((_, i) => i % 3 == 0))) yield return m;
            foreach (var m in NotARegularFile(file)) yield return m;
            foreach (var m in HostileDocuments(file)) yield return m;
        }
        const string f = NeuronFile;
        foreach (string value in (string[])["0", "-1", "2147483647", "2147483648", "8", "\"4\"", "4.0", "null"])
            yield return Edited(f, $"workers {value}", o => o["workers"] = JsonNode.Parse(value), Expect.Reject);
        foreach (string value in (string[])["0.3", "0.75", "1e400", "-0.5", "0", "\"0.5\"", "null"])
            yield return Edited(f, $"coverage {value}", o => o["coverage"] = JsonNode.Parse(value), Expect.Reject);
        yield return Edited(f, "coverage 0.50000000001 (C·W within 1e-9 of 2)", o => o["coverage"] = JsonNode.Parse("0.50000000001"), Expect.Accept);
        yield return Edited(f, "coverage 5e-1", o => o["coverage"] = JsonNode.Parse("5e-1"), Expect.Accept);
        yield return Edited(f, "10^6 workers at coverage 2e-6: holders fit, but 999,996 workers hold nothing", o =>
        {
            o["workers"] = 1_000_000;
            o["coverage"] = JsonNode.Parse("2e-6");
        }, Expect.Reject);
        yield return Edited(f, "2^31 - 1 workers at coverage 2/(2^31 - 1)", o =>
        {
            o["workers"] = int.MaxValue;
            o["coverage"] = 2.0 / int.MaxValue;
        }, Expect.Reject);
        yield return Edited(f, "subnet block", o => o["subnet"] = "block", Expect.Reject);
        yield return Edited(f, "subnet width", o => o["subnet"] = "width", Expect.Reject);
        yield return Edited(f, "groups []", o => o["groups"] = new JsonArray(), Expect.Reject);
        yield return Edited(f, "a group renamed", o => o["groups"]![0]!["name"] = "model.layers.9.mlp", Expect.Reject);
        yield return Edited(f, "a group dropped", o => o["groups"]!.AsArray().RemoveAt(1), Expect.Reject);
        yield return Edited(f, "units[0] = 1", o => o["groups"]![0]!["units"]![0] = 1, Expect.Reject);
        foreach (string holders in (string[])["[1,0]", "[0,0]", "[0,4]", "[-1,0]", "[0]", "[0,1,2]", "[0,1.0]", "\"0,1\"", "null"])
            yield return Edited(f, $"holders[0] {holders}", o => o["groups"]![0]!["holders"]![0] = JsonNode.Parse(holders), Expect.Reject);
        yield return Edited(f, "holders[0] another valid pair", o =>
        {
            var first = o["groups"]![0]!["holders"]![0]!.AsArray();
            o["groups"]![0]!["holders"]![0] = (int)first[0]! == 0 && (int)first[1]! == 3 ? JsonNode.Parse("[1,2]") : JsonNode.Parse("[0,3]");
        }, Expect.Accept);
        yield return Edited(f, "an unknown key in a group", o => o["groups"]![0]!["costs"] = new JsonArray(), Expect.Accept);
        yield return Edited(f, "an unknown top-level key", o => o["seed"] = 9, Expect.Reject);
        yield return Replaced(f, "workers twice", "\"workers\": 4,", "\"workers\": 4, \"workers\": 4,", Expect.Reject);
        yield return InvalidUtf8(f, "0xFF inside a group name", "\"model.layers.0");
        yield return Edited(BlockFile, "a block renamed", o => o["groups"]![0]!["units"]![0] = "layer9.9", Expect.Reject);
        yield return Edited(BlockFile, "a block named twice", o => o["groups"]![0]!["units"]![1] = o["groups"]![0]!["units"]![0]!.DeepClone(), Expect.Reject);
    }
}
