using System.Text.Json;

namespace Sdp.Cli;

/// <summary>
/// JSON-lines metrics, written to a temporary file beside the target and renamed over it only by
/// <see cref="Commit"/>, so a run that fails leaves no half-written metrics file behind (a killed run's temporary
/// file is removed by the next writer of the same target).
/// </summary>
public sealed class MetricsWriter : IDisposable
{
    private readonly string _target;
    private readonly string _temp;
    private StreamWriter? _writer;

    public MetricsWriter(FileInfo target)
    {
        _target = target.FullName;
        var dir = Path.GetDirectoryName(_target)!;
        if (!Directory.Exists(dir)) throw new UsageException($"--metrics: directory {dir} does not exist");
        // A run that was killed left its temporary file; one run writes a metrics file at a time, so it is nobody's now.
        foreach (string stale in Directory.EnumerateFiles(dir, $".{Path.GetFileName(_target)}.*.tmp")) File.Delete(stale);
        _temp = Path.Combine(dir, $".{Path.GetFileName(_target)}.{Environment.ProcessId}.tmp");
        _writer = new StreamWriter(_temp);
    }

    public void Write(System.Text.Json.Nodes.JsonNode record) => _writer!.WriteLine(record.ToJsonString());

    public void Commit()
    {
        _writer!.Dispose();
        _writer = null;
        File.Move(_temp, _target, overwrite: true);
    }

    public void Dispose()
    {
        if (_writer is null) return;
        _writer.Dispose();
        _writer = null;
        File.Delete(_temp);
    }
}
