using System.Text.RegularExpressions;

namespace Sdp.Tests.Cli;

/// <summary>
/// `sdp bench compare`: Sdp's training steps timed beside the PyTorch numbers of bench/torch_baseline.py's JSON.
/// CI has no PyTorch, so the JSON here is written by the test, in the script's format, with small steps; Sdp's
/// side is measured for real and the ratio must be its time over the JSON's.
/// </summary>
[NonParallelizable]
public class BenchCompareTests : CliTestBase
{
    private const string Steps = """
        "steps": [
          {"name": "llama-tiny", "model": "llama", "config": "tiny", "batch": 1, "seq": 8, "optimizer": "adamw", "median_ms": 40.0},
          {"name": "resnet18-w4", "model": "resnet18", "config": "{\"width\":4}", "batch": 2, "seq": 0, "optimizer": "sgd", "momentum": 0.9, "median_ms": 25.0}]
        """;

    private static string Baseline(string steps = Steps, string threads = "1") => $$"""
        {"format": "sdp.torch_baseline", "version": 1, "torch": "1.13.1 (written by the test)", "threads": {{threads}}, "cpu": "test CPU", "openblas_coretype": "SkylakeX", {{steps}}}
        """;

    [Test]
    public void Prints_each_step_beside_pytorch_with_the_ratio_of_its_own_measured_time()
    {
        File.WriteAllText("torch.json", Baseline());
        var r = Sdp("bench", "compare", "torch.json", "--samples", "1", "--warmup", "0");
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Out, Does.Contain("PyTorch 1.13.1 (written by the test) on test CPU, 1 thread(s), OPENBLAS_CORETYPE SkylakeX"));
        foreach (var (name, torchMs) in new[] { ("llama-tiny", 40.0), ("resnet18-w4", 25.0) })
        {
            var row = Regex.Match(r.Out, $@"^{Regex.Escape(name)}\s+\S+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$", RegexOptions.Multiline);
            Assert.That(row.Success, Is.True, $"a row for {name}\n{r.Out}");
            double pytorch = double.Parse(row.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
            double sdp = double.Parse(row.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture);
            double ratio = double.Parse(row.Groups[3].Value, System.Globalization.CultureInfo.InvariantCulture);
            Assert.That(pytorch, Is.EqualTo(torchMs));
            Assert.That(sdp, Is.GreaterThan(0), "Sdp's step was timed");
            Assert.That(ratio, Is.EqualTo(sdp / pytorch).Within(0.01).Or.EqualTo(sdp / pytorch).Within(1).Percent, "ratio = Sdp / PyTorch");
        }
    }

    /// <summary>The step server of bench/torch_baseline.py --lockstep: "ready" once the steps are built, then one timed
    /// step per name read (its milliseconds, a positive number), an error line for a name the JSON lacks, and the end at EOF.</summary>
    [Test]
    public void The_step_server_times_one_step_per_name_it_reads()
    {
        File.WriteAllText("torch.json", Baseline());
        var baseline = global::Sdp.Cli.Commands.BenchCommand.ReadTorchBaseline("torch.json");
        var output = new StringWriter();
        global::Sdp.Cli.Commands.BenchCommand.ServeSteps(new StringReader("llama-tiny\nresnet18-w4\n\nnot-a-step\nllama-tiny\n"), output, baseline, warmup: 0);
        var lines = output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Trim()).ToArray();
        Assert.That(lines, Has.Length.EqualTo(5), output.ToString());
        Assert.That(lines[0], Is.EqualTo("ready"));
        foreach (int i in new[] { 1, 2, 4 })
            Assert.That(double.Parse(lines[i], System.Globalization.CultureInfo.InvariantCulture), Is.GreaterThan(0), lines[i]);
        Assert.That(lines[3], Is.EqualTo("error: no step 'not-a-step' in the JSON (steps: llama-tiny, resnet18-w4)"));
    }

    [TestCase("{\"format\": \"other\", \"version\": 1}", "expected \"format\": \"sdp.torch_baseline\"")]
    [TestCase("not json", "not valid JSON")]
    [TestCase("THREADS0", "\"threads\" must be at least 1")]
    [TestCase("NOSTEPS", "\"steps\" must be a non-empty array")]
    [TestCase("BADMODEL", "steps[0].\"model\" must be one of llama, resnet18, got 'gpt'")]
    [TestCase("BADMEDIAN", "steps[0].\"median_ms\" must be a positive number")]
    [TestCase("NOSEQ", "steps[0].\"seq\" is missing")]
    public void A_malformed_baseline_is_refused_naming_the_file_and_field(string content, string message)
    {
        string one(string step) => $"\"steps\": [{step}]";
        content = content switch
        {
            "THREADS0" => Baseline(threads: "0"),
            "NOSTEPS" => Baseline(steps: "\"steps\": []"),
            "BADMODEL" => Baseline(steps: one("{\"name\": \"x\", \"model\": \"gpt\", \"config\": \"tiny\", \"batch\": 1, \"seq\": 8, \"optimizer\": \"adamw\", \"median_ms\": 1}")),
            "BADMEDIAN" => Baseline(steps: one("{\"name\": \"x\", \"model\": \"llama\", \"config\": \"tiny\", \"batch\": 1, \"seq\": 8, \"optimizer\": \"adamw\", \"median_ms\": -3}")),
            "NOSEQ" => Baseline(steps: one("{\"name\": \"x\", \"model\": \"llama\", \"config\": \"tiny\", \"batch\": 1, \"optimizer\": \"adamw\", \"median_ms\": 1}")),
            _ => content,
        };
        File.WriteAllText("torch.json", content);
        var r = Sdp("bench", "compare", "torch.json");
        Assert.That(r.ExitCode, Is.EqualTo(2), r.ToString());
        Assert.That(r.ErrLines, Has.Length.EqualTo(1), r.ToString());
        Assert.That(r.Err, Does.Contain("torch.json").And.Contain(message), r.ToString());
    }

    [Test]
    public void The_baseline_script_is_in_the_repository_and_writes_the_format_the_command_reads()
    {
        string script = Path.Combine(RepositoryRoot(), "bench", "torch_baseline.py");
        Assert.That(File.Exists(script), Is.True, script);
        string text = File.ReadAllText(script);
        Assert.That(text, Does.Contain("\"format\": \"sdp.torch_baseline\", \"version\": 1"));
        foreach (string field in new[] { "\"median_ms\"", "\"threads\"", "\"model\"", "\"config\"", "\"batch\"", "\"seq\"", "\"optimizer\"" })
            Assert.That(text, Does.Contain(field), $"the script writes {field}");
    }

    private static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Sdp.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException("Sdp.sln above the test binaries");
    }
}
