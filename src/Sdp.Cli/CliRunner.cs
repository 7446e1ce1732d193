using System.CommandLine;

namespace Sdp.Cli;

/// <summary>An error in what the user asked for (options, files): reported in one line, exit code 2.</summary>
public sealed class UsageException(string message) : Exception(message);

public static class CliRunner
{
    public const int UsageError = 2;

    public static int Run(RootCommand root, Option<bool> verbose, string[] args)
    {
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            foreach (var e in parse.Errors) Console.Error.WriteLine($"sdp: {e.Message}");
            return UsageError;
        }
        try
        {
            return parse.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception ex) when (ex is UsageException or ArgumentException or FileNotFoundException or InvalidDataException or DirectoryNotFoundException)
        {
            Console.Error.WriteLine($"sdp: {ex.Message}");
            if (parse.GetValue(verbose)) Console.Error.WriteLine(ex);
            return UsageError;
        }
        catch (Exception ex)
        {
            Console.Error.WriteLine($"sdp: internal error: {ex.Message}");
            if (parse.GetValue(verbose)) Console.Error.WriteLine(ex);
            return 1;
        }
    }
}
