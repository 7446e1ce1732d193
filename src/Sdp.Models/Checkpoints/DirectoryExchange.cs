using System.Runtime.InteropServices;

namespace Sdp.Models.Checkpoints;

/// <summary>
/// Atomically exchanges two paths with Linux's <c>renameat2(..., RENAME_EXCHANGE)</c> (Linux 3.15, glibc 2.28;
/// ext4, xfs, btrfs, tmpfs and overlayfs support it): at every instant each name refers to one complete
/// directory, so a checkpoint directory that is replaced this way never goes missing, even under SIGKILL.
/// Where the call or the file system lacks it, <see cref="TryExchange"/> says so and the caller falls back to
/// two renames.
/// </summary>
internal static partial class DirectoryExchange
{
    // <fcntl.h> and <linux/fs.h>, verbatim.
    private const int AT_FDCWD = -100;
    private const uint RENAME_EXCHANGE = 1 << 1;

    [LibraryImport("libc", EntryPoint = "renameat2", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int renameat2(int olddirfd, string oldpath, int newdirfd, string newpath, uint flags);

    /// <summary>Set once the C library or the kernel has said it has no renameat2, so the fallback is taken without asking again.</summary>
    private static volatile bool _unavailable = !OperatingSystem.IsLinux();

    /// <summary>
    /// Exchanges the directories <paramref name="a"/> and <paramref name="b"/> (both must exist, on one file system);
    /// false when this system cannot do it atomically (nothing was changed then).
    /// </summary>
    public static bool TryExchange(string a, string b)
    {
        if (_unavailable) return false;
        try
        {
            if (renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) == 0) return true;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            _unavailable = true;
            return false;
        }
        // ENOSYS (38): no such system call; EINVAL (22): the file system does not support the flag. Any other
        // error (permissions, a missing path) is the plain rename's too, which then reports it with a .NET message.
        if (Marshal.GetLastPInvokeError() == 38) _unavailable = true;
        return false;
    }
}
