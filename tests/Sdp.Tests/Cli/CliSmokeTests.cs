using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Models.Checkpoints;
using Sdp.Models.Data;
using Sdp.Models.Llama;
using Sdp.Tests.Data;

namespace Sdp.Tests.Cli;

/// <summary>`sdp` commands that should work: train, eval, checkpoints, resume, tokenize, doctor.</summary>
[TestFixture]
[NonParallelizable]
public sealed class CliSmokeTests : CliTestBase
{
    private static readonly string[] MemoryCategories = ["parameters", "gradients", "optimizer_state", "activations", "workspace", "engine_buffers"];

    private static List<JsonObject> ReadJsonLines(string path)
        => File.ReadAllLines(path).Select(l => JsonNode.Parse(l) as JsonObject ?? throw new AssertionException($"not a JSON object: {l}")).ToList();

    private static List<JsonObject> StepRecords(List<JsonObject> records) => records.Where(r => r["run"] is null && r["eval"] is null).ToList();

    private static List<JsonObject> EvalRecords(List<JsonObject> records) => records.Where(r => r["eval"] is not null).ToList();

    private static long[] Steps(IEnumerable<JsonObject> records) => records.Select(r => r["step"]!.GetValue<long>()).ToArray();

    [Test]
    public void Train_Synthetic_PrintsSummaryAndWritesOneMetricsRecordPerStep()
    {
        var r = Train("--eval-every 2 --metrics m.jsonl");
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Err, Is.Empty);
        Assert.That(r.Out, Does.Contain("loss floor (entropy rate of the source)"));
        Assert.That(r.Out, Does.Contain("summary"));
        Assert.That(r.Out, Does.Contain("entropy floor"));
        Assert.That(r.Out, Does.Contain("peak memory"));
        Assert.That(r.Out, Does.Contain("GEMM packing buffers and cached host blocks (per process, all threads): "));
        Assert.That(Directory.GetFileSystemEntries(Dir).Select(Path.GetFileName), Is.EquivalentTo(new[] { "m.jsonl" }), "no temporary files left");

        var records = ReadJsonLines("m.jsonl");
        var steps = StepRecords(records);
        Assert.That(Steps(steps), Is.EqualTo(new long[] { 1, 2, 3 }));
        // tiny preset: 4,999,424 float32 parameters.
        const long parameterBytes = 4_999_424L * 4;
        foreach (var s in steps)
        {
            Assert.That(s.Select(p => p.Key), Is.SupersetOf(new[] { "step", "loss", "lr", "grad_norm", "step_ms", "tokens_per_s", "memory" }));
            Assert.Multiple(() =>
            {
                Assert.That(s["loss"]!.GetValue<double>(), Is.GreaterThan(0).And.LessThan(20));
                Assert.That(s["lr"]!.GetValue<double>(), Is.GreaterThan(0).And.LessThanOrEqualTo(5e-3 * (1 + 1e-12)));
                Assert.That(s["grad_norm"]!.GetValue<double>(), Is.GreaterThan(0));
                Assert.That(s["step_ms"]!.GetValue<double>(), Is.GreaterThan(0));
                Assert.That(s["tokens_per_s"]!.GetValue<double>(), Is.GreaterThan(0));
            });
            var memory = s["memory"]!.AsObject();
            Assert.That(memory.Select(p => p.Key), Is.EquivalentTo(MemoryCategories));
            foreach (var c in MemoryCategories)
            {
                long current = memory[c]!["current"]!.GetValue<long>(), peak = memory[c]!["peak"]!.GetValue<long>();
                Assert.That(current, Is.GreaterThanOrEqualTo(0).And.LessThanOrEqualTo(peak), c);
            }
            Assert.That(memory["parameters"]!["current"]!.GetValue<long>(), Is.EqualTo(parameterBytes));
            // AdamW keeps two moments per parameter.
            Assert.That(memory["optimizer_state"]!["current"]!.GetValue<long>(), Is.EqualTo(2 * parameterBytes));
        }

        // --eval-every 2 evaluates after step 2, and every run evaluates at the end.
        var evals = EvalRecords(records);
        Assert.That(Steps(evals), Is.EqualTo(new long[] { 2, 3 }));
        foreach (var e in evals)
        {
            double loss = e["loss"]!.GetValue<double>();
            Assert.That(e["count"]!.GetValue<long>(), Is.EqualTo(1 * 2 * 8), "--eval-batches 1 of 2 x 8 tokens");
            Assert.That(e["perplexity"]!.GetValue<double>(), Is.EqualTo(Math.Exp(loss)).Within(1e-9).Percent);
        }
    }

    [Test]
    public void Train_SaveSafetensors_ThenEvalPrintsLossAndPerplexity()
    {
        var train = Train("--save x.safetensors");
        Assert.That(train.ExitCode, Is.EqualTo(0), train.ToString());
        Assert.That(train.Out, Does.Contain("saved x.safetensors at step 3"));
        Assert.That(Directory.GetFileSystemEntries(Dir).Select(Path.GetFileName), Is.EquivalentTo(new[] { "x.safetensors" }));

        var eval = Sdp(Args("eval --checkpoint x.safetensors --data synthetic --batches 2 --batch 2 --seq 8 --json"));
        Assert.That(eval.ExitCode, Is.EqualTo(0), eval.ToString());
        Assert.That(eval.OutLines, Has.Length.EqualTo(1));
        var o = JsonNode.Parse(eval.OutLines[0])!.AsObject();
        double loss = o["loss"]!.GetValue<double>();
        Assert.Multiple(() =>
        {
            Assert.That(loss, Is.GreaterThan(0).And.LessThan(20));
            Assert.That(o["perplexity"]!.GetValue<double>(), Is.EqualTo(Math.Exp(loss)).Within(1e-9).Percent);
            Assert.That(o["count"]!.GetValue<long>(), Is.EqualTo(2 * 2 * 8));
            Assert.That(o["entropy_floor"]!.GetValue<double>(), Is.GreaterThan(0).And.LessThan(loss));
            Assert.That(o["checkpoint"]!.GetValue<string>(), Is.EqualTo("x.safetensors"));
            Assert.That(o.ContainsKey("accuracy"), Is.False);
        });

        // The same evaluation in text form reports the same loss.
        var text = Sdp(Args("eval --checkpoint x.safetensors --data synthetic --batches 2 --batch 2 --seq 8"));
        Assert.That(text.ExitCode, Is.EqualTo(0), text.ToString());
        Assert.That(text.Out, Does.Contain($"loss {loss:F6}  perplexity"));
    }

    [Test]
    public void Train_SaveDirectory_ResumeContinuesExactlyWhereItStopped()
    {
        const string common = "--schedule constant --warmup 0";
        var first = Train($"{common} --steps 3 --save ck");
        Assert.That(first.ExitCode, Is.EqualTo(0), first.ToString());
        // One training-state format for every run: a single-worker run is worker 0 of one.
        Assert.That(Directory.GetFileSystemEntries("ck").Select(Path.GetFileName), Is.EquivalentTo(new[] { "model.safetensors", "sdp.json", "worker-0" }));
        Assert.That(Directory.GetFiles("ck/worker-0").Select(Path.GetFileName), Is.EquivalentTo(new[] { "model.safetensors", "optimizer.safetensors", "state.json" }));
        Assert.That(Directory.GetFileSystemEntries(Dir).Select(Path.GetFileName), Is.EquivalentTo(new[] { "ck" }), "no temporary directories left");
        Assert.That(JsonNode.Parse(File.ReadAllText("ck/sdp.json"))!["step"]!.GetValue<long>(), Is.EqualTo(3));

        var resumed = Train($"{common} --resume ck --steps 6 --save ck --metrics resumed.jsonl");
        Assert.That(resumed.ExitCode, Is.EqualTo(0), resumed.ToString());
        Assert.That(resumed.Out, Does.Contain("resumed from ck at step 3"));
        var resumedSteps = StepRecords(ReadJsonLines("resumed.jsonl"));
        Assert.That(Steps(resumedSteps), Is.EqualTo(new long[] { 4, 5, 6 }));
        Assert.That(JsonNode.Parse(File.ReadAllText("ck/sdp.json"))!["step"]!.GetValue<long>(), Is.EqualTo(6));

        // One uninterrupted 6-step run: steps 4..6 must match the resumed run (model, optimizer and data position restored).
        var straight = Train($"{common} --steps 6 --metrics straight.jsonl");
        Assert.That(straight.ExitCode, Is.EqualTo(0), straight.ToString());
        var straightSteps = StepRecords(ReadJsonLines("straight.jsonl")).Skip(3).ToList();
        Assert.That(straightSteps.Select(s => s["loss"]!.GetValue<double>()), Is.EqualTo(resumedSteps.Select(s => s["loss"]!.GetValue<double>())));

        // A training-state directory is also a checkpoint for eval.
        var eval = Sdp(Args("eval --checkpoint ck --data synthetic --batches 1 --batch 2 --seq 8 --json"));
        Assert.That(eval.ExitCode, Is.EqualTo(0), eval.ToString());
    }

    [Test]
    public void Train_ResumesTheSingleWorkerStateOfAnEarlierVersion_OnlyWithOneDpWorker()
    {
        const string common = "--schedule constant --warmup 0";
        var first = Train($"{common} --steps 3 --save ck");
        Assert.That(first.ExitCode, Is.EqualTo(0), first.ToString());
        ToEarlierSingleWorkerFormat("ck");

        AssertUsageError(Train($"{common} --resume ck --steps 6 --workers 2"), Listing(), "--resume", "ck", "single-worker training state from an earlier Sdp version", "--workers 1 --mode dp");
        var resumed = Train($"{common} --resume ck --steps 6 --metrics resumed.jsonl");
        Assert.That(resumed.ExitCode, Is.EqualTo(0), resumed.ToString());
        Assert.That(resumed.Out, Does.Contain("resumed from ck at step 3"));
        var straight = Train($"{common} --steps 6 --metrics straight.jsonl");
        Assert.That(straight.ExitCode, Is.EqualTo(0), straight.ToString());
        var resumedSteps = StepRecords(ReadJsonLines("resumed.jsonl"));
        Assert.That(Steps(resumedSteps), Is.EqualTo(new long[] { 4, 5, 6 }));
        Assert.That(resumedSteps.Select(s => s["loss"]!.GetValue<double>()),
            Is.EqualTo(StepRecords(ReadJsonLines("straight.jsonl")).Skip(3).Select(s => s["loss"]!.GetValue<double>())));
    }

    /// <summary>
    /// Rewrites a one-worker training state as earlier Sdp versions saved single-worker runs: worker 0's
    /// training checkpoint at the top (its model is the model.safetensors already there), no sdp.json.
    /// </summary>
    private static void ToEarlierSingleWorkerFormat(string dir)
    {
        string worker = Path.Combine(dir, SdpCheckpoint.WorkerDirectory(0));
        Assert.That(MaxAbsDiff(ReadTensors(Path.Combine(worker, TrainingCheckpoint.ModelFileName)), ReadTensors(Path.Combine(dir, TrainingCheckpoint.ModelFileName))), Is.Zero,
            "one DP worker's model is the dense model");
        foreach (var file in new[] { TrainingCheckpoint.OptimizerFileName, TrainingCheckpoint.StateFileName }) File.Move(Path.Combine(worker, file), Path.Combine(dir, file));
        Directory.Delete(worker, recursive: true);
        File.Delete(Path.Combine(dir, SdpCheckpoint.StateFileName));
        Assert.That(Directory.GetFileSystemEntries(dir).Select(Path.GetFileName), Is.EquivalentTo(new[] { "model.safetensors", "optimizer.safetensors", "state.json" }));
    }

    [Test]
    public void Train_SaveEvery_SavesAlongTheWayAndAtTheEnd()
    {
        var r = Train("--steps 4 --save-every 2 --save ck");
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("saved ck at step 2"));
        Assert.That(r.Out, Does.Contain("saved ck at step 4"));
        Assert.That(JsonNode.Parse(File.ReadAllText("ck/sdp.json"))!["step"]!.GetValue<long>(), Is.EqualTo(4));
        Assert.That(Directory.GetFileSystemEntries(Dir).Select(Path.GetFileName), Is.EquivalentTo(new[] { "ck" }));
    }

    [Test]
    public void Train_InitFrom_StartsFromTheCheckpointWeights()
    {
        Assert.That(Train("--save a.safetensors").ExitCode, Is.EqualTo(0));
        // One step at a negligible learning rate: the saved weights must be the loaded ones.
        var r = Train("--init-from a.safetensors --steps 1 --warmup 0 --schedule constant --lr 1e-12 --save b.safetensors");
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        var a = ReadTensors("a.safetensors");
        var b = ReadTensors("b.safetensors");
        Assert.That(MaxAbsDiff(a, b), Is.LessThan(1e-6));

        // ... and not the seed's fresh initialisation, which three steps of training moved away from.
        using var fresh = new LlamaForCausalLM(LlamaConfig.Preset("tiny"), new Rng(0));
        var init = ModuleCheckpoint.StateDict(fresh).ToDictionary(e => e.Name, e => e.Tensor.ToArray<float>());
        Assert.That(MaxAbsDiff(a, init), Is.GreaterThan(1e-4));
    }

    [Test]
    public void Train_ResNet18_OnSyntheticImages_ReportsAccuracy()
    {
        File.WriteAllText("r.json", ResNetConfigJson);
        var r = Train("--model resnet18 --config r.json --batch 4 --final-eval sample --metrics m.jsonl --save r.safetensors");
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("accuracy"));
        Assert.That(r.Out, Does.Not.Contain("entropy floor"));
        var records = ReadJsonLines("m.jsonl");
        Assert.That(Steps(StepRecords(records)), Is.EqualTo(new long[] { 1, 2, 3 }));
        Assert.That(StepRecords(records)[0]["images_per_s"]!.GetValue<double>(), Is.GreaterThan(0));
        var last = EvalRecords(records).Single();
        Assert.That(last["accuracy"]!.GetValue<double>(), Is.InRange(0.0, 1.0));
        Assert.That(last["count"]!.GetValue<long>(), Is.EqualTo(4));
        Assert.That(last["whole_split"]!.GetValue<bool>(), Is.False);
        Assert.That(r.Out, Does.Contain("(sample of 4 images)"));

        var eval = Sdp(Args("eval --model resnet18 --checkpoint r.safetensors --data synthetic --batches 2 --batch 4 --json"));
        Assert.That(eval.ExitCode, Is.EqualTo(0), eval.ToString());
        var o = JsonNode.Parse(eval.OutLines.Single())!.AsObject();
        Assert.Multiple(() =>
        {
            Assert.That(o["accuracy"]!.GetValue<double>(), Is.InRange(0.0, 1.0));
            Assert.That(o["count"]!.GetValue<long>(), Is.EqualTo(8));
            Assert.That(o.ContainsKey("perplexity"), Is.False);
        });
    }

    [Test]
    public void Train_ResNet18_OnMnist_DoesNotAugment_AndRecordsTheAugmentation()
    {
        // An MNIST directory gets the dataset's recipe, no augmentation; --augment overrides it. The choice is in
        // the metrics header and in every worker's checkpoint state.
        Directory.CreateDirectory("mnist");
        RawFiles.Mnist("mnist", 12, 8);
        static string? Recorded(JsonNode? options) => options?["augment"]?.GetValue<string>();
        var r = Train("--model resnet18 --config {\"width\":4,\"in_channels\":1} --data mnist --batch 4 --steps 2 --warmup 0 --metrics m.jsonl --save state");
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("12 images 1x8x8, 10 classes, augmentation none"));
        Assert.That(Recorded(JsonNode.Parse(File.ReadLines("m.jsonl").First())!["run"]), Is.EqualTo("none"));
        var state = JsonNode.Parse(File.ReadAllText(Path.Combine(SdpCheckpoint.WorkerCheckpoint("state", 0), TrainingCheckpoint.StateFileName)));
        Assert.That(Recorded(state!["options"]), Is.EqualTo("none"));

        var forced = Train("--model resnet18 --config {\"width\":4,\"in_channels\":1} --data mnist --batch 4 --steps 2 --warmup 0 --augment crop-flip --metrics forced.jsonl");
        Assert.That(forced.ExitCode, Is.EqualTo(0), forced.ToString());
        Assert.That(forced.Out, Does.Contain("augmentation crop-flip"));
        Assert.That(Recorded(JsonNode.Parse(File.ReadLines("forced.jsonl").First())!["run"]), Is.EqualTo("crop-flip"));
    }

    [Test]
    public void Train_ResNet18_FinalEvaluationCoversTheWholeTestSplit()
    {
        // 12 MNIST test images in batches of 5 (5, 5, then 2): the final evaluation counts all 12, the periodic
        // one after step 1 reads --eval-batches 1 batch; each line and record says which it was.
        Directory.CreateDirectory("mnist");
        RawFiles.Mnist("mnist", 12, 8);
        var r = Train("--model resnet18 --config {\"width\":4,\"in_channels\":1} --data mnist --batch 5 --steps 2 --warmup 0 --eval-every 1 --metrics m.jsonl");
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("eval step 1: ").And.Contain("(sample of 5 images)"));
        Assert.That(r.Out, Does.Contain("eval step 2: ").And.Contain("(12 test images, whole split)"));
        var evals = EvalRecords(ReadJsonLines("m.jsonl"));
        Assert.That(evals.Select(e => (e["step"]!.GetValue<long>(), e["count"]!.GetValue<long>(), e["whole_split"]!.GetValue<bool>())),
            Is.EqualTo(new[] { (1L, 5L, false), (2L, 12L, true) }));
        Assert.That(JsonNode.Parse(File.ReadLines("m.jsonl").First())!["run"]!["final_eval"]!.GetValue<string>(), Is.EqualTo("split"));
    }

    [Test]
    public void Train_And_Eval_OnTokenShards()
    {
        // Two shards of 200 ids below the tiny vocabulary (4096).
        for (int s = 0; s < 2; s++)
        {
            var tokens = Enumerable.Range(0, 200).Select(i => (ushort)((i * 37 + s * 11) % 4096)).ToArray();
            TokenShardWriter.Write($"data_{s:D6}.bin", tokens);
        }
        var r = Train("--data data_*.bin --metrics m.jsonl --save s.safetensors");
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("2 token shard(s) from data_*.bin"));
        Assert.That(r.Out, Does.Not.Contain("entropy floor"), "real data has no known floor");
        var records = ReadJsonLines("m.jsonl");
        Assert.That(Steps(StepRecords(records)), Is.EqualTo(new long[] { 1, 2, 3 }));
        Assert.That(EvalRecords(records).Single()["count"]!.GetValue<long>(), Is.EqualTo(16));

        // Without --batches, eval makes one pass: floor((200 - 1) / (2 * 8)) = 12 batches of 16 tokens.
        var eval = Sdp(Args("eval --checkpoint s.safetensors --data data_000000.bin --batch 2 --seq 8 --json"));
        Assert.That(eval.ExitCode, Is.EqualTo(0), eval.ToString());
        var o = JsonNode.Parse(eval.OutLines.Single())!.AsObject();
        Assert.That(o["count"]!.GetValue<long>(), Is.EqualTo(12 * 16));
        Assert.That(o["loss"]!.GetValue<double>(), Is.GreaterThan(0).And.LessThan(20));
        Assert.That(o.ContainsKey("entropy_floor"), Is.False);
    }

    [Test]
    public void Tokenize_WritesShardsThatDecodeBackToTheText()
    {
        const string text = "Sdp trains LLaMA on 2 cores.\nTokenize me, then decode me: café, naïve, 12345!\n";
        File.WriteAllText("in.txt", text);
        var r = Sdp(Args("tokenize in.txt --output tok"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("wrote 1 shard(s)"));
        var tokens = TokenShard.ReadAll("tok_000000.bin").Select(t => (int)t).ToArray();
        Assert.That(tokens[0], Is.EqualTo(ShardTokenizer.EndOfText), "each document starts with <|endoftext|>");
        Assert.That(ShardTokenizer.Decode(tokens.Skip(1)), Is.EqualTo(text));

        // Small shards split the same token stream.
        var split = Sdp(Args("tokenize in.txt --output part --shard-tokens 5"));
        Assert.That(split.ExitCode, Is.EqualTo(0), split.ToString());
        var parts = Directory.GetFiles(Dir, "part_*.bin").Order(StringComparer.Ordinal).ToArray();
        Assert.That(parts, Has.Length.EqualTo((tokens.Length + 4) / 5));
        Assert.That(parts.SelectMany(p => TokenShard.ReadAll(p)).Select(t => (int)t), Is.EqualTo(tokens));
    }

    [Test]
    public void Doctor_ReportsSimdAndGemmKernel()
    {
        var r = Sdp("doctor");
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("simd"));
        Assert.That(r.Out, Does.Contain("gemm kernel"));
        Assert.That(r.Out, Does.Contain("backend        cpu"));
        Assert.That(r.Err, Is.Empty);
    }
}
