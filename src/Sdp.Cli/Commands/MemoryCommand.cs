using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Engine.Backends.Cuda;
using Sdp.Engine.Backends.Meta;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Subnetworks;

namespace Sdp.Cli.Commands;

/// <summary>
/// `sdp memory`: the analytical per-worker memory (parameters, gradients, optimizer state, activations)
/// of data parallelism and of an SDP variant (method reference §4.2, A19), or of every variant; with
/// --measure one real training step (dp: a dense worker; sdp: the largest worker, run alone) is run and its peaks are compared.
/// </summary>
public static partial class MemoryCommand
{
    /// <summary>The coverages that --all-variants tabulates.</summary>
    public static readonly double[] VariantCoverages = [0.75, 0.5, 0.25];

    public sealed record Options(
        MemoryWorkload Workload, string ModelLabel, int Workers, bool Sdp, SdpVariant Variant, OptimizerMemory Optimizer,
        bool AllVariants, bool Json, bool Measure, string Device = "cpu", long? MaxMemory = null);

    public static Command Create()
    {
        // Required unless --report, which has its own fixed set of models and workers.
        var model = new Option<string>("--model") { Description = "llama:tiny, llama:130m, llama:1b, llama:<config.json>, resnet18 or resnet18:<width> (required unless --report)" };
        var workers = new Option<int>("--workers") { Description = "Workers W (required unless --report)" };
        var mode = new Option<string>("--mode") { Description = "dp or sdp", DefaultValueFactory = _ => "sdp" };
        mode.AcceptOnlyFromAmong("dp", "sdp");
        var subnet = new Option<string>("--subnet") { Description = "neuron or block", DefaultValueFactory = _ => "neuron" };
        subnet.AcceptOnlyFromAmong("neuron", "block");
        var masking = new Option<string>("--masking") { Description = "forward or backward", DefaultValueFactory = _ => "forward" };
        masking.AcceptOnlyFromAmong("forward", "backward");
        var coverage = new Option<double>("--coverage") { Description = "Coverage C: each unit is held by C·W workers (a whole number in [1, W])", DefaultValueFactory = _ => 0.5 };
        var batch = new Option<int?>("--batch") { Description = "Per-worker batch: sequences (llama, default 8) or images (resnet18, default 64)" };
        var seq = new Option<int>("--seq") { Description = "Tokens per sequence (llama)", DefaultValueFactory = _ => 1024 };
        var imageSize = new Option<int>("--image-size") { Description = "Image side in pixels (resnet18)", DefaultValueFactory = _ => 32 };
        var optimizer = new Option<string>("--optimizer") { Description = "adamw (8 B/param of state) or sgd (4 B/param with momentum, 0 without)", DefaultValueFactory = _ => "adamw" };
        optimizer.AcceptOnlyFromAmong("adamw", "sgd");
        var momentum = new Option<double>("--momentum") { Description = "SGD momentum (0: no state)", DefaultValueFactory = _ => 0.9 };
        var seed = new Option<ulong>("--seed") { Description = "Seed of the subnetwork plan", DefaultValueFactory = _ => 0UL };
        var maskHeads = new Option<bool>("--mask-heads") { Description = "llama neuron level: also mask attention heads (per key/value head group)" };
        var splitSublayers = new Option<bool>("--split-sublayers") { Description = "llama block level: attention and MLP sub-blocks are separate units" };
        var keepDownsample = new Option<bool>("--keep-downsample-blocks") { Description = "resnet18 block level: never drop the downsampling blocks (they become shared)" };
        var allVariants = new Option<bool>("--all-variants") { Description = "One row per variant (neuron/block x forward/backward) and C in {0.75, 0.5, 0.25}" };
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var measure = new Option<bool>("--measure") { Description = "Really allocate and run one training step at this scale (dp: a dense worker; sdp: the largest worker) and compare its peaks with the model" };
        var device = new Option<string>("--device") { Description = "Where --measure runs: cpu, cuda or cuda:K (then device memory is reported too), or meta (accounting only, no storage or compute: any model size)", DefaultValueFactory = _ => "cpu" };
        var maxMemory = new Option<string?>(MemoryBudget.Option) { Description = MemoryBudget.Description };
        var report = new Option<string?>("--report") { Description = $"Write {ReportMarkdown} and {ReportImage} into this directory: DP against every SDP variant for ResNet-18 and LLaMA tiny (measured) and ResNet-18, LLaMA 130m and 1b (analytical), W = 8" };

        var cmd = new Command("memory", "Per-worker memory of data parallelism and SDP: parameters, gradients, optimizer state, activations")
        {
            model, workers, mode, subnet, masking, coverage, batch, seq, imageSize, optimizer, momentum, seed,
            maskHeads, splitSublayers, keepDownsample, allVariants, json, measure, device, report, maxMemory,
        };
        cmd.SetAction(p =>
        {
            if (p.GetValue(report) is { } dir)
            {
                // The report's models, workers and variants are fixed so its numbers can be reproduced by its one command.
                Option[] fixedByReport = [model, workers, mode, subnet, masking, coverage, batch, seq, imageSize, optimizer, momentum, maskHeads, splitSublayers, keepDownsample, allVariants, json, measure, device, maxMemory];
                if (fixedByReport.FirstOrDefault(o => p.GetResult(o) is { Implicit: false }) is { } given)
                    throw new UsageException($"{given.Name}: --report writes a fixed set of models and variants; only --seed may be given with it");
                ulong planSeed = p.GetValue(seed);
                return Report(dir, planSeed, $"sdp memory --report {dir}{(planSeed == 0 ? "" : $" --seed {planSeed}")}", Console.Out);
            }
            if (p.GetValue(model) is null) throw new UsageException("--model is required (or --report DIR)");
            if (p.GetResult(workers) is null or { Implicit: true }) throw new UsageException("--workers is required (or --report DIR)");
            int w = Check.Positive(p.GetValue(workers), "--workers");
            var (workload, label) = ParseModel(p.GetValue(model)!, p.GetValue(batch), Check.Positive(p.GetValue(seq), "--seq"), Check.Positive(p.GetValue(imageSize), "--image-size"));
            double c = p.GetValue(coverage);
            bool sdp = p.GetValue(mode) == "sdp";
            bool all = p.GetValue(allVariants);
            if (sdp && !all)
            {
                Check.Coverage(w, c);
            }
            var subnetOptions = new SubnetOptions
            {
                MaskHeads = p.GetValue(maskHeads),
                SplitSublayers = p.GetValue(splitSublayers),
                Downsample = p.GetValue(keepDownsample) ? DownsampleBlocks.AlwaysKeep : DownsampleBlocks.DropBranchKeepShortcut,
            };
            var variant = new SdpVariant(SubnetworkPlan.ParseLevel(p.GetValue(subnet)!),
                p.GetValue(masking) == "forward" ? Masking.Forward : Masking.Backward, c, p.GetValue(seed), subnetOptions);
            double mom = Check.NonNegativeReal(p.GetValue(momentum), "--momentum");
            var opt = p.GetValue(optimizer) == "adamw" ? OptimizerMemory.AdamW : mom > 0 ? OptimizerMemory.SgdMomentum : OptimizerMemory.Sgd;
            bool measureStep = p.GetValue(measure);
            if (measureStep && all) throw new UsageException("--measure runs one step of one variant; it cannot be combined with --all-variants");
            string where = p.GetValue(device)!;
            if (where != "cpu" && !measureStep) throw new UsageException("--device chooses where --measure runs; pass --measure too");
            long? budget = p.GetValue(maxMemory) is { } size ? MemoryBudget.Parse(size) : null;
            if (budget is not null && all) throw new UsageException($"{MemoryBudget.Option} checks one configuration; it cannot be combined with --all-variants");
            return Run(new Options(workload, label, w, sdp, variant, opt, all, p.GetValue(json), measureStep, where, budget), Console.Out);
        });
        return cmd;
    }

    /// <summary>
    /// Parses --model: llama:&lt;preset|config.json|folder&gt; (bare "llama" is the tiny preset) or
    /// resnet18[:width] (default width 64, CIFAR-10 head); the default batch is 8 sequences or 64 images.
    /// </summary>
    public static (MemoryWorkload Workload, string Label) ParseModel(string model, int? batch, int seq, int imageSize)
    {
        int colon = model.IndexOf(':', StringComparison.Ordinal);
        string kind = colon < 0 ? model : model[..colon];
        string? arg = colon < 0 ? null : model[(colon + 1)..];
        if (batch is { } b) Check.Positive(b, "--batch");
        switch (kind)
        {
            case "llama":
            {
                string spec = string.IsNullOrEmpty(arg) ? "tiny" : arg;
                LlamaConfig config;
                try
                {
                    config = RunSetup.LlamaConfigFrom(spec, "--model");
                }
                catch (Exception e) when (e is FormatException or ArgumentException or InvalidDataException)
                {
                    throw new UsageException($"--model: {CliRunner.MessageOf(e)}");
                }
                return (new LlamaWorkload(config, batch ?? 8, seq), "llama:" + spec);
            }
            case "resnet18":
            {
                int width = 64;
                if (arg is not null && (!int.TryParse(arg, NumberStyles.None, CultureInfo.InvariantCulture, out width) || width < 1 || width > ResNetConfig.MaxWidth))
                    throw new UsageException($"--model: resnet18 width must be a positive integer (resnet18:64), got '{arg}'");
                return (new ResNetWorkload(new ResNetConfig(width), batch ?? 64, imageSize), arg is null ? "resnet18" : "resnet18:" + arg);
            }
            default:
                throw new UsageException($"--model must be llama:<preset|config.json> or resnet18[:width], got '{model}'");
        }
    }

    public static int Run(Options o, TextWriter output)
    {
        if (o.AllVariants) return AllVariants(o, output);
        var dp = MemoryModel.Estimate(o.Workload, o.Optimizer, o.Workers, null);
        MemoryEstimate? sdp;
        try
        {
            sdp = o.Sdp ? MemoryModel.Estimate(o.Workload, o.Optimizer, o.Workers, o.Variant) : null;
        }
        catch (ArgumentException e)
        {
            throw new UsageException($"--coverage: {CliRunner.MessageOf(e)}");
        }
        // Before --measure allocates anything.
        if (o.MaxMemory is { } budget) MemoryBudget.Require(sdp ?? dp, budget);
        // SDP: the worker the model says is the largest is built and stepped for real, on the chosen device.
        MeasuredMemory? measured = null;
        string? deviceLine = null;
        if (o.Measure)
        {
            // The meta device runs the step's bookkeeping without storage or compute: any scale fits in a few MB.
            using var devices = o.Device == "meta" ? null : DeviceSelection.Open(o.Device, workers: 1);
            string? banner = devices is null ? MetaBanner : devices.Banner;
            if (banner is not null && !o.Json) output.WriteLine(banner);
            var worker = devices?.Worker(0) ?? new MetaBackend(readsAsZeros: true);
            using (DeviceScope.Use(worker))
            {
                measured = sdp is null ? MemoryMeasurement.MeasureDenseStep(o.Workload, o.Optimizer)
                    : MemoryMeasurement.MeasureSdpWorker(o.Workload, o.Optimizer, o.Workers, o.Variant, sdp.MaxWorker);
            }
            if (worker is CudaBackend cuda)
            {
                var a = cuda.Allocator;
                deviceLine = $"device memory ({cuda}): the caching allocator reserved at most {B(a.PeakReservedBytes)} from cuMemAlloc for a measured peak of {B(measured.PeakTotal)} " +
                             $"(size-class rounding and cached blocks: {MemoryReport.Percent((double)(a.PeakReservedBytes - measured.PeakTotal) / Math.Max(1, measured.PeakTotal), signed: true)})";
            }
        }

        if (o.Json)
        {
            var root = Header(o);
            root["dp"] = Json(dp.Dp);
            if (sdp is not null) root["sdp"] = Json(sdp);
            if (measured is not null) root["measured"] = Json(measured);
            output.WriteLine(root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }

        WriteHeader(o, output);
        if (sdp is not null)
        {
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"SDP: {SubnetworkPlan.LevelName(o.Variant.Level)} level, {SdpVariant.MaskingName(o.Variant.Masking)} masking, C = {o.Variant.Coverage:0.###} ({SubnetworkPlan.HoldersFor(o.Workers, o.Variant.Coverage)} holders per unit), plan seed {o.Variant.Seed}{Switches(o)}"));
        }
        output.WriteLine();
        string row = "{0,-18} {1,13} {2,13} {3,13} {4,13} {5,13}";
        output.WriteLine(Fmt(row, "per worker", "parameters", "gradients", "optimizer", "activations", "total"));
        void Line(string name, CategoryBytes c, long total) => output.WriteLine(Fmt(row, name, B(c.Parameters), B(c.Gradients), B(c.OptimizerState), B(c.Activations), B(total)));
        Line(o.Sdp ? "DP" : "DP (every worker)", dp.Dp, dp.Dp.Total);
        if (sdp is not null)
        {
            for (int w = 0; w < sdp.PerWorker.Count; w++) Line($"SDP worker {w}", sdp.PerWorker[w], sdp.PerWorker[w].Total);
            Line("SDP max", sdp.Max, sdp.MaxTotal);
            var s = sdp.Saving;
            output.WriteLine(Fmt(row, "saving vs DP", P(s.Parameters), P(s.Gradients), P(s.OptimizerState), P(s.Activations), P(s.Total)));
            output.WriteLine();
            output.WriteLine($"The SDP max row holds the largest value of each column over the workers; its total is that of the largest worker ({sdp.MaxWorker}).");
            output.WriteLine($"static memory (parameters + gradients + optimizer): DP {B(dp.Dp.Static)}, SDP max {B(sdp.MaxStatic)}, saving {P(s.Static)}.");
        }
        else
        {
            output.WriteLine();
        }
        output.WriteLine("Workspace (transient op outputs, activation gradients, kernel scratch) is not modelled.");
        if (measured is not null)
        {
            output.WriteLine();
            var (title, model) = sdp is null
                ? ("measured: one dense training step (peaks of the worker's memory account)", dp.Dp)
                : ($"measured: one training step of SDP worker {sdp.MaxWorker}, run alone (peaks of its memory account)", sdp.PerWorker[sdp.MaxWorker]);
            foreach (var line in MemoryReport.ComparisonTable(title, model, measured)) output.WriteLine(line);
            if (deviceLine is not null) output.WriteLine(deviceLine);
        }
        return 0;
    }

    private const string MetaBanner = "device: meta (shapes, dtypes and memory accounting; no storage, no compute): the step's parameters, gradients, " +
        "optimizer state and activations are accounted as on a real device, at no cost; kernel scratch (workspace) is each real backend's own and is not";

    private static int AllVariants(Options o, TextWriter output)
    {
        var dp = MemoryModel.DenseBytes(o.Workload, o.Optimizer);
        var rows = new List<(SdpVariant Variant, MemoryEstimate? Estimate, string? Why)>();
        foreach (var level in new[] { SubnetLevel.Neuron, SubnetLevel.Block })
            foreach (var masking in new[] { Masking.Forward, Masking.Backward })
                foreach (double c in VariantCoverages)
                {
                    var v = o.Variant with { Level = level, Masking = masking, Coverage = c };
                    try
                    {
                        rows.Add((v, MemoryModel.Estimate(o.Workload, o.Optimizer, o.Workers, v), null));
                    }
                    catch (ArgumentException e)
                    {
                        rows.Add((v, null, CliRunner.MessageOf(e)));
                    }
                }

        if (o.Json)
        {
            var root = Header(o);
            root["dp"] = Json(dp);
            var arr = new JsonArray();
            foreach (var (v, e, why) in rows)
            {
                var r = new JsonObject { ["subnet"] = SubnetworkPlan.LevelName(v.Level), ["masking"] = SdpVariant.MaskingName(v.Masking), ["coverage"] = v.Coverage };
                if (e is null)
                {
                    r["error"] = why;
                }
                else
                {
                    var s = e.Saving;
                    r["max_total_bytes"] = e.MaxTotal;
                    r["max_static_bytes"] = e.MaxStatic;
                    r["max_activation_bytes"] = e.Max.Activations;
                    r["saving_total"] = s.Total;
                    r["saving_static"] = s.Static;
                    r["saving_activations"] = s.Activations;
                }
                arr.Add(r);
            }
            root["variants"] = arr;
            output.WriteLine(root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }

        WriteHeader(o, output);
        output.WriteLine($"all variants, plan seed {o.Variant.Seed}{Switches(o)}");
        output.WriteLine();
        string row = "{0,-16} {1,5} {2,13} {3,8} {4,13} {5,8} {6,13} {7,8}";
        output.WriteLine(Fmt(row, "variant", "C", "max total", "saving", "max static", "saving", "max activ.", "saving"));
        output.WriteLine(Fmt(row, "DP", "1", B(dp.Total), "-", B(dp.Static), "-", B(dp.Activations), "-"));
        foreach (var (v, e, why) in rows)
        {
            string name = $"{SubnetworkPlan.LevelName(v.Level)}/{SdpVariant.MaskingName(v.Masking)}";
            string c = v.Coverage.ToString("0.##", CultureInfo.InvariantCulture);
            if (e is null)
            {
                output.WriteLine(Fmt("{0,-16} {1,5}   not available: {2}", name, c, why!));
                continue;
            }
            var s = e.Saving;
            output.WriteLine(Fmt(row, name, c, B(e.MaxTotal), P(s.Total), B(e.MaxStatic), P(s.Static), B(e.Max.Activations), P(s.Activations)));
        }
        output.WriteLine();
        output.WriteLine("max = the largest value over the workers; static = parameters + gradients + optimizer state; saving = 1 - SDP max / DP.");
        output.WriteLine("Workspace (transient op outputs, activation gradients, kernel scratch) is not modelled.");
        return 0;
    }

    private static void WriteHeader(Options o, TextWriter output)
    {
        output.WriteLine($"sdp memory: {o.Workload.Describe()}");
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{OptimizerName(o.Optimizer)} ({MemoryModel.OptimizerBytesPerParam(o.Optimizer)} B/param of state), float32, W = {o.Workers}"));
    }

    private static string Switches(Options o)
    {
        var s = o.Variant.SubnetOptions;
        var on = new List<string>();
        if (o.Workload is LlamaWorkload)
        {
            if (s.MaskHeads) on.Add("attention heads masked");
            if (s.SplitSublayers) on.Add("sub-blocks as units");
        }
        else if (s.Downsample == DownsampleBlocks.AlwaysKeep)
        {
            on.Add("downsampling blocks kept");
        }
        return on.Count == 0 ? "" : ", " + string.Join(", ", on);
    }

    private static string OptimizerName(OptimizerMemory o) => o switch
    {
        OptimizerMemory.AdamW => "adamw",
        OptimizerMemory.SgdMomentum => "sgd with momentum",
        _ => "sgd without momentum",
    };

    private static JsonObject Header(Options o)
    {
        var root = new JsonObject { ["model"] = o.ModelLabel, ["parameters"] = o.Workload.ParameterCount, ["batch"] = o.Workload.Batch };
        switch (o.Workload)
        {
            case LlamaWorkload l:
                root["seq"] = l.SeqLen;
                break;
            case ResNetWorkload r:
                root["image_size"] = r.ImageSize;
                break;
        }
        root["optimizer"] = OptimizerName(o.Optimizer);
        root["dtype"] = "float32";
        root["workers"] = o.Workers;
        root["workspace_modelled"] = false;
        return root;
    }

    /// <summary>{"parameters": B, "gradients": B, "optimizer_state": B, "activations": B, "static": B, "total": B}.</summary>
    public static JsonObject Json(CategoryBytes c) => new()
    {
        ["parameters"] = c.Parameters, ["gradients"] = c.Gradients, ["optimizer_state"] = c.OptimizerState,
        ["activations"] = c.Activations, ["static"] = c.Static, ["total"] = c.Total,
    };

    private static JsonObject Json(MemoryEstimate e)
    {
        var v = e.Variant!;
        var s = e.Saving;
        var workers = new JsonArray();
        foreach (var w in e.PerWorker) workers.Add(Json(w));
        var max = Json(e.Max);
        max["total"] = e.MaxTotal;
        max["static"] = e.MaxStatic;
        return new JsonObject
        {
            ["subnet"] = SubnetworkPlan.LevelName(v.Level), ["masking"] = SdpVariant.MaskingName(v.Masking), ["coverage"] = v.Coverage,
            ["seed"] = v.Seed, ["mask_heads"] = v.SubnetOptions.MaskHeads, ["split_sublayers"] = v.SubnetOptions.SplitSublayers,
            ["keep_downsample_blocks"] = v.SubnetOptions.Downsample == DownsampleBlocks.AlwaysKeep,
            ["workers"] = workers, ["max"] = max, ["max_worker"] = e.MaxWorker,
            ["saving"] = new JsonObject
            {
                ["parameters"] = s.Parameters, ["gradients"] = s.Gradients, ["optimizer_state"] = s.OptimizerState,
                ["activations"] = s.Activations, ["static"] = s.Static, ["total"] = s.Total,
            },
        };
    }

    private static JsonObject Json(MeasuredMemory m)
    {
        var o = Json(m.Peaks);
        o["workspace"] = m.WorkspacePeak;
        o["peak_total"] = m.PeakTotal;
        return o;
    }

    private static string B(long bytes) => MemoryReport.Bytes(bytes);

    private static string P(double fraction) => MemoryReport.Percent(fraction);

    private static string Fmt(string format, params object[] args) => string.Format(CultureInfo.InvariantCulture, format, args);
}
