using System.CommandLine;
using Sdp.Engine.Memory;
using Sdp.Models.Data;
using Spectre.Console;

namespace Sdp.Cli.Commands;

/// <summary>`sdp tokenize`: text files or FineWeb-style parquet (a `text` column) into llm.c token shards with GPT-2 BPE.</summary>
public static class TokenizeCommand
{
    public static Command Create()
    {
        var inputs = new Argument<string[]>("inputs") { Description = "Text files, .parquet files or globs", Arity = ArgumentArity.OneOrMore };
        var output = new Option<string>("--output") { Description = "Shard path prefix: writes PREFIX_000000.bin, PREFIX_000001.bin, ...", Required = true };
        var shardTokens = new Option<long>("--shard-tokens") { Description = "Tokens per shard", DefaultValueFactory = _ => ShardTokenizer.DefaultShardTokens };
        var cmd = new Command("tokenize", "Tokenize text or parquet into llm.c token shards (GPT-2 BPE)") { inputs, output, shardTokens };
        cmd.SetAction(p =>
        {
            string prefix = p.GetValue(output)!;
            long perShard = p.GetValue(shardTokens);
            if (perShard <= 0) throw new UsageException($"--shard-tokens must be positive, got {perShard}");
            string dir = Path.GetDirectoryName(Path.GetFullPath(prefix))!;
            if (!Directory.Exists(dir)) throw new UsageException($"--output: directory '{dir}' does not exist");
            var before = ExistingShards(prefix);
            var tokenizer = new ShardTokenizer(perShard);
            IReadOnlyList<string> shards;
            try
            {
                shards = Console.IsOutputRedirected ? Plain(tokenizer, p.GetValue(inputs)!, prefix) : WithBar(tokenizer, p.GetValue(inputs)!, prefix);
            }
            catch
            {
                // Leave no partial output: shards this run created go, older ones stay.
                foreach (var f in ExistingShards(prefix).Except(before)) File.Delete(f);
                throw;
            }
            long tokens = shards.Sum(TokenShard.ReadTokenCount);
            Console.WriteLine($"wrote {shards.Count} shard(s), {tokens:N0} tokens: {string.Join(", ", shards)}");
            return 0;
        });
        return cmd;
    }

    /// <summary>A plain progress line: sizes in B, KiB, MiB, ... as they fit, so a small file does not read "0.0 of 0.0 MiB".</summary>
    public static string ProgressLine(long bytesDone, long bytesTotal, long tokens)
        => $"tokenized {MemorySnapshot.FormatBytes(bytesDone)} of {MemorySnapshot.FormatBytes(bytesTotal)}, {tokens:N0} tokens";

    private static HashSet<string> ExistingShards(string prefix)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(prefix))!;
        return Directory.Exists(dir) ? [.. Directory.EnumerateFiles(dir, Path.GetFileName(prefix) + "_*.bin")] : [];
    }

    private static IReadOnlyList<string> Plain(ShardTokenizer tokenizer, string[] inputs, string prefix)
    {
        long lastReported = 0;
        var progress = new SynchronousProgress(r =>
        {
            if (r.BytesDone - lastReported < 64L << 20 && r.BytesDone != r.BytesTotal) return;
            lastReported = r.BytesDone;
            Console.WriteLine(ProgressLine(r.BytesDone, r.BytesTotal, r.Tokens));
        });
        return tokenizer.Tokenize(inputs, prefix, progress);
    }

    private static IReadOnlyList<string> WithBar(ShardTokenizer tokenizer, string[] inputs, string prefix)
    {
        IReadOnlyList<string> shards = [];
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("tokenizing", maxValue: 1);
                var progress = new SynchronousProgress(r =>
                {
                    task.MaxValue = Math.Max(1, r.BytesTotal);
                    task.Value = r.BytesDone;
                    task.Description = $"{r.Tokens:N0} tokens";
                });
                shards = tokenizer.Tokenize(inputs, prefix, progress);
            });
        return shards;
    }

    /// <summary>Reports on the calling thread (Progress&lt;T&gt; would post to the thread pool and reorder lines).</summary>
    private sealed class SynchronousProgress(Action<(long BytesDone, long BytesTotal, long Tokens)> report) : IProgress<(long BytesDone, long BytesTotal, long Tokens)>
    {
        public void Report((long BytesDone, long BytesTotal, long Tokens) value) => report(value);
    }
}
