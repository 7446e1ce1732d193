using Sdp.Kernels.Mpi;

namespace Sdp.Engine.Distributed;

/// <summary>
/// The check a multi-process communicator runs before each CreateGroup: every rank's (call number, member list)
/// is all-gathered over MPI, so when ranks disagree every rank throws the same
/// <see cref="CollectiveMismatchException"/>, naming the first disagreeing rank's list and rank 0's, instead of
/// splitting into mismatched communicators (or waiting in a split the others never join). The messages are
/// <see cref="MpiCommunicator"/>'s, so both transports report a mismatch alike.
/// </summary>
public static unsafe class GroupAgreement
{
    /// <summary>Collective over <paramref name="world"/>: returns when every rank passed <paramref name="call"/> and the same <paramref name="sorted"/> list.</summary>
    public static void Check(MpiComm world, int call, int[] sorted)
    {
        ArgumentNullException.ThrowIfNull(world);
        ArgumentNullException.ThrowIfNull(sorted);
        int n = world.Size;
        var heads = new int[2 * n];
        int* mine = stackalloc int[2] { call, sorted.Length };
        fixed (int* h = heads) world.Allgather(mine, h, 2, MpiDataType.Int32);
        var counts = new int[n];
        var displs = new int[n];
        int total = 0;
        for (int r = 0; r < n; r++)
        {
            counts[r] = heads[2 * r + 1];
            displs[r] = total;
            total += counts[r];
        }
        var all = new int[Math.Max(1, total)];
        fixed (int* s = sorted)
        fixed (int* a = all)
            world.Allgatherv(s, sorted.Length, a, counts, displs, MpiDataType.Int32);
        var first = all.AsSpan(0, counts[0]);
        for (int r = 1; r < n; r++)
        {
            if (heads[2 * r] != heads[0])
                throw new CollectiveMismatchException($"CreateGroup: rank {r} is at its call {heads[2 * r]} but rank 0 at its call {heads[0]}; every rank must call CreateGroup for every group, member or not");
            var theirs = all.AsSpan(displs[r], counts[r]);
            if (!theirs.SequenceEqual(first))
                throw new CollectiveMismatchException($"CreateGroup call {call}: rank {r} asked for group {InProcessCommunicator.Format(theirs.ToArray())} but rank 0 asked for {InProcessCommunicator.Format(first.ToArray())}; every rank must create the same groups in the same order");
        }
    }
}
