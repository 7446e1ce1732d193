using System.Diagnostics;

namespace Sdp.Tests.Reliability.Corruption;

/// <summary>What a subject's cases came to.</summary>
public sealed class CorruptionReport(string subject)
{
    public string Subject { get; } = subject;

    public int Cases { get; set; }

    public int Rejected { get; set; }

    public int Accepted { get; set; }

    /// <summary>Cases whose outcome the test could not decide (<see cref="Expect.Either"/>).</summary>
    public int Undecided { get; set; }

    public TimeSpan Elapsed { get; set; }

    /// <summary>The largest allocation of one case as a fraction of its bound (<see cref="CorruptionRunner.AllocationFactor"/> x its bytes + the slack).</summary>
    public double MaxBoundUsed { get; set; }

    /// <summary>The largest allocation of one case, in bytes, and that case.</summary>
    public long MaxAllocation { get; set; }

    public string MaxAllocationCase { get; set; } = "";

    public TimeSpan SlowestCase { get; set; }

    public List<string> Failures { get; } = [];

    public override string ToString()
        => $"{Subject}: {Cases} cases ({Rejected} rejected, {Accepted} accepted{(Undecided > 0 ? $"; {Undecided} of them undecided by the oracle" : "")}) in {Elapsed.TotalSeconds:F1} s, slowest {SlowestCase.TotalMilliseconds:F0} ms, " +
           $"largest allocation {MaxAllocation:N0} bytes ({MaxAllocationCase}), at most {100 * MaxBoundUsed:F0}% of a case's bound, {Failures.Count} failures";
}

/// <summary>
/// Runs a subject's fixed mutations and then seeded random ones through its reader, on a thread of its own so a
/// reader that hangs fails the test (naming the case) instead of hanging it. Every case must end as its oracle says:
/// accepted, or rejected with one exception of the product's bad-input kind whose message names the file; anything
/// else (another exception type, a message without the file, a slow case, an allocation beyond
/// <see cref="AllocationFactor"/> x the subject's bytes + <see cref="AllocationSlack"/>) is a failure.
/// </summary>
public static class CorruptionRunner
{
    /// <summary>A reader may allocate this many times the bytes it reads (a copy, a parsed document, the loaded tensors)...</summary>
    public const int AllocationFactor = 4;

    /// <summary>... plus this much (buffers, parser state, messages).</summary>
    public const long AllocationSlack = 256 << 10;

    /// <summary>One case taking longer than this is a failure: nothing here should take more than milliseconds.</summary>
    public static readonly TimeSpan CaseLimit = TimeSpan.FromSeconds(5);

    public static CorruptionReport Run(CorruptionSubject subject, int randomCases, int seed, TimeSpan limit)
    {
        var report = new CorruptionReport(subject.Name);
        Mutation? current = null;
        Exception? crashed = null;
        var thread = new Thread(() =>
        {
            try
            {
                // The valid files load (this also compiles the reader, so its first case is not charged for it).
                subject.Read();
                var clock = Stopwatch.StartNew();
                var random = new Random(seed);
                foreach (var m in subject.FixedMutations().Concat(Enumerable.Range(0, randomCases).Select(_ => subject.RandomMutation(random))))
                {
                    current = m;
                    RunCase(subject, m, report);
                }
                report.Elapsed = clock.Elapsed;
            }
            catch (Exception e)
            {
                crashed = e;
            }
        }, maxStackSize: 16 << 20) { IsBackground = true, Name = "corruption " + subject.Name };
        thread.Start();
        if (!thread.Join(limit)) report.Failures.Add($"HANG: no result after {limit.TotalSeconds:F0} s, at case {report.Cases + 1}: {current}");
        else if (crashed is not null) report.Failures.Add($"the harness failed at case {report.Cases + 1} ({current}): {crashed}");
        return report;
    }

    private static void RunCase(CorruptionSubject subject, Mutation m, CorruptionReport report)
    {
        report.Cases++;
        if (m.Expect == Expect.Either) report.Undecided++;
        subject.Apply(m);
        var clock = Stopwatch.StartNew();
        var (managed, native, error) = subject.Measure(subject.Read);
        var took = clock.Elapsed;
        subject.Restore(m);

        if (took > report.SlowestCase) report.SlowestCase = took;
        if (took > CaseLimit) report.Failures.Add($"SLOW ({took.TotalSeconds:F1} s): {m}");
        // The bound follows the bytes the reader was given: the original files with the mutated one in place.
        long bytes = subject.TotalBytes - subject.Originals[m.File].Length + (m.Bytes?.Length ?? 0);
        long bound = AllocationFactor * bytes + AllocationSlack;
        long total = managed + native;
        if (total > report.MaxAllocation) (report.MaxAllocation, report.MaxAllocationCase) = (total, $"{m.File}: {m.Kind} ({m.Detail}), {bytes:N0} bytes given");
        report.MaxBoundUsed = Math.Max(report.MaxBoundUsed, (double)total / bound);
        if (total > bound) report.Failures.Add($"ALLOCATION {total:N0} bytes ({managed:N0} managed, {native:N0} native) > {bound:N0}: {m}");

        if (error is null)
        {
            report.Accepted++;
            if (m.Expect == Expect.Reject) report.Failures.Add($"ACCEPTED, expected a rejection: {m}");
            return;
        }
        report.Rejected++;
        if (!subject.IsBadInput(error))
        {
            report.Failures.Add($"CRASH {error.GetType().Name} (not a bad-input error): {m}\n    {error}");
            return;
        }
        if (m.Expect == Expect.Accept) report.Failures.Add($"REJECTED, expected to load: {m}\n    {error.GetType().Name}: {error.Message}");
        var mentions = subject.Mentions(m);
        if (!mentions.Any(name => error.Message.Contains(name, StringComparison.Ordinal)))
            report.Failures.Add($"UNNAMED: the error does not name {string.Join(" or ", mentions)}: {m}\n    {error.GetType().Name}: {error.Message}");
    }
}
