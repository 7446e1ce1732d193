namespace Sdp.Engine.Distributed;

/// <summary>
/// One worker's communicator groups for masked averaging (method reference §5): the world, and one group
/// per distinct holder set of 2 to W−1 workers that contains the worker; a set of one worker needs no
/// communication. Creating a group is collective over the world (<see cref="ICommunicator.CreateGroup"/>),
/// so every worker passes the same holder sets: all of the plan's, not only its own (under forward masking
/// a worker's tensors name only the holders of its own units). They are created once, in canonical order
/// (lexicographic), and shared by all of the worker's <see cref="HolderGroupedSync"/>s, so each group
/// exists once (an NCCL communicator costs memory and set-up time).
/// </summary>
public sealed class HolderGroups : IDisposable
{
    private readonly Dictionary<string, ICommGroup> _groups = new(StringComparer.Ordinal);
    private readonly string _everyone;

    public HolderGroups(ICommunicator comm, IEnumerable<IReadOnlyList<int>> holderSets)
    {
        ArgumentNullException.ThrowIfNull(comm);
        ArgumentNullException.ThrowIfNull(holderSets);
        Communicator = comm;
        _everyone = Key(Enumerable.Range(0, comm.WorldSize));
        var distinct = new Dictionary<string, int[]>(StringComparer.Ordinal);
        foreach (var set in holderSets)
        {
            var sorted = (set ?? throw new ArgumentException("HolderGroups: a holder set is null")).Order().ToArray();
            string key = Key(sorted);
            if (sorted.Length > 1 && key != _everyone) distinct.TryAdd(key, sorted);
        }
        try
        {
            foreach (var (key, ranks) in distinct.OrderBy(s => s.Value, HolderOrder.Instance))
            {
                if (comm.CreateGroup(ranks) is { } group) _groups[key] = group;
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public ICommunicator Communicator { get; }

    /// <summary>The group of a holder set that contains this worker: <see cref="ICommunicator.World"/> for all W workers.</summary>
    public ICommGroup Of(IReadOnlyList<int> holders)
    {
        ArgumentNullException.ThrowIfNull(holders);
        string key = Key(holders.Order());
        if (key == _everyone) return Communicator.World;
        return _groups.TryGetValue(key, out var group) ? group
            : throw new ArgumentException($"HolderGroups: worker {Communicator.Rank} has no group for holder set {InProcessCommunicator.Format(holders)}; pass every holder set of the plan (with two or more workers, this one among them) to HolderGroups");
    }

    private static string Key(IEnumerable<int> sorted) => string.Join(",", sorted);

    /// <summary>Frees the groups made here (the world belongs to the communicator).</summary>
    public void Dispose()
    {
        foreach (var group in _groups.Values) group.Dispose();
        _groups.Clear();
    }
}
