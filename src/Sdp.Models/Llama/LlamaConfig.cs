using System.Globalization;
using System.Text;
using System.Text.Json;
using Sdp.Engine;

namespace Sdp.Models.Llama;

/// <summary>
/// The shape of a LLaMA model, with the field names and defaults of Hugging Face's LlamaConfig
/// (config.json): num_key_value_heads defaults to num_attention_heads, rms_norm_eps to 1e-6,
/// rope_theta to 10000, max_position_embeddings to 2048, tie_word_embeddings to false and
/// initializer_range to 0.02. head_dim is hidden_size / num_attention_heads. Features the model does
/// not implement (rope scaling, attention or MLP biases, activations other than SiLU, a head_dim that
/// differs from hidden_size / num_attention_heads) are rejected when a config.json asks for them.
/// </summary>
public sealed record LlamaConfig
{
    /// <summary>Used to name the source of an error for configs built in code.</summary>
    private const string CodeSource = "LlamaConfig";

    private static readonly (string Name, Func<LlamaConfig> Make)[] PresetTable =
    [
        // 4,999,424 parameters: 4 layers × 725,504 + 2 × 4096·256 embeddings + 256 (final norm).
        ("tiny", () => new LlamaConfig(vocabSize: 4096, hiddenSize: 256, intermediateSize: 688, numHiddenLayers: 4,
            numAttentionHeads: 8, numKeyValueHeads: 4, rmsNormEps: 1e-5, maxPositionEmbeddings: 1024)),
        // 134,105,856 parameters: 12 × 7,079,424 + 2 × 32000·768 + 768.
        ("130m", () => new LlamaConfig(vocabSize: 32000, hiddenSize: 768, intermediateSize: 2048, numHiddenLayers: 12,
            numAttentionHeads: 12, rmsNormEps: 1e-6, maxPositionEmbeddings: 1024)),
        // 1,339,082,752 parameters: 24 × 50,333,696 + 2 × 32000·2048 + 2048.
        ("1b", () => new LlamaConfig(vocabSize: 32000, hiddenSize: 2048, intermediateSize: 5461, numHiddenLayers: 24,
            numAttentionHeads: 32, rmsNormEps: 1e-6, maxPositionEmbeddings: 2048)),
    ];

    /// <summary>A config built in code; throws <see cref="ArgumentException"/> naming the field when it is invalid.</summary>
    public LlamaConfig(int vocabSize, int hiddenSize, int intermediateSize, int numHiddenLayers, int numAttentionHeads,
        int? numKeyValueHeads = null, double rmsNormEps = 1e-6, double ropeTheta = 10000.0, bool tieWordEmbeddings = false,
        int maxPositionEmbeddings = 2048, double initializerRange = 0.02)
    {
        VocabSize = vocabSize;
        HiddenSize = hiddenSize;
        IntermediateSize = intermediateSize;
        NumHiddenLayers = numHiddenLayers;
        NumAttentionHeads = numAttentionHeads;
        NumKeyValueHeads = numKeyValueHeads ?? numAttentionHeads;
        RmsNormEps = rmsNormEps;
        RopeTheta = ropeTheta;
        TieWordEmbeddings = tieWordEmbeddings;
        MaxPositionEmbeddings = maxPositionEmbeddings;
        InitializerRange = initializerRange;
        Validate();
    }

    /// <summary>vocab_size: rows of the embedding table and columns of the logits.</summary>
    public int VocabSize { get; init; }

    /// <summary>hidden_size: width of the residual stream.</summary>
    public int HiddenSize { get; init; }

    /// <summary>intermediate_size: hidden units of each SwiGLU MLP.</summary>
    public int IntermediateSize { get; init; }

    /// <summary>num_hidden_layers: decoder layers.</summary>
    public int NumHiddenLayers { get; init; }

    /// <summary>num_attention_heads: query heads.</summary>
    public int NumAttentionHeads { get; init; }

    /// <summary>num_key_value_heads: key/value heads (grouped-query attention); equal to the query heads for plain multi-head attention.</summary>
    public int NumKeyValueHeads { get; init; }

    /// <summary>rms_norm_eps: added to the mean square in every RMSNorm.</summary>
    public double RmsNormEps { get; init; }

    /// <summary>rope_theta: base of the rotary frequencies.</summary>
    public double RopeTheta { get; init; }

    /// <summary>tie_word_embeddings: the logits reuse model.embed_tokens.weight and there is no lm_head.weight.</summary>
    public bool TieWordEmbeddings { get; init; }

    /// <summary>max_position_embeddings: the context length the model is meant for (informational; RoPE tables are built per call).</summary>
    public int MaxPositionEmbeddings { get; init; }

    /// <summary>initializer_range: standard deviation of the normal initialisation of every weight matrix.</summary>
    public double InitializerRange { get; init; }

    /// <summary>head_dim = hidden_size / num_attention_heads.</summary>
    public int HeadDim => HiddenSize / NumAttentionHeads;

    /// <summary>Query heads per key/value head.</summary>
    public int GroupSize => NumAttentionHeads / NumKeyValueHeads;

    /// <summary>The preset names accepted by <see cref="Preset"/>.</summary>
    public static IReadOnlyList<string> PresetNames { get; } = [.. PresetTable.Select(p => p.Name)];

    // ---- parameter and FLOP counts ------------------------------------------------------------------------

    /// <summary>Parameters of one decoder layer: q, k, v, o projections, gate/up/down projections and two norms.</summary>
    public long LayerParameterCount
    {
        get
        {
            long h = HiddenSize, kv = (long)NumKeyValueHeads * HeadDim;
            long attention = h * h + 2 * h * kv + h * h;
            long mlp = 3 * h * IntermediateSize;
            return checked(attention + mlp + 2 * h);
        }
    }

    /// <summary>
    /// Trainable parameters, counted without allocating anything: the embedding table, every layer,
    /// the final norm and (unless embeddings are tied) lm_head. Equals the built model's ParameterCount.
    /// </summary>
    public long ParameterCount
    {
        get
        {
            long embedding = (long)VocabSize * HiddenSize;
            return checked(embedding + NumHiddenLayers * LayerParameterCount + HiddenSize + (TieWordEmbeddings ? 0 : embedding));
        }
    }

    /// <summary>
    /// Parameters that take part in matrix products for every token: all of them except the input
    /// embedding table, which is only looked up (when embeddings are tied, the shared table is counted
    /// once, as the output projection).
    /// </summary>
    public long NonEmbeddingParameterCount => checked(ParameterCount - (TieWordEmbeddings ? 0 : (long)VocabSize * HiddenSize));

    /// <summary>
    /// Training FLOPs (forward + backward) per token at sequence length <paramref name="seqLen"/>, the
    /// PaLM / nanoGPT estimate: 6·N for the weight products (N = <see cref="NonEmbeddingParameterCount"/>,
    /// 2 FLOPs per multiply-add forward and twice that backward) plus 12·L·hidden·T for the attention
    /// scores and the weighted sum of values (q·kᵀ and p·v each cost 2·hidden·T forward per token and
    /// layer, ×3 for backward). The causal mask is not discounted, so this is the usual convention for
    /// model-FLOPs utilisation rather than the count of arithmetic actually done.
    /// </summary>
    public double FlopsPerToken(int seqLen)
    {
        if (seqLen <= 0) throw new ArgumentOutOfRangeException(nameof(seqLen), $"FlopsPerToken: the sequence length must be positive, got {seqLen}");
        return 6.0 * NonEmbeddingParameterCount + 12.0 * NumHiddenLayers * HiddenSize * seqLen;
    }

    // ---- presets and parsing ------------------------------------------------------------------------------

    /// <summary>A built-in configuration: "tiny" (5.0M parameters), "130m" (134M) or "1b" (1.34B).</summary>
    public static LlamaConfig Preset(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        foreach (var (preset, make) in PresetTable)
        {
            if (string.Equals(preset, name, StringComparison.OrdinalIgnoreCase)) return make();
        }
        throw new ArgumentException($"unknown LLaMA preset \"{name}\": valid presets are {string.Join(", ", PresetNames)}", nameof(name));
    }

    /// <summary>
    /// A preset name, the path of a config.json, or a directory holding one (a Hugging Face model folder).
    /// </summary>
    public static LlamaConfig Parse(string presetOrPath)
    {
        ArgumentNullException.ThrowIfNull(presetOrPath);
        if (PresetNames.Contains(presetOrPath, StringComparer.OrdinalIgnoreCase)) return Preset(presetOrPath);
        if (File.Exists(presetOrPath)) return Load(presetOrPath);
        string inFolder = Path.Combine(presetOrPath, "config.json");
        // A folder's config.json is read whatever stands there, so that a directory or a pipe in its place is reported as such.
        if (Directory.Exists(presetOrPath))
        {
            return Path.Exists(inFolder) ? Load(inFolder)
                : throw new FileNotFoundException($"LLaMA config: folder '{presetOrPath}' has no config.json", inFolder);
        }
        throw new ArgumentException(
            $"\"{presetOrPath}\" is neither a LLaMA preset ({string.Join(", ", PresetNames)}) nor a config.json file or a folder containing one",
            nameof(presetOrPath));
    }

    /// <summary>Reads a Hugging Face config.json; errors (<see cref="InvalidDataException"/>) name the file and the field.</summary>
    public static LlamaConfig Load(string path)
    {
        ReadOnlyMemory<byte> utf8;
        try
        {
            utf8 = InputFile.ReadUtf8(path, "LLaMA config");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FileNotFoundException($"{path}: cannot read the LLaMA config: {e.Message}", path, e);
        }
        return FromJson(utf8, path);
    }

    /// <summary>
    /// Parses the text of a config.json. <paramref name="source"/> (a file name) starts every error
    /// message; problems raise <see cref="InvalidDataException"/>.
    /// </summary>
    public static LlamaConfig FromJson(string json, string source = "config.json")
    {
        ArgumentNullException.ThrowIfNull(json);
        return FromJson(Encoding.UTF8.GetBytes(json), source);
    }

    /// <summary>As <see cref="FromJson(string, string)"/>, from UTF-8 text (a file's bytes are parsed where they lie).</summary>
    private static LlamaConfig FromJson(ReadOnlyMemory<byte> json, string source)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, InputFile.StrictJson(commentsAndTrailingCommas: true));
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{source}: not valid JSON: {e.Message}", e);
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{source}: expected a JSON object at the top level, got {Kind(root)}");
            var reader = new FieldReader(root, source);

            if (reader.String("model_type") is { } modelType && modelType != "llama")
                throw new InvalidDataException($"{source}: \"model_type\" is \"{modelType}\", expected \"llama\"");
            if (reader.String("hidden_act") is { } act && act != "silu")
                throw new InvalidDataException($"{source}: \"hidden_act\" is \"{act}\", but only \"silu\" (SwiGLU) is supported");
            if (reader.Bool("attention_bias") == true) throw new InvalidDataException($"{source}: \"attention_bias\" is true, but attention projections without bias are the only ones supported");
            if (reader.Bool("mlp_bias") == true) throw new InvalidDataException($"{source}: \"mlp_bias\" is true, but MLP projections without bias are the only ones supported");
            if (root.TryGetProperty("rope_scaling", out var scaling) && scaling.ValueKind != JsonValueKind.Null)
                throw new InvalidDataException($"{source}: \"rope_scaling\" is set ({scaling.GetRawText()}), but only unscaled RoPE is supported (rope_scaling must be null or absent)");

            int heads = reader.RequiredInt("num_attention_heads");
            var config = new LlamaConfig(
                reader.RequiredInt("vocab_size"),
                reader.RequiredInt("hidden_size"),
                reader.RequiredInt("intermediate_size"),
                reader.RequiredInt("num_hidden_layers"),
                heads,
                reader.Int("num_key_value_heads") ?? heads,
                reader.Double("rms_norm_eps") ?? 1e-6,
                reader.Double("rope_theta") ?? 10000.0,
                reader.Bool("tie_word_embeddings") ?? false,
                reader.Int("max_position_embeddings") ?? 2048,
                reader.Double("initializer_range") ?? 0.02,
                source);

            if (reader.Int("head_dim") is { } headDim && headDim != config.HeadDim)
                throw new InvalidDataException($"{source}: \"head_dim\" is {headDim}, but only head_dim = hidden_size / num_attention_heads = {config.HeadDim} is supported");
            return config;
        }
    }

    /// <summary>Validating constructor for <see cref="FromJson(string, string)"/>: problems are reported against <paramref name="source"/>.</summary>
    private LlamaConfig(int vocabSize, int hiddenSize, int intermediateSize, int numHiddenLayers, int numAttentionHeads, int numKeyValueHeads,
        double rmsNormEps, double ropeTheta, bool tieWordEmbeddings, int maxPositionEmbeddings, double initializerRange, string source)
    {
        VocabSize = vocabSize;
        HiddenSize = hiddenSize;
        IntermediateSize = intermediateSize;
        NumHiddenLayers = numHiddenLayers;
        NumAttentionHeads = numAttentionHeads;
        NumKeyValueHeads = numKeyValueHeads;
        RmsNormEps = rmsNormEps;
        RopeTheta = ropeTheta;
        TieWordEmbeddings = tieWordEmbeddings;
        MaxPositionEmbeddings = maxPositionEmbeddings;
        InitializerRange = initializerRange;
        if (Problem() is { } problem) throw new InvalidDataException($"{source}: {problem}");
    }

    /// <summary>
    /// Throws <see cref="ArgumentException"/> naming the offending field (by its config.json name) when
    /// the config cannot describe a model, e.g. after a <c>with</c> expression. The model calls it.
    /// </summary>
    public void Validate()
    {
        if (Problem() is { } problem) throw new ArgumentException($"{CodeSource}: {problem}");
    }

    /// <summary>The first reason this config is invalid, or null.</summary>
    private string? Problem()
    {
        foreach (var (name, value) in new[]
        {
            ("vocab_size", VocabSize), ("hidden_size", HiddenSize), ("intermediate_size", IntermediateSize),
            ("num_hidden_layers", NumHiddenLayers), ("num_attention_heads", NumAttentionHeads),
            ("num_key_value_heads", NumKeyValueHeads), ("max_position_embeddings", MaxPositionEmbeddings),
        })
        {
            if (value <= 0) return $"\"{name}\" must be a positive integer, got {value}";
        }
        foreach (var (name, value) in new[] { ("rms_norm_eps", RmsNormEps), ("rope_theta", RopeTheta), ("initializer_range", InitializerRange) })
        {
            if (!(value > 0) || double.IsInfinity(value)) return $"\"{name}\" must be a positive finite number, got {Format(value)}";
        }
        if (HiddenSize % NumAttentionHeads != 0)
            return $"\"hidden_size\" {HiddenSize} is not divisible by \"num_attention_heads\" {NumAttentionHeads} (head_dim = hidden_size / num_attention_heads must be a whole number)";
        if (NumAttentionHeads % NumKeyValueHeads != 0)
            return $"\"num_attention_heads\" {NumAttentionHeads} is not a multiple of \"num_key_value_heads\" {NumKeyValueHeads} (each key/value head must serve the same number of query heads)";
        if (HeadDim % 2 != 0)
            return $"head_dim = \"hidden_size\" {HiddenSize} / \"num_attention_heads\" {NumAttentionHeads} = {HeadDim} must be even for rotary embeddings";
        try
        {
            _ = ParameterCount;
        }
        catch (OverflowException)
        {
            return $"{NumHiddenLayers} layers of width {HiddenSize} (intermediate {IntermediateSize}) and a vocabulary of {VocabSize} make more than 2^63 parameters";
        }
        return null;
    }

    // ---- writing ------------------------------------------------------------------------------------------

    /// <summary>A Hugging Face compatible config.json (LlamaForCausalLM, model_type "llama"), indented.</summary>
    public string ToJson()
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteStartArray("architectures");
            w.WriteStringValue("LlamaForCausalLM");
            w.WriteEndArray();
            w.WriteString("model_type", "llama");
            w.WriteNumber("vocab_size", VocabSize);
            w.WriteNumber("hidden_size", HiddenSize);
            w.WriteNumber("intermediate_size", IntermediateSize);
            w.WriteNumber("num_hidden_layers", NumHiddenLayers);
            w.WriteNumber("num_attention_heads", NumAttentionHeads);
            w.WriteNumber("num_key_value_heads", NumKeyValueHeads);
            w.WriteNumber("head_dim", HeadDim);
            w.WriteString("hidden_act", "silu");
            w.WriteNumber("max_position_embeddings", MaxPositionEmbeddings);
            w.WriteNumber("rms_norm_eps", RmsNormEps);
            w.WriteNumber("rope_theta", RopeTheta);
            w.WriteNull("rope_scaling");
            w.WriteBoolean("attention_bias", false);
            w.WriteNumber("attention_dropout", 0.0);
            w.WriteBoolean("mlp_bias", false);
            w.WriteNumber("initializer_range", InitializerRange);
            w.WriteBoolean("tie_word_embeddings", TieWordEmbeddings);
            w.WriteString("torch_dtype", "float32");
            w.WriteBoolean("use_cache", true);
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray());
    }

    /// <summary>Writes <see cref="ToJson"/> to <paramref name="path"/>.</summary>
    public void Save(string path) => File.WriteAllText(path, ToJson() + "\n");

    // ---- helpers ------------------------------------------------------------------------------------------

    private static string Format(double v) => v.ToString("R", CultureInfo.InvariantCulture);

    private static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => $"the string {e.GetRawText()}",
        JsonValueKind.Number => $"the number {e.GetRawText()}",
        JsonValueKind.True or JsonValueKind.False => e.GetRawText(),
        _ => "null",
    };

    /// <summary>Typed field access with errors that name the file and the field.</summary>
    private readonly struct FieldReader(JsonElement root, string source)
    {
        public int RequiredInt(string field)
        {
            if (!root.TryGetProperty(field, out _)) throw new InvalidDataException($"{source}: missing required field \"{field}\" (a positive integer)");
            return Int(field) ?? throw new InvalidDataException($"{source}: \"{field}\" must be an integer, got null");
        }

        public int? Int(string field)
        {
            if (!Present(field, out var e)) return null;
            if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out int value))
                throw new InvalidDataException($"{source}: \"{field}\" must be an integer, got {Kind(e)}");
            return value;
        }

        public double? Double(string field)
        {
            if (!Present(field, out var e)) return null;
            if (e.ValueKind != JsonValueKind.Number || !e.TryGetDouble(out double value))
                throw new InvalidDataException($"{source}: \"{field}\" must be a number, got {Kind(e)}");
            return value;
        }

        public bool? Bool(string field)
        {
            if (!Present(field, out var e)) return null;
            if (e.ValueKind is not (JsonValueKind.True or JsonValueKind.False))
                throw new InvalidDataException($"{source}: \"{field}\" must be true or false, got {Kind(e)}");
            return e.GetBoolean();
        }

        public string? String(string field)
        {
            if (!Present(field, out var e)) return null;
            if (e.ValueKind != JsonValueKind.String) throw new InvalidDataException($"{source}: \"{field}\" must be a string, got {Kind(e)}");
            return e.GetString();
        }

        /// <summary>Absent and null fields both mean "use the default" (HF writes null for unset optional values).</summary>
        private bool Present(string field, out JsonElement e) => root.TryGetProperty(field, out e) && e.ValueKind != JsonValueKind.Null;
    }
}
