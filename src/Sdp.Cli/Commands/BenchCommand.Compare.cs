using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Engine.Optim;
using Sdp.Engine.Subnetworks;
using Sdp.Kernels.Cpu;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;

namespace Sdp.Cli.Commands;

/// <summary>
/// `sdp bench compare torch.json`: PyTorch and Sdp side by side on the training steps `bench/torch_baseline.py`
/// timed. The JSON names each step's model, configuration, batch, sequence length and optimizer, the thread count
/// and the machine; Sdp builds the same step (one worker, dense), runs it with the same thread count, times it the
/// same way (warm-up steps, then the median of timed steps) and prints both, with the ratio Sdp / PyTorch.
/// </summary>
public static partial class BenchCommand
{
    /// <summary>The JSON's format tag, written by bench/torch_baseline.py.</summary>
    public const string TorchBaselineFormat = "sdp.torch_baseline";

    /// <summary>One step the baseline timed.</summary>
    public sealed record BaselineStep(string Name, string Model, string Config, int Batch, int Seq, string Optimizer, double Momentum, double MedianMs);

    /// <summary>What bench/torch_baseline.py wrote.</summary>
    public sealed record TorchBaseline(string Torch, int Threads, string Cpu, string? OpenBlasCoreType, IReadOnlyList<BaselineStep> Steps);

    private static Command CompareCommand()
    {
        var file = new Argument<string>("file") { Description = "JSON written by bench/torch_baseline.py" };
        var samples = new Option<int>("--samples") { Description = "Timed Sdp steps per row (median kept)", DefaultValueFactory = _ => 10 };
        var warmup = new Option<int>("--warmup") { Description = "Untimed Sdp steps first", DefaultValueFactory = _ => 3 };
        var serve = new Option<bool>("--serve") { Description = "Step server for bench/torch_baseline.py --lockstep: build the JSON's steps, warm them up, print 'ready', then for each step name read on stdin take one step and print its milliseconds (EOF ends)" };
        var cmd = new Command("compare", "Sdp and PyTorch side by side on the training steps of bench/torch_baseline.py's JSON") { file, samples, warmup, serve };
        cmd.SetAction(p =>
        {
            var baseline = ReadTorchBaseline(p.GetValue(file)!);
            int warm = Check.AtLeast(p.GetValue(warmup), 0, "--warmup");
            if (p.GetValue(serve))
            {
                ServeSteps(Console.In, Console.Out, baseline, warm);
                return 0;
            }
            Compare(Console.Out, baseline, Check.Positive(p.GetValue(samples), "--samples"), warm);
            return 0;
        });
        return cmd;
    }

    /// <summary>Reads and checks the baseline JSON; every problem is a <see cref="UsageException"/> naming the file and field.</summary>
    public static TorchBaseline ReadTorchBaseline(string path)
    {
        if (!File.Exists(path)) throw new UsageException($"bench compare: '{path}' does not exist");
        JsonObject root;
        try
        {
            root = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new UsageException($"{path}: expected a JSON object");
        }
        catch (JsonException e)
        {
            throw new UsageException($"{path}: not valid JSON: {e.Message}");
        }
        T Field<T>(JsonObject o, string name, string where)
        {
            try
            {
                return o[name] is { } node ? node.GetValue<T>() : throw new UsageException($"{path}: {where}\"{name}\" is missing");
            }
            catch (Exception e) when (e is InvalidOperationException or FormatException)
            {
                throw new UsageException($"{path}: {where}\"{name}\" must be a {(typeof(T) == typeof(string) ? "string" : "number")}");
            }
        }
        if (root["format"]?.GetValueKind() != JsonValueKind.String || Field<string>(root, "format", "") != TorchBaselineFormat || root["version"]?.GetValueKind() != JsonValueKind.Number || Field<int>(root, "version", "") != 1)
            throw new UsageException($"{path}: expected \"format\": \"{TorchBaselineFormat}\" and \"version\": 1 (written by bench/torch_baseline.py)");
        int threads = Field<int>(root, "threads", "");
        if (threads < 1) throw new UsageException($"{path}: \"threads\" must be at least 1, got {threads}");
        if (root["steps"] is not JsonArray array || array.Count == 0) throw new UsageException($"{path}: \"steps\" must be a non-empty array");
        var steps = new List<BaselineStep>();
        for (int i = 0; i < array.Count; i++)
        {
            string where = $"steps[{i}].";
            var s = array[i] as JsonObject ?? throw new UsageException($"{path}: steps[{i}] must be an object");
            string model = Field<string>(s, "model", where);
            if (!RunSetup.Models.Contains(model)) throw new UsageException($"{path}: {where}\"model\" must be one of {string.Join(", ", RunSetup.Models)}, got '{model}'");
            string optimizer = Field<string>(s, "optimizer", where);
            if (optimizer is not ("adamw" or "sgd")) throw new UsageException($"{path}: {where}\"optimizer\" must be adamw or sgd, got '{optimizer}'");
            int batch = Field<int>(s, "batch", where), seq = model == "llama" ? Field<int>(s, "seq", where) : 0;
            if (batch < 1 || (model == "llama" && seq < 1)) throw new UsageException($"{path}: {where}\"batch\" and (llama) \"seq\" must be at least 1");
            double median = Field<double>(s, "median_ms", where);
            if (!(median > 0) || !double.IsFinite(median)) throw new UsageException($"{path}: {where}\"median_ms\" must be a positive number, got {median}");
            double momentum = s["momentum"] is null ? 0 : Field<double>(s, "momentum", where);
            steps.Add(new BaselineStep(Field<string>(s, "name", where), model, Field<string>(s, "config", where), batch, seq, optimizer, momentum, median));
        }
        string? coreType = root["openblas_coretype"]?.GetValueKind() == JsonValueKind.String ? root["openblas_coretype"]!.GetValue<string>() : null;
        return new TorchBaseline(Field<string>(root, "torch", ""), threads, root["cpu"]?.ToString() ?? "unknown CPU", coreType, steps);
    }

    /// <summary>Times Sdp's version of each baseline step with the baseline's thread count and prints the table.</summary>
    public static void Compare(TextWriter output, TorchBaseline baseline, int samples, int warmup)
    {
        var inv = CultureInfo.InvariantCulture;
        output.WriteLine($"PyTorch {baseline.Torch} on {baseline.Cpu}, {baseline.Threads} thread(s), OPENBLAS_CORETYPE {baseline.OpenBlasCoreType ?? "unset"} (from the JSON)");
        output.WriteLine($"Sdp {typeof(BenchCommand).Assembly.GetName().Version} on {Environment.ProcessorCount} logical CPU(s) here, {baseline.Threads} thread(s); median of {samples} steps after {warmup} warm-up, as the script times");
        output.WriteLine();
        output.WriteLine($"{"step",-18}{"batch",8}{"PyTorch ms",13}{"Sdp ms",11}{"Sdp / PyTorch",15}");
        int threads = Gemm.MaxThreads;
        Gemm.MaxThreads = baseline.Threads;
        try
        {
            foreach (var step in baseline.Steps)
            {
                double ms = SdpStepMs(step, samples, warmup);
                string batch = step.Model == "llama" ? $"{step.Batch}x{step.Seq}" : step.Batch.ToString(inv);
                output.WriteLine(string.Create(inv, $"{step.Name,-18}{batch,8}{step.MedianMs,13:F1}{ms,11:F1}{ms / step.MedianMs,15:F2}"));
            }
        }
        finally
        {
            Gemm.MaxThreads = threads;
        }
        output.WriteLine();
        output.WriteLine("A ratio below 1 means Sdp's step is faster. Both sides ran forward, cross-entropy, backward and the optimizer step on the same shapes; compare them only when both ran on this machine.");
    }

    /// <summary>Median milliseconds of Sdp's dense one-worker training step for <paramref name="step"/>.</summary>
    private static double SdpStepMs(BaselineStep step, int samples, int warmup)
    {
        using var trainer = SdpStepTrainer(step, warmup + samples);
        for (int i = 0; i < warmup; i++) trainer.TrainStep();
        var ms = new double[samples];
        for (int i = 0; i < samples; i++) ms[i] = trainer.TrainStep().StepMs;
        Array.Sort(ms);
        return samples % 2 == 1 ? ms[samples / 2] : (ms[samples / 2 - 1] + ms[samples / 2]) / 2;
    }

    /// <summary>Sdp's dense one-worker trainer for <paramref name="step"/>, good for <paramref name="steps"/> steps.</summary>
    private static Trainer SdpStepTrainer(BaselineStep step, long steps)
    {
        var model = RunSetup.BuildSubnetworkModel(step.Model, step.Config, 0, 3, 10, SubnetLevel.Block, new SubnetOptions(), null, $"the JSON's {step.Name} config");
        var (data, _, _) = RunSetup.BuildData(step.Model, "synthetic", step.Batch, Math.Max(1, step.Seq), shuffle: false, seed: 0, train: true);
        Func<IReadOnlyList<Tensor>, Optimizer> optimizer = step.Optimizer == "sgd"
            ? p => new Sgd(p, 0.01, momentum: step.Momentum)
            : p => new AdamW(p, 1e-4);
        return new Trainer(model, new SdpOptions(), optimizer, _ => data, new TrainerOptions { Steps = steps, Schedule = new ConstantSchedule(1e-4) });
    }

    /// <summary>
    /// The Sdp side of bench/torch_baseline.py --lockstep: every step of the JSON built and warmed up, "ready", then one
    /// timed step per name read, its milliseconds written back, so that the script can alternate PyTorch's steps with
    /// Sdp's and a load that comes and goes falls on both alike. An unknown name is answered with an error line.
    /// </summary>
    public static void ServeSteps(TextReader input, TextWriter output, TorchBaseline baseline, int warmup)
    {
        int threads = Gemm.MaxThreads;
        Gemm.MaxThreads = baseline.Threads;
        var trainers = new Dictionary<string, Trainer>();
        try
        {
            foreach (var step in baseline.Steps)
            {
                var trainer = SdpStepTrainer(step, long.MaxValue);
                trainers[step.Name] = trainer;
                for (int i = 0; i < warmup; i++) trainer.TrainStep();
            }
            output.WriteLine("ready");
            output.Flush();
            while (input.ReadLine() is { } line)
            {
                string name = line.Trim();
                if (name.Length == 0) continue;
                output.WriteLine(trainers.TryGetValue(name, out var trainer)
                    ? trainer.TrainStep().StepMs.ToString("R", CultureInfo.InvariantCulture)
                    : $"error: no step '{name}' in the JSON (steps: {string.Join(", ", trainers.Keys)})");
                output.Flush();
            }
        }
        finally
        {
            foreach (var t in trainers.Values) t.Dispose();
            Gemm.MaxThreads = threads;
        }
    }
}
