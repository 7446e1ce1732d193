using System.CommandLine;
using System.CommandLine.Parsing;
using Sdp.Models.Training;

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
            foreach (var e in parse.Errors) Console.Error.WriteLine($"sdp: {Describe(e)}");
            return UsageError;
        }
        try
        {
            return parse.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception ex) when (IsBadInput(ex))
        {
            Console.Error.WriteLine($"sdp: {MessageOf(ex)}");
            if (parse.GetValue(verbose)) Console.Error.WriteLine(ex);
            return UsageError;
        }
        catch (Exception ex)
        {
            Console.Error.WriteLine($"sdp: internal error: {MessageOf(ex)}");
            if (parse.GetValue(verbose)) Console.Error.WriteLine(ex);
            return 1;
        }
    }

    /// <summary>
    /// Whether <paramref name="ex"/> is the user's input at fault (options, files, data), reported in one line with exit
    /// code 2; a worker's failure (<see cref="WorkerFailedException"/>) is judged by the worker's own error.
    /// </summary>
    public static bool IsBadInput(Exception ex)
        => (ex is WorkerFailedException failed ? failed.Cause : ex)
            is UsageException or ArgumentException or FileNotFoundException or InvalidDataException or DirectoryNotFoundException or UnauthorizedAccessException;

    /// <summary>
    /// A parse error on one line, naming the option it belongs to ("--model: Argument 'x' not recognized.
    /// Must be one of: 'llama' 'resnet18'" rather than a bare multi-line list).
    /// </summary>
    private static string Describe(ParseError e)
    {
        string message = OneLine(e.Message);
        var option = e.SymbolResult switch
        {
            OptionResult o => o.Option,
            ArgumentResult { Parent: OptionResult o } => o.Option,
            _ => null,
        };
        return option is null || message.Contains(option.Name, StringComparison.Ordinal) ? message : $"{option.Name}: {message}";
    }

    /// <summary>
    /// The exception's message without the runtime's decorations (" (Parameter 'name')", "Actual value
    /// was ..."), which mean nothing to someone typing options. Messages that are deliberately several
    /// lines (a checkpoint's list of mismatches) keep their lines.
    /// </summary>
    public static string MessageOf(Exception ex)
    {
        if (ex is WorkerFailedException failed) return $"worker {failed.Worker}: {MessageOf(failed.Cause)}";
        string message = ex.Message;
        if (ex is ArgumentException { ParamName: { } name })
        {
            int at = message.IndexOf($" (Parameter '{name}')", StringComparison.Ordinal);
            if (at >= 0) message = message[..at];
        }
        return message;
    }

    private static string OneLine(string text)
        => string.Join(' ', text.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
}
