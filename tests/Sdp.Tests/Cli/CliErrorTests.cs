using Sdp.Engine;
using Sdp.Models.Checkpoints;
using Sdp.Models.Data;
using Sdp.Models.Llama;
using Sdp.Tests.Data;

namespace Sdp.Tests.Cli;

/// <summary>
/// Bad input to `sdp`: every case exits with code 2 and one "sdp: ..." line naming the file or option,
/// without a stack trace, and writes nothing (no metrics, no checkpoint, no temporary files).
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class CliErrorTests : CliTestBase
{
    /// <summary>Output options added to every failing train run, to show that none of them is written.</summary>
    private const string Outputs = "--metrics m.jsonl --save out.safetensors";

    public enum ShardProblem
    {
        Missing,
        Truncated,
        WrongMagic,
        WrongVersion,
        ShorterThanOneBatch,
    }

    /// <summary>Writes a shard with <paramref name="problem"/> as bad.bin and returns the words the error must contain.</summary>
    private static string[] WriteBadShard(ShardProblem problem)
    {
        var tokens = RawFiles.Range(0, 100);
        switch (problem)
        {
            case ShardProblem.Missing:
                return ["bad.bin", "does not exist"];
            case ShardProblem.Truncated:
                RawFiles.Shard("bad.bin", tokens, count: 120);
                return ["bad.bin", "truncated", "120 tokens"];
            case ShardProblem.WrongMagic:
                RawFiles.Shard("bad.bin", tokens, magic: 12345);
                return ["bad.bin", "magic", "12345"];
            case ShardProblem.WrongVersion:
                RawFiles.Shard("bad.bin", tokens, version: 7);
                return ["bad.bin", "version", "7"];
            default:
                // One batch of 2 x 8 needs 2*8+1 = 17 tokens.
                RawFiles.Shard("bad.bin", RawFiles.Range(0, 16));
                return ["bad.bin", "shorter than one batch", "17 tokens"];
        }
    }

    [Test]
    public void Train_BadTokenShard_IsAUsageError([Values] ShardProblem problem)
    {
        var mentions = WriteBadShard(problem);
        var before = Listing();
        AssertUsageError(Train($"--data bad.bin {Outputs}"), before, mentions);
    }

    [Test]
    public void Train_BadEvalShard_IsAUsageError([Values(ShardProblem.Truncated, ShardProblem.ShorterThanOneBatch)] ShardProblem problem)
    {
        var mentions = WriteBadShard(problem);
        var before = Listing();
        AssertUsageError(Train($"--eval-data bad.bin {Outputs}"), before, mentions);
    }

    [Test]
    public void Eval_BadTokenShard_IsAUsageError([Values] ShardProblem problem)
    {
        SaveLlama("small.safetensors", SmallLlama);
        var mentions = WriteBadShard(problem);
        var before = Listing();
        AssertUsageError(Sdp(Args("eval --checkpoint small.safetensors --data bad.bin --batch 2 --seq 8")), before, mentions);
    }

    [Test]
    public void Train_Gpt2Shards_IntoTheTinyVocabulary_NameTheData()
    {
        File.WriteAllText("in.txt", string.Concat(Enumerable.Repeat("The quick brown fox jumps over the lazy dog. ", 10)));
        Assert.That(Sdp(Args("tokenize in.txt --output tok")).ExitCode, Is.EqualTo(0));
        var before = Listing();
        // <|endoftext|> = 50256 opens the shard; the tiny model named by --config has 4096 ids (without --config the
        // vocabulary would be GPT-2's). The run fails in its first step, after the metrics file was opened: its
        // temporary file must be gone too.
        AssertUsageError(Train($"--data tok_*.bin --config tiny {Outputs}"), before, "--data", "tok_*.bin", "50256", "vocab");
    }

    public enum SafetensorsProblem
    {
        Missing,
        Empty,
        Garbage,
        TruncatedHeader,
        TruncatedData,
    }

    /// <summary>Writes bad.safetensors (from a valid small checkpoint) with <paramref name="problem"/>.</summary>
    private static string[] WriteBadSafetensors(SafetensorsProblem problem)
    {
        if (problem == SafetensorsProblem.Missing) return ["bad.safetensors", "does not exist"];
        SaveLlama("bad.safetensors", SmallLlama);
        var bytes = File.ReadAllBytes("bad.safetensors");
        bytes = problem switch
        {
            SafetensorsProblem.Empty => [],
            SafetensorsProblem.Garbage => [.. Enumerable.Range(0, 4096).Select(i => (byte)(i * 131 + 7))],
            SafetensorsProblem.TruncatedHeader => bytes[..100],
            _ => bytes[..^1000],
        };
        File.WriteAllBytes("bad.safetensors", bytes);
        return ["bad.safetensors"];
    }

    [Test]
    public void Train_InitFromBadSafetensors_IsAUsageError([Values] SafetensorsProblem problem)
    {
        var mentions = WriteBadSafetensors(problem);
        var before = Listing();
        string[] expected = problem == SafetensorsProblem.Missing ? [.. mentions, "--init-from"] : mentions;
        AssertUsageError(Train($"--init-from bad.safetensors {Outputs}"), before, expected);
    }

    [Test]
    public void Eval_BadSafetensors_IsAUsageError([Values] SafetensorsProblem problem)
    {
        var mentions = WriteBadSafetensors(problem);
        var before = Listing();
        AssertUsageError(Sdp(Args("eval --checkpoint bad.safetensors --data synthetic --batches 1 --batch 2 --seq 8")), before, mentions);
    }

    /// <summary>
    /// A mismatched checkpoint: one usage error whose first line starts "sdp:" and names the file, followed
    /// by one indented line per problem (the list is the point of the message), no stack trace, nothing written.
    /// </summary>
    private void AssertMismatch(CliResult r, string[] before, string file, IReadOnlyCollection<string> problems)
    {
        var lines = r.ErrLines;
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(2), r.ToString());
            Assert.That(lines[0], Does.StartWith("sdp: ").And.Contain(file).And.Contain($"({problems.Count} problem"));
            Assert.That(lines.Skip(1), Has.All.StartWith("  "), "continuation lines are indented");
            Assert.That(lines.Skip(1).Select(l => l.Trim()), Is.EquivalentTo(problems));
            Assert.That(r.Err, Does.Not.Contain("   at "));
            Assert.That(Listing(), Is.EqualTo(before));
        });
    }

    [Test]
    public void HandBuiltCheckpoint_WithAWrongShapeAMissingNameAndAnExtraName_ListsEachProblem()
    {
        File.WriteAllText("small.json", SmallLlama.ToJson());
        using (var model = new LlamaForCausalLM(SmallLlama, new Rng(0)))
        using (var wrong = Tensor.Zeros(new Shape(3, 5)))
        using (var extra = Tensor.Zeros(new Shape(2)))
        {
            var entries = ModuleCheckpoint.StateDict(model)
                .Where(e => e.Name != "model.norm.weight")
                .Select(e => e.Name == "model.layers.0.mlp.up_proj.weight" ? (e.Name, wrong) : e)
                .Append(("extra.weight", extra))
                .ToList();
            SafeTensorsFile.Write("hand.safetensors", entries);
        }
        var shapes = StateShapes(SmallLlama).ToDictionary(e => e.Name, e => e.Shape);
        string[] problems =
        [
            "missing from the checkpoint: model.norm.weight",
            "unexpected in the checkpoint: extra.weight",
            $"mismatch: model.layers.0.mlp.up_proj.weight: checkpoint (3, 5) vs model {shapes["model.layers.0.mlp.up_proj.weight"]}",
        ];
        var before = Listing();
        AssertMismatch(Sdp(Args("eval --config small.json --checkpoint hand.safetensors --data synthetic --batches 1 --batch 2 --seq 8")), before, "hand.safetensors", problems);
        AssertMismatch(Train($"--config small.json --init-from hand.safetensors {Outputs}"), before, "hand.safetensors", problems);
    }

    [Test]
    public void CheckpointOfAnotherConfig_ListsEveryMismatch()
    {
        SaveLlama("small.safetensors", SmallLlama);
        var small = StateShapes(SmallLlama).ToDictionary(e => e.Name, e => e.Shape);
        // The tiny preset has 4 layers of width 256; the small checkpoint 1 layer of width 32 and no norm/embedding of that width.
        var problems = StateShapes(LlamaConfig.Preset("tiny"))
            .Where(e => !small.TryGetValue(e.Name, out var s) || s != e.Shape)
            .Select(e => small.TryGetValue(e.Name, out var s) ? $"mismatch: {e.Name}: checkpoint {s} vs model {e.Shape}" : $"missing from the checkpoint: {e.Name}")
            .ToList();
        Assert.That(problems, Has.Count.GreaterThan(30));
        var before = Listing();
        AssertMismatch(Train($"--init-from small.safetensors {Outputs}"), before, "small.safetensors", problems);
        AssertMismatch(Sdp(Args("eval --config tiny --checkpoint small.safetensors --data synthetic --batches 1 --batch 2 --seq 8")), before, "small.safetensors", problems);

        // Without --config, eval builds the model the checkpoint stores.
        var ok = Sdp(Args("eval --checkpoint small.safetensors --data synthetic --batches 1 --batch 2 --seq 8 --json"));
        Assert.That(ok.ExitCode, Is.EqualTo(0), ok.ToString());
    }

    [Test]
    public void Cifar_WithATruncatedBatchFile_IsAUsageError()
    {
        File.WriteAllText("r.json", ResNetConfigJson);
        Directory.CreateDirectory("cifar");
        const int records = 8;
        foreach (var f in Cifar10.TrainFiles.Append(Cifar10.TestFile)) File.WriteAllBytes(Path.Combine("cifar", f), new byte[records * Cifar10.RecordBytes]);
        File.WriteAllBytes(Path.Combine("cifar", "data_batch_3.bin"), new byte[(records * Cifar10.RecordBytes) - 100]);
        var before = Listing();
        AssertUsageError(Train($"--model resnet18 --config r.json --data cifar --batch 4 {Outputs}"), before, "data_batch_3.bin", $"{Cifar10.RecordBytes}");

        // The same directory with the right size trains (all-zero images of class 0).
        File.WriteAllBytes(Path.Combine("cifar", "data_batch_3.bin"), new byte[records * Cifar10.RecordBytes]);
        var ok = Train("--model resnet18 --config r.json --data cifar --batch 4 --steps 2");
        Assert.That(ok.ExitCode, Is.EqualTo(0), ok.ToString());
        Assert.That(ok.Out, Does.Contain("40 images"));
    }

    /// <summary>Bad options for `sdp train` and what the message must mention.</summary>
    private static IEnumerable<TestCaseData> BadTrainOptions()
    {
        static TestCaseData Case(string args, params string[] mentions) => new TestCaseData(args, mentions).SetArgDisplayNames(args);
        yield return Case("--steps 0", "--steps", "0");
        yield return Case("--steps many", "--steps", "many");
        yield return Case("--lr -1", "--lr", "-1");
        yield return Case("--lr 0", "--lr");
        yield return Case("--batch 0", "--batch");
        yield return Case("--seq 0", "--seq");
        yield return Case("--eval-batches 0", "--eval-batches");
        yield return Case("--final-eval all", "--final-eval", "all");
        yield return Case("--augment none", "--augment", "resnet18");
        yield return Case("--model resnet18 --augment mirror", "--augment", "mirror");
        yield return Case("--clip -1", "--clip");
        yield return Case("--steps 3 --warmup 3", "--warmup", "--steps", "cosine");
        yield return Case("--model gpt2", "--model", "gpt2", "llama", "resnet18");
        yield return Case("--optimizer adam", "--optimizer", "adam");
        yield return Case("--schedule linear", "--schedule", "linear");
        yield return Case("--device tpu", "--device", "tpu", "cpu, cuda or cuda:K");
        yield return Case("--device cuda:9", "--device", "cuda:9", "device(s)");
        yield return Case("--save-every 2", "--save-every", "--save");
        yield return Case("--resume ck --init-from x.safetensors", "--resume", "--init-from");
        yield return Case("--resume no_such_dir", "--resume", "no_such_dir");
        yield return Case("--resume empty_dir", "empty_dir", "state.json");
        yield return Case("--init-from no_such.safetensors", "--init-from", "no_such.safetensors");
        yield return Case("--init-from empty_dir", "--init-from", "empty_dir", "model.safetensors");
        yield return Case("--config no_such_preset", "--config", "no_such_preset", "tiny");
        yield return Case("--config bad_config.json", "bad_config.json", "hidden_size");
        yield return Case("--model resnet18 --config bad_resnet.json", "--config", "bad_resnet.json", "depth");
        yield return Case("--model resnet18 --config zero_width.json", "--config", "zero_width.json", "width");
        yield return Case("--model resnet18 --data no_such_dir", "--data", "no_such_dir");
        yield return Case("--data no_such.bin", "no_such.bin");
        yield return Case("--data no_such_*.bin", "no_such_*.bin");
        yield return Case("--metrics no_dir/m.jsonl", "--metrics", "no_dir");
        yield return Case("--metrics empty_dir", "--metrics", "empty_dir");
        yield return Case("--save no_dir/x.safetensors", "--save", "no_dir");
        yield return Case("--save a_file", "--save", "a_file");
        yield return Case("--bogus", "--bogus");
    }

    [TestCaseSource(nameof(BadTrainOptions))]
    public void Train_BadOption_IsAUsageError(string options, string[] mentions)
    {
        File.WriteAllText("bad_config.json", """{"vocab_size": 4096, "hidden_size": 0, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}""");
        File.WriteAllText("bad_resnet.json", """{"model": "resnet18", "width": 4, "depth": 34}""");
        File.WriteAllText("zero_width.json", """{"model": "resnet18", "width": 0}""");
        File.WriteAllText("a_file", "not a checkpoint directory");
        Directory.CreateDirectory("empty_dir");
        // Add the output options the case does not set itself, so the test can see that nothing is written.
        string args = options;
        if (!options.Contains("--metrics", StringComparison.Ordinal)) args += " --metrics m.jsonl";
        if (!options.Contains("--save", StringComparison.Ordinal)) args += " --save out.safetensors";
        var before = Listing();
        AssertUsageError(Train(args), before, mentions);
    }

    [Test]
    public void Eval_WithoutBatchesOnTheEndlessSyntheticSource_IsAUsageError()
    {
        SaveLlama("small.safetensors", SmallLlama);
        var before = Listing();
        AssertUsageError(Sdp(Args("eval --checkpoint small.safetensors --data synthetic --batch 2 --seq 8")), before, "--batches");
    }

    [Test]
    public void Verbose_AddsTheStackTrace()
    {
        var r = Train("--data no_such.bin --verbose");
        Assert.That(r.ExitCode, Is.EqualTo(2), r.ToString());
        Assert.That(r.ErrLines[0], Does.StartWith("sdp: ").And.Contain("no_such.bin"));
        Assert.That(r.ErrLines, Has.Length.GreaterThan(2));
        Assert.That(r.Err, Does.Contain("FileNotFoundException").And.Contain("   at "));
    }
}
