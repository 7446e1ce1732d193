using System.Globalization;

namespace Sdp.Engine.Subnetworks;

/// <summary>
/// Which workers hold which maskable units (method reference §2.2–2.3, §3): a pure function of the
/// unit description, the worker count W, the coverage C and the seed (acceptance check A2). Every unit
/// is held by exactly k = C·W workers (uniform representation, A1); shared parameters are held by all.
/// <para>
/// Neuron level (per group, §2.3): a seeded permutation of the group's units is cut into W contiguous
/// chunks (chunk j = permuted positions [⌊j·n/W⌋, ⌊(j+1)·n/W⌋)), and worker w holds chunks
/// w, w+1, …, w+k−1 (mod W) — the sliding cyclic window of §2.3. When W divides n this is exactly the
/// reference construction (stride n/W, window C·n); otherwise every unit still has exactly k holders
/// and per-worker unit counts differ by at most one.
/// </para>
/// <para>
/// Block level: greedy memory/compute balancing. A block's cost is its share of the group's parameters
/// plus its share of the group's FLOPs; blocks are taken in decreasing cost (ties in a seeded order) and
/// each is given to k distinct workers picked one by one: the least-loaded worker (ties by a seeded worker
/// order), preferring workers not yet linked (through earlier shared blocks) to those already picked for
/// this block. Every block has exactly k holders, heavy blocks are spread first, and with k ≥ 2 the
/// worker graph ends up connected whenever the blocks allow it (plain least-loaded greedy tends to form
/// disjoint families of identical subnetworks, which §2.3 warns against).
/// </para>
/// </summary>
public sealed partial class SubnetworkPlan
{
    private readonly int[][][] _holders;   // [group][unit] -> sorted worker ids
    private readonly bool[][][] _masks;    // [worker][group][unit]

    private SubnetworkPlan(IReadOnlyList<UnitGroup> groups, int workers, int k, SubnetLevel level, ulong? seed, long sharedParams, int[][][] holders)
    {
        Groups = groups;
        Workers = workers;
        HoldersPerUnit = k;
        Level = level;
        Seed = seed;
        SharedParams = sharedParams;
        _holders = holders;
        _masks = new bool[workers][][];
        for (int w = 0; w < workers; w++)
        {
            _masks[w] = new bool[groups.Count][];
            for (int g = 0; g < groups.Count; g++) _masks[w][g] = new bool[groups[g].UnitCount];
        }
        for (int g = 0; g < groups.Count; g++)
            for (int u = 0; u < holders[g].Length; u++)
                foreach (int w in holders[g][u]) _masks[w][g][u] = true;
        Overlap = ComputeOverlap();
        (IsConnected, AlgebraicConnectivity, NormalizedAlgebraicConnectivity) = Spectral();
        DistinctHolderGroups = CountDistinctHolderSets();
    }

    /// <summary>The unit groups the plan covers, in order.</summary>
    public IReadOnlyList<UnitGroup> Groups { get; }

    /// <summary>W.</summary>
    public int Workers { get; }

    /// <summary>k = C·W: holders of every unit.</summary>
    public int HoldersPerUnit { get; }

    /// <summary>C = k / W.</summary>
    public double Coverage => (double)HoldersPerUnit / Workers;

    public SubnetLevel Level { get; }

    /// <summary>The seed the plan was built from (null for a plan read from JSON).</summary>
    public ulong? Seed { get; }

    /// <summary>Parameters held by every worker (not maskable).</summary>
    public long SharedParams { get; }

    /// <summary>Number of distinct holder sets H_u over all units of all groups (one collective each, A20).</summary>
    public int DistinctHolderGroups { get; }

    /// <summary>O = M·Mᵀ (A16): O[i, j] = units held by both workers i and j; O[i, i] = units held by i.</summary>
    public long[,] Overlap { get; }

    /// <summary>
    /// Whether the worker–unit bipartite graph is connected (A3). Every unit has at least one holder, so
    /// this is the connectivity of the worker graph whose edges are shared units.
    /// </summary>
    public bool IsConnected { get; }

    /// <summary>
    /// Fiedler value (second-smallest eigenvalue) of the Laplacian L = D − A of the worker graph with
    /// A[i, j] = O[i, j] (i ≠ j): positive exactly when the graph is connected (A16). 0 for one worker.
    /// </summary>
    public double AlgebraicConnectivity { get; }

    /// <summary>
    /// Second-smallest eigenvalue of the normalised Laplacian I − D^(−1/2)·A·D^(−1/2) of the same worker graph
    /// (1 − the second-largest eigenvalue of the symmetric averaging operator; in [0, 2], 0 when
    /// disconnected or W = 1), reported for comparison with the paper's ρ once its definition is known (A16).
    /// </summary>
    public double NormalizedAlgebraicConnectivity { get; }

    /// <summary>Sorted holders of unit <paramref name="unit"/> of group <paramref name="group"/>.</summary>
    public IReadOnlyList<int> HoldersOf(int group, int unit) => _holders[group][unit];

    /// <summary>Whether worker <paramref name="worker"/> holds unit <paramref name="unit"/> of group <paramref name="group"/>.</summary>
    public bool Holds(int worker, int group, int unit) => _masks[worker][group][unit];

    /// <summary>Worker <paramref name="worker"/>'s unit mask, one bool array per group (a copy).</summary>
    public bool[][] MaskOf(int worker) => [.. _masks[worker].Select(m => (bool[])m.Clone())];

    /// <summary>Units of group <paramref name="group"/> that worker <paramref name="worker"/> holds.</summary>
    public int UnitsHeld(int worker, int group) => _masks[worker][group].Count(b => b);

    /// <summary>Shared parameters plus the parameters of every unit the worker holds.</summary>
    public long HeldParams(int worker)
    {
        long total = SharedParams;
        for (int g = 0; g < Groups.Count; g++)
            for (int u = 0; u < Groups[g].UnitCount; u++)
                if (_masks[worker][g][u]) total += Groups[g].ParamsPerUnit[u];
        return total;
    }

    /// <summary>Parameter bytes the worker holds (float32 by default).</summary>
    public long HeldBytes(int worker, int bytesPerParam = 4) => checked(HeldParams(worker) * bytesPerParam);

    /// <summary>FLOPs of the units the worker holds (same unit as <see cref="UnitGroup.FlopsPerUnit"/>; shared compute not counted).</summary>
    public long HeldFlops(int worker)
    {
        long total = 0;
        for (int g = 0; g < Groups.Count; g++)
            for (int u = 0; u < Groups[g].UnitCount; u++)
                if (_masks[worker][g][u]) total += Groups[g].FlopsPerUnit[u];
        return total;
    }

    /// <summary>Shared plus all maskable parameters (what a DDP worker holds).</summary>
    public long TotalParams => SharedParams + Groups.Sum(g => g.TotalParams);

    // ---- construction -------------------------------------------------------------------------------------

    /// <summary>Builds the plan for the units of a model (see <see cref="MaskableUnits"/>).</summary>
    public static SubnetworkPlan Create(MaskableUnits units, int workers, double coverage, ulong seed)
    {
        ArgumentNullException.ThrowIfNull(units);
        return Create(units.Groups, workers, coverage, seed, units.Level, units.SharedParams);
    }

    /// <summary>
    /// Builds the plan (pure: same arguments, same plan). Throws <see cref="ArgumentException"/> when
    /// C·W is not a whole number in [1, W] (naming the nearest valid coverages) or a group is invalid.
    /// </summary>
    public static SubnetworkPlan Create(IReadOnlyList<UnitGroup> groups, int workers, double coverage, ulong seed, SubnetLevel level, long sharedParams = 0)
    {
        ArgumentNullException.ThrowIfNull(groups);
        int k = HoldersFor(workers, coverage);
        ValidateGroups(groups, level);
        if (sharedParams < 0) throw new ArgumentException($"SubnetworkPlan: sharedParams must not be negative, got {sharedParams}");
        var holders = level == SubnetLevel.Neuron ? NeuronHolders(groups, workers, k, seed) : BlockHolders(groups, workers, k, seed);
        return new SubnetworkPlan(groups, workers, k, level, seed, sharedParams, holders);
    }

    /// <summary>k = C·W, or an error naming the nearest valid coverages when it is not a whole number in [1, W].</summary>
    public static int HoldersFor(int workers, double coverage)
    {
        if (workers < 1) throw new ArgumentException($"SubnetworkPlan: workers must be at least 1, got {workers}");
        double kk = coverage * workers;
        double rounded = Math.Round(kk);
        if (double.IsFinite(kk) && Math.Abs(kk - rounded) <= 1e-9 * Math.Max(1, workers) && rounded >= 1 && rounded <= workers) return (int)rounded;
        var nearest = NearestValidCoverages(workers, coverage);
        string valid = string.Join(" or ", nearest.Select(Fmt));
        throw new ArgumentException(
            $"coverage {Fmt(coverage)} with {workers} workers gives C·W = {Fmt(kk)} holders per unit, which must be a whole number in [1, {workers}]; nearest valid coverage: {valid}");
    }

    /// <summary>The valid coverages k/W (k in 1..W) closest to <paramref name="coverage"/> (one, or the two around it).</summary>
    public static double[] NearestValidCoverages(int workers, double coverage)
    {
        if (!double.IsFinite(coverage) || coverage * workers <= 1) return [1.0 / workers];
        if (coverage * workers >= workers) return [1.0];
        int lo = (int)Math.Floor(coverage * workers), hi = (int)Math.Ceiling(coverage * workers);
        return lo == hi ? [(double)lo / workers] : [(double)lo / workers, (double)hi / workers];
    }

    private static void ValidateGroups(IReadOnlyList<UnitGroup> groups, SubnetLevel level)
    {
        if (groups.Count == 0) throw new ArgumentException("SubnetworkPlan: no unit groups to assign");
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var g in groups)
        {
            ArgumentNullException.ThrowIfNull(g);
            g.Validate();
            if (!names.Add(g.Name)) throw new ArgumentException($"SubnetworkPlan: group name \"{g.Name}\" appears twice");
            if (level == SubnetLevel.Block && g.UnitNames is null)
                throw new ArgumentException($"SubnetworkPlan: block-level group \"{g.Name}\" needs UnitNames (the block module names)");
            if (level == SubnetLevel.Neuron && g.UnitNames is not null)
                throw new ArgumentException($"SubnetworkPlan: neuron-level group \"{g.Name}\" has UnitNames; neuron units are indices");
        }
    }

    /// <summary>A per-group generator: the seed mixed with the group's position and name (FNV-1a), so groups get independent permutations.</summary>
    private static Rng GroupRng(ulong seed, int group, string name)
    {
        ulong h = 0xCBF29CE484222325UL;
        foreach (char c in name) { h ^= c; h *= 0x100000001B3UL; }
        return new Rng(seed ^ (h + 0x9E3779B97F4A7C15UL * (ulong)(group + 1)));
    }

    private static int[][][] NeuronHolders(IReadOnlyList<UnitGroup> groups, int workers, int k, ulong seed)
    {
        var result = new int[groups.Count][][];
        for (int g = 0; g < groups.Count; g++)
        {
            int n = groups[g].UnitCount;
            int[] perm = Enumerable.Range(0, n).ToArray();
            GroupRng(seed, g, groups[g].Name).Shuffle(perm.AsSpan());
            var holders = new int[n][];
            for (int chunk = 0; chunk < workers; chunk++)
            {
                int start = (int)((long)chunk * n / workers), end = (int)((long)(chunk + 1) * n / workers);
                // Worker w holds chunks w..w+k-1 (mod W), so chunk j is held by workers j-k+1..j (mod W).
                int[] set = new int[k];
                for (int t = 0; t < k; t++) set[t] = ((chunk - t) % workers + workers) % workers;
                Array.Sort(set);
                for (int p = start; p < end; p++) holders[perm[p]] = (int[])set.Clone();
            }
            result[g] = holders;
        }
        return result;
    }

    private static int[][][] BlockHolders(IReadOnlyList<UnitGroup> groups, int workers, int k, ulong seed)
    {
        var rng = new Rng(seed ^ 0xB10C_B10C_B10C_B10CUL);
        int[] workerRank = Enumerable.Range(0, workers).ToArray();
        rng.Shuffle(workerRank.AsSpan());  // workerRank[i] = tie-break priority of worker i
        double[] load = new double[workers];
        int[] parent = Enumerable.Range(0, workers).ToArray(); // union-find over workers linked by shared blocks
        var result = new int[groups.Count][][];
        for (int g = 0; g < groups.Count; g++)
        {
            var group = groups[g];
            int n = group.UnitCount;
            double totalParams = group.ParamsPerUnit.Sum(), totalFlops = group.FlopsPerUnit.Sum();
            double Cost(int u) => (totalParams > 0 ? group.ParamsPerUnit[u] / totalParams : 0) + (totalFlops > 0 ? group.FlopsPerUnit[u] / totalFlops : 0)
                                  + (totalParams <= 0 && totalFlops <= 0 ? 1.0 / n : 0);
            int[] tie = Enumerable.Range(0, n).ToArray();
            GroupRng(seed, g, group.Name).Shuffle(tie.AsSpan());
            int[] tieRank = new int[n];
            for (int i = 0; i < n; i++) tieRank[tie[i]] = i;
            int[] order = Enumerable.Range(0, n).OrderByDescending(Cost).ThenBy(u => tieRank[u]).ToArray();
            var holders = new int[n][];
            foreach (int u in order)
            {
                var chosen = new int[k];
                for (int t = 0; t < k; t++)
                {
                    // Least-loaded worker, preferring one whose component (of the worker graph built so
                    // far) is not yet among the chosen, so that holder sets link the workers together
                    // instead of forming disjoint families (§2.3).
                    int best = -1;
                    bool bestNew = false;
                    for (int w = 0; w < workers; w++)
                    {
                        if (chosen.AsSpan(0, t).Contains(w)) continue;
                        bool isNew = true;
                        for (int i = 0; i < t; i++) isNew &= Find(parent, chosen[i]) != Find(parent, w);
                        if (best < 0 || (isNew && !bestNew)
                            || (isNew == bestNew && (load[w] < load[best] || (load[w] == load[best] && workerRank[w] < workerRank[best]))))
                        {
                            best = w;
                            bestNew = isNew;
                        }
                    }
                    chosen[t] = best;
                }
                double c = Cost(u);
                foreach (int w in chosen)
                {
                    load[w] += c;
                    parent[Find(parent, w)] = Find(parent, chosen[0]);
                }
                Array.Sort(chosen);
                holders[u] = chosen;
            }
            result[g] = holders;
        }
        return result;
    }

    private static int Find(int[] parent, int x)
    {
        while (parent[x] != x) x = parent[x] = parent[parent[x]];
        return x;
    }

    // ---- graph quantities ---------------------------------------------------------------------------------

    private long[,] ComputeOverlap()
    {
        var o = new long[Workers, Workers];
        foreach (var group in _holders)
            foreach (int[] set in group)
                foreach (int i in set)
                    foreach (int j in set) o[i, j]++;
        return o;
    }

    private (bool Connected, double Fiedler, double NormalizedFiedler) Spectral()
    {
        int w = Workers;
        // Connectivity by flood fill over shared units.
        var seen = new bool[w];
        var stack = new Stack<int>();
        seen[0] = true;
        stack.Push(0);
        int reached = 1;
        while (stack.Count > 0)
        {
            int i = stack.Pop();
            for (int j = 0; j < w; j++)
            {
                if (!seen[j] && Overlap[i, j] > 0) { seen[j] = true; reached++; stack.Push(j); }
            }
        }
        bool connected = reached == w;
        if (w == 1) return (true, 0.0, 0.0);
        var lap = new double[w, w];
        var degree = new double[w];
        for (int i = 0; i < w; i++)
        {
            for (int j = 0; j < w; j++)
            {
                if (i == j) continue;
                lap[i, j] = -Overlap[i, j];
                degree[i] += Overlap[i, j];
            }
            lap[i, i] = degree[i];
        }
        var norm = new double[w, w];
        for (int i = 0; i < w; i++)
        {
            for (int j = 0; j < w; j++)
            {
                // An isolated worker (degree 0) contributes a 1 on the diagonal and nothing else.
                if (i == j) norm[i, j] = 1;
                else if (degree[i] > 0 && degree[j] > 0) norm[i, j] = lap[i, j] / Math.Sqrt(degree[i] * degree[j]);
            }
        }
        // Disconnected graphs have a second zero eigenvalue; report it as exactly 0 rather than rounding noise.
        if (!connected) return (false, 0.0, 0.0);
        return (true, SymmetricEigen.Eigenvalues(lap)[1], SymmetricEigen.Eigenvalues(norm)[1]);
    }

    private int CountDistinctHolderSets()
    {
        var sets = new HashSet<string>(StringComparer.Ordinal);
        foreach (var group in _holders)
            foreach (int[] set in group) sets.Add(string.Join(',', set));
        return sets.Count;
    }

    internal static string Fmt(double v) => v.ToString("0.######", CultureInfo.InvariantCulture);
}
