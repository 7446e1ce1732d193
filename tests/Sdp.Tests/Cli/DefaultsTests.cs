using System.Text.Json.Nodes;
using Sdp.Cli.Commands;
using Sdp.Models.Data;
using Sdp.Tests.Data;

namespace Sdp.Tests.Cli;

/// <summary>The natural paths with default options: short runs, MNIST with the default ResNet config, tokenize then train.</summary>
[TestFixture]
[NonParallelizable]
public sealed class DefaultsTests : CliTestBase
{
    [TestCase(0, 0)]
    [TestCase(5, 0)]
    [TestCase(19, 1)]
    [TestCase(150, 15)]
    [TestCase(200, 20)]
    [TestCase(10_000, 20)]
    public void DefaultWarmup_IsAtMostATenthOfTheRun(int steps, int expected)
        => Assert.That(TrainCommand.DefaultWarmupFor(steps), Is.EqualTo(expected));

    [TestCase("")]
    [TestCase("--workers 2")]
    [TestCase("--workers 2 --mode sdp --schedule-match flop-matched")]
    public void Train_FiveSteps_ShrinksTheDefaultWarmup_AndSaysSo(string extra)
    {
        var r = Sdp(Args($"train --steps 5 --batch 2 --seq 8 --eval-batches 1 --metrics m.jsonl {extra}"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        var warmupLine = r.OutLines.Take(4).Single(l => l.Contains("warm-up"));
        Assert.That(warmupLine, Does.Contain("warm-up 0 (default 20 shrunk for a 5-step run)"));
        Assert.That(JsonNode.Parse(File.ReadLines("m.jsonl").First())!["run"]!["warmup"]!.GetValue<int>(), Is.EqualTo(0));
    }

    [Test]
    public void Train_FlopMatched_ShrunkDefaultWarmup_IsStretchedWithTheSchedule()
    {
        // 15 steps: default warm-up 1; flop-matched at C = 0.5: 30 steps, warm-up 2.
        var r = Sdp(Args("train --steps 15 --batch 2 --seq 8 --eval-batches 1 --workers 2 --mode sdp --schedule-match flop-matched"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("30 steps (flop-matched: 15 ÷ C)"));
        Assert.That(r.Out, Does.Contain("warm-up 2 (default 20 shrunk to 1 for a 15-step run, then flop-matched)"));
    }

    [Test]
    public void Train_ExplicitWarmup_IsKept_AndTooLargeIsAUsageError()
    {
        var ok = Train("--steps 5 --warmup 2");
        Assert.That(ok.ExitCode, Is.EqualTo(0), ok.ToString());
        Assert.That(ok.Out, Does.Contain("warm-up 2, clip").And.Not.Contain("shrunk"));
        var before = Listing();
        AssertUsageError(Train("--steps 5 --warmup 5"), before, "--warmup (5)", "--steps (5)");
    }

    [Test]
    public void Train_Mnist_DefaultConfig_TakesChannelsFromTheData_AndEvalRebuildsTheModel()
    {
        Directory.CreateDirectory("mnist");
        RawFiles.Mnist("mnist", 12, 8);
        var r = Sdp(Args("train --model resnet18 --data mnist --batch 4 --steps 2 --eval-batches 1 --save state"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("12 images 1x8x8, 10 classes"));
        var stored = JsonNode.Parse(RunSetupConfig("state"))!;
        Assert.That(stored["in_channels"]!.GetValue<int>(), Is.EqualTo(1));
        Assert.That(stored["num_classes"]!.GetValue<int>(), Is.EqualTo(10));

        var eval = Sdp(Args("eval --model resnet18 --checkpoint state --data mnist --json"));
        Assert.That(eval.ExitCode, Is.EqualTo(0), eval.ToString());
        Assert.That(JsonNode.Parse(eval.OutLines.Single())!["count"]!.GetValue<long>(), Is.EqualTo(12));
    }

    [Test]
    public void Train_Mnist_JsonConfigWithoutInChannels_TakesThemFromTheData()
    {
        Directory.CreateDirectory("mnist");
        RawFiles.Mnist("mnist", 12, 8);
        var r = Sdp(["train", "--model", "resnet18", "--config", """{"width":4}""", "--data", "mnist", "--batch", "4", "--steps", "2", "--eval-batches", "1", "--save", "w.safetensors"]);
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        var stored = JsonNode.Parse(RunSetupConfig("w.safetensors"))!;
        Assert.That(stored["in_channels"]!.GetValue<int>(), Is.EqualTo(1));
        Assert.That(stored["width"]!.GetValue<int>(), Is.EqualTo(4));
        var eval = Sdp(Args("eval --model resnet18 --checkpoint w.safetensors --data mnist --json"));
        Assert.That(eval.ExitCode, Is.EqualTo(0), eval.ToString());
    }

    [TestCase("""{"width":4,"in_channels":3}""", "in_channels is 3", "1-channel")]
    [TestCase("""{"width":4,"num_classes":100}""", "num_classes is 100", "10 classes")]
    public void Train_Mnist_JsonConfigDisagreeingWithTheData_IsAUsageError(string config, string said, string data)
    {
        Directory.CreateDirectory("mnist");
        RawFiles.Mnist("mnist", 12, 8);
        var before = Listing();
        AssertUsageError(Sdp(["train", "--model", "resnet18", "--config", config, "--data", "mnist", "--batch", "4", "--steps", "2"]), before, "--config", said, data);
    }

    [Test]
    public void Eval_CheckpointOfOtherChannels_IsAUsageErrorNamingBoth()
    {
        Directory.CreateDirectory("mnist");
        RawFiles.Mnist("mnist", 12, 8);
        Assert.That(Sdp(Args("train --model resnet18 --data mnist --batch 4 --steps 2 --eval-batches 1 --save w.safetensors")).ExitCode, Is.EqualTo(0));
        var before = Listing();
        // The synthetic shapes are 3-channel images; the checkpoint's model reads 1 channel.
        AssertUsageError(Sdp(Args("eval --model resnet18 --checkpoint w.safetensors --data synthetic --batches 1")), before, "in_channels is 1", "3-channel");
    }

    [Test]
    public void Plan_ResNetJsonConfig_WithOneChannel_NeedsNoData()
    {
        var r = Sdp(["plan", "--model", "resnet18", "--config", """{"width":4,"in_channels":1}""", "--workers", "2", "--coverage", "1"]);
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
    }

    [Test]
    public void Tokenize_ThenTrain_WithDefaults_TakesGpt2sPaddedVocabulary()
    {
        File.WriteAllText("in.txt", string.Concat(Enumerable.Repeat("The quick brown fox jumps over the lazy dog. ", 10)));
        var tok = Sdp(Args("tokenize in.txt --output tok"));
        Assert.That(tok.ExitCode, Is.EqualTo(0), tok.ToString());
        var r = Sdp(Args("train --data tok_*.bin --steps 2 --batch 2 --seq 8 --eval-batches 1 --save w.safetensors"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.OutLines[0], Does.Contain("vocabulary 50,304").And.Contain("GPT-2").And.Contain("50256"));
        Assert.That(ShardTokenizer.PaddedVocabSize, Is.EqualTo(50304));
        Assert.That(JsonNode.Parse(RunSetupConfig("w.safetensors"))!["vocab_size"]!.GetValue<int>(), Is.EqualTo(50304));

        // eval rebuilds the same model from the stored config.
        var eval = Sdp(Args("eval --checkpoint w.safetensors --data tok_000000.bin --batch 2 --seq 8 --json"));
        Assert.That(eval.ExitCode, Is.EqualTo(0), eval.ToString());
    }

    [Test]
    public void Train_ShardsWithinThePresetVocabulary_KeepIt()
    {
        TokenShardWriter.Write("data_000000.bin", Enumerable.Range(0, 200).Select(i => (ushort)(i * 17 % 4096)).ToArray());
        var r = Train("--data data_*.bin");
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("(4,999,424 parameters)").And.Not.Contain("GPT-2"));
    }

    [Test]
    public void TokenShard_MaxToken_ReadsTheWholeShard()
    {
        TokenShardWriter.Write("a.bin", new ushort[] { 3, 65535, 7 });
        TokenShardWriter.Write("empty.bin", Array.Empty<ushort>());
        Assert.That(TokenShard.MaxToken("a.bin"), Is.EqualTo(65535));
        Assert.That(TokenShard.MaxToken("empty.bin"), Is.EqualTo(-1));
    }

    [Test]
    public void Tokenize_SmallFile_PrintsBytes()
    {
        File.WriteAllText("in.txt", "Hello, small file.\n");
        var r = Sdp(Args("tokenize in.txt --output tok"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(TokenizeCommand.ProgressLine(19, 19, 6), Is.EqualTo("tokenized 19 B of 19 B, 6 tokens"));
        Assert.That(TokenizeCommand.ProgressLine(1536, 3 << 20, 6), Is.EqualTo("tokenized 1.50 KiB of 3.00 MiB, 6 tokens"));
        if (Console.IsOutputRedirected)
        {
            // The plain progress line (a terminal shows a bar instead).
            Assert.That(r.Out, Does.Contain("tokenized 19 B of 19 B,").And.Not.Contain("MiB"), r.ToString());
        }
    }

    private static string RunSetupConfig(string checkpoint) => global::Sdp.Cli.RunSetup.ConfigFromCheckpoint(checkpoint) ?? throw new AssertionException($"{checkpoint} stores no config");
}
