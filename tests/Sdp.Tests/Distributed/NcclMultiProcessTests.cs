using System.Globalization;
using Sdp.Kernels.Cuda;
using Sdp.Tests.Support;

namespace Sdp.Tests.Distributed;

/// <summary>
/// <see cref="Sdp.Engine.Distributed.NcclCommunicator.CreateForProcess"/> across real processes: `sdp comm-check
/// --transport nccl` under <c>mpirun -np W</c>, every process on its own emulated CUDA device (SDP_CUDA=emu:
/// several ranks cannot share a real GPU in one NCCL communicator), whose NCCL carries the collectives over MPI
/// (the emulator's cross-process mode). That runs the MPI bootstrap of the unique id, ncclCommInitRank, one
/// ncclCommSplit per group, the collectives on the backend's stream, and the fault paths, in CI without a GPU.
/// The emulated NCCL adds in ascending rank order, so every result must be the in-process communicator's bits,
/// exactly as for <see cref="MpiCommunicatorTests"/>. Every mpirun is killed and the test failed after
/// <see cref="Timeout"/>.
/// </summary>
[Category("Mpi")]
public class NcclMultiProcessTests : MpiJobFixture
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    /// <summary>How long a failing job may take to end on every rank.</summary>
    private static readonly TimeSpan FailFast = TimeSpan.FromSeconds(20);

    [SetUp]
    public void RequireEmulator()
    {
        if (Sdp.Kernels.Cuda.Cuda.TryLoad(CudaImplementation.Emulated, out string why) is null) Assert.Ignore($"no emulated CUDA device: {why}");
    }

    /// <param name="grouped">Each group's eight all-reduces in one ncclGroupStart/ncclGroupEnd
    /// (NcclCommunicator.AllReduceSum of a list): the emulator runs them at ncclGroupEnd in call order.</param>
    [TestCase(3, false)]
    [TestCase(4, false)]
    [TestCase(3, true)]
    public void AllReduceSum_and_Broadcast_on_every_group_and_dtype_are_bit_identical_on_every_rank_and_equal_the_in_process_results(int w, bool grouped)
    {
        string[] args = ["--seed", MpiCommunicatorTests.Seed.ToString(CultureInfo.InvariantCulture)];
        var run = CommCheck(w, grouped ? [.. args, "--grouped"] : args);
        Assert.That(run.ExitCode, Is.EqualTo(0), run.ToString());
        MpiCommunicatorTests.AssertEveryRankHasTheInProcessResults(w, Dir, rank => $"rank {rank} size {w} nccl emulated", run);
    }

    [Test]
    public void Mismatched_CreateGroup_fails_on_every_rank_naming_both_lists()
    {
        var run = CommCheck(3, "--fail", "mismatch");
        Assert.That(run.ExitCode, Is.Not.EqualTo(0), run.ToString());
        Assert.That(run.Elapsed, Is.LessThan(FailFast), run.ToString());
        for (int rank = 0; rank < 3; rank++)
            Assert.That(run.Err, Does.Contain($"sdp: rank {rank}: CreateGroup call 1: rank 1 asked for group [0, 2] but rank 0 asked for [0, 1]"), run.ToString());
    }

    [Test]
    public void Ranks_that_all_reduce_different_counts_all_fail_naming_the_difference_instead_of_hanging()
    {
        var run = CommCheck(3, "--fail", "mismatch-count", "--abort-rank", "1");
        Assert.That(run.ExitCode, Is.Not.EqualTo(0), run.ToString());
        Assert.That(run.Elapsed, Is.LessThan(FailFast), run.ToString());
        // Every rank gets the same verdict from the gathered headers; whichever aborts first ends the job.
        Assert.That(run.Err, Does.Match(@"sdp: rank \d of 3 aborted the job: ncclAllReduce\((1001|2) x Float32, rank \d of 3\) failed: InvalidUsage"), run.ToString());
        Assert.That(run.Err, Does.Contain("ranks disagree on the count: rank 0 posted ncclAllReduce(count 1001, ncclFloat32, ncclSum, root 0), rank 1 posted ncclAllReduce(count 2, ncclFloat32, ncclSum, root 0)"), run.ToString());
    }

    /// <param name="fail">abort: the others wait in the barrier (MPI); abort-collective: they wait inside a world
    /// ncclAllReduce, polling the emulator's MPI transport.</param>
    [TestCase("abort", 4)]
    [TestCase("abort-collective", 3)]
    public void Abort_from_one_rank_ends_every_rank_quickly_naming_it(string fail, int w)
    {
        var run = CommCheck(w, "--fail", fail, "--abort-rank", "2");
        Assert.That(run.ExitCode, Is.Not.EqualTo(0), run.ToString());
        Assert.That(run.Elapsed, Is.LessThan(FailFast), run.ToString());
        Assert.That(run.Err, Does.Contain($"sdp: rank 2 of {w} aborted the job: comm-check: deliberate abort by rank 2"), run.ToString());
        Assert.That(Directory.GetFiles(Dir), Is.Empty, "no rank got past the barrier");
    }

    [Test]
    public void A_hung_rank_is_caught_by_the_emulated_NCCL_timeout_and_the_job_ends()
    {
        var run = CommCheck(3, "--fail", "hang", "--abort-rank", "1", "--timeout", "2");
        Assert.That(run.ExitCode, Is.Not.EqualTo(0), run.ToString());
        Assert.That(run.Elapsed, Is.LessThan(FailFast), run.ToString());
        // A waiting rank times out, aborts its communicators and the job; the sleeping rank 1 is ended with it.
        Assert.That(run.Err, Does.Match(@"sdp: rank [02] of 3 aborted the job: ncclAllReduce\(1001 x Float32, rank [02] of 3\) failed: RemoteError"), run.ToString());
        Assert.That(run.Err, Does.Contain("cross-process): timed out after 2000 ms"), run.ToString());
        Assert.That(run.Err, Does.Not.Contain("sdp: rank 1 of 3"), run.ToString());
    }

    /// <summary>
    /// mpirun -np W sdp comm-check --transport nccl --out DIR args…, with MpiJob.Run's flags plus <c>-x</c> of
    /// SDP_CUDA=emu (the ranks open emulated devices even on a GPU machine) and CUDAEMU_NCCL_TRANSPORT=mpi (the
    /// cross-process mode is what is under test; it is also the emulator's default under mpirun).
    /// </summary>
    private MpiJob.Result CommCheck(int np, params string[] args)
    {
        string[] mpirun = MpiJob.Arguments(np, ["comm-check", "--transport", "nccl", "--out", Dir, .. args], "SDP_CUDA=emu", "CUDAEMU_NCCL_TRANSPORT=mpi");
        return MpiJob.RunProcess(MpiJob.FindMpirun()!, mpirun, Timeout);
    }
}
