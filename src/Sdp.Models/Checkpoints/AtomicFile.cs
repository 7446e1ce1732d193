namespace Sdp.Models.Checkpoints;

/// <summary>
/// Writes a file so that readers see either the old file or the complete new one, never a partial
/// one: the bytes go to a temporary file in the same directory (hence the same file system), which is
/// flushed to disk and then renamed over the target. On any failure the temporary file is deleted and
/// the target is left as it was.
/// </summary>
public static class AtomicFile
{
    public static void Write(string path, Action<FileStream> write)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string full = Path.GetFullPath(path);
        string directory = Path.GetDirectoryName(full) ?? throw new ArgumentException($"'{path}' names no file", nameof(path));
        string temp = Path.Combine(directory, $"{Path.GetFileName(full)}.tmp-{Environment.ProcessId}-{Random.Shared.Next():x8}");
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 1 << 16))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            TryDelete(temp);
            throw;
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
