using System.Text.Json.Nodes;
using Sdp.Cli;
using Sdp.Engine;
using Sdp.Models.Checkpoints;
using Sdp.Models.Llama;

namespace Sdp.Tests.Cli;

/// <summary>What one in-process `sdp` run printed and returned.</summary>
public sealed record CliResult(int ExitCode, string Out, string Err)
{
    public string[] ErrLines => Err.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')).ToArray();

    public string[] OutLines => Out.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')).ToArray();

    public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Out}--- stderr\n{Err}";
}

/// <summary>
/// Runs <see cref="SdpCli.Run"/> in-process with Console.Out/Error captured, inside a fresh temporary
/// directory per test that is the current directory while the test runs (so relative paths in
/// arguments and messages read as a user would type them) and is deleted afterwards.
/// Fixtures deriving from this must be [NonParallelizable]: the console and the current directory are process-wide.
/// </summary>
public abstract class CliTestBase
{
    /// <summary>Options that keep a LLaMA run to a fraction of a second.</summary>
    private static readonly (string Option, string Value)[] TinyRun =
        [("--steps", "3"), ("--warmup", "1"), ("--batch", "2"), ("--seq", "8"), ("--eval-batches", "1")];

    private string _previousDirectory = "";

    protected string Dir { get; private set; } = "";

    [SetUp]
    public void EnterTempDirectory()
    {
        Dir = Path.Combine(Path.GetTempPath(), "sdp-cli-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Dir);
        _previousDirectory = Environment.CurrentDirectory;
        Environment.CurrentDirectory = Dir;
    }

    [TearDown]
    public void LeaveTempDirectory()
    {
        Environment.CurrentDirectory = _previousDirectory;
        try
        {
            Directory.Delete(Dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Runs `sdp args...` and returns the exit code and everything it printed.</summary>
    protected static CliResult Sdp(params string[] args)
    {
        var (stdout, stderr) = (Console.Out, Console.Error);
        using var outWriter = new StringWriter();
        using var errWriter = new StringWriter();
        try
        {
            Console.SetOut(outWriter);
            Console.SetError(errWriter);
            int code = SdpCli.Run(args);
            return new CliResult(code, outWriter.ToString(), errWriter.ToString());
        }
        finally
        {
            Console.SetOut(stdout);
            Console.SetError(stderr);
        }
    }

    /// <summary>Splits a command line on spaces (the tests never need quoting).</summary>
    protected static string[] Args(string commandLine) => commandLine.Split(' ', StringSplitOptions.RemoveEmptyEntries);

    /// <summary>`sdp train` with the tiny-run options, except those that <paramref name="extra"/> sets itself.</summary>
    protected static CliResult Train(string extra)
    {
        var given = Args(extra);
        var args = new List<string> { "train" };
        foreach (var (option, value) in TinyRun)
        {
            if (!given.Contains(option)) args.AddRange([option, value]);
        }
        args.AddRange(given);
        return Sdp([.. args]);
    }

    /// <summary>The records of a --metrics file after its "run" header: one per step, and the evaluations (marked "eval").</summary>
    protected static List<JsonObject> MetricsRecords(string path)
    {
        var records = File.ReadAllLines(path).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        Assert.That(records[0]["run"], Is.Not.Null, $"{path} starts with the run header");
        return records[1..];
    }

    /// <summary>Every file and directory under the test directory, with sizes and write times, to prove a run changed nothing.</summary>
    protected string[] Listing() => Directory.EnumerateFileSystemEntries(Dir, "*", SearchOption.AllDirectories)
        .Select(p =>
        {
            string rel = Path.GetRelativePath(Dir, p);
            return File.Exists(p) ? $"{rel} {new FileInfo(p).Length} {File.GetLastWriteTimeUtc(p).Ticks}" : rel + "/";
        })
        .Order(StringComparer.Ordinal)
        .ToArray();

    /// <summary>
    /// A usage error: exit code 2, one line on stderr starting with "sdp:" that mentions each of
    /// <paramref name="mentions"/>, no stack trace, and the directory exactly as it was before the run.
    /// </summary>
    protected void AssertUsageError(CliResult r, string[] before, params string[] mentions)
    {
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(CliRunner.UsageError), r.ToString());
            Assert.That(r.ErrLines, Has.Length.EqualTo(1), r.ToString());
            Assert.That(r.Err, Does.StartWith("sdp: "), r.ToString());
            Assert.That(r.Err, Does.Not.Contain("internal error"));
            Assert.That(r.Err, Does.Not.Contain("   at "), "no stack trace without --verbose");
            foreach (var m in mentions) Assert.That(r.Err, Does.Contain(m), r.ToString());
            Assert.That(Listing(), Is.EqualTo(before), "a failed run must write nothing (no metrics, checkpoint or temporary files)");
        });
    }

    /// <summary>A LLaMA config small enough to save and load in milliseconds, with the tiny preset's vocabulary.</summary>
    protected static LlamaConfig SmallLlama { get; } = new(vocabSize: 4096, hiddenSize: 32, intermediateSize: 64, numHiddenLayers: 1, numAttentionHeads: 2);

    /// <summary>Saves a freshly initialised model of <paramref name="config"/> as `sdp train --save x.safetensors` would (config in the metadata).</summary>
    protected static void SaveLlama(string path, LlamaConfig config, bool withConfig = true)
    {
        using var model = new LlamaForCausalLM(config, new Rng(7));
        var metadata = withConfig ? new Dictionary<string, string> { [TrainingCheckpoint.ConfigMetadataKey] = config.ToJson() } : null;
        ModuleCheckpoint.Save(model, path, metadata);
    }

    /// <summary>Names and shapes of the parameters and buffers a model of <paramref name="config"/> has.</summary>
    protected static List<(string Name, Shape Shape)> StateShapes(LlamaConfig config)
    {
        using var model = new LlamaForCausalLM(config, new Rng(0));
        return [.. ModuleCheckpoint.StateDict(model).Select(e => (e.Name, e.Tensor.Shape))];
    }

    /// <summary>Every tensor of a safetensors file as float32 values.</summary>
    protected static Dictionary<string, float[]> ReadTensors(string path)
    {
        using var file = SafeTensorsFile.Read(path);
        var result = new Dictionary<string, float[]>();
        foreach (var name in file.Names)
        {
            using var t = file.Load(name);
            result[name] = t.ToArray<float>();
        }
        return result;
    }

    protected static double MaxAbsDiff(Dictionary<string, float[]> a, Dictionary<string, float[]> b)
    {
        Assert.That(b.Keys, Is.EquivalentTo(a.Keys));
        double max = 0;
        foreach (var (name, x) in a)
        {
            var y = b[name];
            for (int i = 0; i < x.Length; i++) max = Math.Max(max, Math.Abs(x[i] - y[i]));
        }
        return max;
    }

    protected static string ResNetConfigJson => """{"model":"resnet18","width":4,"num_classes":10,"in_channels":3}""";
}
