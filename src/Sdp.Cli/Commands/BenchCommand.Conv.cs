using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Sdp.Engine;
using Sdp.Engine.Backends.Cpu;

namespace Sdp.Cli.Commands;

/// <summary>
/// `sdp bench conv`: the CPU backend's convolutions on CIFAR ResNet-18's shapes (width 64), forward, input gradient
/// and weight gradient timed apart, under each algorithm (Winograd, implicit GEMM, im2col) and beside a plain SGEMM of
/// the direct convolution's M x N x K in the same run, so that what a convolution adds to its GEMM (unfolding, folding,
/// copies, idle threads), or saves (Winograd's fewer multiplications), shows as a ratio.
/// </summary>
public static partial class BenchCommand
{
    /// <summary>One convolution shape of the network and how often it occurs in one step.</summary>
    private readonly record struct ConvShape(string Name, int C, int O, int H, int K, int Stride, int Pad, int Count);

    private static readonly ConvShape[] ResNet18Convs =
    [
        new("stem 3>64 32", 3, 64, 32, 3, 1, 1, 1),
        new("64>64 32", 64, 64, 32, 3, 1, 1, 4),
        new("64>128 s2", 64, 128, 32, 3, 2, 1, 1),
        new("ds 64>128 1x1 s2", 64, 128, 32, 1, 2, 0, 1),
        new("128>128 16", 128, 128, 16, 3, 1, 1, 3),
        new("128>256 s2", 128, 256, 16, 3, 2, 1, 1),
        new("ds 128>256 1x1 s2", 128, 256, 16, 1, 2, 0, 1),
        new("256>256 8", 256, 256, 8, 3, 1, 1, 3),
        new("256>512 s2", 256, 512, 8, 3, 2, 1, 1),
        new("ds 256>512 1x1 s2", 256, 512, 8, 1, 2, 0, 1),
        new("512>512 4", 512, 512, 4, 3, 1, 1, 3),
    ];

    private static Command ConvCommand()
    {
        var batch = new Option<int>("--batch") { Description = "Images per batch", DefaultValueFactory = _ => 32 };
        var samples = new Option<int>("--samples") { Description = "Timed calls per cell (median kept), after 1 warm-up", DefaultValueFactory = _ => 5 };
        var steps = new Option<int>("--steps") { Description = "Also time this many whole ResNet-18 (width 64) training steps of one DP worker, with the winograd, winograd-fast, implicit, im2col and wino-old convolutions in turn (0: none)", DefaultValueFactory = _ => 0 };
        var tile = new Option<int>("--winograd-tile") { Description = "Winograd output tile m of F(m x m, 3 x 3), 2 or 4, for all three passes (0: the backend's choice)", DefaultValueFactory = _ => 0 };
        var only = new Option<string?>("--shape") { Description = "Time only the shapes whose name contains this text (e.g. '512>512')" };
        var groupTiles = new Option<int>("--winograd-group-tiles") { Description = "Tiles per Winograd group (the transformed buffers hold one group; 0: the backend's default)", DefaultValueFactory = _ => 0 };
        var cmd = new Command("conv", "CPU conv2d forward, input and weight gradient on ResNet-18's shapes, per algorithm, each against an SGEMM of the same size") { batch, samples, steps, tile, only, groupTiles };
        cmd.SetAction(p =>
        {
            if (p.GetValue(tile) is int m and not 0)
            {
                Sdp.Kernels.Cpu.WinogradTransform.ForTile(m); // rejects sizes without a transform
                CpuBackend.WinogradTile = CpuBackend.WinogradWeightGradTile = m;
            }

            if (p.GetValue(groupTiles) is int gt and not 0) CpuBackend.WinogradGroupTiles = Check.Positive(gt, "--winograd-group-tiles");
            int n = Check.Positive(p.GetValue(batch), "--batch");
            ConvBench(Console.Out, n, Check.Positive(p.GetValue(samples), "--samples"), p.GetValue(only));
            if (p.GetValue(steps) > 0) ConvStepBench(Console.Out, n, p.GetValue(steps));
            return 0;
        });
        return cmd;
    }

    /// <summary>The algorithms timed side by side, in column order.</summary>
    private static readonly (string Name, CpuConvAlgorithm Algorithm)[] ConvAlgorithms =
        [("winograd", CpuConvAlgorithm.Winograd), ("winograd-fast", CpuConvAlgorithm.WinogradFast), ("implicit", CpuConvAlgorithm.Implicit), ("im2col", CpuConvAlgorithm.Im2col)];

    /// <summary>Indices of the timed columns, derived from <see cref="ConvAlgorithms"/>'s order: its algorithms, then the first
    /// Winograd version, then (per-pass table only) the same-size SGEMM.</summary>
    private static readonly int Winograd = Column(CpuConvAlgorithm.Winograd), WinogradFast = Column(CpuConvAlgorithm.WinogradFast),
        Implicit = Column(CpuConvAlgorithm.Implicit), Im2col = Column(CpuConvAlgorithm.Im2col), WinoOld = ConvAlgorithms.Length, GemmColumn = ConvAlgorithms.Length + 1;

    private static int Column(CpuConvAlgorithm algorithm) => Array.FindIndex(ConvAlgorithms, a => a.Algorithm == algorithm);

    /// <summary>Runs act under one algorithm, restoring the process's choice after.</summary>
    private static void WithConvAlgorithm(CpuConvAlgorithm algorithm, Action act)
    {
        var old = CpuBackend.ConvAlgorithm;
        CpuBackend.ConvAlgorithm = algorithm;
        try
        {
            act();
        }
        finally
        {
            CpuBackend.ConvAlgorithm = old;
        }
    }

    private static unsafe void ConvBench(TextWriter output, int n, int samples, string? only)
    {
        var inv = CultureInfo.InvariantCulture;
        var cpu = CpuBackend.Instance;
        var rng = new Random(1);
        output.WriteLine($"conv2d on the CPU backend, batch {n}, {Sdp.Kernels.Cpu.Gemm.MaxThreads} thread(s), median of {samples}, the six timed in turn per sample;");
        output.WriteLine("winograd = the default path (SDP_CPU_CONV=winograd: Winograd for 3x3 stride 1, implicit GEMM elsewhere), fast = SDP_CPU_CONV=winograd-fast (F(4x4) in every pass),");
        output.WriteLine("implicit = implicit-GEMM conv, im2col = im2col + GEMM conv,");
        output.WriteLine("gemm = Sgemm of the direct convolution's M x N x K (the baseline; Winograd does fewer FLOPs and may beat it); GFLOP/s = direct FLOPs / winograd time;");
        output.WriteLine("step ms = winograd ms x count; KiB alloc = managed allocation of one winograd call, all threads; faults = its minor page faults");
        output.WriteLine("(first touches of freshly mapped memory, 4 KiB each; Linux only);");
        output.WriteLine("wino-old = the same with the first version's Winograd transforms (per tile, gathered, unpadded strides, 512-tile groups), CpuBackend.WinogradLegacyTransforms;");
        output.WriteLine("phases = the Winograd call's ms in workspace allocation / filter transform / input-side transforms / GEMMs / output-side transforms (dw: filter-gradient transform), mean of 3 calls after the timing");
        output.WriteLine($"{"shape",-20}{"x",4}{"pass",6}{"winograd",10}{"GFLOP/s",9}{"wino-old",10}{"new/old",9}{"fast",10}{"implicit",10}{"im2col",10}{"gemm ms",10}{"wino/impl",11}{"wino/gemm",11}{"step ms",10}{"KiB alloc",10}{"faults",8}  phases new | old");
        var totals = new double[ConvAlgorithms.Length + 2];
        foreach (var s in ResNet18Convs)
        {
            if (only is not null && !s.Name.Contains(only, StringComparison.Ordinal)) continue;
            int oh = (s.H + 2 * s.Pad - s.K) / s.Stride + 1, p = oh * oh, k = s.C * s.K * s.K;
            using var x = Random(new Shape(n, s.C, s.H, s.H), rng);
            using var w = Random(new Shape(s.O, s.C, s.K, s.K), rng);
            using var y = Tensor.Zeros(new Shape(n, s.O, oh, oh), DType.Float32, cpu);
            using var dy = Random(new Shape(n, s.O, oh, oh), rng);
            using var dx = Tensor.Zeros(x.Shape, DType.Float32, cpu);
            using var dw = Tensor.Zeros(w.Shape, DType.Float32, cpu);
            // The equivalent GEMM's operands: the largest of the three passes' M x K, K x N, M x N.
            long big = Math.Max((long)s.O * k, Math.Max((long)k * n * p, (long)s.O * n * p));
            var ga = new float[big];
            var gb = new float[big];
            var gc = new float[big];
            for (int i = 0; i < big; i++) { ga[i] = (float)rng.NextDouble(); gb[i] = (float)rng.NextDouble(); }
            double flops = 2.0 * s.O * k * n * p;
            (string Pass, Action Conv, int M, int N, int K)[] passes =
            [
                ("fwd", () => cpu.Conv2d(x, w, null, y, s.Stride, s.Pad), s.O, n * p, k),
                ("dx", () => cpu.Conv2dBackward(null, w, dy, dx, null, null, s.Stride, s.Pad), k, n * p, s.O),
                ("dw", () => cpu.Conv2dBackward(x, null, dy, null, dw, null, s.Stride, s.Pad), s.O, k, n * p),
            ];
            foreach (var pass in passes)
            {
                if (pass.Pass == "dx" && s.C == 3) continue; // the stem's input needs no gradient
                double[] ms;
                fixed (float* a = ga, b = gb, c = gc)
                {
                    nint ap = (nint)a, bp = (nint)b, cp = (nint)c;
                    int m = pass.M, nn = pass.N, kk = pass.K;
                    // Column order: the algorithms as ConvAlgorithms lists them, then wino-old, then the GEMM.
                    var actions = ConvAlgorithms.Select(alg => (Action)(() => WithConvAlgorithm(alg.Algorithm, pass.Conv))).ToList();
                    actions.Add(() => WithLegacyWinograd(pass.Conv));
                    actions.Add(() => Sdp.Kernels.Cpu.Gemm.Sgemm(false, false, m, nn, kk, 1f, (float*)ap, kk, (float*)bp, nn, 0f, (float*)cp, nn));
                    ms = MedianMsInTurn(samples, [.. actions]);
                }
                var phases = WinogradPhases(pass.Conv);
                var legacyPhases = WinogradPhases(() => WithLegacyWinograd(pass.Conv));
                long faultsBefore = MinorPageFaults();
                long before = GC.GetTotalAllocatedBytes(precise: true);
                WithConvAlgorithm(CpuConvAlgorithm.Winograd, pass.Conv);
                long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
                long faults = MinorPageFaults() - faultsBefore;
                for (int i = 0; i < ms.Length; i++) totals[i] += ms[i] * s.Count;
                double wino = ms[Winograd], fast = ms[WinogradFast], impl = ms[Implicit], im2col = ms[Im2col], old = ms[WinoOld], gemmMs = ms[GemmColumn];
                output.WriteLine(string.Create(inv, $"{s.Name,-20}{s.Count,4}{pass.Pass,6}{wino,10:F2}{flops / wino / 1e6,9:F1}{old,10:F2}{wino / old,9:F2}{fast,10:F2}{impl,10:F2}{im2col,10:F2}{gemmMs,10:F2}{wino / impl,11:F2}{wino / gemmMs,11:F2}{wino * s.Count,10:F1}{allocated / 1024.0,10:F1}{(faults < 0 ? "-" : faults.ToString(inv)),8}  {Phases(phases)} | {Phases(legacyPhases)}"));
            }
        }
        output.WriteLine(string.Create(inv, $"total per step: winograd {totals[Winograd]:F1} ms, winograd-fast {totals[WinogradFast]:F1} ms, implicit {totals[Implicit]:F1} ms, im2col {totals[Im2col]:F1} ms, wino-old {totals[WinoOld]:F1} ms, the same GEMMs {totals[GemmColumn]:F1} ms (winograd / winograd-fast {totals[Winograd] / totals[WinogradFast]:F2}, winograd / implicit {totals[Winograd] / totals[Implicit]:F2}, winograd / wino-old {totals[Winograd] / totals[WinoOld]:F2}, winograd / gemm {totals[Winograd] / totals[GemmColumn]:F2})"));
    }

    /// <summary>Whole training steps (one DP worker, AdamW) with each convolution algorithm, in turn.</summary>
    private static void ConvStepBench(TextWriter output, int batch, int steps)
    {
        var (data, _, _) = RunSetup.BuildData("resnet18", "synthetic", batch, 1, shuffle: false, seed: 0, train: true);
        var subnetwork = RunSetup.BuildSubnetworkModel("resnet18", "{\"width\":64}", 0, 3, 10, Sdp.Engine.Subnetworks.SubnetLevel.Block, new Sdp.Models.Subnetworks.SubnetOptions(), null, "--config");
        using var step = Sdp.Models.Training.IsolatedWorkerStep.Create(subnetwork, Sdp.Models.Training.StepVariant.Dp, 4, data);
        var actions = ConvAlgorithms.Select(alg => (Action)(() => WithConvAlgorithm(alg.Algorithm, () => step.Run()))).ToList();
        actions.Add(() => WithLegacyWinograd(() => step.Run()));
        var ms = MedianMsInTurn(steps, [.. actions]);
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"ResNet-18 (width 64) training step, batch {batch}, one DP worker, AdamW, median of {steps} in turn: winograd {ms[Winograd]:F1} ms, winograd-fast {ms[WinogradFast]:F1} ms, implicit {ms[Implicit]:F1} ms, im2col {ms[Im2col]:F1} ms, wino-old {ms[WinoOld]:F1} ms (winograd / winograd-fast {ms[Winograd] / ms[WinogradFast]:F2}, winograd / implicit {ms[Winograd] / ms[Implicit]:F2}, winograd / im2col {ms[Winograd] / ms[Im2col]:F2}, winograd / wino-old {ms[Winograd] / ms[WinoOld]:F2})"));
    }

    /// <summary>The process's minor page faults so far (/proc/self/stat, field 10), or -1 where that cannot be read.</summary>
    private static long MinorPageFaults()
    {
        try
        {
            string stat = File.ReadAllText("/proc/self/stat");
            // Fields after the command name, which is in parentheses and may hold spaces: state is field 3, minflt field 10.
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return long.Parse(fields[7], CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            return -1;
        }
    }

    /// <summary>Runs act with the first version's Winograd transforms and group size (512 tiles).</summary>
    private static void WithLegacyWinograd(Action act)
    {
        int groupTiles = CpuBackend.WinogradGroupTiles;
        CpuBackend.WinogradLegacyTransforms = true;
        CpuBackend.WinogradGroupTiles = 512;
        try
        {
            WithConvAlgorithm(CpuConvAlgorithm.Winograd, act);
        }
        finally
        {
            CpuBackend.WinogradLegacyTransforms = false;
            CpuBackend.WinogradGroupTiles = groupTiles;
        }
    }

    /// <summary>The mean ms per Winograd phase of 3 calls of conv (all zero when it does not run Winograd).</summary>
    private static double[] WinogradPhases(Action conv)
    {
        CpuBackend.TakeWinogradPhaseMs();
        for (int i = 0; i < 3; i++) WithConvAlgorithm(CpuConvAlgorithm.Winograd, conv);
        return [.. CpuBackend.TakeWinogradPhaseMs().Select(t => t / 3)];
    }

    private static string Phases(double[] ms) =>
        ms.Sum() == 0 ? "-" : string.Join(" / ", ms.Select(t => t.ToString("F2", CultureInfo.InvariantCulture)));

    private static Tensor Random(Shape shape, Random rng)
    {
        var data = new float[shape.Numel];
        for (int i = 0; i < data.Length; i++) data[i] = (float)(rng.NextDouble() * 2 - 1);
        return Tensor.FromArray(data, shape, CpuBackend.Instance);
    }

    /// <summary>Median ms of each action, timed in turn within every sample so that a shared machine's load falls on all alike.</summary>
    private static double[] MedianMsInTurn(int samples, params Action[] actions)
    {
        // Three warm-up rounds: the JIT's tiering promotes a kernel's hot loops only after some tens of calls.
        for (int round = 0; round < 3; round++)
        {
            foreach (var a in actions) a();
        }

        var times = new double[actions.Length][];
        for (int j = 0; j < actions.Length; j++) times[j] = new double[samples];
        for (int i = 0; i < samples; i++)
        {
            for (int j = 0; j < actions.Length; j++)
            {
                long t0 = Stopwatch.GetTimestamp();
                actions[j]();
                times[j][i] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
            }
        }
        return [.. times.Select(t => { Array.Sort(t); return t[samples / 2]; })];
    }
}
