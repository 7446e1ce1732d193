using System.Reflection;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using Sdp.Bench;
using Sdp.Engine.Autograd;
using Sdp.Engine.Subnetworks;
using Sdp.Measure;
using Sdp.Models.Training;

namespace Sdp.Tests.Benchmarks;

/// <summary>
/// The BenchmarkDotNet suites of Sdp.Bench without BenchmarkDotNet running them: they are found, their parameter grids
/// expand to the cases the README promises, and each suite's setup and benchmark methods run once at a small size.
/// </summary>
[NonParallelizable]
public class BenchmarkSuiteTests
{
    private static Type[] Suites() => [.. typeof(Sdp.Bench.Program).Assembly.GetTypes().Where(t => t.GetMethods().Any(m => m.GetCustomAttribute<BenchmarkAttribute>() is not null))];

    [TearDown]
    public void ClearTape() => Tape.Current.Clear();

    [Test]
    public void Every_suite_is_found_with_its_parameter_grid()
    {
        Assert.That(Suites().Select(t => t.Name), Is.EquivalentTo(new[] { nameof(SgemmBenchmarks), nameof(MaskedGemmBenchmarks), nameof(GradientAccumulationBenchmarks), nameof(WorkerStepBenchmarks) }));
        int Cases(Type t) => BenchmarkConverter.TypeToBenchmarks(t, Sdp.Bench.Program.Config).BenchmarksCases.Length;
        Assert.That(Cases(typeof(SgemmBenchmarks)), Is.EqualTo(3 * 2 * 2), "sizes x threads x (OpenBLAS, Sdp)");
        Assert.That(Cases(typeof(MaskedGemmBenchmarks)), Is.EqualTo(5 * 4 * 2), "densities 1 ... 0.125 x kernels x (dense, masked)");
        Assert.That(Cases(typeof(GradientAccumulationBenchmarks)), Is.EqualTo(5 * 2 * 2), "densities x kernels x (copy, kernel)");
        Assert.That(Cases(typeof(WorkerStepBenchmarks)), Is.EqualTo(2 * (1 + 4 * 4)), "models x (DP + neuron/block x forward/backward x C 1, 0.75, 0.5, 0.25)");
    }

    [Test]
    public void The_masked_gemm_suite_sets_up_and_runs_every_kernel()
    {
        foreach (string kernel in new[] { "fwd-rows", "fwd-cols", "dW-rows-c", "dW-cols-c" })
        {
            var suite = new MaskedGemmBenchmarks { N = 64, Density = 0.125, Kernel = kernel };
            suite.Setup();
            suite.DenseSgemm();
            suite.Masked();
            suite.Cleanup();
        }
    }

    [Test]
    public void The_accumulation_suite_moves_as_many_bytes_in_its_copy_as_its_kernel([Values("holder-mean", "index-add")] string kernel)
    {
        var suite = new GradientAccumulationBenchmarks { N = 64, Density = 0.5, Kernel = kernel };
        suite.Setup();
        suite.MemoryCopy();
        suite.Accumulate();
        suite.Cleanup();
        // holder-mean: each of the 4 workers' 32 held rows read, the 64 x 64 result written; index-add: 32 compact rows read, 32 target rows read and written.
        long expected = kernel == "holder-mean" ? 4L * ((4 * 32 * 64) + (64 * 64)) : 3L * 4 * 32 * 64;
        Assert.That(suite.BytesMoved, Is.EqualTo(expected));
    }

    [Test]
    public void The_step_suite_steps_dp_and_an_sdp_worker([Values("llama", "resnet18")] string model)
    {
        foreach (var variant in new[] { StepVariant.Dp, new StepVariant(SubnetLevel.Block, Masking.Forward, 0.5) })
        {
            var suite = new WorkerStepBenchmarks { Model = model, Variant = variant, Batch = 1 };
            suite.Setup();
            Assert.That(double.IsFinite(suite.Step()), Is.True, $"{model} {variant}");
            suite.Cleanup();
        }
    }

    [Test]
    public void The_sgemm_suite_sets_up_against_openblas()
    {
        if (!OpenBlas.IsAvailable) Assert.Ignore("OpenBLAS is not installed here (apt-get install libopenblas0-pthread)");
        var suite = new SgemmBenchmarks { N = 64, Threads = 1 };
        suite.Setup();
        suite.OpenBlasSgemm();
        suite.SdpSgemm();
        suite.Cleanup();
        Assert.That(BaselineReport.OpenBlasBaseline(1), Does.StartWith("OpenBLAS ").And.Contain("(core ").And.EndWith("1 thread"));
    }
}
