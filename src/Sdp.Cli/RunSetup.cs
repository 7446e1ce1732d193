using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Models.Checkpoints;
using Sdp.Models.Data;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Subnetworks;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Training;

namespace Sdp.Cli;

/// <summary>Builds models and data sources from command-line values, shared by train and eval.</summary>
public static class RunSetup
{
    /// <summary>Symbols of the default synthetic chain. The model keeps its full vocabulary; the chain
    /// uses the first few ids so the tiny model can approach the floor within about a minute on 2 cores.</summary>
    public const int SyntheticVocab = 256;

    public static readonly string[] Models = ["llama", "resnet18"];

    /// <summary>
    /// A model from --model and --config (a preset, a config.json, or a ResNet config JSON file), or from
    /// configuration JSON taken from a checkpoint; <paramref name="configSource"/> names where the config
    /// came from in error messages.
    /// </summary>
    public static ITrainable BuildModel(string model, string? config, Rng rng, int imageChannels = 3, int imageClasses = 10, string configSource = "--config") => model switch
    {
        "llama" => new LlamaTrainable(new LlamaForCausalLM(LlamaConfigFrom(config ?? "tiny", configSource), rng)),
        "resnet18" => new ResNetTrainable(new ResNet18(ResNetConfigFrom(config, imageChannels, imageClasses, configSource), rng)),
        _ => throw new UsageException($"--model must be one of {string.Join(", ", Models)}, got '{model}'"),
    };

    /// <summary>
    /// Parses --config without building anything, so a bad config is reported before data is loaded or
    /// generated (ResNet's image shape is only known from the data, so the model itself is built later).
    /// </summary>
    public static void CheckConfig(string model, string? config)
    {
        if (config is null) return;
        if (model == "llama") LlamaConfigFrom(config, "--config");
        else if (model == "resnet18") ResNetConfigFrom(config, null, null, "--config");
    }

    /// <summary>The model configuration stored in a checkpoint (model.safetensors metadata "config"), if any.</summary>
    public static string? ConfigFromCheckpoint(string checkpoint)
    {
        using var file = SafeTensorsFile.Read(ModelFile(checkpoint));
        return TrainingCheckpoint.ModelConfigOf(file);
    }

    /// <summary>A .safetensors file as given, or the model file inside a training-state directory; <paramref name="option"/> names the option in errors.</summary>
    public static string ModelFile(string checkpoint, string option = "--checkpoint")
    {
        if (Directory.Exists(checkpoint))
        {
            string inside = Path.Combine(checkpoint, TrainingCheckpoint.ModelFileName);
            return File.Exists(inside) ? inside : throw new UsageException($"{option}: directory '{checkpoint}' has no {TrainingCheckpoint.ModelFileName} (expected a .safetensors file or a directory saved by `sdp train --save DIR`)");
        }
        if (!File.Exists(checkpoint)) throw new UsageException($"{option}: checkpoint '{checkpoint}' does not exist");
        return checkpoint;
    }

    /// <summary>A LLaMA config from a preset name, inline JSON, a config.json file or a folder holding one.</summary>
    public static LlamaConfig LlamaConfigFrom(string config, string source)
    {
        if (config.TrimStart().StartsWith('{')) return LlamaConfig.FromJson(config, source);
        bool known = LlamaConfig.PresetNames.Contains(config, StringComparer.OrdinalIgnoreCase) || File.Exists(config)
            || File.Exists(Path.Combine(config, "config.json"));
        if (!known)
            throw new UsageException($"{source}: '{config}' is neither a LLaMA preset ({string.Join(", ", LlamaConfig.PresetNames)}) nor a config.json file or a folder holding one");
        return LlamaConfig.Parse(config);
    }

    /// <summary>
    /// A ResNet config: 'cifar' (or null) for width 64, or inline JSON or a JSON file. The input channels and classes
    /// come from the data (<paramref name="channels"/>, <paramref name="classes"/>; null: not known yet, as when a
    /// config is only checked) unless the JSON says in_channels or num_classes, which must then match the data.
    /// </summary>
    public static ResNetConfig ResNetConfigFrom(string? config, int? channels, int? classes, string source)
    {
        if (config is null || config == "cifar") return new ResNetConfig(64, classes ?? 10, channels ?? 3);
        bool inline = config.TrimStart().StartsWith('{');
        if (!inline && !Path.Exists(config)) throw new UsageException($"{source} for resnet18 must be 'cifar' or a ResNet config JSON file; '{config}' does not exist");
        string where = inline ? source : $"{source} '{config}'";
        try
        {
            // Load refuses a file that is not strict UTF-8 JSON (no key twice); the keys it states are then looked up in its text.
            var c = inline ? ResNetConfig.FromJson(config, source) : ResNetConfig.Load(config, where);
            var keys = channels is null && classes is null ? null : JsonNode.Parse(inline ? config : File.ReadAllText(config)) as JsonObject;
            if (channels is { } ch)
            {
                if (keys?.ContainsKey("in_channels") != true) c = c with { InChannels = ch };
                else if (c.InChannels != ch) throw new UsageException($"{where}: in_channels is {c.InChannels}, but the data has {ch}-channel images; drop in_channels to take it from the data");
            }
            if (classes is { } k)
            {
                if (keys?.ContainsKey("num_classes") != true) c = c with { NumClasses = k };
                else if (c.NumClasses != k) throw new UsageException($"{where}: num_classes is {c.NumClasses}, but the data has {k} classes; drop num_classes to take it from the data");
            }
            return c;
        }
        catch (Exception e) when (e is FormatException or ArgumentException)
        {
            throw new UsageException($"{where}: {CliRunner.MessageOf(e)}");
        }
    }

    /// <summary>
    /// A training or evaluation stream for <paramref name="model"/>, and the loss floor when it is known. Image
    /// training streams augment as <paramref name="augmentation"/> says (null: the dataset's own recipe);
    /// evaluation streams never augment. <paramref name="orderSeed"/> (default: <paramref name="seed"/>, and for the
    /// synthetic tokens a stream of its own for evaluation) draws another order or stream from the same data;
    /// <paramref name="images"/> is the image split already loaded by <see cref="ImageSplit"/> (null: loaded here).
    /// </summary>
    public static (IBatchSource Source, double? Floor, string Description) BuildData(string model, string data, int batch, int seq, bool shuffle, ulong seed, bool train, int worker = 0, int workers = 1,
        ImageAugmentation? augmentation = null, ulong? orderSeed = null, ImageDataset? images = null)
    {
        if (model == "llama")
        {
            if (data == "synthetic")
            {
                var chain = new MarkovChain(SyntheticVocab, seed: seed);
                // Evaluation draws a different stream from the same chain.
                var source = new MarkovTokenSource(chain, batch, seq, worker, workers, streamSeed: orderSeed ?? (train ? seed : seed ^ 0x5EED_E7A1UL));
                return (new TokenBatches(source), chain.EntropyRate, $"synthetic Markov source ({SyntheticVocab} symbols, {chain.SuccessorCount} successors each, entropy rate {chain.EntropyRate:F4} nats/token)");
            }
            var loader = new TokenLoader(data, batch, seq, worker, workers, shuffle: shuffle, seed: orderSeed ?? seed);
            return (new TokenBatches(loader), null, $"{loader.Files.Count} token shard(s) from {data}");
        }
        ImageDataset dataset = images ?? ImageSplit(data, train, seed);
        var augment = train ? augmentation ?? dataset.Augmentation : ImageAugmentation.None;
        // A test split is evaluated whole: its last batch holds the images that do not fill one.
        var imageLoader = new ImageLoader(dataset, batch, shuffle: shuffle && train, augment, seed: orderSeed ?? seed, worker: worker, workers: workers, dropLast: train);
        string augmented = train ? $", augmentation {ImageAugment.NameOf(augment)}" : "";
        return (new ImageBatches(imageLoader), null, $"{dataset.Name}: {dataset.Count} images {dataset.Channels}x{dataset.Height}x{dataset.Width}, {dataset.Classes} classes{augmented}");
    }

    /// <summary>
    /// Token-shard batches checked against the LLaMA model's vocabulary before they reach the embedding,
    /// so shards of another tokenizer (GPT-2 ids from `sdp tokenize` into the 4096-id tiny model) fail
    /// with a message naming the data option instead of an embedding index error. Other sources pass through.
    /// </summary>
    public static IBatchSource CheckTokenIds(IBatchSource source, ITrainable model, string option, string data)
        => CheckTokenIds(source, model is LlamaTrainable llama ? llama.Model.Config.VocabSize : null, option, data);

    /// <summary>As above, for a vocabulary of <paramref name="vocab"/> ids (null: no check).</summary>
    public static IBatchSource CheckTokenIds(IBatchSource source, int? vocab, string option, string data)
        => source is TokenBatches { Source: TokenLoader loader } && vocab is { } v
            ? new VocabCheckedBatches(loader, v, option, data)
            : source;

    /// <summary>
    /// The model of --model/--config as a <see cref="SubnetworkModel"/> for the trainer (DP, or SDP at
    /// <paramref name="level"/>): the dense model is built from <paramref name="seed"/> exactly as
    /// <see cref="BuildModel"/> does (then loaded from <paramref name="initFrom"/> when given); subnetworks are
    /// cut from it by the trainer. <paramref name="configSource"/> names where the config came from in errors.
    /// </summary>
    public static SubnetworkModel BuildSubnetworkModel(string model, string? config, ulong seed, int imageChannels, int imageClasses, SubnetLevel level, SubnetOptions options, string? initFrom, string configSource)
    {
        var inner = model switch
        {
            "llama" => SubnetworkModels.Llama(LlamaConfigFrom(config ?? "tiny", configSource), level, options, seed),
            "resnet18" => SubnetworkModels.ResNet18(ResNetConfigFrom(config, imageChannels, imageClasses, configSource), level, options, seed),
            _ => throw new UsageException($"--model must be one of {string.Join(", ", Models)}, got '{model}'"),
        };
        if (initFrom is null) return inner;
        string file = ModelFile(initFrom, "--init-from");
        return inner.WithDenseInitialisation(dense => ModuleCheckpoint.LoadInto(dense.Module, file));
    }

    /// <summary>
    /// The LLaMA config for token-shard <paramref name="data"/> when none was given (<paramref name="config"/> null:
    /// no --config, no resumed state). llm.c shards carry no tokenizer field, so the tokenizer is inferred from the
    /// first shard: when it holds an id beyond the default preset's vocabulary but within GPT-2's (as every shard of
    /// `sdp tokenize` does: each document starts with end-of-text, 50256), the preset takes GPT-2's vocabulary padded
    /// as llm.c pads it. Returns the config to use (inline JSON, or <paramref name="config"/> unchanged) and a note
    /// saying what was inferred (null when nothing was).
    /// </summary>
    public static (string? Config, string? Note) ShardVocabulary(string model, string? config, IBatchSource data)
    {
        if (model != "llama" || config is not null || data is not TokenBatches { Source: TokenLoader loader }) return (config, null);
        var preset = LlamaConfig.Preset(DefaultLlamaPreset);
        int max = TokenShard.MaxToken(loader.Files[0]);
        if (max < preset.VocabSize || max >= ShardTokenizer.PaddedVocabSize) return (config, null);
        var gpt2 = preset with { VocabSize = ShardTokenizer.PaddedVocabSize };
        return (gpt2.ToJson(), $"vocabulary {gpt2.VocabSize:N0}, GPT-2's {ShardTokenizer.VocabSize:N0} ids padded to a multiple of 128 as llm.c does " +
            $"(the shards name no tokenizer; the first holds id {max}, beyond the {DefaultLlamaPreset} preset's {preset.VocabSize:N0}, so they are taken as GPT-2's)");
    }

    /// <summary>The LLaMA preset without --config.</summary>
    public const string DefaultLlamaPreset = "tiny";

    /// <summary>The vocabulary size of a LLaMA --config (null for other models).</summary>
    public static int? VocabSize(string model, string? config) => model == "llama" ? LlamaConfigFrom(config ?? "tiny", "--config").VocabSize : null;

    private sealed class VocabCheckedBatches(TokenLoader loader, int vocab, string option, string data) : IBatchSource
    {
        public DataLoaderState State { get => loader.State; set => loader.State = value; }

        public (Tensor Inputs, Tensor Targets) NextBatch()
        {
            var at = loader.State;
            var inputs = new int[loader.Batch * loader.Seq];
            var targets = new int[inputs.Length];
            loader.NextBatch(inputs, targets);
            int max = Math.Max(inputs.Max(), targets.Max());
            if (max >= vocab)
            {
                throw new InvalidDataException(
                    $"{option} '{data}': token id {max} (epoch {at.Epoch}, shard {at.Shard}, batch {at.Batch}) is outside the model's vocabulary of {vocab} ids; " +
                    $"GPT-2 shards from `sdp tokenize` hold ids up to {ShardTokenizer.EndOfText} and need a --config with vocab_size of at least {ShardTokenizer.EndOfText + 1}");
            }
            var shape = new Shape(loader.Batch, loader.Seq);
            return (Tensor.FromArray(inputs, shape), Tensor.FromArray(targets, shape));
        }
    }

    /// <summary>
    /// The training or test split of image <paramref name="data"/>: the synthetic shapes set (10,000 training and 2,000
    /// test images, drawn from <paramref name="seed"/>), or the MNIST or CIFAR-10 files in a directory.
    /// </summary>
    public static ImageDataset ImageSplit(string data, bool train, ulong seed)
        => data == "synthetic" ? ShapesDataset.Create(train ? 10_000 : 2_000, train ? seed : seed + 1) : LoadImages(data, train);

    private static ImageDataset LoadImages(string path, bool train)
    {
        bool mnist = Directory.Exists(path) && Directory.EnumerateFiles(path, "*idx3-ubyte*").Any();
        return mnist ? Mnist.Load(path, train) : Cifar10.Load(path, train);
    }
}
