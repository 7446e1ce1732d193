using System.Text;
using System.Text.Json;

namespace Sdp.Engine.Subnetworks;

public sealed partial class SubnetworkPlan
{
    /// <summary>
    /// <c>{"workers": W, "coverage": C, "subnet": "neuron|block", "groups": [{"name": ..., "units": [...],
    /// "holders": [[w, ...], ...]}]}</c>: neuron units are integer indices, block units module names;
    /// holders[i] are the sorted workers holding units[i]. Unit costs and the seed are not written.
    /// </summary>
    public string ToJson(bool indented = false)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = indented }))
        {
            w.WriteStartObject();
            w.WriteNumber("workers", Workers);
            w.WriteNumber("coverage", Coverage);
            w.WriteString("subnet", LevelName(Level));
            w.WriteStartArray("groups");
            for (int g = 0; g < Groups.Count; g++)
            {
                var group = Groups[g];
                w.WriteStartObject();
                w.WriteString("name", group.Name);
                w.WriteStartArray("units");
                for (int u = 0; u < group.UnitCount; u++)
                {
                    if (group.UnitNames is { } names) w.WriteStringValue(names[u]);
                    else w.WriteNumberValue(u);
                }
                w.WriteEndArray();
                w.WriteStartArray("holders");
                foreach (int[] set in _holders[g])
                {
                    w.WriteStartArray();
                    foreach (int h in set) w.WriteNumberValue(h);
                    w.WriteEndArray();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray());
    }

    /// <summary>"neuron" or "block".</summary>
    public static string LevelName(SubnetLevel level) => level == SubnetLevel.Neuron ? "neuron" : "block";

    /// <summary>Parses "neuron" or "block".</summary>
    public static SubnetLevel ParseLevel(string text) => text switch
    {
        "neuron" => SubnetLevel.Neuron,
        "block" => SubnetLevel.Block,
        _ => throw new ArgumentException($"subnet level must be \"neuron\" or \"block\", got \"{text}\""),
    };

    /// <summary>
    /// Reads <see cref="ToJson"/>'s format and checks it is a valid plan: k = C·W a whole number in [1, W],
    /// neuron units 0..n−1 in order, block units distinct names, every unit with exactly k distinct sorted
    /// holders in [0, W), and every worker holding at least one unit (a worker the file never names is not
    /// taken on trust, so W is bounded by the file's contents). When <paramref name="units"/> is given, the groups must match it by name and unit
    /// (costs and shared parameters are taken from it); otherwise unit costs are zero. Errors
    /// (<see cref="InvalidDataException"/>) name the field.
    /// </summary>
    public static SubnetworkPlan FromJson(string json, MaskableUnits? units = null)
    {
        ArgumentNullException.ThrowIfNull(json);
        return FromJson(Encoding.UTF8.GetBytes(json), units, source: null);
    }

    /// <summary>Reads a plan file written from <see cref="ToJson"/> (`sdp plan --json`) as <see cref="FromJson(string, MaskableUnits?)"/> does; errors name the file.</summary>
    public static SubnetworkPlan Load(string path, MaskableUnits? units = null)
        => FromJson(InputFile.ReadUtf8(path, "subnetwork plan"), units, path);

    private static SubnetworkPlan FromJson(ReadOnlyMemory<byte> json, MaskableUnits? units, string? source)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, InputFile.StrictJson());
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"subnetwork plan{(source is null ? "" : $" '{source}'")}: not valid JSON: {e.Message}", e);
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw Bad($"expected a JSON object, got {root.ValueKind}");
            foreach (var p in root.EnumerateObject())
            {
                if (p.Name is not ("workers" or "coverage" or "subnet" or "groups")) throw Bad($"unknown key \"{p.Name}\" (expected workers, coverage, subnet, groups)");
            }
            int workers = Prop(root, "workers", JsonValueKind.Number, "") is var we && we.TryGetInt32(out int wv) && wv >= 1 ? wv
                : throw Bad($"\"workers\" must be a positive integer, got {root.GetProperty("workers").GetRawText()}");
            var ce = Prop(root, "coverage", JsonValueKind.Number, "");
            int k;
            try
            {
                k = HoldersFor(workers, ce.GetDouble());
            }
            catch (ArgumentException e)
            {
                throw Bad($"\"coverage\": {e.Message}");
            }
            string subnet = Prop(root, "subnet", JsonValueKind.String, "").GetString()!;
            SubnetLevel level = subnet switch
            {
                "neuron" => SubnetLevel.Neuron,
                "block" => SubnetLevel.Block,
                _ => throw Bad($"\"subnet\" must be \"neuron\" or \"block\", got \"{subnet}\""),
            };
            if (units is not null && units.Level != level) throw Bad($"\"subnet\" is \"{subnet}\" but the model units are {LevelName(units.Level)}-level");
            var groupsEl = Prop(root, "groups", JsonValueKind.Array, "");
            var groups = new List<UnitGroup>();
            var holders = new List<int[][]>();
            int gi = 0;
            foreach (var ge in groupsEl.EnumerateArray())
            {
                string where = $"groups[{gi}]";
                if (ge.ValueKind != JsonValueKind.Object) throw Bad($"{where} must be an object");
                string name = Prop(ge, "name", JsonValueKind.String, where + ".").GetString()!;
                var unitsEl = Prop(ge, "units", JsonValueKind.Array, where + ".");
                var holdersEl = Prop(ge, "holders", JsonValueKind.Array, where + ".");
                int n = unitsEl.GetArrayLength();
                if (n == 0) throw Bad($"{where} (\"{name}\") has no units");
                if (holdersEl.GetArrayLength() != n) throw Bad($"{where} (\"{name}\") has {n} units but {holdersEl.GetArrayLength()} holder lists");
                List<string>? names = level == SubnetLevel.Block ? [] : null;
                int u = 0;
                foreach (var ue in unitsEl.EnumerateArray())
                {
                    if (level == SubnetLevel.Neuron)
                    {
                        if (ue.ValueKind != JsonValueKind.Number || !ue.TryGetInt32(out int idx) || idx != u)
                            throw Bad($"{where}.units[{u}] must be the index {u} (neuron units are 0..n-1 in order), got {ue.GetRawText()}");
                    }
                    else
                    {
                        if (ue.ValueKind != JsonValueKind.String || string.IsNullOrEmpty(ue.GetString()))
                            throw Bad($"{where}.units[{u}] must be a block module name, got {ue.GetRawText()}");
                        names!.Add(ue.GetString()!);
                    }
                    u++;
                }
                var sets = new int[n][];
                u = 0;
                foreach (var he in holdersEl.EnumerateArray())
                {
                    string at = $"{where}.holders[{u}]";
                    if (he.ValueKind != JsonValueKind.Array) throw Bad($"{at} must be an array of worker ids");
                    var set = new List<int>();
                    foreach (var x in he.EnumerateArray())
                    {
                        if (x.ValueKind != JsonValueKind.Number || !x.TryGetInt32(out int id) || id < 0 || id >= workers)
                            throw Bad($"{at} holds {x.GetRawText()}, expected a worker id in [0, {workers})");
                        if (set.Count > 0 && id <= set[^1]) throw Bad($"{at} must list distinct workers in increasing order, got {he.GetRawText()}");
                        set.Add(id);
                    }
                    if (set.Count != k) throw Bad($"{at} has {set.Count} holders, expected k = coverage·workers = {k}");
                    sets[u++] = [.. set];
                }
                UnitGroup group;
                if (units is not null)
                {
                    if (gi >= units.Groups.Count) throw Bad($"{where} (\"{name}\") is beyond the model's {units.Groups.Count} groups");
                    group = units.Groups[gi];
                    if (group.Name != name || group.UnitCount != n) throw Bad($"{where} is \"{name}\" with {n} units, but the model's group {gi} is \"{group.Name}\" with {group.UnitCount}");
                    if (names is not null && !names.SequenceEqual(group.UnitNames!)) throw Bad($"{where} (\"{name}\") lists blocks that differ from the model's");
                }
                else
                {
                    group = new UnitGroup(name, n, names, new long[n], new long[n]);
                }
                try
                {
                    group.Validate();
                }
                catch (ArgumentException e)
                {
                    throw Bad(e.Message);
                }
                groups.Add(group);
                holders.Add(sets);
                gi++;
            }
            if (gi == 0) throw Bad("\"groups\" is empty");
            // Checked before the plan is built, whose per-worker tables grow with W (and W² for the overlap): a worker
            // that holds nothing can only be claimed, never shown, so W stays bounded by what the file lists.
            var holding = new bool[Math.Min(workers, holders.Sum(g => g.Sum(set => set.Length)) + 1)];
            foreach (var group in holders)
                foreach (int[] set in group)
                    foreach (int w in set) if (w < holding.Length) holding[w] = true;
            int idle = Array.IndexOf(holding, false);
            if (idle >= 0 || holding.Length < workers)
                throw Bad($"worker {(idle >= 0 ? idle : holding.Length)} of {workers} holds no unit; every worker of a plan holds at least one");
            if (units is not null && gi != units.Groups.Count) throw Bad($"the plan has {gi} groups but the model has {units.Groups.Count}");
            if (groups.Select(g => g.Name).Distinct(StringComparer.Ordinal).Count() != groups.Count) throw Bad("group names must be distinct");
            return new SubnetworkPlan(groups, workers, k, level, null, units?.SharedParams ?? 0, [.. holders]);
        }

        InvalidDataException Bad(string message) => new($"subnetwork plan{(source is null ? "" : $" '{source}'")}: {message}");

        JsonElement Prop(JsonElement obj, string name, JsonValueKind kind, string prefix)
        {
            if (!obj.TryGetProperty(name, out var e)) throw Bad($"missing \"{prefix}{name}\"");
            if (e.ValueKind != kind) throw Bad($"\"{prefix}{name}\" must be {(kind == JsonValueKind.Array ? "an array" : "a " + kind.ToString().ToLowerInvariant())}, got {e.GetRawText()}");
            return e;
        }
    }
}
