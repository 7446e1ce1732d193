using System.Globalization;
using Sdp.Measure;

namespace Sdp.Tests.Cli;

/// <summary>
/// The GEMM baseline is never a handicapped OpenBLAS: openblas_get_config is parsed, a forced core is compared with
/// what the CPU supports, and a forced weaker core moves the baseline to a child process on the best core.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class OpenBlasBaselineTests : CliTestBase
{
    [TestCase("OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64", "0.3.21", true, "Zen", 64)]
    [TestCase("OpenBLAS 0.3.26  DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=128", "0.3.26", true, "SkylakeX", 128)]
    [TestCase("OpenBLAS 0.3.8 HASWELL MAX_THREADS=4", "0.3.8", false, "HASWELL", 4)]
    [TestCase("OpenBLAS 0.3.20  USE64BITINT DYNAMIC_ARCH NO_AFFINITY Sandybridge MAX_THREADS=2", "0.3.20", true, "Sandybridge", 2)]
    public void Config_IsParsedIntoVersionCoreAndThreads(string raw, string version, bool dynamic, string core, int threads)
    {
        var c = OpenBlasBuildConfig.Parse(raw);
        Assert.Multiple(() =>
        {
            Assert.That(c.Raw, Is.EqualTo(raw));
            Assert.That(c.Version, Is.EqualTo(version));
            Assert.That(c.DynamicArch, Is.EqualTo(dynamic));
            Assert.That(c.Core, Is.EqualTo(core));
            Assert.That(c.MaxThreads, Is.EqualTo(threads));
        });
    }

    [TestCase("")]
    [TestCase("unknown")]
    [TestCase("MKL 2024 MAX_THREADS=8")]
    [TestCase("OpenBLAS 0.3.21 MAX_THREADS=lots")]
    public void Config_OfAnotherShape_KeepsTheRawStringAndGuessesNothing(string raw)
    {
        var c = OpenBlasBuildConfig.Parse(raw);
        Assert.That(c.Raw, Is.EqualTo(raw));
        Assert.That(c.Core, Is.Null, "no core unless the string has OpenBLAS's layout with a core before MAX_THREADS");
        Assert.That(c.MaxThreads, Is.Null.Or.EqualTo(8));
    }

    [TestCase("Haswell", SimdTier.Avx2)]
    [TestCase("HASWELL", SimdTier.Avx2)]
    [TestCase("zen", SimdTier.Avx2)]
    [TestCase("SkylakeX", SimdTier.Avx512)]
    [TestCase("Cooperlake", SimdTier.Avx512)]
    [TestCase("Sandybridge", SimdTier.Avx)]
    [TestCase("Nehalem", SimdTier.Sse)]
    [TestCase("NEOVERSEN1", SimdTier.Unknown)]
    public void CoreNames_MapToTheSimdTheirKernelsNeed(string core, SimdTier tier)
        => Assert.That(OpenBlasCores.TierOf(core), Is.EqualTo(tier));

    [Test]
    public void CpuTier_IsTheWidestSupportedExtension()
    {
        Assert.That(OpenBlasCores.CpuTier(avx512: true, avx2: true, avx: true, sse: true), Is.EqualTo(SimdTier.Avx512));
        Assert.That(OpenBlasCores.CpuTier(avx512: false, avx2: true, avx: true, sse: true), Is.EqualTo(SimdTier.Avx2));
        Assert.That(OpenBlasCores.CpuTier(avx512: false, avx2: false, avx: true, sse: true), Is.EqualTo(SimdTier.Avx));
        Assert.That(OpenBlasCores.CpuTier(avx512: false, avx2: false, avx: false, sse: false), Is.EqualTo(SimdTier.Unknown));
        Assert.That(OpenBlasCores.BestCoreFor(SimdTier.Avx512), Is.EqualTo("SkylakeX"));
        Assert.That(OpenBlasCores.BestCoreFor(SimdTier.Avx2), Is.EqualTo("Haswell"));
        Assert.That(OpenBlasCores.BestCoreFor(SimdTier.Unknown), Is.Null);
    }

    // The issue's case: a Zen 5 (AVX-512) machine whose environment forces Haswell.
    [TestCase("Haswell", SimdTier.Avx512, true)]
    [TestCase("SkylakeX", SimdTier.Avx512, false)]
    [TestCase("Zen", SimdTier.Avx2, false)]
    [TestCase("Sandybridge", SimdTier.Avx2, true)]
    [TestCase("SkylakeX", SimdTier.Avx2, false)]
    [TestCase("NoSuchCore", SimdTier.Avx512, false)]
    [TestCase("Haswell", SimdTier.Unknown, false)]
    public void ForcedCore_IsWeakerOnlyBelowTheCpusTier(string forced, SimdTier cpu, bool weaker)
    {
        var check = new OpenBlasCoreCheck(forced, OpenBlasCores.TierOf(forced), cpu);
        Assert.That(check.ForcesWeaker, Is.EqualTo(weaker), check.Describe());
        Assert.That(check.Describe(), Does.Contain($"OPENBLAS_CORETYPE={forced}"));
        if (weaker) Assert.That(check.Describe(), Does.Contain("weaker than").And.Contain(check.BestCore!));
    }

    [Test]
    public void UnsetVariable_ForcesNothing()
    {
        var check = new OpenBlasCoreCheck(null, SimdTier.Unknown, SimdTier.Avx512);
        Assert.That(check.ForcesWeaker, Is.False);
        Assert.That(check.Describe(), Does.Contain("unset"));
    }

    [Test]
    public void BadCoreOption_IsAUsageErrorNamingIt()
    {
        var before = Listing();
        AssertUsageError(Sdp(Args("bench gemm --sizes 16 --openblas-core fastest")), before, "--openblas-core");
    }

    [Test]
    public void BadSamplesOption_IsAUsageErrorNamingIt()
    {
        var before = Listing();
        AssertUsageError(Sdp(Args("bench gemm --sizes 16 --samples 0")), before, "--samples");
    }

    /// <summary>The row of a cell: both libraries' GFLOP/s, their ratio and the paired ratios, median (min-max), each
    /// sample's pair timed in turn; the paired median lies within its own range.</summary>
    [Test]
    public void Gemm_PrintsPairedRatiosOfInterleavedSamples()
    {
        RequireOpenBlas();
        using var unforced = new EnvironmentVariable(OpenBlasCoreCheck.CoreTypeVariable, null);
        var r = Sdp(Args("bench gemm --sizes 48 --threads 1 --seconds 0.02 --samples 3"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("3 interleaved samples per library per cell"));
        var row = r.OutLines.Single(l => l.TrimStart().StartsWith("48 ", StringComparison.Ordinal));
        var m = System.Text.RegularExpressions.Regex.Match(row, @"([0-9.]+) \(([0-9.]+)-([0-9.]+)\)\s*$");
        Assert.That(m.Success, Is.True, row);
        double median = double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture), min = double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture), max = double.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture);
        Assert.That(min, Is.GreaterThan(0).And.LessThanOrEqualTo(median), row);
        Assert.That(max, Is.GreaterThanOrEqualTo(median), row);
    }

    [Test]
    public void Gemm_PrintsTheBaselinesVersionAndCore()
    {
        RequireOpenBlas();
        using var unforced = new EnvironmentVariable(OpenBlasCoreCheck.CoreTypeVariable, null);
        var r = Sdp(Args("bench gemm --sizes 32 --threads 1 --seconds 0.02"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain($"baseline  OpenBLAS {OpenBlas.Config.Version}, core {OpenBlas.CoreName}").And.Contain("openblas_get_config"));
        Assert.That(r.OutLines.Count(l => l.TrimStart().StartsWith("32 ", StringComparison.Ordinal)), Is.EqualTo(1), r.ToString());
    }

    [Test]
    public void ForcedWeakerCore_RunsTheBaselineInAChildOnTheBestCore()
    {
        RequireOpenBlas();
        SimdTier cpu = OpenBlasCores.CpuTier();
        if (cpu < SimdTier.Avx) Assert.Ignore($"this CPU ({OpenBlasCores.TierName(cpu)}) has no weaker core to force");
        string weaker = OpenBlasCores.BestCoreFor(cpu - 1)!;
        string best = OpenBlasCores.BestCoreFor(cpu)!;
        using var forced = new EnvironmentVariable(OpenBlasCoreCheck.CoreTypeVariable, weaker);
        var r = Sdp(Args("bench gemm --sizes 32 --threads 1 --seconds 0.02"));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.OutLines[0], Does.StartWith($"warning: OPENBLAS_CORETYPE={weaker} forces").And.Contain("weaker than"));
        Assert.That(r.Out, Does.Contain($"child process with OPENBLAS_CORETYPE={best}"));
        // The table comes from the child, whose OpenBLAS reports the core it really loaded (a DYNAMIC_ARCH build
        // honours the variable; any other build runs its one core, and says which).
        string expectedCore = OpenBlas.Config.DynamicArch ? best : OpenBlas.CoreName;
        Assert.That(r.Out, Does.Contain($", core {expectedCore},"), r.ToString());
        Assert.That(r.OutLines.Count(l => l.TrimStart().StartsWith("32 ", StringComparison.Ordinal)), Is.EqualTo(1), r.ToString());

        var kept = Sdp(Args("bench gemm --sizes 32 --threads 1 --seconds 0.02 --openblas-core as-set"));
        Assert.That(kept.ExitCode, Is.EqualTo(0), kept.ToString());
        Assert.That(kept.Out, Does.Contain($"measuring against {weaker} as asked").And.Not.Contain("child process"));
    }

    private static void RequireOpenBlas()
    {
        if (!OpenBlas.IsAvailable) Assert.Ignore("OpenBLAS is not installed (apt-get install libopenblas0-pthread)");
    }

    /// <summary>Sets (or with null removes) an environment variable for the test and restores it after.</summary>
    private sealed class EnvironmentVariable : IDisposable
    {
        private readonly string _name;
        private readonly string? _previous;

        public EnvironmentVariable(string name, string? value)
        {
            _name = name;
            _previous = Environment.GetEnvironmentVariable(name);
            Environment.SetEnvironmentVariable(name, value);
        }

        public void Dispose() => Environment.SetEnvironmentVariable(_name, _previous);
    }
}
