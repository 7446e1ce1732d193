using Sdp.Engine;
using Sdp.Models.Checkpoints;
using Sdp.Models.Data;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Training;

namespace Sdp.Cli;

/// <summary>Builds models and data sources from command-line values, shared by train and eval.</summary>
public static class RunSetup
{
    /// <summary>Symbols of the default synthetic chain. The model keeps its full vocabulary; the chain
    /// uses the first few ids so the tiny model can approach the floor within about a minute on 2 cores.</summary>
    public const int SyntheticVocab = 256;

    public static readonly string[] Models = ["llama", "resnet18"];

    /// <summary>A model from --model and --config (a preset, a config.json, or a ResNet config JSON file).</summary>
    public static ITrainable BuildModel(string model, string? config, Rng rng, int imageChannels = 3, int imageClasses = 10) => model switch
    {
        "llama" => new LlamaTrainable(new LlamaForCausalLM(LlamaConfigFrom(config ?? "tiny"), rng)),
        "resnet18" => new ResNetTrainable(new ResNet18(ResNetConfigFrom(config, imageChannels, imageClasses), rng)),
        _ => throw new UsageException($"--model must be one of {string.Join(", ", Models)}, got '{model}'"),
    };

    /// <summary>The model configuration stored in a checkpoint (model.safetensors metadata "config"), if any.</summary>
    public static string? ConfigFromCheckpoint(string checkpoint)
    {
        using var file = SafeTensorsFile.Read(ModelFile(checkpoint));
        return file.Metadata.GetValueOrDefault(TrainingCheckpoint.ConfigMetadataKey);
    }

    /// <summary>A .safetensors file as given, or the model file inside a training-state directory.</summary>
    public static string ModelFile(string checkpoint)
    {
        if (Directory.Exists(checkpoint)) return Path.Combine(checkpoint, TrainingCheckpoint.ModelFileName);
        if (!File.Exists(checkpoint)) throw new FileNotFoundException($"checkpoint '{checkpoint}' does not exist");
        return checkpoint;
    }

    private static LlamaConfig LlamaConfigFrom(string config)
    {
        return config.TrimStart().StartsWith('{') ? LlamaConfig.FromJson(config, "checkpoint metadata") : LlamaConfig.Parse(config);
    }

    private static ResNetConfig ResNetConfigFrom(string? config, int channels, int classes)
    {
        if (config is null || config == "cifar") return new ResNetConfig(64, classes, channels);
        string json = config.TrimStart().StartsWith('{') ? config
            : File.Exists(config) ? File.ReadAllText(config)
            : throw new UsageException($"--config for resnet18 must be 'cifar' or a ResNet config JSON file; '{config}' does not exist");
        var c = ResNetConfig.FromJson(json);
        c.Validate();
        return c;
    }

    /// <summary>A training or evaluation stream for <paramref name="model"/>, and the loss floor when it is known.</summary>
    public static (IBatchSource Source, double? Floor, string Description) BuildData(string model, string data, int batch, int seq, bool shuffle, ulong seed, bool train)
    {
        if (model == "llama")
        {
            if (data == "synthetic")
            {
                var chain = new MarkovChain(SyntheticVocab, seed: seed);
                // Evaluation draws a different stream from the same chain.
                var source = new MarkovTokenSource(chain, batch, seq, streamSeed: train ? seed : seed ^ 0x5EED_E7A1UL);
                return (new TokenBatches(source), chain.EntropyRate, $"synthetic Markov source ({SyntheticVocab} symbols, {chain.SuccessorCount} successors each, entropy rate {chain.EntropyRate:F4} nats/token)");
            }
            var loader = new TokenLoader(data, batch, seq, shuffle: shuffle, seed: seed);
            return (new TokenBatches(loader), null, $"{loader.Files.Count} token shard(s) from {data}");
        }
        ImageDataset dataset = data == "synthetic"
            ? ShapesDataset.Create(train ? 10_000 : 2_000, train ? seed : seed + 1)
            : LoadImages(data, train);
        var images = new ImageLoader(dataset, batch, shuffle: shuffle && train, augment: train && data != "synthetic", seed: seed);
        return (new ImageBatches(images), null, $"{dataset.Name}: {dataset.Count} images {dataset.Channels}x{dataset.Height}x{dataset.Width}, {dataset.Classes} classes");
    }

    private static ImageDataset LoadImages(string path, bool train)
    {
        bool mnist = Directory.Exists(path) && Directory.EnumerateFiles(path, "*idx3-ubyte*").Any();
        return mnist ? Mnist.Load(path, train) : Cifar10.Load(path, train);
    }
}
