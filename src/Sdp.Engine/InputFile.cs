using System.Buffers;
using System.Text;
using System.Text.Json;

namespace Sdp.Engine;

/// <summary>
/// Checks every reader makes before it trusts a file it was handed (weights, data, configurations, plans): the path
/// names a non-empty regular file (a symbolic link is followed to one), so that a directory, a named pipe that would
/// block the reader forever, or a device such as /dev/zero that never ends, is refused before anything opens it; and
/// JSON text is UTF-8 and parsed strictly (no name twice in one object, bounded nesting). Every refusal is one
/// <see cref="InvalidDataException"/> or <see cref="FileNotFoundException"/> naming the file.
/// </summary>
public static class InputFile
{
    /// <summary>How deep JSON documents may nest (System.Text.Json's default; Sdp's formats need 4).</summary>
    public const int MaxJsonDepth = 64;

    /// <summary>
    /// The length of the regular file <paramref name="path"/> (after symbolic links), or an error naming it as
    /// <paramref name="what"/> ("token shard", "training state"): missing, a directory, empty, or not a regular file.
    /// Devices, pipes and sockets report no length, so an empty file and a special one get the same refusal.
    /// </summary>
    public static long RequireRegularFile(string path, string what)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (Directory.Exists(path)) throw new InvalidDataException($"{what} '{path}' is a directory, not a file");
        FileSystemInfo info = new FileInfo(path);
        if (info.LinkTarget is not null) info = info.ResolveLinkTarget(returnFinalTarget: true) ?? info;
        if (!info.Exists) throw new FileNotFoundException($"{what} '{path}' does not exist", path);
        long length = ((FileInfo)info).Length;
        if (length == 0) throw new InvalidDataException($"{what} '{path}' is 0 bytes: empty, or not a regular file (devices and pipes are not read)");
        return length;
    }

    /// <summary>
    /// The bytes of the UTF-8 text file <paramref name="path"/> after its byte-order mark, if any; an error names the
    /// first byte that is not UTF-8.
    /// </summary>
    public static ReadOnlyMemory<byte> ReadUtf8(string path, string what)
    {
        RequireRegularFile(path, what);
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new InvalidDataException($"{what} '{path}' cannot be read: {e.Message}", e);
        }
        int start = bytes.AsSpan().StartsWith(Encoding.UTF8.Preamble) ? Encoding.UTF8.Preamble.Length : 0;
        int bad = FirstInvalidUtf8(bytes.AsSpan(start));
        if (bad >= 0) throw new InvalidDataException($"{what} '{path}': byte {start + bad} (0x{bytes[start + bad]:x2}) is not UTF-8; the file must be UTF-8 text");
        return bytes.AsMemory(start);
    }

    /// <summary>The offset of the first byte of <paramref name="bytes"/> that does not start a valid UTF-8 sequence, or -1.</summary>
    public static int FirstInvalidUtf8(ReadOnlySpan<byte> bytes)
    {
        int at = 0;
        while (at < bytes.Length)
        {
            if (Rune.DecodeFromUtf8(bytes[at..], out _, out int consumed) != OperationStatus.Done) return at;
            at += consumed;
        }
        return -1;
    }

    /// <summary>
    /// Options for reading JSON that came from a file or a checkpoint: a name given twice in one object is an error (which
    /// of the two would count is otherwise up to the reader), nesting is limited to <paramref name="maxDepth"/>.
    /// </summary>
    public static JsonDocumentOptions StrictJson(int maxDepth = MaxJsonDepth, bool commentsAndTrailingCommas = false) => new()
    {
        AllowDuplicateProperties = false,
        MaxDepth = maxDepth,
        CommentHandling = commentsAndTrailingCommas ? JsonCommentHandling.Skip : JsonCommentHandling.Disallow,
        AllowTrailingCommas = commentsAndTrailingCommas,
    };
}
