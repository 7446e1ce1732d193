using Sdp.Cli;
using Sdp.Cli.Commands;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Llama;
using Sdp.Models.Subnetworks;
using Sdp.Tests.Cli;

namespace Sdp.Tests.Reliability;

/// <summary>
/// --max-memory SIZE per worker: `sdp train`, `sdp plan` and `sdp memory` refuse, before allocating, a configuration the
/// memory model says exceeds it, naming the nearest coverage or per-worker batch that fits; a run whose accounted
/// memory passes it anyway (the model leaves out workspace and engine buffers) stops with the per-worker report.
/// </summary>
[NonParallelizable]
public sealed class MemoryBudgetTests : CliTestBase
{
    private const string SdpRun = "--batch 2 --seq 8 --steps 2 --warmup 0 --workers 4 --mode sdp --subnet block";

    /// <summary>The memory model's largest worker of <see cref="SdpRun"/> at <paramref name="coverage"/>.</summary>
    private static long Modelled(double coverage)
        => MemoryModel.Estimate(new LlamaWorkload(LlamaConfig.Preset("tiny"), 2, 8), OptimizerMemory.AdamW, 4, new SdpVariant(SubnetLevel.Block, Masking.Forward, coverage)).MaxTotal;

    [Test]
    public void Train_refuses_a_configuration_over_the_budget_and_names_the_coverage_that_fits()
    {
        long budget = (Modelled(0.75) + Modelled(0.5)) / 2;
        var before = Listing();
        AssertUsageError(Train($"{SdpRun} --coverage 0.75 --max-memory {budget} --metrics m.jsonl --save ck"), before, "--max-memory", "worker", "fits: --coverage 0.5");
    }

    [Test]
    public void A_run_whose_accounted_memory_passes_the_budget_stops_with_the_report()
    {
        // The model leaves out workspace and the gradient buckets (engine buffers): a budget just above it passes the
        // check before the run, and the accounts pass it during the first step.
        long budget = Modelled(0.5) + (1 << 20);
        var r = Train($"{SdpRun} --coverage 0.5 --max-memory {budget} --metrics m.jsonl");
        Assert.That(r.ExitCode, Is.EqualTo(TrainCommand.MemoryBudgetExitCode), r.ToString());
        Assert.That(r.ErrLines, Has.Length.EqualTo(1), r.ToString());
        Assert.That(r.Err, Does.Contain("step 1").And.Contain("over the budget"));
        int report = Array.FindIndex(r.OutLines, l => l.StartsWith("memory per worker at step 1", StringComparison.Ordinal));
        Assert.That(report, Is.GreaterThanOrEqualTo(0), r.ToString());
        Assert.That(r.OutLines[report + 1], Does.Contain("Parameters").And.Contain("Workspace").And.Contain("EngineBuffers"));
        Assert.That(r.OutLines.Skip(report + 2).Take(4).Select(l => l.Trim()[0]), Is.EqualTo("0123"), "one row per worker");
    }

    [Test]
    public void Memory_and_plan_refuse_what_does_not_fit_and_accept_what_does()
    {
        var before = Listing();
        AssertUsageError(Sdp(Args("memory --model llama:130m --workers 8 --coverage 0.75 --max-memory 3GiB")), before, "--max-memory 3.00 GiB", "worker", "fits: --batch 1 per worker");
        AssertUsageError(Sdp(Args("memory --model llama:130m --workers 8 --mode dp --max-memory 1GiB")), before, "every worker", "nothing nearer fits", "--batch 1");
        AssertUsageError(Sdp(Args("plan --workers 4 --coverage 0.75 --subnet block --batch 2 --seq 8 --max-memory 58MiB")), before, "--max-memory", "fits: --coverage 0.5");
        AssertUsageError(Sdp(Args("memory --model llama:tiny --workers 2 --max-memory 2.5x")), before, "--max-memory", "2.5x", "512MiB");
        Assert.That(Sdp(Args("memory --model llama:130m --workers 8 --coverage 0.75 --max-memory 8GiB")).ExitCode, Is.Zero);
        Assert.That(Sdp(Args("plan --workers 4 --coverage 0.5 --subnet block --batch 2 --seq 8 --max-memory 58MiB")).ExitCode, Is.Zero);
    }

    [TestCase("512MiB", 512L << 20)]
    [TestCase("2 GiB", 2L << 30)]
    [TestCase("1.5GB", 1_500_000_000L)]
    [TestCase("64k", 64L << 10)]
    [TestCase("4096", 4096L)]
    public void Sizes_parse_with_binary_and_decimal_units(string text, long bytes) => Assert.That(MemoryBudget.Parse(text), Is.EqualTo(bytes));
}
