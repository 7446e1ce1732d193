using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Sdp.Cli.Commands;
using Sdp.Models.Checkpoints;
using Sdp.Tests.Support;

namespace Sdp.Tests.Distributed;

/// <summary>
/// `sdp train --launcher mpi` as real processes: jobs of 4 ranks under mpirun (or `sdp launch`) against the
/// in-process simulation of the same run (4 worker threads), on the CPU. The ranks reduce in the same ascending
/// rank order as the threads, assemble the dense model with an exact −0.0 all-reduce and sum evaluation batches in
/// batch order, so the comparisons are bitwise: the saved models, every worker's training state, and every
/// number of the metrics except timings. Then the faults: a killed, a hung and a failing rank each end the whole
/// job within seconds. Every process is killed and the test failed if it outlives its timeout.
/// </summary>
[Category("Mpi")]
[NonParallelizable]
public class MultiProcessTrainingTests : MpiJobFixture
{
    /// <summary>
    /// The limit of one process (a job or an in-process reference run). A test runs at most three in a row, so it
    /// ends, pass or fail, before the CI's 5-minute hang detector would abort the whole test run.
    /// </summary>
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90);

    /// <summary>How long a failing job may take to end on every rank, once the fault is there.</summary>
    private static readonly TimeSpan FailFast = TimeSpan.FromSeconds(40);

    /// <summary>A small, quick run: tiny LLaMA on the synthetic source, 2 sequences of 16 tokens per worker.</summary>
    private static readonly string[] Small = ["train", "--batch", "2", "--seq", "16", "--eval-batches", "3"];


    private string In(string name) => Path.Combine(Dir, name);

    public static IEnumerable<TestCaseData> Variants()
    {
        yield return new TestCaseData((object)new[] { "--mode", "sdp", "--subnet", "block", "--masking", "forward", "--coverage", "0.5" }).SetName("Block_forward_SDP_launched_by_sdp_launch_equals_the_in_process_run");
        yield return new TestCaseData((object)new[] { "--mode", "sdp", "--subnet", "neuron", "--masking", "backward", "--coverage", "0.5" }).SetName("Neuron_backward_SDP_under_mpirun_equals_the_in_process_run");
        yield return new TestCaseData((object)new[] { "--mode", "dp" }).SetName("DP_under_mpirun_equals_the_in_process_run");
    }

    [TestCaseSource(nameof(Variants))]
    public void A_four_rank_job_equals_the_in_process_run(string[] variant)
    {
        string[] run = [.. Small, "--steps", "4", .. variant];
        var reference = InProcess([.. run, "--workers", "4", "--save", In("threads"), "--metrics", In("threads.jsonl")]);
        Assert.That(reference.ExitCode, Is.EqualTo(0), reference.ToString());

        string[] job = [.. run, "--save", In("job"), "--metrics", In("job.jsonl")];
        var result = variant.Contains("block") ? Launch(4, job) : MpiJob.Run(4, Timeout, [job[0], "--launcher", "mpi", .. job[1..]]);
        Assert.That(result.ExitCode, Is.EqualTo(0), result.ToString());

        // The assembled dense model and every worker's model and optimizer state, bit for bit.
        AssertSameTrainingState(In("threads"), In("job"));
        AssertSameMetrics(In("threads.jsonl"), In("job.jsonl"));
        Assert.That(Lines(result.Out, "eval loss"), Is.EqualTo(Lines(reference.Out, "eval loss")), "the summary's evaluation");
        Assert.That(Lines(result.Out, "communication"), Is.EqualTo(Lines(reference.Out, "communication")));
        Assert.That(result.Out, Does.Contain(variant.Contains("dp") ? "4 workers (dp)" : "4 workers (sdp"), "rank 0 printed the run");
        Assert.That(Count(result.Out, "summary"), Is.EqualTo(1), "only rank 0 prints");
    }

    [Test]
    public void A_two_rank_CUDA_job_syncs_through_NCCL_over_MPI_and_equals_the_in_process_NCCL_run()
    {
        if (Sdp.Kernels.Cuda.Cuda.TryLoad(Sdp.Kernels.Cuda.CudaImplementation.Emulated, out string why) is null) Assert.Ignore($"no emulated CUDA device: {why}");
        // The emulated device: one NCCL rank per process, its collectives carried over MPI (the emulator's cross-process
        // mode), against two emulated devices driven by one process through the in-process NCCL.
        string[] run = ["train", "--device", "cuda", "--batch", "1", "--seq", "8", "--eval-batches", "1", "--steps", "2", "--mode", "sdp", "--subnet", "neuron", "--masking", "backward", "--coverage", "0.5"];
        var job = MpiJob.RunProcess(MpiJob.FindMpirun()!, MpiJob.Arguments(2, [run[0], "--launcher", "mpi", .. run[1..], "--save", In("job.safetensors")], "SDP_CUDA=emu"), Timeout);
        Assert.That(job.ExitCode, Is.EqualTo(0), job.ToString());
        Assert.That(job.Out, Does.Contain("NCCL, one process per worker"), job.ToString());
        var threads = MpiJob.RunProcess(MpiJob.Sdp, [.. run, "--workers", "2", "--save", In("threads.safetensors")], Timeout, ("SDP_CUDA", "emu"));
        Assert.That(threads.ExitCode, Is.EqualTo(0), threads.ToString());
        Assert.That(threads.Out, Does.Contain(", NCCL"), threads.ToString());
        AssertSameBytes(File.ReadAllBytes(In("threads.safetensors")), File.ReadAllBytes(In("job.safetensors")), "the assembled dense model, bit for bit");
    }

    [Test]
    public void Holders_stay_bit_identical_across_processes_over_50_steps()
    {
        // Backward masking refreshes every unit a worker lacks from its holders, so after each step every worker's
        // dense copy must equal the assembled model: holders agree with each other, and non-holders with them.
        string[] run = ["train", "--batch", "1", "--seq", "8", "--eval-batches", "1", "--steps", "50", "--mode", "sdp", "--subnet", "neuron", "--masking", "backward", "--coverage", "0.5"];
        var job = MpiJob.Run(4, Timeout, [run[0], "--launcher", "mpi", .. run[1..], "--save", In("job")]);
        Assert.That(job.ExitCode, Is.EqualTo(0), job.ToString());
        var dense = Tensors(Path.Combine(In("job"), TrainingCheckpoint.ModelFileName));
        for (int w = 0; w < 4; w++)
        {
            var worker = Tensors(Path.Combine(In("job"), SdpCheckpoint.WorkerDirectory(w), TrainingCheckpoint.ModelFileName));
            Assert.That(worker.Keys, Is.EquivalentTo(dense.Keys), $"worker {w} keeps a dense copy");
            foreach (var (name, bytes) in dense) AssertSameBytes(bytes, worker[name], $"worker {w}'s {name} after 50 steps");
        }
    }

    [Test]
    public void A_job_resumes_across_processes_and_continues_bit_for_bit()
    {
        string[] run = [.. Small, "--schedule", "constant", "--mode", "sdp", "--subnet", "block", "--masking", "backward", "--coverage", "0.5"];
        var first = MpiJob.Run(4, Timeout, [run[0], "--launcher", "mpi", .. run[1..], "--steps", "3", "--save", In("state")]);
        Assert.That(first.ExitCode, Is.EqualTo(0), first.ToString());
        var resumed = MpiJob.Run(4, Timeout, [run[0], "--launcher", "mpi", .. run[1..], "--steps", "6", "--resume", In("state"), "--save", In("resumed.safetensors")]);
        Assert.That(resumed.ExitCode, Is.EqualTo(0), resumed.ToString());
        Assert.That(resumed.Out, Does.Contain("resumed from"));

        var whole = InProcess([.. run, "--workers", "4", "--steps", "6", "--save", In("whole.safetensors")]);
        Assert.That(whole.ExitCode, Is.EqualTo(0), whole.ToString());
        AssertSameBytes(File.ReadAllBytes(In("whole.safetensors")), File.ReadAllBytes(In("resumed.safetensors")), "3 steps, saved, then 3 more as a job = 6 uninterrupted steps");
    }

    [Test]
    public void Each_process_measures_the_memory_sdp_memory_models_for_its_worker()
    {
        string[] variant = ["--mode", "sdp", "--subnet", "neuron", "--masking", "forward", "--coverage", "0.5"];
        var job = MpiJob.Run(4, Timeout, ["train", "--launcher", "mpi", .. Small[1..], "--steps", "2", .. variant, "--metrics", In("job.jsonl")]);
        Assert.That(job.ExitCode, Is.EqualTo(0), job.ToString());
        var model = InProcess(["memory", "--model", "llama:tiny", "--workers", "4", "--batch", "2", "--seq", "16", .. variant[2..], "--json"]);
        Assert.That(model.ExitCode, Is.EqualTo(0), model.ToString());
        var modelled = JsonNode.Parse(model.Out)!["sdp"]!["workers"]!.AsArray();
        var lastStep = Records(In("job.jsonl")).Last(r => r["step"] is not null && r["eval"] is null);
        var workers = lastStep["workers"]!.AsArray();
        Assert.That(workers, Has.Count.EqualTo(4), "rank 0 gathered every process's memory");
        for (int w = 0; w < 4; w++)
        {
            var measured = workers[w]!["memory"]!;
            // The static categories are exact byte counts of the worker's tensors; activations are modelled from the shapes.
            foreach (string category in (string[])["parameters", "gradients", "optimizer_state"])
                Assert.That(measured[category]!["peak"]!.GetValue<long>(), Is.EqualTo(modelled[w]![category]!.GetValue<long>()), $"worker {w} {category}");
            Assert.That((double)measured["activations"]!["peak"]!.GetValue<long>(), Is.EqualTo(modelled[w]!["activations"]!.GetValue<long>()).Within(15).Percent, $"worker {w} activations");
        }
    }

    [Test]
    public void Killing_one_rank_ends_every_rank_within_seconds()
    {
        using var job = LongJob([]);
        job.WaitForTraining();
        int victim = job.RankPid(2);
        Process.GetProcessById(victim).Kill();
        var result = job.WaitForExit(FailFast);
        Assert.That(result.ExitCode, Is.Not.EqualTo(0), result.ToString());
        Assert.That(result.Out + result.Err, Does.Contain("rank 2").And.Contain("signal 9"), "mpirun names the killed rank");
        Assert.That(job.LiveRanksAfter(TimeSpan.FromSeconds(10)), Is.Empty, "no rank outlives the job");
    }

    [Test]
    public void A_hung_rank_is_caught_by_the_comm_timeout_and_every_rank_exits()
    {
        using var job = LongJob(["--comm-timeout", "15"]);
        job.WaitForTraining();
        // SIGSTOP: the rank neither dies nor answers, so only the others' watchdogs can end the job.
        Assert.That(Kill(job.RankPid(1), "STOP"), Is.EqualTo(0));
        var result = job.WaitForExit(FailFast);
        Assert.That(result.ExitCode, Is.Not.EqualTo(0), result.ToString());
        Assert.That(result.Err, Does.Match(@"sdp: rank [023] of 4 aborted the job: step \d+ did not finish within 15 s \(--comm-timeout\)"), result.ToString());
        Assert.That(job.LiveRanksAfter(TimeSpan.FromSeconds(10)), Is.Empty, "no rank outlives the job, the stopped one included");
    }

    [Test]
    public void A_rank_that_fails_aborts_the_job_naming_itself_and_its_error()
    {
        string[] run = [.. Small, "--mode", "sdp", "--subnet", "neuron", "--masking", "forward", "--coverage", "0.5"];
        var saved = InProcess([.. run, "--steps", "2", "--workers", "4", "--save", In("state")]);
        Assert.That(saved.ExitCode, Is.EqualTo(0), saved.ToString());
        string broken = Path.Combine(In("state"), SdpCheckpoint.WorkerDirectory(2), TrainingCheckpoint.ModelFileName);
        File.WriteAllBytes(broken, File.ReadAllBytes(broken)[..100]);

        var result = MpiJob.Run(4, Timeout, [run[0], "--launcher", "mpi", .. run[1..], "--steps", "4", "--resume", In("state")]);
        Assert.That(result.ExitCode, Is.EqualTo(2), result.ToString());
        Assert.That(result.Elapsed, Is.LessThan(FailFast), result.ToString());
        Assert.That(result.Err, Does.Contain("sdp: rank 2 of 4 aborted the job:").And.Contain(broken), result.ToString());
    }

    [Test]
    public void Workers_that_disagree_with_the_job_size_are_refused_on_every_rank()
    {
        var result = MpiJob.Run(2, Timeout, [.. Small, "--launcher", "mpi", "--workers", "3", "--steps", "1"]);
        Assert.That(result.ExitCode, Is.EqualTo(2), result.ToString());
        Assert.That(result.Err, Does.Contain("--workers (3) must equal the job's 2 processes"), result.ToString());
    }

    [Test]
    public void Launch_builds_the_mpirun_command_with_only_the_flags_the_machine_needs()
    {
        string[] sdp = ["/opt/sdp"];
        var laptop = LaunchCommand.MpirunArguments(4, null, ["train", "--steps", "5"], cores: 2, root: false, sdp);
        Assert.That(string.Join(' ', laptop), Is.EqualTo("-np 4 --oversubscribe --mca btl_vader_single_copy_mechanism none /opt/sdp train --launcher mpi --steps 5"));
        var asRoot = LaunchCommand.MpirunArguments(2, null, ["train"], cores: 16, root: true, sdp);
        Assert.That(asRoot, Does.Contain("--allow-run-as-root").And.Not.Contain("--oversubscribe"));
        var nodes = LaunchCommand.MpirunArguments(8, "hosts.txt", ["train"], cores: 2, root: false, sdp);
        Assert.That(string.Join(' ', nodes), Does.StartWith("-np 8 --hostfile hosts.txt --mca").And.Not.Contain("--oversubscribe"));
        Assert.That(() => LaunchCommand.MpirunArguments(4, null, ["train", "--workers", "2"], 2, false, sdp), Throws.TypeOf<Sdp.Cli.UsageException>().With.Message.Contains("--workers 2 disagrees with --nproc 4"));
        Assert.That(() => LaunchCommand.MpirunArguments(4, null, ["eval"], 2, false, sdp), Throws.TypeOf<Sdp.Cli.UsageException>().With.Message.Contains("expected `-- train ...`"));
    }

    // ---- helpers ----

    private static MpiJob.Result InProcess(string[] args) => MpiJob.RunProcess(MpiJob.Sdp, args, Timeout);

    private static MpiJob.Result Launch(int nproc, string[] args) => MpiJob.RunProcess(MpiJob.Sdp, ["launch", "--nproc", nproc.ToString(CultureInfo.InvariantCulture), "--", .. args], Timeout);

    private static List<JsonObject> Records(string path) => [.. File.ReadAllLines(path).Select(l => JsonNode.Parse(l)!.AsObject())];

    /// <summary>Every record equal but the timings (step_ms and the throughput), which no two runs share.</summary>
    private static void AssertSameMetrics(string expectedPath, string actualPath)
    {
        var expected = Records(expectedPath);
        var actual = Records(actualPath);
        Assert.That(actual, Has.Count.EqualTo(expected.Count), "metrics records");
        for (int i = 0; i < expected.Count; i++)
        {
            foreach (var record in (JsonObject[])[expected[i], actual[i]])
            {
                record.Remove("step_ms");
                foreach (var key in record.Select(p => p.Key).Where(k => k.EndsWith("_per_s", StringComparison.Ordinal)).ToList()) record.Remove(key);
            }
            Assert.That(actual[i].ToJsonString(), Is.EqualTo(expected[i].ToJsonString()), $"metrics record {i}");
        }
    }

    private static Dictionary<string, byte[]> Tensors(string path)
    {
        using var file = SafeTensorsFile.Read(path);
        var bytes = File.ReadAllBytes(path);
        return file.Names.ToDictionary(n => n, n =>
        {
            var info = file.Info(n);
            return bytes[(int)info.FileOffset..(int)(info.FileOffset + info.ByteLength)];
        });
    }

    /// <summary>The dense model and every worker's model and optimizer tensors of two training-state directories, bit for bit.</summary>
    private static void AssertSameTrainingState(string expected, string actual)
    {
        var files = Directory.GetFiles(expected, "*.safetensors", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(expected, f)).Order().ToList();
        Assert.That(files, Has.Count.GreaterThanOrEqualTo(9), "the dense model, and a model and an optimizer state per worker");
        foreach (string file in files)
        {
            var want = Tensors(Path.Combine(expected, file));
            var got = Tensors(Path.Combine(actual, file));
            Assert.That(got.Keys, Is.EquivalentTo(want.Keys), file);
            foreach (var (name, bytes) in want) AssertSameBytes(bytes, got[name], $"{file}: {name}");
        }
    }

    /// <summary>Byte-for-byte equality, naming the first differing byte (NUnit's element-wise comparison of megabyte arrays is slow).</summary>
    private static void AssertSameBytes(byte[] expected, byte[] actual, string what)
    {
        if (expected.AsSpan().SequenceEqual(actual)) return;
        int at = expected.AsSpan().CommonPrefixLength(actual);
        Assert.Fail($"{what}: {actual.Length} bytes against {expected.Length} expected; first difference at byte {at}");
    }

    private static IEnumerable<string> Lines(string text, string prefix)
        => text.Split('\n').Select(l => l.Trim()).Where(l => l.StartsWith(prefix, StringComparison.Ordinal));

    private static int Count(string text, string line) => text.Split('\n').Count(l => l.Trim() == line);

    private static int Kill(int pid, string signal)
    {
        using var kill = Process.Start(new ProcessStartInfo("kill", $"-{signal} {pid}") { UseShellExecute = false })!;
        kill.WaitForExit();
        return kill.ExitCode;
    }

    /// <summary>A 4-rank job that would run for hours, for the fault tests.</summary>
    private RunningJob LongJob(string[] extra)
        => new(["train", "--launcher", "mpi", .. Small[1..], "--steps", "100000", "--mode", "sdp", "--subnet", "block", "--masking", "forward", "--coverage", "0.5", .. extra]);

    /// <summary>An mpirun job in the background: its ranks found by their OMPI_COMM_WORLD_RANK, all killed on disposal whatever happened.</summary>
    private sealed class RunningJob : IDisposable
    {
        private readonly Process _mpirun;
        private readonly System.Text.StringBuilder _out = new();
        private readonly System.Text.StringBuilder _err = new();
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private Dictionary<int, int> _ranks = [];

        public RunningJob(string[] args)
        {
            var psi = new ProcessStartInfo(MpiJob.FindMpirun()!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (string a in MpiJob.Arguments(4, args)) psi.ArgumentList.Add(a);
            _mpirun = new Process { StartInfo = psi };
            _mpirun.OutputDataReceived += (_, e) => Append(_out, e.Data);
            _mpirun.ErrorDataReceived += (_, e) => Append(_err, e.Data);
            _mpirun.Start();
            _mpirun.BeginOutputReadLine();
            _mpirun.BeginErrorReadLine();
        }

        private static void Append(System.Text.StringBuilder text, string? line)
        {
            if (line is null) return;
            lock (text) text.AppendLine(line);
        }

        private static string Text(System.Text.StringBuilder text)
        {
            lock (text) return text.ToString();
        }

        /// <summary>Waits until rank 0 has printed its first step: every rank is then inside the training loop.</summary>
        public void WaitForTraining()
        {
            while (!Text(_out).Contains("step      1/", StringComparison.Ordinal))
            {
                if (_mpirun.HasExited) Assert.Fail($"the job ended before its first step: exit {_mpirun.ExitCode}\n{Text(_out)}\n{Text(_err)}");
                if (_clock.Elapsed > Timeout) Assert.Fail($"the job did not finish a step within {Timeout.TotalSeconds} s\n{Text(_out)}\n{Text(_err)}");
                Thread.Sleep(100);
            }
            // Found while mpirun is their parent; after a fault they may be orphans, still listed here.
            _ranks = Ranks().ToDictionary(r => r.Rank, r => r.Pid);
            Assert.That(_ranks.Keys, Is.EquivalentTo(new[] { 0, 1, 2, 3 }), "the job's 4 ranks");
        }

        /// <summary>The pid of the rank's sdp process (a child of mpirun whose environment names the rank).</summary>
        public int RankPid(int rank) => _ranks[rank];

        /// <summary>The ranks still alive once <paramref name="grace"/> has passed (mpirun's kills are delivered asynchronously).</summary>
        public List<int> LiveRanksAfter(TimeSpan grace)
        {
            var clock = Stopwatch.StartNew();
            while (LiveRanks().Count > 0 && clock.Elapsed < grace) Thread.Sleep(100);
            return LiveRanks();
        }

        /// <summary>The job's rank processes still alive (zombies count as gone).</summary>
        public List<int> LiveRanks() => [.. _ranks.Values.Where(pid =>
        {
            try
            {
                string stat = File.ReadAllText($"/proc/{pid}/stat");
                return stat[(stat.LastIndexOf(')') + 2)..][0] != 'Z';
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                return false;
            }
        })];

        private IEnumerable<(int Pid, int Rank)> Ranks()
        {
            foreach (string dir in Directory.GetDirectories("/proc"))
            {
                if (!int.TryParse(Path.GetFileName(dir), out int pid)) continue;
                string[] environment;
                try
                {
                    string stat = File.ReadAllText(Path.Combine(dir, "stat"));
                    var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                    if (fields[0] == "Z" || int.Parse(fields[1], CultureInfo.InvariantCulture) != _mpirun.Id) continue;
                    environment = File.ReadAllText(Path.Combine(dir, "environ")).Split('\0');
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    continue;
                }
                string? rank = environment.FirstOrDefault(v => v.StartsWith("OMPI_COMM_WORLD_RANK=", StringComparison.Ordinal));
                if (rank is not null) yield return (pid, int.Parse(rank["OMPI_COMM_WORLD_RANK=".Length..], CultureInfo.InvariantCulture));
            }
        }

        public MpiJob.Result WaitForExit(TimeSpan limit)
        {
            var fault = Stopwatch.StartNew();
            if (!_mpirun.WaitForExit(limit)) Assert.Fail($"the job was still running {limit.TotalSeconds} s after the fault");
            _mpirun.WaitForExit();
            return new MpiJob.Result(_mpirun.ExitCode, Text(_out), Text(_err), fault.Elapsed);
        }

        public void Dispose()
        {
            foreach (int pid in LiveRanks()) Kill(pid, "KILL");
            if (!_mpirun.HasExited) _mpirun.Kill(entireProcessTree: true);
            _mpirun.WaitForExit();
            _mpirun.Dispose();
        }
    }
}
