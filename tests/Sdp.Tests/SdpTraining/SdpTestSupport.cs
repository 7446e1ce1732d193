using Sdp.Engine;
using Sdp.Engine.Optim;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Data;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;

namespace Sdp.Tests.SdpTraining;

/// <summary>Small models, data and trainer set-ups shared by the SDP acceptance tests.</summary>
internal static class SdpTestSupport
{
    /// <summary>4 layers so block level has something to drop; GQA (4 query heads over 2 key/value heads); 16 MLP units per layer.</summary>
    public static LlamaConfig Llama { get; } = new(vocabSize: 32, hiddenSize: 16, intermediateSize: 16, numHiddenLayers: 4,
        numAttentionHeads: 4, numKeyValueHeads: 2, rmsNormEps: 1e-5, maxPositionEmbeddings: 16);

    public static ResNetConfig ResNet { get; } = new(4, ShapesDataset.Classes, 3);

    public const int Batch = 2;
    public const int Seq = 8;
    public const ulong Seed = 7;

    public static SubnetworkModel LlamaModel(SubnetLevel level, SubnetOptions? options = null) => SubnetworkModels.Llama(Llama, level, options ?? new SubnetOptions(), Seed);

    public static SubnetworkModel ResNetModel(SubnetLevel level, SubnetOptions? options = null) => SubnetworkModels.ResNet18(ResNet, level, options ?? new SubnetOptions(), Seed);

    /// <summary>Worker w's stream of the shared chain, strided as real data-parallel loaders are (worker 0 of 1 = single-worker data).</summary>
    public static IBatchSource Tokens(int worker, int workers)
        => new TokenBatches(new MarkovTokenSource(new MarkovChain(Llama.VocabSize, seed: 3), Batch, Seq, worker, workers, streamSeed: 11));

    /// <summary>The same batches for every worker (A8, A11).</summary>
    public static IBatchSource SameTokens() => Tokens(0, 1);

    public static IBatchSource Images(int worker, int workers)
        => new ImageBatches(new ImageLoader(ShapesDataset.Create(64, 5, size: 8), 4, shuffle: true, seed: 9, worker: worker, workers: workers));

    /// <summary>The schedule sets every step's learning rate, overriding the optimizer's own.</summary>
    public static TrainerOptions Options(long steps, double clip = 1.0, double lr = 1e-2) => new() { Steps = steps, Schedule = new ConstantSchedule(lr), Clip = clip };

    public static Optimizer AdamW(IReadOnlyList<Tensor> parameters) => new AdamW(parameters, 1e-2, weightDecay: 0.1);

    public static SdpOptions SdpRun(int workers, SubnetLevel level, Masking masking, double coverage) => new()
    {
        Workers = workers, Mode = ParallelMode.Sdp, Level = level, Masking = masking, Coverage = coverage, PlanSeed = 5,
    };

    public static SdpOptions Dp(int workers) => new() { Workers = workers, Mode = ParallelMode.Dp };

    /// <summary>Raw bits of every parameter and buffer of a module, by name.</summary>
    public static Dictionary<string, long[]> StateBits(global::Sdp.Engine.Nn.Module module)
        => SubnetworkTensors.Named(module).ToDictionary(p => p.Key, p => Training.TrainingTestSupport.Bits(p.Value));
}
