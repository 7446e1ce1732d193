using System.Diagnostics;
using System.Globalization;
using Sdp.Engine;
using Sdp.Models.Checkpoints;
using Sdp.Tests.Support;

namespace Sdp.Tests.Reliability;

/// <summary>
/// `sdp train --save DIR --save-every 1`, run as a child process and killed with SIGKILL at seeded random moments:
/// half at a uniformly drawn time of the run (start-up, steps, saves alike), half a few milliseconds after a save
/// has begun (its DIR.tmp-PID has appeared), so kills land inside checkpoint writes without any hook in the CLI.
/// After every kill DIR, once it exists, is a complete checkpoint whose step never goes back; the very same command
/// with --resume DIR added continues it, and a chain of killed runs ends with files bit-identical to one
/// uninterrupted run (every model, optimizer and state file of the dense model and of every worker), with no
/// leftovers of the killed runs (DIR.tmp-*, DIR.old-*, metrics temporary files) once a run has finished.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class CrashSafetyTests
{
    /// <summary>A LLaMA small enough that start-up, not training, dominates each run: 4 layers of width 32, 256 tokens.</summary>
    private const string TinyConfig = """{"vocab_size":256,"hidden_size":32,"intermediate_size":64,"num_hidden_layers":4,"num_attention_heads":2}""";

    /// <summary>Kills of one case; the two cases together kill at least 20 runs per CI run.</summary>
    private const int DenseKills = 12;
    private const int SdpKills = 10;

    private string _root = "";

    [SetUp]
    public void CreateRoot()
    {
        _root = Path.Combine(Path.GetTempPath(), "sdp-crash-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_root);
    }

    [TearDown]
    public void DeleteRoot()
    {
        if (Directory.Exists(_root)) Directory.Delete(_root, recursive: true);
    }

    private static string[] Command(string dir, string metrics, int workers, int steps) =>
    [
        "train", "--config", TinyConfig, "--steps", steps.ToString(CultureInfo.InvariantCulture), "--warmup", "1", "--batch", "2", "--seq", "16", "--eval-batches", "1",
        "--save", dir, "--save-every", "1", "--keep-last", "2", "--metrics", metrics,
        .. workers == 1 ? Array.Empty<string>() : ["--workers", workers.ToString(CultureInfo.InvariantCulture), "--mode", "sdp", "--coverage", "0.5"],
    ];

    [TestCase(1, DenseKills, 12, 11UL, TestName = "Dense: killed runs resume to the uninterrupted weights")]
    [TestCase(4, SdpKills, 12, 12UL, TestName = "SDP W=4: killed runs resume to the uninterrupted weights")]
    public void Killed_runs_resume_to_the_uninterrupted_weights(int workers, int kills, int steps, ulong seed)
    {
        string reference = Path.Combine(_root, "reference");
        var clock = Stopwatch.StartNew();
        var uninterrupted = MpiJob.RunProcess(MpiJob.Sdp, Command(reference, reference + ".jsonl", workers, steps), TimeSpan.FromSeconds(120));
        Assert.That(uninterrupted.ExitCode, Is.Zero, uninterrupted.ToString());
        var runTime = clock.Elapsed;

        var random = new Random((int)seed);
        int killed = 0, inSave = 0, chains = 0;
        string dir = "";
        long lastStep = -1;
        while (killed < kills)
        {
            if (dir == "")
            {
                dir = Path.Combine(_root, $"chain-{chains}");
                lastStep = -1;
            }
            string[] args = [.. Command(dir, dir + ".jsonl", workers, steps), .. Directory.Exists(dir) ? ["--resume", dir] : Array.Empty<string>()];
            bool duringSave = killed % 2 == 1;
            // Resumed runs are shorter than the uninterrupted one: draw from most of its time, so most runs die.
            var delay = duringSave ? TimeSpan.FromMilliseconds(random.Next(0, 8)) : runTime * (0.7 * random.NextDouble());
            var outcome = RunAndKill(args, dir, delay, duringSave);
            if (outcome.ExitCode is { } code)
            {
                // The run ended before the kill: the chain is complete.
                Assert.That(code, Is.Zero, outcome.Output);
                AssertSameFiles(dir, reference);
                AssertNoLeftovers(dir);
                chains++;
                dir = "";
                continue;
            }
            killed++;
            if (outcome.LeftTemporary) inSave++;
            if (!Directory.Exists(dir))
            {
                Assert.That(lastStep, Is.EqualTo(-1), $"kill {killed}: '{dir}' held the checkpoint of step {lastStep} and is gone");
                continue;
            }
            long step = AssertIntact(dir);
            Assert.That(step, Is.GreaterThanOrEqualTo(lastStep), $"kill {killed}: the checkpoint went back from step {lastStep} to {step}");
            lastStep = step;
        }
        if (dir != "")
        {
            string[] args = [.. Command(dir, dir + ".jsonl", workers, steps), .. Directory.Exists(dir) ? ["--resume", dir] : Array.Empty<string>()];
            var finish = MpiJob.RunProcess(MpiJob.Sdp, args, TimeSpan.FromSeconds(120));
            Assert.That(finish.ExitCode, Is.Zero, finish.ToString());
            AssertSameFiles(dir, reference);
            AssertNoLeftovers(dir);
            chains++;
        }
        TestContext.Progress.WriteLine($"crash safety, {workers} worker(s): {killed} kills survived ({inSave} inside a checkpoint write), {chains} chains finished bit-identical, {clock.Elapsed.TotalSeconds:F1} s");
        Assert.That(inSave, Is.GreaterThan(0), "no kill landed inside a checkpoint write");
    }

    private sealed record Outcome(int? ExitCode, bool LeftTemporary, string Output);

    /// <summary>
    /// Starts sdp with <paramref name="args"/> and kills it (SIGKILL) <paramref name="delay"/> after its start, or, when
    /// <paramref name="afterSaveBegins"/>, that long after a save has created its temporary directory beside <paramref name="dir"/>.
    /// </summary>
    private static Outcome RunAndKill(string[] args, string dir, TimeSpan delay, bool afterSaveBegins)
    {
        var psi = new ProcessStartInfo(MpiJob.Sdp) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args) psi.ArgumentList.Add(a);
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        var deadline = Stopwatch.StartNew();
        if (afterSaveBegins)
        {
            string parent = Path.GetDirectoryName(dir)!, pattern = Path.GetFileName(dir) + ".tmp-*";
            while (!process.HasExited && !Directory.EnumerateDirectories(parent, pattern).Any())
            {
                Assert.That(deadline.Elapsed, Is.LessThan(TimeSpan.FromSeconds(120)), "no save began");
                Thread.Sleep(1);
            }
            deadline.Restart();
        }
        if (!process.WaitForExit(delay))
        {
            process.Kill();
            process.WaitForExit();
            bool leftTemporary = Directory.EnumerateDirectories(Path.GetDirectoryName(dir)!, Path.GetFileName(dir) + ".tmp-*").Any();
            return new Outcome(null, leftTemporary, "");
        }
        process.WaitForExit();
        return new Outcome(process.ExitCode, false, $"--- stdout\n{stdout.Result}--- stderr\n{stderr.Result}");
    }

    /// <summary>Reads the checkpoint as a resume would, and every tensor of every file in it; returns its step.</summary>
    private static long AssertIntact(string dir)
    {
        var info = SdpCheckpoint.ReadInfo(dir);
        for (int w = 0; w < info.Run.Workers; w++)
            Assert.That(TrainingCheckpoint.ReadInfo(SdpCheckpoint.WorkerCheckpoint(dir, w)).State.Step, Is.EqualTo(info.Step), $"worker {w} of '{dir}'");
        foreach (string file in Directory.EnumerateFiles(dir, "*.safetensors", SearchOption.AllDirectories))
        {
            using var tensors = SafeTensorsFile.Read(file);
            foreach (string name in tensors.Names)
            {
                using var t = tensors.Load(name, tensors.Info(name).DType.IsFloatingPoint() ? DType.Float32 : DType.Int64);
            }
        }
        return info.Step;
    }

    /// <summary>Every file of the checkpoint <paramref name="dir"/> equals the same file of <paramref name="reference"/>, byte for byte.</summary>
    private static void AssertSameFiles(string dir, string reference)
    {
        var files = Directory.EnumerateFiles(reference, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(reference, f)).Order().ToList();
        Assert.That(Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(dir, f)).Order(), Is.EqualTo(files));
        Assert.That(files, Has.Some.EndsWith(".safetensors"));
        foreach (string file in files)
            Assert.That(File.ReadAllBytes(Path.Combine(dir, file)), Is.EqualTo(File.ReadAllBytes(Path.Combine(reference, file))), $"{file} of '{dir}' differs from the uninterrupted run's");
    }

    /// <summary>After a finished run: the checkpoint, one kept before it (--keep-last 2) and the metrics; nothing of the killed runs.</summary>
    private static void AssertNoLeftovers(string dir)
    {
        string name = Path.GetFileName(dir);
        var beside = Directory.EnumerateFileSystemEntries(Path.GetDirectoryName(dir)!, name + "*").Select(Path.GetFileName).ToList();
        Assert.That(beside, Is.EquivalentTo(new[] { name, name + ".jsonl", Path.GetFileName(SdpCheckpoint.History(dir)[0].Directory) }));
        Assert.That(Directory.EnumerateFiles(Path.GetDirectoryName(dir)!, $".{name}.jsonl.*.tmp"), Is.Empty, "metrics temporary files");
    }
}
