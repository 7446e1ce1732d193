using System.Diagnostics;
using System.Globalization;
using Sdp.Engine;
using Sdp.Engine.Memory;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Training;
using static Sdp.Tests.SdpTraining.SdpTestSupport;

namespace Sdp.Tests.Reliability;

/// <summary>
/// Load: W = 8 simulated SDP workers train the small LLaMA for many steps, evaluating and saving a training state
/// (keeping 2) every <see cref="Every"/> steps, as a long `sdp train --workers 8 --eval-every --save-every` run does.
/// After warm-up nothing may grow: every worker's accounted memory, current and peak, per category, and its count of
/// live allocations (tensors, tape-held activations, buffers) end exactly where they stood after warm-up; the process's
/// resident memory grows by less than <see cref="RssSlackBytes"/> (garbage-collector noise, not a leak per step);
/// open file descriptors and threads stay within a small slack of their warm-up counts (a leak per save would pass it);
/// no device storage is abandoned to a finalizer.
/// CI runs <see cref="CiSteps"/> steps; SDP_SOAK_STEPS=20000 runs the long soak by hand (its numbers are in the README).
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class SoakTests
{
    public const int CiSteps = 200;
    private const int Workers = 8;

    /// <summary>Evaluation and saving cadence; the warm-up sample is taken after two of each.</summary>
    private const int Every = 20;
    private const int WarmUp = 2 * Every;

    /// <summary>Resident memory may move this much between the samples (the managed heap's segments come and go).</summary>
    private const long RssSlackBytes = 48L << 20;

    /// <summary>
    /// The runtime's thread pool and timers may add a thread or two between samples; a thread or descriptor left behind
    /// by every step, evaluation or save would add at least one per save (8 between the CI samples).
    /// </summary>
    private const int ThreadSlack = 4;
    private const int DescriptorSlack = 2;

    private string _dir = "";

    [SetUp]
    public void MakeDirectory()
    {
        _dir = Path.Combine(Path.GetTempPath(), "sdp-soak-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
    }

    [TearDown]
    public void RemoveDirectory()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    /// <summary>What the process and every worker hold at one step.</summary>
    private sealed record Sample(long Step, long Rss, int Descriptors, int Threads, long Abandoned, MemorySnapshot[] Accounts, long[] LiveAllocations, long HostCurrent)
    {
        public static Sample Take(Trainer trainer, long step)
        {
            // Whatever is only garbage is collected first, so the counts below are what the run still holds.
            GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
            GC.WaitForPendingFinalizers();
            GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
            var accounts = Enumerable.Range(0, Workers).Select(trainer.WorkerAccount).ToArray();
            return new Sample(step, StatusField("VmRSS") * 1024, Directory.GetFileSystemEntries("/proc/self/fd").Length, (int)StatusField("Threads"),
                Storage.AbandonedCount, [.. accounts.Select(a => a.Snapshot())], [.. accounts.Select(a => a.LiveAllocations)], trainer.HostAccount?.CurrentTotal ?? 0);
        }

        /// <summary>A number field of /proc/self/status ("VmRSS:  123456 kB" gives 123456).</summary>
        private static long StatusField(string name)
        {
            string line = File.ReadLines("/proc/self/status").First(l => l.StartsWith(name + ":", StringComparison.Ordinal));
            return long.Parse(line[(name.Length + 1)..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
        }
    }

    [Test]
    public void Eight_workers_train_for_many_steps_without_growing()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("reads /proc/self");
        int steps = Environment.GetEnvironmentVariable("SDP_SOAK_STEPS") is { } s ? int.Parse(s, CultureInfo.InvariantCulture) : CiSteps;
        Assert.That(steps, Is.GreaterThan(WarmUp + Every), "the soak needs steps after warm-up");
        var options = Options(steps) with { EvalEvery = Every, EvalBatches = 2, SavePath = Path.Combine(_dir, "state"), SaveEvery = Every, KeepLast = 2 };
        using var trainer = new Trainer(LlamaModel(SubnetLevel.Block), SdpRun(Workers, SubnetLevel.Block, Masking.Forward, 0.5), AdamW, w => Tokens(w, Workers), options, eval: SameTokens());
        var samples = new List<Sample>();
        trainer.StepCompleted += m =>
        {
            if (m.Step == WarmUp || (m.Step > WarmUp && m.Step % (10 * Every) == 0) || m.Step == steps) samples.Add(Sample.Take(trainer, m.Step));
        };
        var clock = Stopwatch.StartNew();
        trainer.Run();
        clock.Stop();

        var warm = samples[0];
        var end = samples[^1];
        long maxRss = samples.Max(x => x.Rss);
        // Resident memory along the run (at most 11 samples), to tell a plateau from a slope.
        string series = string.Join(" ", Enumerable.Range(0, Math.Min(11, samples.Count)).Select(i => samples[(int)((long)i * (samples.Count - 1) / Math.Max(1, Math.Min(10, samples.Count - 1)))])
            .Select(x => string.Create(CultureInfo.InvariantCulture, $"{x.Step}:{x.Rss / 1048576.0:F0}")));
        TestContext.Progress.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"soak: {Workers} workers, {steps} steps in {clock.Elapsed.TotalSeconds:F1} s; from step {warm.Step} to {end.Step}: RSS {warm.Rss >> 20} -> {end.Rss >> 20} MiB " +
            $"(drift {(end.Rss - warm.Rss) / 1048576.0:+0.0;-0.0} MiB, highest {maxRss >> 20} MiB; step:MiB {series}), descriptors {warm.Descriptors} -> {end.Descriptors}, threads {warm.Threads} -> {end.Threads}, " +
            $"worker 0 accounted {warm.Accounts[0].CurrentTotal:N0} -> {end.Accounts[0].CurrentTotal:N0} bytes (peak {warm.Accounts[0].PeakTotal:N0} -> {end.Accounts[0].PeakTotal:N0}), " +
            $"live allocations {warm.LiveAllocations.Sum()} -> {end.LiveAllocations.Sum()}"));
        Assert.Multiple(() =>
        {
            Assert.That(trainer.Step, Is.EqualTo(steps));
            for (int w = 0; w < Workers; w++)
            {
                foreach (var category in Enum.GetValues<MemoryCategory>())
                {
                    Assert.That(end.Accounts[w].CurrentBytes(category), Is.EqualTo(warm.Accounts[w].CurrentBytes(category)), $"worker {w} current {category}");
                    Assert.That(end.Accounts[w].PeakBytes(category), Is.EqualTo(warm.Accounts[w].PeakBytes(category)), $"worker {w} peak {category}");
                }
                Assert.That(end.LiveAllocations[w], Is.EqualTo(warm.LiveAllocations[w]), $"worker {w} live allocations (tensors, tape-held activations, buffers)");
            }
            Assert.That(end.HostCurrent, Is.EqualTo(warm.HostCurrent), "the host's dense model");
            Assert.That(end.Rss - warm.Rss, Is.LessThan(RssSlackBytes), "resident memory after warm-up");
            Assert.That(end.Descriptors, Is.LessThanOrEqualTo(warm.Descriptors + DescriptorSlack), "open file descriptors (checkpoint files are closed)");
            Assert.That(end.Threads, Is.LessThanOrEqualTo(warm.Threads + ThreadSlack), "threads (the workers keep theirs; nothing starts one per step)");
            Assert.That(end.Abandoned, Is.EqualTo(warm.Abandoned), "device storage left to the finalizer");
        });
    }
}
