using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Models.Checkpoints;
using Sdp.Models.Llama;

namespace Sdp.Tests.Cli;

/// <summary>`sdp train --workers W --mode dp|sdp ...`: W simulated workers, per-worker metrics, usage errors.</summary>
[TestFixture]
[NonParallelizable]
public sealed class TrainDistributedTests : CliTestBase
{
    /// <summary>A 2-layer LLaMA small enough for a few multi-worker steps per test.</summary>
    private const string SmallConfig = """{"vocab_size":256,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":2,"num_attention_heads":2,"num_key_value_heads":1,"max_position_embeddings":16}""";

    private static string[] WithConfig(string extra) => [.. Args($"train --steps 3 --warmup 1 --batch 2 --seq 8 --eval-batches 1 {extra}"), "--config", SmallConfig];

    [Test]
    public void Sdp_block_forward_writes_per_worker_memory_and_communication_and_saves_the_assembled_model()
    {
        var r = Sdp(WithConfig("--workers 4 --mode sdp --subnet block --masking forward --coverage 0.5 --metrics m.jsonl --save dense.safetensors"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("4 workers (sdp, block level, forward masking, C = 0.5)"));
        Assert.That(r.Out, Does.Contain("(assembled dense model, eval rule scale)"), "block-level forward masking: branches x coverage by default");
        Assert.That(r.Out, Does.Contain("GEMM packing buffers and cached host blocks (per process, all threads): "));
        Assert.That(Directory.GetFileSystemEntries(Dir).Select(Path.GetFileName), Is.EquivalentTo(new[] { "m.jsonl", "dense.safetensors" }));

        var steps = MetricsRecords("m.jsonl").Where(o => o["eval"] is null).ToList();
        Assert.That(steps.Select(s => s["step"]!.GetValue<long>()), Is.EqualTo(new long[] { 1, 2, 3 }));
        var config = LlamaConfig.FromJson(SmallConfig, "test");
        foreach (var s in steps)
        {
            var workers = s["workers"]!.AsArray();
            Assert.That(workers, Has.Count.EqualTo(4));
            foreach (var w in workers.Select(x => x!.AsObject()))
            {
                long parameters = w["memory"]!["parameters"]!["current"]!.GetValue<long>();
                // Each worker holds one of the two layers (k = 2 of 4 workers per layer) plus everything shared.
                Assert.That(parameters, Is.EqualTo(4L * (config.ParameterCount - config.LayerParameterCount)), $"worker {w["worker"]} parameters");
                Assert.That(w["memory"]!["optimizer_state"]!["current"]!.GetValue<long>(), Is.EqualTo(2 * parameters));
                Assert.That(w["comm"]!["collectives"]!.GetValue<int>(), Is.GreaterThanOrEqualTo(3), "shared bucket, one holder set, the norm");
                Assert.That(w["comm"]!["bytes_sent"]!.GetValue<double>(), Is.GreaterThan(0));
            }
        }
        using var saved = SafeTensorsFile.Read("dense.safetensors");
        using var reference = new LlamaForCausalLM(config, new Rng(0));
        Assert.That(saved.Names, Is.EquivalentTo(reference.NamedParameters().Select(p => p.Name)), "the dense model, every layer");
    }

    [Test]
    public void Dp_and_sdp_at_coverage_one_print_the_same_losses()
    {
        var dp = Sdp(WithConfig("--workers 2 --mode dp --metrics dp.jsonl"));
        var sdp = Sdp(WithConfig("--workers 2 --mode sdp --subnet neuron --masking backward --coverage 1 --metrics sdp.jsonl"));
        Assert.That(dp.ExitCode, Is.EqualTo(0), dp.ToString());
        Assert.That(sdp.ExitCode, Is.EqualTo(0), sdp.ToString());
        static double[] Losses(string path) => [.. MetricsRecords(path).Select(o => o["loss"]!.GetValue<double>())];
        Assert.That(Losses("sdp.jsonl"), Is.EqualTo(Losses("dp.jsonl")));
    }

    [Test]
    public void Flop_matched_runs_steps_over_coverage()
    {
        var r = Sdp(WithConfig("--workers 2 --mode sdp --subnet block --coverage 0.5 --schedule-match flop-matched"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("6 steps (flop-matched: 3 ÷ C)"));
        Assert.That(r.Out, Does.Contain("step      6/6"));
    }

    [Test]
    public void Resnet_neuron_backward_with_batchnorm_recalibration_reports_accuracy_and_holds_fewer_gradients()
    {
        var r = Sdp(Args("train --model resnet18 --config {\"width\":4} --steps 2 --warmup 0 --batch 2 --eval-batches 1 --workers 4 --mode sdp --subnet neuron --masking backward --coverage 0.5 --bn-recalibrate 2 --final-eval sample --metrics m.jsonl"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("accuracy").And.Contain("(assembled dense model, eval rule recalibrate)"));
        Assert.That(r.Out, Does.Contain("BatchNorm statistics re-estimated on 2 training batches of 64 (cumulative average)"));
        var recalibration = JsonNode.Parse(File.ReadLines("m.jsonl").First())!["run"]!["bn_recalibrate"]!;
        Assert.That((recalibration["batches"]!.GetValue<int>(), recalibration["batch"]!.GetValue<int>()), Is.EqualTo((2, 64)));
        var step = MetricsRecords("m.jsonl")[0];
        foreach (var w in step["workers"]!.AsArray().Select(x => x!.AsObject()))
        {
            long parameters = w["memory"]!["parameters"]!["current"]!.GetValue<long>();
            long gradients = w["memory"]!["gradients"]!["peak"]!.GetValue<long>();
            Assert.That(gradients, Is.GreaterThan(0).And.LessThan(parameters), "backward masking: the full model, gradients of held units only");
        }
    }

    [Test]
    public void Save_directory_then_resume_continues_exactly()
    {
        const string run = "--workers 2 --mode sdp --subnet neuron --masking backward --coverage 0.5 --schedule constant --batch 2 --seq 8 --eval-batches 1";
        var straight = Sdp([.. Args($"train {run} --steps 4 --metrics straight.jsonl"), "--config", SmallConfig]);
        var first = Sdp([.. Args($"train {run} --steps 2 --save state"), "--config", SmallConfig]);
        Assert.That(straight.ExitCode, Is.EqualTo(0), straight.ToString());
        Assert.That(first.ExitCode, Is.EqualTo(0), first.ToString());
        Assert.That(File.Exists(Path.Combine("state", SdpCheckpoint.StateFileName)), Is.True);
        // The model configuration comes from the checkpoint on resume.
        var resumed = Sdp(Args($"train {run} --steps 4 --resume state --metrics resumed.jsonl"));
        Assert.That(resumed.ExitCode, Is.EqualTo(0), resumed.ToString());
        Assert.That(resumed.Out, Does.Contain("resumed from state at step 2"));
        static double[] Losses(string path, long from) => [.. MetricsRecords(path)
            .Where(o => o["eval"] is null && o["step"]!.GetValue<long>() > from).Select(o => o["loss"]!.GetValue<double>())];
        Assert.That(Losses("resumed.jsonl", 2), Is.EqualTo(Losses("straight.jsonl", 2)).And.Length.EqualTo(2));
    }

    [Test]
    public void Bad_distributed_options_are_usage_errors()
    {
        var before = Listing();
        AssertUsageError(Sdp(WithConfig("--workers 4 --mode sdp --coverage 0.3")), before, "--coverage", "nearest valid coverage");
        AssertUsageError(Sdp(WithConfig("--workers 0")), before, "--workers");
        Directory.CreateDirectory("single");
        AssertUsageError(Sdp(Args("train --workers 2 --resume single")), Listing(), "--resume", "sdp.json");
        Directory.Delete("single");
        AssertUsageError(Sdp(WithConfig("--workers 2 --resume somewhere")), before, "--resume");
        AssertUsageError(Sdp(WithConfig("--workers 2 --mode sdp --masking sideways")), before, "--masking");
        AssertUsageError(Sdp(WithConfig("--bn-recalibrate 2 --bn-recalibrate-batch 0")), before, "--bn-recalibrate-batch");
    }
}
