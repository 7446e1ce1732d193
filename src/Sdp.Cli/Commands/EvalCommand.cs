using System.CommandLine;
using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Engine.Memory;
using Sdp.Models.Checkpoints;
using Sdp.Models.Training;

namespace Sdp.Cli.Commands;

/// <summary>`sdp eval`: mean loss and perplexity (LLaMA) or accuracy (ResNet) of a checkpoint on a data set.</summary>
public static class EvalCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "llama or resnet18", DefaultValueFactory = _ => "llama" };
        model.AcceptOnlyFromAmong(RunSetup.Models);
        var config = new Option<string?>("--config") { Description = "Model config (default: the one stored in the checkpoint)" };
        var checkpoint = new Option<string>("--checkpoint") { Description = "A .safetensors file or a training-state directory", Required = true };
        var data = new Option<string>("--data") { Description = "'synthetic', token shards (llama), or a CIFAR-10/MNIST directory (resnet18: its test split)", Required = true };
        var batch = new Option<int>("--batch") { Description = "Sequences or images per batch", DefaultValueFactory = _ => 16 };
        var seq = new Option<int>("--seq") { Description = "Tokens per sequence (llama)", DefaultValueFactory = _ => 64 };
        var batches = new Option<int>("--batches") { Description = "Batches to evaluate (0 = one pass over the data)", DefaultValueFactory = _ => 0 };
        var seed = new Option<ulong>("--seed") { Description = "Seed of the synthetic source", DefaultValueFactory = _ => 0UL };
        var json = new Option<bool>("--json") { Description = "Print one JSON object" };
        var cmd = new Command("eval", "Evaluate a checkpoint: mean loss and perplexity, or accuracy") { model, config, checkpoint, data, batch, seq, batches, seed, json };
        cmd.SetAction(p =>
        {
            string modelKind = p.GetValue(model)!, ckpt = p.GetValue(checkpoint)!, path = p.GetValue(data)!;
            int b = Check.Positive(p.GetValue(batch), "--batch"), t = Check.Positive(p.GetValue(seq), "--seq"), n = Check.AtLeast(p.GetValue(batches), 0, "--batches");
            RunSetup.CheckConfig(modelKind, p.GetValue(config));
            var account = new MemoryAccount("eval");
            using var _ = account.Activate();
            var (source, floor, description) = RunSetup.BuildData(modelKind, path, b, t, shuffle: false, p.GetValue(seed), train: path == "synthetic");
            string modelFile = RunSetup.ModelFile(ckpt, "--checkpoint");
            string? cfg = p.GetValue(config) ?? RunSetup.ConfigFromCheckpoint(ckpt);
            var (channels, classes) = source is ImageBatches images ? (images.Loader.Dataset.Channels, images.Loader.Dataset.Classes) : (3, 10);
            using var trainable = RunSetup.BuildModel(modelKind, cfg, new Rng(0), channels, classes, p.GetValue(config) is null ? $"--checkpoint '{ckpt}' (its stored config)" : "--config");
            ModuleCheckpoint.LoadInto(trainable.Module, modelFile);
            int count = n > 0 ? n : PassLength(source) ?? throw new UsageException("--batches is required for the synthetic source, which never ends");
            source = RunSetup.CheckTokenIds(source, trainable, "--data", path);
            var result = Trainer.Evaluate(trainable, source, count);
            if (p.GetValue(json))
            {
                var o = new JsonObject { ["checkpoint"] = ckpt, ["data"] = path, ["loss"] = result.MeanLoss, ["count"] = result.Count };
                if (result.Accuracy is { } a) o["accuracy"] = a;
                else o["perplexity"] = result.Perplexity;
                if (floor is { } f) o["entropy_floor"] = f;
                Console.WriteLine(o.ToJsonString());
            }
            else
            {
                Console.WriteLine($"{ckpt} on {description}");
                Console.WriteLine(result.Accuracy is { } a
                    ? $"loss {result.MeanLoss:F6}  accuracy {a:P2}  ({result.Count} images)"
                    : $"loss {result.MeanLoss:F6}  perplexity {result.Perplexity:F4}  ({result.Count:N0} tokens)");
            }
            return 0;
        });
        return cmd;
    }

    /// <summary>Batches in one pass over finite data; null for an endless source.</summary>
    private static int? PassLength(IBatchSource source) => source switch
    {
        TokenBatches { Source: Sdp.Models.Data.TokenLoader l } => (int)l.BatchesPerEpoch,
        ImageBatches i => (int)i.Loader.BatchesPerEpoch,
        _ => null,
    };
}
