using System.Globalization;
using Sdp.Cli.Commands;
using Sdp.Engine;
using Sdp.Engine.Distributed;
using Sdp.Kernels.Mpi;
using Sdp.Tests.Support;
using static Sdp.Tests.Distributed.CommTestSupport;

namespace Sdp.Tests.Distributed;

/// <summary>
/// <see cref="MpiCommunicator"/> across real processes: each test runs the hidden `sdp comm-check` under
/// <c>mpirun -np W</c> (Open MPI; CI installs it, see .ci/run and build.ps1) and checks what every rank wrote
/// against the in-process communicator on the same inputs. Every mpirun is killed and the test failed after
/// <see cref="Timeout"/>, so nothing can hang CI.
/// </summary>
[Category("Mpi")]
public class MpiCommunicatorTests : MpiJobFixture
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    /// <summary>How long a failing job may take to end on every rank.</summary>
    private static readonly TimeSpan FailFast = TimeSpan.FromSeconds(30);

    internal const int Seed = 7;


    [Test]
    public void The_bindings_load_Open_MPI_and_resolve_its_handles()
    {
        var api = Mpi.TryLoad(out string why);
        Assert.That(api, Is.Not.Null, why);
        Assert.That(new[] { api!.CommWorld, api.CommNull, api.ErrorsReturn, api.Float, api.Double, api.Int, api.Int64, api.Byte, api.OpSum }, Has.All.Not.EqualTo((nint)0));
        Assert.That(Mpi.ErrorString(1), Is.EqualTo("MPI error 1"), "MPI_Error_string is refused before MPI_Init");
    }

    /// <param name="segment">MpiCommunicator's segment: the default (one segment per buffer), or 100 elements, so a
    /// 1001-element all-reduce takes 11 rounds, the last of 1 element (fewer than the ranks: empty chunks).</param>
    [TestCase(3, 0)]
    [TestCase(4, 0)]
    [TestCase(3, 100)]
    public void AllReduceSum_and_Broadcast_are_bit_identical_on_every_rank_and_equal_the_in_process_results(int w, int segment)
    {
        string[] args = ["comm-check", "--out", Dir, "--seed", Seed.ToString(CultureInfo.InvariantCulture)];
        if (segment > 0) args = [.. args, "--segment", segment.ToString(CultureInfo.InvariantCulture)];
        var run = Mpirun(w, args);
        Assert.That(run.ExitCode, Is.EqualTo(0), run.ToString());

        AssertEveryRankHasTheInProcessResults(w, Dir, rank => $"rank {rank} size {w} thread Multiple", run);
    }

    /// <summary>
    /// What `sdp comm-check` wrote on every rank of a <paramref name="w"/>-rank job in <paramref name="dir"/>: the
    /// first line <paramref name="header"/>(rank), then every result line of the groups the rank is in, in the
    /// order the check runs them, with the in-process hash (<see cref="ExpectedHashes"/>), then its stats under
    /// the ring byte model. Shared with the NCCL multi-process tests, which must give the same bits.
    /// </summary>
    internal static void AssertEveryRankHasTheInProcessResults(int w, string dir, Func<int, string> header, MpiJob.Result run)
    {
        var groups = CommCheckCommand.Groups(w);
        var expected = ExpectedHashes(groups);
        for (int rank = 0; rank < w; rank++)
        {
            string file = Path.Combine(dir, $"rank-{rank}.txt");
            Assert.That(File.Exists(file), Is.True, $"rank {rank} wrote no results\n{run}");
            var lines = File.ReadAllLines(file);
            Assert.That(lines[0], Is.EqualTo(header(rank)));

            // Every result line of a group this rank is in, in the order the check runs them, with the in-process hash.
            var wanted = new List<string>();
            double bytes = 0;
            int allReduces = 0, broadcasts = 0, memberships = 0;
            for (int g = 0; g < groups.Count; g++)
            {
                int[] members = groups[g];
                if (!members.Contains(rank)) continue;
                memberships++;
                string m = string.Join(",", members);
                foreach (var dtype in CommCheckCommand.DTypes)
                {
                    foreach (int numel in CommCheckCommand.AllReduceSizes)
                    {
                        wanted.Add($"allreduce {g} {m} {dtype.Name()} {numel} {expected[(g, dtype, numel)]}");
                        bytes += CommStats.RingAllReduceBytes((long)numel * dtype.ElementSize(), members.Length);
                        allReduces++;
                    }
                }
                foreach (int root in members)
                {
                    using var input = CommCheckCommand.Input(Seed, root, g, DType.Float32, CommCheckCommand.BroadcastSize);
                    wanted.Add($"broadcast {g} {m} {root} {CommCheckCommand.Hash(input)}");
                    if (root == rank) bytes += input.ByteLength;
                    broadcasts++;
                }
            }
            Assert.That(lines.Skip(1).Take(lines.Length - 2), Is.EqualTo(wanted).AsCollection, $"rank {rank}'s results");

            var stats = lines[^1].Split(' ');
            Assert.That(stats[0], Is.EqualTo("stats"));
            Assert.That(double.Parse(stats[1], CultureInfo.InvariantCulture), Is.EqualTo(bytes).Within(1e-9).Percent, $"rank {rank}'s bytes sent (ring model)");
            Assert.That(stats.Skip(2).Select(int.Parse), Is.EqualTo(new[] { allReduces, broadcasts, 1, memberships }).AsCollection,
                $"rank {rank}'s all-reduces, broadcasts, barriers, groups");
        }
    }

    [Test]
    public void The_inputs_make_the_order_of_the_additions_visible_in_the_bits()
    {
        // Otherwise the test above could not tell the ascending-rank-order sum from another order.
        var inputs = Enumerable.Range(0, 3).Select(r => CommCheckCommand.Input(Seed, r, 0, DType.Float32, 1001).ToArray<float>()).ToArray();
        var ascending = new float[1001];
        var descending = new float[1001];
        for (int i = 0; i < 1001; i++)
        {
            ascending[i] = (inputs[0][i] + inputs[1][i]) + inputs[2][i];
            descending[i] = (inputs[2][i] + inputs[1][i]) + inputs[0][i];
        }
        Assert.That(ascending.Zip(descending).Count(p => BitConverter.SingleToInt32Bits(p.First) != BitConverter.SingleToInt32Bits(p.Second)), Is.GreaterThan(10));
    }

    [Test]
    public void Mismatched_CreateGroup_fails_on_every_rank_naming_both_lists()
    {
        var run = Mpirun(3, "comm-check", "--out", Dir, "--fail", "mismatch");
        Assert.That(run.ExitCode, Is.Not.EqualTo(0), run.ToString());
        Assert.That(run.Elapsed, Is.LessThan(FailFast), run.ToString());
        for (int rank = 0; rank < 3; rank++)
            Assert.That(run.Err, Does.Contain($"sdp: rank {rank}: CreateGroup call 1: rank 1 asked for group [0, 2] but rank 0 asked for [0, 1]"), run.ToString());
    }

    [Test]
    public void Abort_from_one_rank_ends_every_rank_naming_it()
    {
        var run = Mpirun(4, "comm-check", "--out", Dir, "--fail", "abort", "--abort-rank", "2");
        Assert.That(run.ExitCode, Is.Not.EqualTo(0), run.ToString());
        Assert.That(run.Elapsed, Is.LessThan(FailFast), run.ToString());
        Assert.That(run.Err, Does.Contain("sdp: rank 2 of 4 aborted the job: comm-check: deliberate abort by rank 2"), run.ToString());
        Assert.That(Directory.GetFiles(Dir), Is.Empty, "no rank got past the barrier");
    }

    /// <summary>
    /// SHA-256 of the sum every member of each group should get, by (group, dtype, size): floats through
    /// <see cref="InProcessCommunicator"/> on the members' inputs (the ascending-rank-order sum), integers (which
    /// it does not all-reduce) as the wrapping sum in ascending rank order.
    /// </summary>
    internal static Dictionary<(int, DType, int), string> ExpectedHashes(IReadOnlyList<int[]> groups)
    {
        var hashes = new Dictionary<(int, DType, int), string>();
        for (int g = 0; g < groups.Count; g++)
        {
            int[] members = groups[g];
            foreach (var dtype in CommCheckCommand.DTypes)
            {
                foreach (int numel in CommCheckCommand.AllReduceSizes)
                {
                    var inputs = members.Select(r => CommCheckCommand.Input(Seed, r, g, dtype, numel)).ToArray();
                    if (dtype.IsFloatingPoint())
                    {
                        RunAll(InProcessCommunicator.Create(members.Length), (i, c) => c.World.AllReduceSum(inputs[i]));
                    }
                    else
                    {
                        for (int i = 1; i < inputs.Length; i++) AddWrapping(inputs[0], inputs[i]);
                    }
                    hashes[(g, dtype, numel)] = CommCheckCommand.Hash(inputs[0]);
                    foreach (var t in inputs) t.Dispose();
                }
            }
        }
        return hashes;
    }

    private static void AddWrapping(Tensor acc, Tensor x)
    {
        if (acc.DType == DType.Int32)
        {
            var a = acc.ToArray<int>();
            var b = x.ToArray<int>();
            for (int i = 0; i < a.Length; i++) a[i] = unchecked(a[i] + b[i]);
            acc.Backend.Upload<int>(a, acc);
        }
        else
        {
            var a = acc.ToArray<long>();
            var b = x.ToArray<long>();
            for (int i = 0; i < a.Length; i++) a[i] = unchecked(a[i] + b[i]);
            acc.Backend.Upload<long>(a, acc);
        }
    }

    private static MpiJob.Result Mpirun(int np, params string[] args) => MpiJob.Run(np, Timeout, args);
}
