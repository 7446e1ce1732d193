using System.Globalization;
using Sdp.Tests.Reliability.Corruption;

namespace Sdp.Tests.Reliability;

/// <summary>
/// Malformed files at scale: every reader of the product (safetensors weights, training-state directories, token
/// shards, CIFAR-10 and MNIST binaries, LLaMA and ResNet config JSON, subnetwork plans) is fed its valid file and then
/// seeded corruptions of it: truncation at every section boundary, bit flips, overwritten, inserted and appended bytes,
/// wrong header lengths, absurd shapes, counts and sizes, overlapping and out-of-range offsets, duplicate names,
/// non-UTF-8 text, deeply nested JSON, wrong dtypes, NaN and out-of-range numbers, and a directory, a pipe, /dev/zero
/// or nothing in a file's place. Each subject's oracle decides from the format's rules alone whether the corrupted
/// bytes are still valid; the reader must then load them, or refuse them with one error of the bad-input kind (exit
/// code 2 from the CLI) naming the file, within <see cref="CorruptionRunner.CaseLimit"/> and allocating at most
/// <see cref="CorruptionRunner.AllocationFactor"/> x the bytes it was given plus <see cref="CorruptionRunner.AllocationSlack"/>.
/// CI runs at least <see cref="CasesPerCiRun"/> cases; SDP_CORRUPTION_CASES=100000 (and SDP_CORRUPTION_SEED) runs a soak by hand.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class CorruptionTests
{
    /// <summary>Cases per CI run over all subjects.</summary>
    public const int CasesPerCiRun = 2000;

    private const string CasesVariable = "SDP_CORRUPTION_CASES";
    private const string SeedVariable = "SDP_CORRUPTION_SEED";

    public static IEnumerable<TestCaseData> Subjects()
    {
        foreach (var (name, _) in All)
            yield return new TestCaseData(name).SetName($"Corrupted {name} files are refused cleanly or still load");
    }

    private static readonly (string Name, Func<CorruptionSubject> Make)[] All =
    [
        ("safetensors", () => new SafeTensorsSubject()),
        ("training-state", () => new TrainingStateSubject()),
        ("token-shard", () => new TokenShardSubject()),
        ("cifar10", () => new CifarSubject()),
        ("mnist", () => new MnistSubject(gzip: false)),
        ("mnist-gz", () => new MnistSubject(gzip: true)),
        ("llama-config", () => new LlamaConfigSubject()),
        ("resnet-config", () => new ResNetConfigSubject()),
        ("plan", () => new PlanSubject()),
        ("parquet", () => new ParquetSubject()),
    ];

    /// <summary>Cases per subject: an equal share of the run's total, fixed cases included.</summary>
    private static int CasesPerSubject()
    {
        string? given = Environment.GetEnvironmentVariable(CasesVariable);
        int total = given is null ? CasesPerCiRun : int.Parse(given, CultureInfo.InvariantCulture);
        return (total + All.Length - 1) / All.Length;
    }

    private static int Seed() => Environment.GetEnvironmentVariable(SeedVariable) is { } s ? int.Parse(s, CultureInfo.InvariantCulture) : 20240520;

    [TestCaseSource(nameof(Subjects))]
    public void Corrupted_files_are_refused_cleanly_or_still_load(string name)
    {
        int index = Array.FindIndex(All, s => s.Name == name);
        using var subject = All[index].Make();
        int fixedCases = subject.FixedMutations().Count();
        int cases = CasesPerSubject();
        int seed = Seed() + 7919 * index;
        // Ten minutes per 10^5 cases is far more than any healthy reader needs; only a hang reaches it.
        var limit = TimeSpan.FromMinutes(2 + 10.0 * cases / 100_000);
        var report = CorruptionRunner.Run(subject, Math.Max(cases - fixedCases, cases / 2), seed, limit);
        TestContext.Progress.WriteLine($"corruption {report} (seed {seed}, {fixedCases} fixed)");
        Assert.Multiple(() =>
        {
            Assert.That(report.Failures, Is.Empty, $"{report.Failures.Count} of {report.Cases} cases failed (seed {seed}):\n" + string.Join("\n", report.Failures.Take(25)));
            Assert.That(report.Cases, Is.GreaterThanOrEqualTo(cases), "every subject runs its share of the cases");
            Assert.That(report.Rejected, Is.GreaterThan(report.Cases / 10), "most corruptions break a file");
            Assert.That(report.Accepted, Is.GreaterThan(0), "some corruptions leave a valid file, and the reader must take it");
        });
    }
}
