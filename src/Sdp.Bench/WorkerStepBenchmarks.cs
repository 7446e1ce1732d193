using System.Globalization;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Subnetworks;
using Sdp.Kernels.Cpu;
using Sdp.Models.Data;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;

namespace Sdp.Bench;

/// <summary>
/// One worker's training step (forward, backward, AdamW update) alone, as `sdp bench step` times it
/// (<see cref="IsolatedWorkerStep"/>): worker 0 of a W = 4 plan for DP and the four SDP variants (neuron/block level,
/// forward/backward masking) at C = 1, 0.75, 0.5 and 0.25, on LLaMA tiny (batch × 64 tokens of the synthetic Markov
/// source) and ResNet-18 of width 16 (batch images of the shapes set). DP is the baseline: "time / DP" divides by the
/// DP row of the same model; "held d" is the worker's share of the parameters.
/// </summary>
[Config(typeof(StepConfig))]
public class WorkerStepBenchmarks
{
    public const int Seq = 64;

    private IsolatedWorkerStep? _step;

    [Params("llama", "resnet18")]
    public string Model { get; set; } = "llama";

    [ParamsSource(nameof(Variants))]
    public StepVariant Variant { get; set; } = StepVariant.Dp;

    public static IEnumerable<StepVariant> Variants => StepVariant.All([1.0, 0.75, 0.5, 0.25]);

    [Params(4)]
    public int Workers { get; set; } = 4;

    /// <summary>Sequences (llama) or images (resnet18) per step.</summary>
    [Params(8)]
    public int Batch { get; set; } = 8;

    [GlobalSetup]
    public void Setup()
    {
        BaselineReport.Print(nameof(WorkerStepBenchmarks), $"DP: the dense model's step on the same batches, {Gemm.MaxThreads} threads");
        var model = SubnetworkModelAt(Model, Variant.Level ?? SubnetLevel.Block);
        IBatchSource data = Model == "llama"
            ? new TokenBatches(new MarkovTokenSource(new MarkovChain(256, seed: 0), Batch, Seq))
            : new ImageBatches(new ImageLoader(ShapesDataset.Create(Math.Max(64, 4 * Batch), seed: 0), Batch));
        // This process's work is on the CPU (the CUDA counterpart is `sdp bench kernels --device cuda`).
        _step = IsolatedWorkerStep.Create(model, Variant, Workers, data, device: CpuBackend.Instance);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _step?.Dispose();
        _step = null;
    }

    [Benchmark]
    public double Step() => _step!.Run();

    /// <summary>The suite's models: LLaMA tiny, ResNet-18 of width 16 on 3-channel images of 10 classes.</summary>
    public static SubnetworkModel SubnetworkModelAt(string model, SubnetLevel level) => model switch
    {
        "llama" => SubnetworkModels.Llama(LlamaConfig.Preset("tiny"), level, new SubnetOptions(), seed: 0),
        "resnet18" => SubnetworkModels.ResNet18(new ResNetConfig(16, ShapesDataset.Classes, 3), level, new SubnetOptions(), seed: 0),
        _ => throw new ArgumentException($"unknown model '{model}': llama or resnet18", nameof(model)),
    };

    private sealed class StepConfig : ManualConfig
    {
        public StepConfig()
        {
            AddColumn(new RelativeToParameterColumn("time / DP", nameof(Variant), v => v is StepVariant { IsDp: true }));
            AddColumn(new ParameterDerivedColumn("held d", "The worker's share of the model's parameters", c =>
            {
                var variant = (StepVariant)c.Parameters[nameof(Variant)];
                var units = SubnetworkModelAt((string)c.Parameters[nameof(Model)], variant.Level ?? SubnetLevel.Block).Units;
                return IsolatedWorkerStep.HeldFractionOf(units, variant, Convert.ToInt32(c.Parameters[nameof(Workers)], CultureInfo.InvariantCulture)).ToString("P1", CultureInfo.InvariantCulture);
            }));
            AddColumn(new BaselineColumn(() => $"DP (the dense model's step), {Gemm.MaxThreads} threads"));
        }
    }
}
