using System.Runtime.InteropServices;
using Sdp.Engine.Memory;

namespace Sdp.Tests.Reliability.Corruption;

/// <summary>
/// One kind of file the product reads, in a directory of its own: the valid original (written by the product's own
/// writer where it has one, else byte by byte from the format's specification), the product's reader, an oracle that
/// decides from the format's rules alone whether corrupted bytes are still valid, and the mutations to try.
/// </summary>
public abstract class CorruptionSubject : IDisposable
{
    private readonly Dictionary<string, byte[]> _originals = new(StringComparer.Ordinal);

    protected CorruptionSubject(string name)
    {
        Name = name;
        Root = Path.Combine(Path.GetTempPath(), "sdp-corruption-" + name + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(Root);
    }

    public string Name { get; }

    /// <summary>The directory holding the subject's files; the reader reads them here.</summary>
    public string Root { get; }

    /// <summary>The valid files by path relative to <see cref="Root"/>.</summary>
    public IReadOnlyDictionary<string, byte[]> Originals => _originals;

    /// <summary>All the subject's bytes: what the reader may allocate is bounded by a multiple of it.</summary>
    public long TotalBytes => _originals.Values.Sum(b => (long)b.Length);

    public string PathOf(string relative) => Path.Combine(Root, relative);

    /// <summary>Reads the files in <see cref="Root"/> as the product does; throws what the product's reader throws.</summary>
    public abstract void Read();

    /// <summary>Mutations every run tries: truncation at each section boundary, and the structured cases of the format.</summary>
    public abstract IEnumerable<Mutation> FixedMutations();

    /// <summary>A seeded random mutation; the default edits the bytes of a file drawn from <see cref="RandomTargets"/>.</summary>
    public virtual Mutation RandomMutation(Random random)
    {
        var targets = RandomTargets;
        string file = targets[random.Next(targets.Count)];
        var (kind, detail, bytes) = Edit.RandomEdit(random, _originals[file], HotBytes(file));
        return new Mutation(file, kind, detail, bytes, Judge(file, bytes));
    }

    /// <summary>The files random mutations edit.</summary>
    protected virtual IReadOnlyList<string> RandomTargets => [.. _originals.Keys];

    /// <summary>How many leading bytes of <paramref name="file"/> are its header, where random edits land most of the time.</summary>
    protected virtual int HotBytes(string file) => _originals[file].Length;

    /// <summary>The oracle: whether <paramref name="file"/> holding <paramref name="bytes"/> (the other files intact) is still valid.</summary>
    public abstract Expect Judge(string file, byte[] bytes);

    /// <summary>The product's bad-input kinds for this reader (the CLI maps each to exit code 2).</summary>
    public virtual bool IsBadInput(Exception e) => e is InvalidDataException or FileNotFoundException or DirectoryNotFoundException;

    /// <summary>What the error of a rejected mutation must name: the file (any of these strings).</summary>
    public virtual IReadOnlyList<string> Mentions(Mutation m) => [Path.GetFileName(m.File)];

    /// <summary>
    /// Runs <paramref name="read"/> and returns what it threw (null: nothing) and the bytes it allocated until it returned
    /// or threw: managed on this thread plus native tensor storage charged to a fresh account.
    /// </summary>
    public virtual (long Managed, long Native, Exception? Error) Measure(Action read)
    {
        var account = new MemoryAccount("corruption probe");
        long managed = GC.GetAllocatedBytesForCurrentThread();
        Exception? error = null;
        using (account.Activate())
        {
            try
            {
                read();
            }
            catch (Exception e)
            {
                error = e;
            }
        }
        return (GC.GetAllocatedBytesForCurrentThread() - managed, account.PeakTotal, error);
    }

    /// <summary>Applies <paramref name="m"/> to the files in <see cref="Root"/>.</summary>
    public void Apply(Mutation m)
    {
        string path = PathOf(m.File);
        File.Delete(path);
        switch (m.Replacement)
        {
            case Replacement.Bytes: File.WriteAllBytes(path, m.Bytes!); break;
            case Replacement.Deleted: break;
            case Replacement.Directory: Directory.CreateDirectory(path); break;
            case Replacement.Fifo:
                if (MakeFifo(path, 0b110_000_000) != 0) throw new IOException($"mkfifo '{path}' failed: errno {Marshal.GetLastPInvokeError()}");
                break;
            case Replacement.LinkToDevZero: File.CreateSymbolicLink(path, "/dev/zero"); break;
        }
    }

    /// <summary>Puts the original file back after <see cref="Apply"/>.</summary>
    public void Restore(Mutation m)
    {
        string path = PathOf(m.File);
        if (Directory.Exists(path) && !File.Exists(path)) Directory.Delete(path, recursive: true);
        else File.Delete(path);
        File.WriteAllBytes(path, _originals[m.File]);
    }

    /// <summary>Records a file of the valid original already written under <see cref="Root"/> (by the product's writer).</summary>
    protected void Keep(string relative) => _originals[relative] = File.ReadAllBytes(PathOf(relative));

    /// <summary>Writes and records a file of the valid original.</summary>
    protected void Keep(string relative, byte[] bytes)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(PathOf(relative))!);
        File.WriteAllBytes(PathOf(relative), bytes);
        _originals[relative] = bytes;
    }

    /// <summary>Truncations of <paramref name="file"/> at each of <paramref name="boundaries"/> and one byte either side, judged by the oracle.</summary>
    protected IEnumerable<Mutation> TruncationsAround(string file, IEnumerable<int> boundaries)
    {
        var bytes = _originals[file];
        foreach (int length in boundaries.SelectMany(b => new[] { b - 1, b, b + 1 }).Where(l => l >= 0 && l < bytes.Length).Distinct().Order())
        {
            var cut = Edit.Truncate(bytes, length);
            yield return new Mutation(file, "truncation", $"at byte {length} of {bytes.Length}", cut, Judge(file, cut));
        }
    }

    /// <summary>The file gone, a directory, a pipe or /dev/zero in its place: all refused, none hangs.</summary>
    protected IEnumerable<Mutation> NotARegularFile(string file)
    {
        yield return new Mutation(file, "missing file", "deleted", null, Expect.Reject) { Replacement = Replacement.Deleted };
        yield return new Mutation(file, "not a file", "a directory", null, Expect.Reject) { Replacement = Replacement.Directory };
        yield return new Mutation(file, "not a file", "a named pipe", null, Expect.Reject) { Replacement = Replacement.Fifo };
        yield return new Mutation(file, "not a file", "a link to /dev/zero", null, Expect.Reject) { Replacement = Replacement.LinkToDevZero };
        yield return new Mutation(file, "empty", "0 bytes", [], Expect.Reject);
    }

    /// <summary>A mutation with an expectation stated by the test, which the oracle must share (so a wrong oracle shows).</summary>
    protected Mutation Stated(string file, string kind, string detail, byte[] bytes, Expect expect)
    {
        var judged = Judge(file, bytes);
        if (judged != expect) throw new InvalidOperationException($"the oracle of {Name} judges {file}: {kind} ({detail}) {judged}, the test states {expect}");
        return new Mutation(file, kind, detail, bytes, expect);
    }

    public virtual void Dispose()
    {
        try
        {
            Directory.Delete(Root, recursive: true);
        }
        catch (IOException)
        {
        }
        GC.SuppressFinalize(this);
    }

    [DllImport("libc", EntryPoint = "mkfifo", SetLastError = true)]
    private static extern int MakeFifo(string path, uint mode);
}
