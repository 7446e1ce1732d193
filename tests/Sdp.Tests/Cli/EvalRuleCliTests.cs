using System.Text.Json.Nodes;

namespace Sdp.Tests.Cli;

/// <summary>`sdp train --eval-rule ...`: the block-level default, the ensemble's lines, and every refused combination (exit 2 naming the option).</summary>
[TestFixture]
[NonParallelizable]
public sealed class EvalRuleCliTests : CliTestBase
{
    private const string ResNetRun = "train --model resnet18 --config {\"width\":4} --steps 2 --warmup 0 --batch 2 --eval-batches 1 --final-eval sample --bn-recalibrate-batch 4 --workers 2";

    private const string BlockSdp = "--mode sdp --subnet block --masking forward --coverage 0.5";

    [Test]
    public void Block_level_forward_masking_defaults_to_scale_then_recalibrate()
    {
        var r = Sdp(Args($"{ResNetRun} {BlockSdp} --metrics m.jsonl"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("evaluation rule: scale+recalibrate (--eval-rule)"));
        Assert.That(r.Out, Does.Contain("BatchNorm statistics re-estimated on 16 training batches of 4"));
        Assert.That(r.Out, Does.Contain("(assembled dense model, eval rule scale+recalibrate)"));
        var header = JsonNode.Parse(File.ReadLines("m.jsonl").First())!["run"]!;
        Assert.That(header["eval_rule"]!.GetValue<string>(), Is.EqualTo("scale+recalibrate"));
    }

    [Test]
    public void Neuron_level_keeps_evaluating_the_assembled_model_as_it_is()
    {
        var r = Sdp(Args($"{ResNetRun} --mode sdp --subnet neuron --masking forward --coverage 0.5"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("(assembled dense model)"));
        Assert.That(r.Out, Does.Not.Contain("evaluation rule"));
    }

    [Test]
    public void The_ensemble_reports_each_subnetwork()
    {
        var r = Sdp(Args($"{ResNetRun} {BlockSdp} --eval-rule ensemble+recalibrate --bn-recalibrate 2"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("(ensemble of the 2 subnetworks, BatchNorm recalibrated, sample of 2 images)"));
        Assert.That(r.Out, Does.Match(@"subnetworks +worker 0 \d+\.\d+ ?%, worker 1 \d+\.\d+ ?%"));
    }

    [Test]
    public void Bad_rules_and_combinations_are_usage_errors()
    {
        var before = Listing();
        AssertUsageError(Sdp(Args($"{ResNetRun} {BlockSdp} --eval-rule scale+inverse-scale")), before, "--eval-rule", "choose one");
        AssertUsageError(Sdp(Args($"{ResNetRun} {BlockSdp} --eval-rule scale+ensemble")), before, "--eval-rule", "choose one");
        AssertUsageError(Sdp(Args($"{ResNetRun} {BlockSdp} --eval-rule stochastic")), before, "--eval-rule", "'stochastic' is not a rule");
        AssertUsageError(Sdp(Args($"{ResNetRun} --mode dp --eval-rule ensemble")), before, "--eval-rule", "--mode sdp");
        AssertUsageError(Sdp(Args($"{ResNetRun} --mode sdp --subnet neuron --coverage 0.5 --eval-rule scale")), before, "--eval-rule", "--neuron-scale");
        AssertUsageError(Sdp(Args($"{ResNetRun} --mode sdp --subnet block --masking backward --coverage 0.5 --eval-rule inverse-scale")), before, "--eval-rule", "--masking forward");
        AssertUsageError(Sdp(Args($"{ResNetRun} {BlockSdp} --eval-rule scale --bn-recalibrate 2")), before, "--bn-recalibrate", "--eval-rule");
        AssertUsageError(Sdp(Args($"{ResNetRun} {BlockSdp} --launcher mpi --eval-rule ensemble")), before, "--eval-rule", "--launcher mpi");
        AssertUsageError(Sdp(Args($"train --workers 2 {BlockSdp} --eval-rule recalibrate")), before, "--eval-rule", "no BatchNorm");
        AssertUsageError(Sdp(Args($"train --workers 2 {BlockSdp} --bn-recalibrate 2")), before, "--bn-recalibrate", "no BatchNorm");
    }
}
