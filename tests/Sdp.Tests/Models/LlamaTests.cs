using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Memory;
using Sdp.Engine.Nn;
using Sdp.Engine.Optim;
using Sdp.Engine;
using Sdp.Models.Llama;
using Sdp.Tests.Support;

namespace Sdp.Tests.Models;

/// <summary>LLaMA config parsing and presets, HF parameter names, and the model's gradients, causality, determinism and training.</summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class LlamaTests(IBackend backend) : DeviceFixture(backend)
{
    [SetUp]
    public void ClearTape() => Tape.Current.Clear();

    /// <summary>The micro config of the gradient check: head_dim 4, two query heads sharing one kv head.</summary>
    private static LlamaConfig Micro(bool tied = false, double initializerRange = 0.02)
        => new(vocabSize: 11, hiddenSize: 8, intermediateSize: 12, numHiddenLayers: 2, numAttentionHeads: 2,
            numKeyValueHeads: 1, rmsNormEps: 1e-5, tieWordEmbeddings: tied, maxPositionEmbeddings: 16, initializerRange: initializerRange);

    private static Tensor Tokens(Rng rng, int vocab, int b, int t)
    {
        var ids = new int[b * t];
        for (int i = 0; i < ids.Length; i++) ids[i] = rng.NextInt(vocab);
        return Tensor.FromArray(ids, new Shape(b, t));
    }

    /// <summary>HF LlamaForCausalLM.named_parameters() order.</summary>
    private static List<string> HfNames(int layers, bool tied)
    {
        var names = new List<string> { "model.embed_tokens.weight" };
        for (int i = 0; i < layers; i++)
        {
            string p = $"model.layers.{i}.";
            names.AddRange([
                p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight", p + "self_attn.o_proj.weight",
                p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight",
                p + "input_layernorm.weight", p + "post_attention_layernorm.weight",
            ]);
        }
        names.Add("model.norm.weight");
        if (!tied) names.Add("lm_head.weight");
        return names;
    }

    // ---- presets and counts ---------------------------------------------------------------------------------

    [TestCase("tiny", 4096, 256, 688, 4, 8, 4, 4_999_424L)]
    [TestCase("130m", 32000, 768, 2048, 12, 12, 12, 134_105_856L)]
    [TestCase("1b", 32000, 2048, 5461, 24, 32, 32, 1_339_082_752L)]
    public void Preset_shapes_and_parameter_counts_match_the_table(string name, int vocab, int hidden, int intermediate, int layers, int heads, int kvHeads, long parameters)
    {
        var c = LlamaConfig.Preset(name);
        Assert.Multiple(() =>
        {
            Assert.That((c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads),
                Is.EqualTo((vocab, hidden, intermediate, layers, heads, kvHeads)));
            Assert.That(c.TieWordEmbeddings, Is.False);
            Assert.That(c.RopeTheta, Is.EqualTo(10000.0));
            Assert.That(c.HeadDim, Is.EqualTo(hidden / heads));
            Assert.That(c.ParameterCount, Is.EqualTo(parameters));
        });
        // Independent sum: embeddings + lm_head, per layer q,o (C×C), k,v (C×KVH·D), 3 MLP matrices, 2 norms, final norm.
        long kv = (long)kvHeads * (hidden / heads);
        long perLayer = 2L * hidden * hidden + 2L * hidden * kv + 3L * hidden * intermediate + 2L * hidden;
        Assert.That(2L * vocab * hidden + layers * perLayer + hidden, Is.EqualTo(parameters));
        Assert.That(c with { TieWordEmbeddings = true }, Has.Property(nameof(LlamaConfig.ParameterCount)).EqualTo(parameters - (long)vocab * hidden));
    }

    [Test]
    public void Tiny_model_has_the_Hugging_Face_parameter_names_in_order_the_analytic_count_and_HF_init()
    {
        var config = LlamaConfig.Preset("tiny");
        using var model = new LlamaForCausalLM(config, new Rng(1));
        Assert.That(model.NamedParameters().Select(p => p.Name), Is.EqualTo(HfNames(config.NumHiddenLayers, tied: false)));
        Assert.That(model.ParameterCount, Is.EqualTo(config.ParameterCount).And.EqualTo(4_999_424L));
        var shapes = model.NamedParameters().ToDictionary(p => p.Name, p => p.Tensor.Shape);
        Assert.Multiple(() =>
        {
            Assert.That(shapes["model.embed_tokens.weight"], Is.EqualTo(new Shape(4096, 256)));
            Assert.That(shapes["model.layers.3.self_attn.q_proj.weight"], Is.EqualTo(new Shape(256, 256)));
            Assert.That(shapes["model.layers.3.self_attn.k_proj.weight"], Is.EqualTo(new Shape(128, 256)));
            Assert.That(shapes["model.layers.3.self_attn.v_proj.weight"], Is.EqualTo(new Shape(128, 256)));
            Assert.That(shapes["model.layers.3.self_attn.o_proj.weight"], Is.EqualTo(new Shape(256, 256)));
            Assert.That(shapes["model.layers.0.mlp.gate_proj.weight"], Is.EqualTo(new Shape(688, 256)));
            Assert.That(shapes["model.layers.0.mlp.up_proj.weight"], Is.EqualTo(new Shape(688, 256)));
            Assert.That(shapes["model.layers.0.mlp.down_proj.weight"], Is.EqualTo(new Shape(256, 688)));
            Assert.That(shapes["model.layers.0.input_layernorm.weight"], Is.EqualTo(new Shape(256)));
            Assert.That(shapes["lm_head.weight"], Is.EqualTo(new Shape(4096, 256)));
            Assert.That(model.Layers, Has.Count.EqualTo(4));
            Assert.That(model.Layers[2].Mlp.GateProj.Weight, Is.SameAs(model.NamedParameters().Single(p => p.Name == "model.layers.2.mlp.gate_proj.weight").Tensor));
            Assert.That(model.NamedBuffers(), Is.Empty, "the RoPE tables are not part of the state dict (HF inv_freq is non-persistent)");
        });

        // Initialisation: N(0, initializer_range²) weights (a uniform ±1/√in init would give std 0.036 for
        // in = 256 or 0.022 for 688), norm weights one.
        foreach (var (name, t) in model.NamedParameters())
        {
            var v = t.ToDoubles();
            if (name.EndsWith("norm.weight", StringComparison.Ordinal))
            {
                Assert.That(v, Is.All.EqualTo(1.0), name);
                continue;
            }
            double mean = v.Average(), std = Math.Sqrt(v.Sum(x => (x - mean) * (x - mean)) / v.Length);
            Assert.That(mean, Is.EqualTo(0).Within(5 * 0.02 / Math.Sqrt(v.Length)), name);
            Assert.That(std, Is.EqualTo(0.02).Within(0.0005), name);
        }
    }

    [Test]
    public void Tied_embeddings_drop_lm_head_and_project_with_the_embedding_table()
    {
        var config = Micro(tied: true);
        using var scope = TensorScope.Begin();
        using var model = new LlamaForCausalLM(config, new Rng(2));
        Assert.That(model.NamedParameters().Select(p => p.Name), Is.EqualTo(HfNames(2, tied: true)));
        Assert.That(model.NamedParameters().Select(p => p.Name), Does.Not.Contain("lm_head.weight"));
        Assert.That(model.LmHead, Is.Null);
        Assert.That(model.OutputWeight, Is.SameAs(model.Model.EmbedTokens.Weight));
        Assert.That(model.ParameterCount, Is.EqualTo(config.ParameterCount));
        using (var untied = new LlamaForCausalLM(config with { TieWordEmbeddings = false }, new Rng(2)))
        {
            Assert.That(untied.ParameterCount - model.ParameterCount, Is.EqualTo(11 * 8));
        }

        var ids = Tokens(new Rng(3), 11, 2, 5);
        var logits = model.Forward(ids);
        var expected = Ops.Linear(model.Model.Forward(ids), model.Model.EmbedTokens.Weight);
        Assert.That(logits.ToDoubles(), Is.EqualTo(expected.ToDoubles()));
        Tape.Current.Clear();
    }

    [Test]
    public void Flops_per_token_is_six_n_plus_the_attention_term()
    {
        var c = LlamaConfig.Preset("130m");
        long n = 134_105_856L - 32000L * 768; // the input embedding is a lookup, lm_head is a product
        Assert.That(c.NonEmbeddingParameterCount, Is.EqualTo(n));
        Assert.That(c.FlopsPerToken(1024), Is.EqualTo(6.0 * n + 12.0 * 12 * 768 * 1024));
        Assert.That(c with { TieWordEmbeddings = true }, Has.Property(nameof(LlamaConfig.NonEmbeddingParameterCount)).EqualTo(n));
        Assert.That(() => c.FlopsPerToken(0), Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("got 0"));
    }

    // ---- config.json ----------------------------------------------------------------------------------------

    [Test]
    public void Config_json_round_trips_for_presets_and_a_tied_gqa_config()
    {
        var configs = LlamaConfig.PresetNames.Select(LlamaConfig.Preset).Append(Micro(tied: true) with { RopeTheta = 500000, RmsNormEps = 1e-5 });
        foreach (var c in configs)
        {
            var json = c.ToJson();
            Assert.That(LlamaConfig.FromJson(json), Is.EqualTo(c), json);
            using var doc = System.Text.Json.JsonDocument.Parse(json);
            var root = doc.RootElement;
            Assert.That(root.GetProperty("architectures")[0].GetString(), Is.EqualTo("LlamaForCausalLM"));
            Assert.That(root.GetProperty("model_type").GetString(), Is.EqualTo("llama"));
            Assert.That(root.GetProperty("num_key_value_heads").GetInt32(), Is.EqualTo(c.NumKeyValueHeads));
            Assert.That(root.GetProperty("rms_norm_eps").GetDouble(), Is.EqualTo(c.RmsNormEps));
            Assert.That(root.GetProperty("tie_word_embeddings").GetBoolean(), Is.EqualTo(c.TieWordEmbeddings));
        }
    }

    [Test]
    public void Hugging_Face_config_with_extra_fields_and_defaults_loads_from_a_file_or_folder()
    {
        // As written by transformers for a LLaMA-2-style model, minus the fields whose defaults are tested.
        const string json = """
        {
          "architectures": ["LlamaForCausalLM"],
          "attention_bias": false,
          "bos_token_id": 1,
          "eos_token_id": 2,
          "hidden_act": "silu",
          "hidden_size": 64,
          "intermediate_size": 172,
          "model_type": "llama",
          "num_attention_heads": 4,
          "num_hidden_layers": 3,
          "num_key_value_heads": null,
          "pretraining_tp": 1,
          "rope_scaling": null,
          "torch_dtype": "bfloat16",
          "transformers_version": "4.40.0",
          "use_cache": true,
          "vocab_size": 1000
        }
        """;
        string dir = Path.Combine(Path.GetTempPath(), "sdp-llama-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            string path = Path.Combine(dir, "config.json");
            File.WriteAllText(path, json);
            var c = LlamaConfig.Load(path);
            Assert.That(c, Is.EqualTo(new LlamaConfig(1000, 64, 172, 3, 4)));
            Assert.Multiple(() =>
            {
                Assert.That(c.NumKeyValueHeads, Is.EqualTo(4), "num_key_value_heads defaults to num_attention_heads");
                Assert.That(c.RmsNormEps, Is.EqualTo(1e-6));
                Assert.That(c.RopeTheta, Is.EqualTo(10000.0));
                Assert.That(c.TieWordEmbeddings, Is.False);
                Assert.That(c.MaxPositionEmbeddings, Is.EqualTo(2048));
                Assert.That(c.InitializerRange, Is.EqualTo(0.02));
                Assert.That(c.HeadDim, Is.EqualTo(16));
            });
            Assert.That(LlamaConfig.Parse(path), Is.EqualTo(c));
            Assert.That(LlamaConfig.Parse(dir), Is.EqualTo(c));
            Assert.That(LlamaConfig.Parse("TINY"), Is.EqualTo(LlamaConfig.Preset("tiny")));

            string saved = Path.Combine(dir, "saved.json");
            LlamaConfig.Preset("1b").Save(saved);
            Assert.That(LlamaConfig.Parse(saved), Is.EqualTo(LlamaConfig.Preset("1b")));

            File.WriteAllText(path, json.Replace("\"vocab_size\": 1000", "\"vocab_size\": \"1000\"", StringComparison.Ordinal));
            Assert.That(() => LlamaConfig.Load(path), Throws.TypeOf<InvalidDataException>()
                .With.Message.StartsWith(path + ":").And.Message.Contains("\"vocab_size\" must be an integer, got the string \"1000\""));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private const string Good = """{"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false, "max_position_embeddings": 128}""";

    private static string With(string field, string value)
    {
        var node = System.Text.Json.Nodes.JsonNode.Parse(Good)!.AsObject();
        if (value == "<absent>") node.Remove(field);
        else node[field] = System.Text.Json.Nodes.JsonNode.Parse(value);
        return node.ToJsonString();
    }

    private static IEnumerable<TestCaseData> BadConfigs()
    {
        TestCaseData Case(string field, string value, string expected) => new TestCaseData(With(field, value), expected).SetArgDisplayNames($"{field}={value}");
        yield return Case("vocab_size", "<absent>", "missing required field \"vocab_size\"");
        yield return Case("hidden_size", "<absent>", "missing required field \"hidden_size\"");
        yield return Case("intermediate_size", "<absent>", "missing required field \"intermediate_size\"");
        yield return Case("num_hidden_layers", "<absent>", "missing required field \"num_hidden_layers\"");
        yield return Case("num_attention_heads", "<absent>", "missing required field \"num_attention_heads\"");
        yield return Case("hidden_size", "null", "\"hidden_size\" must be an integer, got null");
        yield return Case("hidden_size", "\"32\"", "\"hidden_size\" must be an integer, got the string \"32\"");
        yield return Case("hidden_size", "32.5", "\"hidden_size\" must be an integer, got the number 32.5");
        yield return Case("num_hidden_layers", "1e12", "\"num_hidden_layers\" must be an integer, got the number 1e12");
        yield return Case("num_key_value_heads", "[2]", "\"num_key_value_heads\" must be an integer, got an array");
        yield return Case("rms_norm_eps", "\"1e-5\"", "\"rms_norm_eps\" must be a number, got the string \"1e-5\"");
        yield return Case("rope_theta", "{}", "\"rope_theta\" must be a number, got an object");
        yield return Case("tie_word_embeddings", "1", "\"tie_word_embeddings\" must be true or false, got the number 1");
        yield return Case("max_position_embeddings", "true", "\"max_position_embeddings\" must be an integer, got true");
        yield return Case("vocab_size", "0", "\"vocab_size\" must be a positive integer, got 0");
        yield return Case("hidden_size", "-32", "\"hidden_size\" must be a positive integer, got -32");
        yield return Case("intermediate_size", "0", "\"intermediate_size\" must be a positive integer, got 0");
        yield return Case("num_hidden_layers", "0", "\"num_hidden_layers\" must be a positive integer, got 0");
        yield return Case("num_attention_heads", "-4", "\"num_attention_heads\" must be a positive integer, got -4");
        yield return Case("num_key_value_heads", "0", "\"num_key_value_heads\" must be a positive integer, got 0");
        yield return Case("max_position_embeddings", "0", "\"max_position_embeddings\" must be a positive integer, got 0");
        yield return Case("rms_norm_eps", "-1e-5", "\"rms_norm_eps\" must be a positive finite number, got -1E-05");
        yield return Case("rope_theta", "0", "\"rope_theta\" must be a positive finite number, got 0");
        yield return Case("initializer_range", "0", "\"initializer_range\" must be a positive finite number, got 0");
        yield return Case("num_attention_heads", "5", "\"hidden_size\" 32 is not divisible by \"num_attention_heads\" 5");
        yield return Case("num_key_value_heads", "3", "\"num_attention_heads\" 4 is not a multiple of \"num_key_value_heads\" 3");
        yield return Case("num_attention_heads", "32", "head_dim = \"hidden_size\" 32 / \"num_attention_heads\" 32 = 1 must be even");
        yield return Case("head_dim", "16", "\"head_dim\" is 16, but only head_dim = hidden_size / num_attention_heads = 8 is supported");
        yield return Case("model_type", "\"mistral\"", "\"model_type\" is \"mistral\", expected \"llama\"");
        yield return Case("hidden_act", "\"gelu\"", "\"hidden_act\" is \"gelu\", but only \"silu\"");
        yield return Case("attention_bias", "true", "\"attention_bias\" is true");
        yield return Case("mlp_bias", "true", "\"mlp_bias\" is true");
        yield return Case("rope_scaling", """{"type": "linear", "factor": 2.0}""", "\"rope_scaling\" is set");
        yield return new TestCaseData("{\"vocab_size\": 100,", "not valid JSON").SetArgDisplayNames("truncated");
        yield return new TestCaseData("[1, 2]", "expected a JSON object at the top level, got an array").SetArgDisplayNames("array");
    }

    [TestCaseSource(nameof(BadConfigs))]
    public void Bad_config_json_errors_name_the_file_and_the_field(string json, string expected)
    {
        Assert.That(LlamaConfig.FromJson(Good, "ok/config.json").NumKeyValueHeads, Is.EqualTo(2));
        Assert.That(() => LlamaConfig.FromJson(json, "models/x/config.json"),
            Throws.TypeOf<InvalidDataException>().With.Message.StartsWith("models/x/config.json: ").And.Message.Contains(expected));
    }

    [Test]
    public void Unknown_presets_and_paths_list_the_valid_names()
    {
        Assert.That(() => LlamaConfig.Preset("7b"), Throws.ArgumentException.With.Message.Contains("unknown LLaMA preset \"7b\"").And.Message.Contains("tiny, 130m, 1b"));
        Assert.That(() => LlamaConfig.Parse("no/such/config.json"),
            Throws.ArgumentException.With.Message.Contains("\"no/such/config.json\" is neither a LLaMA preset (tiny, 130m, 1b)"));
        Assert.That(() => LlamaConfig.Load(Path.Combine(Path.GetTempPath(), "sdp-missing-" + Guid.NewGuid().ToString("N"), "config.json")),
            Throws.InstanceOf<FileNotFoundException>().With.Message.Contains("config.json: cannot read the LLaMA config"));
    }

    [Test]
    public void Invalid_configs_built_in_code_are_rejected_with_the_field_name()
    {
        Assert.That(() => new LlamaConfig(10, 12, 8, 1, 5), Throws.ArgumentException.With.Message.Contains("\"hidden_size\" 12 is not divisible by \"num_attention_heads\" 5"));
        Assert.That(() => new LlamaConfig(10, 8, 8, 0, 2), Throws.ArgumentException.With.Message.Contains("\"num_hidden_layers\" must be a positive integer, got 0"));
        var bad = Micro() with { NumKeyValueHeads = 3 }; // a `with` skips the constructor: the model validates
        Assert.That(() => new LlamaForCausalLM(bad, new Rng(1)),
            Throws.ArgumentException.With.Message.EqualTo("LlamaConfig: \"num_attention_heads\" 2 is not a multiple of \"num_key_value_heads\" 3 (each key/value head must serve the same number of query heads)"));
        Assert.That(() => new LlamaForCausalLM(Micro(), new Rng(1), DType.Int32), Throws.ArgumentException.With.Message.Contains("float32 or float64, got int32"));
    }

    [Test]
    public void Forward_rejects_ids_that_are_not_B_by_T_integers()
    {
        using var scope = TensorScope.Begin();
        using var model = new LlamaForCausalLM(Micro(), new Rng(1));
        var flat = Tensor.FromArray(new[] { 1, 2, 3 }, new Shape(3));
        var floats = Tensor.Zeros(new Shape(1, 3));
        Assert.That(() => model.Forward(flat), Throws.ArgumentException.With.Message.Contains("ids must be (B, T) int32 or int64").And.Message.Contains("got (3,) int32"));
        Assert.That(() => model.Forward(floats), Throws.ArgumentException.With.Message.Contains("float32"));
        var ids = Tensor.FromArray(new[] { 1, 11, 3 }, new Shape(1, 3));
        // The CPU throws in Forward; a device backend raises its error flag, which the next host wait reports.
        Assert.That(() => model.Forward(ids).Backend.Synchronize(), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("id 11"));
        var good = Tensor.FromArray(new[] { 1, 2, 3 }, new Shape(1, 3));
        var wrong = Tensor.FromArray(new[] { 1, 2 }, new Shape(1, 2));
        Assert.That(() => model.Loss(good, wrong), Throws.ArgumentException.With.Message.Contains("targets (1, 2) must have the shape of ids (1, 3)"));
        Tape.Current.Clear();
    }

    // ---- forward and backward -------------------------------------------------------------------------------

    [Test]
    public void Loss_is_the_mean_cross_entropy_of_the_logits_and_starts_near_ln_V()
    {
        using var scope = TensorScope.Begin();
        using var model = new LlamaForCausalLM(LlamaConfig.Preset("tiny") with { NumHiddenLayers = 2 }, new Rng(4));
        var rng = new Rng(8);
        var ids = Tokens(rng, 4096, 2, 8);
        var targets = Tokens(rng, 4096, 2, 8);
        var logits = model.Forward(ids);
        Assert.That(logits.Shape, Is.EqualTo(new Shape(2, 8, 4096)));
        double loss = model.Loss(ids, targets).Item();
        Assert.That(loss, Is.EqualTo(Ops.CrossEntropy(logits, targets).Item()).Within(1e-6));
        Assert.That(loss, Is.EqualTo(Math.Log(4096)).Within(0.05), "N(0, 0.02²) weights give nearly uniform predictions");
        Tape.Current.Clear();
    }

    [Test]
    public void Logits_match_a_naive_double_precision_reference([Values] bool tied)
    {
        // GQA (2 query heads per kv head), random norm weights and large weights so every term matters.
        var config = Micro(tied, initializerRange: 0.4) with { NumAttentionHeads = 4, NumKeyValueHeads = 2, HiddenSize = 16, RopeTheta = 100 };
        using var scope = TensorScope.Begin();
        using var model = new LlamaForCausalLM(config, new Rng(71), DType.Float64);
        var rng = new Rng(72);
        foreach (var (_, p) in model.NamedParameters().Where(p => p.Name.EndsWith("norm.weight", StringComparison.Ordinal)))
        {
            p.Backend.Upload<double>([.. p.ToDoubles().Select(_ => 1 + 0.3 * rng.NextNormal())], p);
        }
        const int b = 2, t = 6;
        var idValues = Tokens(rng, config.VocabSize, b, t).ToArray<int>();
        double[] logits;
        using (GradMode.Disable()) logits = model.Forward(Tensor.FromArray(idValues, new Shape(b, t))).ToDoubles();
        var reference = NaiveLogits(config, model.NamedParameters().ToDictionary(p => p.Name, p => p.Tensor.ToDoubles()), idValues, b, t);
        TestContext.Out.WriteLine($"max |logit| {reference.Max(Math.Abs):G4}, max |difference| {logits.Zip(reference, (x, y) => Math.Abs(x - y)).Max():G3}");
        Assert.That(logits, Is.EqualTo(reference).Within(1e-5), "cos/sin are float32-rounded in the model (as HF), exact here");
        Assert.That(logits.Zip(reference, (x, y) => Math.Abs(x - y)).Max(), Is.GreaterThan(0).And.LessThan(1e-5));
    }

    /// <summary>
    /// HF LlamaForCausalLM written out with loops in double precision: embedding, per layer
    /// x += o_proj(attn(rope(q), rope(k), v)) on RMSNorm(x), x += down(silu(gate(n)) · up(n)) on RMSNorm(x),
    /// final RMSNorm, logits = n · Wᵀ (W = lm_head or the embedding table).
    /// </summary>
    private static double[] NaiveLogits(LlamaConfig c, Dictionary<string, double[]> w, int[] ids, int b, int t)
    {
        int C = c.HiddenSize, H = c.NumAttentionHeads, KVH = c.NumKeyValueHeads, D = c.HeadDim, V = c.VocabSize, I = c.IntermediateSize;
        double[] MatVec(double[] m, int rows, int cols, double[] v)
        {
            var y = new double[rows];
            for (int r = 0; r < rows; r++)
            {
                double acc = 0;
                for (int k = 0; k < cols; k++) acc += m[r * cols + k] * v[k];
                y[r] = acc;
            }
            return y;
        }
        double[] Norm(double[] x, double[] g)
        {
            double ms = x.Sum(v => v * v) / x.Length;
            double r = 1 / Math.Sqrt(ms + c.RmsNormEps);
            return [.. x.Select((v, i) => v * r * g[i])];
        }
        // RoPE rotate-half: y_i = x_i cos(p θ_i) - x_{i+D/2} sin(p θ_i) for i < D/2, y_i = x_i cos + x_{i-D/2} sin above,
        // θ_i = theta^(-2 (i mod D/2) / D).
        void Rope(double[] x, int heads, int pos)
        {
            for (int h = 0; h < heads; h++)
            {
                var orig = x.AsSpan(h * D, D).ToArray();
                for (int i = 0; i < D; i++)
                {
                    int j = i % (D / 2);
                    double angle = pos * Math.Pow(c.RopeTheta, -2.0 * j / D);
                    double partner = i < D / 2 ? -orig[i + D / 2] : orig[i - D / 2];
                    x[h * D + i] = orig[i] * Math.Cos(angle) + partner * Math.Sin(angle);
                }
            }
        }
        var logits = new double[b * t * V];
        for (int bi = 0; bi < b; bi++)
        {
            var x = new double[t][];
            for (int ti = 0; ti < t; ti++) x[ti] = w["model.embed_tokens.weight"].AsSpan(ids[bi * t + ti] * C, C).ToArray();
            for (int l = 0; l < c.NumHiddenLayers; l++)
            {
                string p = $"model.layers.{l}.";
                var q = new double[t][];
                var k = new double[t][];
                var v = new double[t][];
                for (int ti = 0; ti < t; ti++)
                {
                    var n = Norm(x[ti], w[p + "input_layernorm.weight"]);
                    q[ti] = MatVec(w[p + "self_attn.q_proj.weight"], H * D, C, n);
                    k[ti] = MatVec(w[p + "self_attn.k_proj.weight"], KVH * D, C, n);
                    v[ti] = MatVec(w[p + "self_attn.v_proj.weight"], KVH * D, C, n);
                    Rope(q[ti], H, ti);
                    Rope(k[ti], KVH, ti);
                }
                for (int ti = 0; ti < t; ti++)
                {
                    var merged = new double[H * D];
                    for (int h = 0; h < H; h++)
                    {
                        int kvh = h / (H / KVH);
                        var scores = new double[ti + 1];
                        for (int j = 0; j <= ti; j++)
                        {
                            double dot = 0;
                            for (int d = 0; d < D; d++) dot += q[ti][h * D + d] * k[j][kvh * D + d];
                            scores[j] = dot / Math.Sqrt(D);
                        }
                        double max = scores.Max();
                        var e = scores.Select(s => Math.Exp(s - max)).ToArray();
                        double z = e.Sum();
                        for (int j = 0; j <= ti; j++)
                        {
                            for (int d = 0; d < D; d++) merged[h * D + d] += e[j] / z * v[j][kvh * D + d];
                        }
                    }
                    var o = MatVec(w[p + "self_attn.o_proj.weight"], C, H * D, merged);
                    for (int i = 0; i < C; i++) x[ti][i] += o[i];
                }
                for (int ti = 0; ti < t; ti++)
                {
                    var n = Norm(x[ti], w[p + "post_attention_layernorm.weight"]);
                    var gate = MatVec(w[p + "mlp.gate_proj.weight"], I, C, n);
                    var up = MatVec(w[p + "mlp.up_proj.weight"], I, C, n);
                    var hidden = gate.Select((g, i) => g / (1 + Math.Exp(-g)) * up[i]).ToArray();
                    var down = MatVec(w[p + "mlp.down_proj.weight"], C, I, hidden);
                    for (int i = 0; i < C; i++) x[ti][i] += down[i];
                }
            }
            var head = c.TieWordEmbeddings ? w["model.embed_tokens.weight"] : w["lm_head.weight"];
            for (int ti = 0; ti < t; ti++)
            {
                MatVec(head, V, C, Norm(x[ti], w["model.norm.weight"])).CopyTo(logits, (bi * t + ti) * V);
            }
        }
        return logits;
    }

    [Test]
    public void Whole_model_loss_matches_finite_differences_in_float64([Values] bool tied)
    {
        var config = Micro(tied, initializerRange: 0.4); // large weights so every path carries signal
        using var scope = TensorScope.Begin();
        using var model = new LlamaForCausalLM(config, new Rng(21), DType.Float64);
        var rng = new Rng(22);
        foreach (var (name, p) in model.NamedParameters().Where(p => p.Name.EndsWith("norm.weight", StringComparison.Ordinal)))
        {
            p.Backend.Upload<double>([.. p.ToDoubles().Select(_ => 1 + 0.3 * rng.NextNormal())], p);
        }
        var ids = Tokens(rng, 11, 2, 5);
        var t = Tokens(rng, 11, 2, 5).ToArray<int>();
        t[3] = -100; // an ignored position
        var targets = Tensor.FromArray(t, new Shape(2, 5));
        var checkedNames = new[]
        {
            "model.embed_tokens.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
            "model.layers.1.post_attention_layernorm.weight",
            "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight",
            "model.norm.weight",
        }.Concat(tied ? [] : ["lm_head.weight"]);
        var parameters = model.NamedParameters().ToDictionary(p => p.Name, p => p.Tensor);
        var inputs = checkedNames.Select(n => parameters[n]).ToArray();
        GradCheck.Check(_ => model.Loss(ids, targets), inputs, atol: 1e-8, rtol: 1e-5, maxElements: GradCheck.SampleFor(Backend));
        Assert.That(inputs.Sum(p => p.Grad is null ? 0 : 1), Is.Zero, "GradCheck zeroes the gradients it checked");
    }

    [Test]
    public void Logits_at_a_position_do_not_depend_on_later_tokens()
    {
        using var scope = TensorScope.Begin();
        using var model = new LlamaForCausalLM(Micro(initializerRange: 0.3), new Rng(31));
        const int b = 2, t = 6, v = 11;
        var baseIds = Tokens(new Rng(32), v, b, t).ToArray<int>();
        double[] reference;
        using (GradMode.Disable()) reference = model.Forward(Tensor.FromArray(baseIds, new Shape(b, t))).ToDoubles();
        for (int pos = 0; pos + 1 < t; pos++)
        {
            var changed = (int[])baseIds.Clone();
            for (int row = 0; row < b; row++) changed[row * t + pos + 1] = (changed[row * t + pos + 1] + 1 + row) % v;
            double[] logits;
            using (GradMode.Disable()) logits = model.Forward(Tensor.FromArray(changed, new Shape(b, t))).ToDoubles();
            for (int row = 0; row < b; row++)
            {
                var before = reference.AsSpan(row * t * v, (pos + 1) * v).ToArray();
                var after = logits.AsSpan(row * t * v, (pos + 1) * v).ToArray();
                Assert.That(after, Is.EqualTo(before), $"row {row}: changing token {pos + 1} moved logits at positions <= {pos}");
                var next = reference.AsSpan((row * t + pos + 1) * v, v).ToArray();
                Assert.That(logits.AsSpan((row * t + pos + 1) * v, v).ToArray(), Is.Not.EqualTo(next), $"row {row}: token {pos + 1} must change its own logits");
            }
        }
    }

    [Test]
    public void Same_seed_gives_bitwise_equal_weights_and_logits()
    {
        using var scope = TensorScope.Begin();
        var config = Micro() with { VocabSize = 50, NumKeyValueHeads = 2 };
        var ids = Tokens(new Rng(41), 50, 3, 7);
        double[] Run(ulong seed)
        {
            using var model = new LlamaForCausalLM(config, new Rng(seed));
            using (GradMode.Disable()) return model.Forward(ids).ToDoubles();
        }
        var first = Run(7);
        Assert.That(Run(7), Is.EqualTo(first));
        Assert.That(Run(8), Is.Not.EqualTo(first));
    }

    [Test]
    public void Training_step_frees_every_activation_and_forward_keeps_only_what_backward_saves()
    {
        var account = new MemoryAccount("llama");
        using (account.Activate())
        {
            var config = Micro() with { VocabSize = 64, HiddenSize = 32, IntermediateSize = 48 };
            using var model = new LlamaForCausalLM(config, new Rng(51));
            Assert.That(account.CurrentBytes(MemoryCategory.Parameters), Is.EqualTo(config.ParameterCount * sizeof(float)));
            using (TensorScope.Begin())
            {
                var rng = new Rng(52);
                var ids = Tokens(rng, 64, 2, 8);
                var targets = Tokens(rng, 64, 2, 8);
                var loss = model.Loss(ids, targets);
                // Everything else alive (ids and targets included) is saved by the tape: no forward intermediates linger.
                Assert.That(account.CurrentBytes(MemoryCategory.Workspace), Is.EqualTo(loss.ByteLength));
                Assert.That(account.CurrentBytes(MemoryCategory.Activations), Is.GreaterThan(0));
                loss.Backward();
                Assert.That(account.CurrentBytes(MemoryCategory.Activations), Is.Zero);
            }
            Assert.That(account.CurrentBytes(MemoryCategory.Workspace), Is.Zero);
            Assert.That(account.CurrentBytes(MemoryCategory.Gradients), Is.EqualTo(config.ParameterCount * sizeof(float)));
            foreach (var p in model.Parameters()) p.ZeroGrad();
        }
        Assert.That(account.CurrentTotal, Is.Zero);
    }

    [Test]
    public void Small_model_overfits_one_batch_with_adamw()
    {
        var config = new LlamaConfig(vocabSize: 32, hiddenSize: 32, intermediateSize: 64, numHiddenLayers: 2, numAttentionHeads: 4,
            numKeyValueHeads: 2, rmsNormEps: 1e-5, maxPositionEmbeddings: 64);
        using var model = new LlamaForCausalLM(config, new Rng(61));
        var rng = new Rng(62);
        using var ids = Tokens(rng, 32, 4, 16);
        using var targets = Tokens(rng, 32, 4, 16);
        using var opt = new AdamW(model.Parameters(), lr: 1e-2, weightDecay: 0);
        var losses = new List<double>();
        for (int step = 0; step < 30; step++)
        {
            using (TensorScope.Begin())
            {
                var loss = model.Loss(ids, targets);
                losses.Add(loss.Item());
                loss.Backward();
            }
            opt.Step();
            opt.ZeroGrad();
        }
        TestContext.Out.WriteLine($"loss {losses[0]:F3} -> {losses[^1]:F3} (ln V = {Math.Log(32):F3})");
        Assert.That(losses[0], Is.EqualTo(Math.Log(32)).Within(0.1));
        Assert.That(losses[^1], Is.LessThan(0.35 * Math.Log(32)), "30 AdamW steps on one fixed batch");
    }
}
