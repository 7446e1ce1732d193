using Sdp.Engine.Subnetworks;
using Sdp.Models.Llama;
using Sdp.Models.ResNet;

namespace Sdp.Models.Subnetworks;

/// <summary>The optimizer whose state the model counts.</summary>
public enum OptimizerMemory
{
    /// <summary>AdamW: exp_avg and exp_avg_sq, 8 bytes per float32 parameter.</summary>
    AdamW,

    /// <summary>SGD with momentum: one momentum buffer, 4 bytes per parameter.</summary>
    SgdMomentum,

    /// <summary>Plain SGD: no state.</summary>
    Sgd,
}

/// <summary>What one training step runs on: a model and the shape of one worker's batch.</summary>
public abstract record MemoryWorkload(int Batch)
{
    /// <summary>Total parameters of the dense model.</summary>
    public abstract long ParameterCount { get; }

    /// <summary>A one-line description ("llama 134,105,856 params, batch 8 x 1024 tokens").</summary>
    public abstract string Describe();

    /// <summary>The maskable units at <paramref name="level"/> under <paramref name="options"/>.</summary>
    public abstract MaskableUnits Units(SubnetLevel level, SubnetOptions options);

    internal void ValidateBatch()
    {
        if (Batch < 1) throw new ArgumentException($"MemoryModel: the per-worker batch must be positive, got {Batch}");
    }
}

/// <summary>LLaMA on <paramref name="Batch"/> sequences of <paramref name="SeqLen"/> tokens.</summary>
public sealed record LlamaWorkload(LlamaConfig Config, int Batch, int SeqLen) : MemoryWorkload(Batch)
{
    public override long ParameterCount => Config.ParameterCount;

    public override string Describe() => FormattableString.Invariant(
        $"llama ({Config.NumHiddenLayers} layers, hidden {Config.HiddenSize}, intermediate {Config.IntermediateSize}, vocab {Config.VocabSize}; {ParameterCount:N0} params), batch {Batch} x {SeqLen} tokens");

    public override MaskableUnits Units(SubnetLevel level, SubnetOptions options)
        => SubnetworkModels.Llama(Config, level, options, seed: 0).Units;
}

/// <summary>ResNet-18 on <paramref name="Batch"/> square images of side <paramref name="ImageSize"/>.</summary>
public sealed record ResNetWorkload(ResNetConfig Config, int Batch, int ImageSize) : MemoryWorkload(Batch)
{
    public override long ParameterCount => Config.ParameterCount;

    public override string Describe() => FormattableString.Invariant(
        $"resnet18 (width {Config.Width}, {Config.NumClasses} classes; {ParameterCount:N0} params), batch {Batch} x {Config.InChannels}x{ImageSize}x{ImageSize}");

    public override MaskableUnits Units(SubnetLevel level, SubnetOptions options)
        => SubnetworkModels.ResNet18(Config, level, options, seed: 0, imageSize: ImageSize).Units;
}

/// <summary>One SDP configuration: level, masking regime, coverage C, plan seed and model switches.</summary>
public sealed record SdpVariant(SubnetLevel Level, Masking Masking, double Coverage, ulong Seed = 0, SubnetOptions? Options = null)
{
    public SubnetOptions SubnetOptions => Options ?? new SubnetOptions();

    /// <summary>"block/forward C=0.5".</summary>
    public string Name => FormattableString.Invariant($"{SubnetworkPlan.LevelName(Level)}/{MaskingName(Masking)} C={Coverage:0.###}");

    public static string MaskingName(Masking m) => m == Masking.Forward ? "forward" : "backward";
}

/// <summary>Bytes per memory category of one worker (the categories of <see cref="Sdp.Engine.Memory.MemoryAccount"/>, Workspace excepted).</summary>
public sealed record CategoryBytes(long Parameters, long Gradients, long OptimizerState, long Activations)
{
    /// <summary>Parameters + gradients + optimizer state: what stays allocated between steps.</summary>
    public long Static => Parameters + Gradients + OptimizerState;

    public long Total => Static + Activations;

    /// <summary>The larger value of each category (a device must fit the largest of every column).</summary>
    public static CategoryBytes Max(IEnumerable<CategoryBytes> all)
    {
        long p = 0, g = 0, o = 0, a = 0;
        foreach (var c in all) (p, g, o, a) = (Math.Max(p, c.Parameters), Math.Max(g, c.Gradients), Math.Max(o, c.OptimizerState), Math.Max(a, c.Activations));
        return new CategoryBytes(p, g, o, a);
    }
}

/// <summary>Fractional saving (1 − sdp/dp) per category; 0 where the DP value is 0.</summary>
public sealed record CategorySaving(double Parameters, double Gradients, double OptimizerState, double Activations, double Static, double Total)
{
    public static CategorySaving Of(CategoryBytes sdp, long sdpTotal, long sdpStatic, CategoryBytes dp) => new(
        Frac(sdp.Parameters, dp.Parameters), Frac(sdp.Gradients, dp.Gradients), Frac(sdp.OptimizerState, dp.OptimizerState),
        Frac(sdp.Activations, dp.Activations), Frac(sdpStatic, dp.Static), Frac(sdpTotal, dp.Total));

    private static double Frac(long sdp, long dp) => dp == 0 ? 0 : 1.0 - (double)sdp / dp;
}

/// <summary>
/// The analytical memory of one training step on every worker. <see cref="PerWorker"/> has one entry per
/// worker (all equal to <see cref="Dp"/> for data parallelism). <see cref="Max"/> is the column-wise
/// maximum over workers, <see cref="MaxWorker"/> the worker with the largest total; <see cref="Saving"/>
/// compares <see cref="Max"/> per category, the largest static bytes, and the largest total with DP.
/// </summary>
public sealed record MemoryEstimate(MemoryWorkload Workload, OptimizerMemory Optimizer, int Workers, SdpVariant? Variant, CategoryBytes Dp, IReadOnlyList<CategoryBytes> PerWorker)
{
    public int MaxWorker
    {
        get
        {
            int best = 0;
            for (int w = 1; w < PerWorker.Count; w++)
                if (PerWorker[w].Total > PerWorker[best].Total) best = w;
            return best;
        }
    }

    public CategoryBytes Max => CategoryBytes.Max(PerWorker);

    public long MaxTotal => PerWorker.Max(c => c.Total);

    public long MaxStatic => PerWorker.Max(c => c.Static);

    public CategorySaving Saving => CategorySaving.Of(Max, MaxTotal, MaxStatic, Dp);
}

/// <summary>
/// Layer shape of one LLaMA decoder layer as a worker runs it. Null widths mean dense. A sub-block that is
/// not present is skipped (forward masking, block level); Train* false means its weights need no gradient
/// (backward masking, block level), so ops that save inputs only for weight gradients do not save them.
/// </summary>
public sealed record LlamaLayerShape(bool Attention = true, bool Mlp = true, int? KvHeads = null, int? MlpWidth = null, bool TrainAttention = true, bool TrainMlp = true)
{
    public static LlamaLayerShape Dense { get; } = new();
}

/// <summary>Shape of one ResNet BasicBlock as a worker runs it (see <see cref="LlamaLayerShape"/>). A downsampling block that is not present still runs its projection shortcut.</summary>
public sealed record ResNetBlockShape(bool Present = true, int? Width = null, bool Train = true)
{
    public static ResNetBlockShape Dense { get; } = new();
}

/// <summary>
/// Analytical per-worker memory of data parallelism and of SDP (method reference §4.2, acceptance check A19),
/// float32. Parameters, gradients and optimizer state follow the <see cref="SubnetworkPlan"/> exactly
/// (held parameter counts per worker; ResNet batch-norm running statistics and num_batches_tracked are
/// parameter-category buffers). Activations are the tensors the autograd tape keeps at the end of the
/// forward pass (their peak), derived from what our ops save:
/// <list type="bullet">
/// <item>Linear/MatMul saves its input only when the weight needs a gradient (and the weight, a parameter, when the input does);</item>
/// <item>Conv2d likewise; BatchNorm2d saves its input whenever input or weight needs a gradient, plus per-channel mean and rstd;</item>
/// <item>RMSNorm saves input and per-row rstd; SiLU and ReLU their input; Mul both operands; Add nothing;</item>
/// <item>Rope saves the cos/sin tables; causal attention saves q, k, v and the per-row logsumexp; Embedding and cross-entropy save the int32 ids/targets, cross-entropy also the logits and per-row logsumexp.</item>
/// </list>
/// A storage saved by several nodes (the normed input of q/k/v, a block input read by conv1 and the projection) counts once.
/// Workspace (transients, activation gradients, kernel scratch) and engine buffers (the synchronisation staging
/// an SDP worker keeps from one step to the next, held-slice indices) are not modelled.
/// </summary>
public static class MemoryModel
{
    private const long F32 = 4, I32 = 4, I64 = 8;

    /// <summary>Optimizer state bytes per float32 parameter.</summary>
    public static long OptimizerBytesPerParam(OptimizerMemory optimizer) => optimizer switch
    {
        OptimizerMemory.AdamW => 8,
        OptimizerMemory.SgdMomentum => 4,
        _ => 0,
    };

    /// <summary>Data parallelism (<paramref name="variant"/> null) or SDP on <paramref name="workers"/> workers.</summary>
    public static MemoryEstimate Estimate(MemoryWorkload workload, OptimizerMemory optimizer, int workers, SdpVariant? variant)
    {
        ArgumentNullException.ThrowIfNull(workload);
        workload.ValidateBatch();
        if (workers < 1) throw new ArgumentException($"MemoryModel: workers must be at least 1, got {workers}");
        var dp = DenseBytes(workload, optimizer);
        if (variant is null) return new MemoryEstimate(workload, optimizer, workers, null, dp, Enumerable.Repeat(dp, workers).ToArray());
        var units = workload.Units(variant.Level, variant.SubnetOptions);
        var plan = SubnetworkPlan.Create(units, workers, variant.Coverage, variant.Seed);
        var perWorker = new CategoryBytes[workers];
        for (int w = 0; w < workers; w++) perWorker[w] = WorkerBytes(workload, optimizer, plan, w, variant.Masking);
        return new MemoryEstimate(workload, optimizer, workers, variant, dp, perWorker);
    }

    /// <summary>One worker of a given plan (the SDP runtime can compare its measured peaks with this).</summary>
    public static CategoryBytes WorkerBytes(MemoryWorkload workload, OptimizerMemory optimizer, SubnetworkPlan plan, int worker, Masking masking)
    {
        ArgumentNullException.ThrowIfNull(workload);
        ArgumentNullException.ThrowIfNull(plan);
        if (worker < 0 || worker >= plan.Workers) throw new ArgumentOutOfRangeException(nameof(worker), $"MemoryModel: worker {worker} is outside [0, {plan.Workers})");
        long held = plan.HeldParams(worker);
        long optBytes = OptimizerBytesPerParam(optimizer);
        switch (workload)
        {
            case LlamaWorkload l:
            {
                var shapes = LlamaShapes(l.Config, plan, worker, masking);
                long parameters = masking == Masking.Forward ? held * F32 : l.Config.ParameterCount * F32;
                return new CategoryBytes(parameters, held * F32, held * optBytes, LlamaActivationBytes(l.Config, l.Batch, l.SeqLen, shapes));
            }
            case ResNetWorkload r:
            {
                var shapes = ResNetShapes(r.Config, plan, worker, masking);
                long parameters = masking == Masking.Forward
                    ? held * F32 + ResNetBufferBytes(r.Config, shapes)
                    : r.Config.ParameterCount * F32 + ResNetBufferBytes(r.Config, null);
                return new CategoryBytes(parameters, held * F32, held * optBytes, ResNetActivationBytes(r.Config, r.Batch, r.ImageSize, shapes));
            }
            default:
                throw new ArgumentException($"MemoryModel: unsupported workload {workload.GetType().Name}");
        }
    }

    /// <summary>Data parallelism: every worker holds the dense model.</summary>
    public static CategoryBytes DenseBytes(MemoryWorkload workload, OptimizerMemory optimizer)
    {
        ArgumentNullException.ThrowIfNull(workload);
        workload.ValidateBatch();
        long n = workload.ParameterCount;
        return workload switch
        {
            LlamaWorkload l => new CategoryBytes(n * F32, n * F32, n * OptimizerBytesPerParam(optimizer), LlamaActivationBytes(l.Config, l.Batch, l.SeqLen)),
            ResNetWorkload r => new CategoryBytes(n * F32 + ResNetBufferBytes(r.Config, null), n * F32, n * OptimizerBytesPerParam(optimizer),
                ResNetActivationBytes(r.Config, r.Batch, r.ImageSize)),
            _ => throw new ArgumentException($"MemoryModel: unsupported workload {workload.GetType().Name}"),
        };
    }

    // ---- LLaMA ------------------------------------------------------------------------------------------

    /// <summary>
    /// Peak saved-for-backward bytes of one LLaMA step on a (B, T) batch, per layer shape (null: dense).
    /// Per token (floats): an attention sub-block saves its input x, rstd, the normed input (if its
    /// weights train), q, k, v, one logsumexp per query head and the merged heads (if o_proj trains); an
    /// MLP sub-block saves its input, rstd, the normed input (if it trains), gate, silu(gate), up, and the
    /// hidden product (if down_proj trains); the head saves the final norm's input and rstd, its output,
    /// the logits, the logsumexp and the int32 targets; the embedding saves the int32 ids. Once per batch:
    /// the rope cos/sin tables (T × head_dim each) when any attention runs.
    /// </summary>
    public static long LlamaActivationBytes(LlamaConfig config, int batch, int seqLen, IReadOnlyList<LlamaLayerShape>? layers = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (batch < 1 || seqLen < 1) throw new ArgumentException($"MemoryModel: LLaMA batch and sequence length must be positive, got {batch} x {seqLen}");
        if (layers is not null && layers.Count != config.NumHiddenLayers)
            throw new ArgumentException($"MemoryModel: {layers.Count} layer shapes for {config.NumHiddenLayers} layers");
        long d = config.HiddenSize, hd = config.HeadDim, g = config.GroupSize;
        long perToken = 0; // floats
        bool anyAttention = false;
        for (int i = 0; i < config.NumHiddenLayers; i++)
        {
            var s = layers?[i] ?? LlamaLayerShape.Dense;
            if (s.Attention)
            {
                anyAttention = true;
                long kv = s.KvHeads ?? config.NumKeyValueHeads, qDim = kv * g * hd;
                perToken += d + 1 + (s.TrainAttention ? d : 0) + qDim + 2 * kv * hd + kv * g + (s.TrainAttention ? qDim : 0);
            }
            if (s.Mlp)
            {
                long f = s.MlpWidth ?? config.IntermediateSize;
                perToken += d + 1 + (s.TrainMlp ? d : 0) + 3 * f + (s.TrainMlp ? f : 0);
            }
        }
        perToken += d + 1 + d + config.VocabSize + 1; // final norm input + rstd, lm_head input, logits, logsumexp
        long tokens = (long)batch * seqLen;
        long bytes = checked(tokens * perToken * F32 + tokens * 2 * I32); // + int32 ids and targets
        if (anyAttention) bytes += 2L * seqLen * hd * F32;
        return bytes;
    }

    /// <summary>Layer shapes of worker <paramref name="worker"/> under <paramref name="plan"/> (null entries never occur).</summary>
    public static IReadOnlyList<LlamaLayerShape> LlamaShapes(LlamaConfig config, SubnetworkPlan plan, int worker, Masking masking)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(plan);
        var shapes = Enumerable.Repeat(LlamaLayerShape.Dense, config.NumHiddenLayers).ToArray();
        var groups = GroupIndex(plan);
        for (int i = 0; i < config.NumHiddenLayers; i++)
        {
            string layer = FormattableString.Invariant($"model.layers.{i}");
            if (plan.Level == SubnetLevel.Neuron)
            {
                // Backward masking runs the dense network: every masked weight still trains (in part).
                if (masking == Masking.Backward) continue;
                int? f = groups.TryGetValue(layer + ".mlp", out int gm) ? plan.UnitsHeld(worker, gm) : null;
                int? kv = groups.TryGetValue(layer + ".self_attn", out int ga) ? plan.UnitsHeld(worker, ga) : null;
                shapes[i] = new LlamaLayerShape(KvHeads: kv, MlpWidth: f);
            }
            else
            {
                bool attn = HoldsBlock(plan, worker, layer) ?? HoldsBlock(plan, worker, layer + ".self_attn") ?? true;
                bool mlp = HoldsBlock(plan, worker, layer) ?? HoldsBlock(plan, worker, layer + ".mlp") ?? true;
                shapes[i] = masking == Masking.Forward
                    ? new LlamaLayerShape(Attention: attn, Mlp: mlp)
                    : new LlamaLayerShape(TrainAttention: attn, TrainMlp: mlp);
            }
        }
        return shapes;
    }

    // ---- ResNet -----------------------------------------------------------------------------------------

    /// <summary>The 8 BasicBlocks of ResNet-18 in network order for <paramref name="imageSize"/> inputs.</summary>
    public static IReadOnlyList<ResNetBlockGeometry> ResNetBlocks(ResNetConfig config, int imageSize)
    {
        ArgumentNullException.ThrowIfNull(config);
        return config.Blocks(imageSize);
    }

    /// <summary>
    /// Peak saved-for-backward bytes of one ResNet-18 step on <paramref name="batch"/> images, per block
    /// shape (null: dense). Per image (floats): the stem saves the input image, its conv output and its BN
    /// output; a block with internal width c saves its input (when conv1 trains or a projection reads it),
    /// conv1's output, bn1's output, relu's output (when conv2 trains), conv2's output, the pre-ReLU sum,
    /// and a projection's conv output; a dropped downsampling block saves its input, its projection's conv
    /// output and BN output; the head saves the pooled features, the logits and the logsumexp, plus int32
    /// labels. Once per batch: mean and rstd of every BatchNorm channel that runs.
    /// </summary>
    public static long ResNetActivationBytes(ResNetConfig config, int batch, int imageSize, IReadOnlyList<ResNetBlockShape>? blocks = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (batch < 1) throw new ArgumentException($"MemoryModel: ResNet batch must be positive, got {batch}");
        var infos = ResNetBlocks(config, imageSize);
        if (blocks is not null && blocks.Count != infos.Count) throw new ArgumentException($"MemoryModel: {blocks.Count} block shapes for {infos.Count} blocks");
        long p0 = (long)imageSize * imageSize, w = config.Width;
        long perImage = config.InChannels * p0 + 2 * w * p0; // floats
        long perBatch = 2 * w;                               // BN mean + rstd floats
        for (int i = 0; i < infos.Count; i++)
        {
            var b = infos[i];
            var s = blocks?[i] ?? ResNetBlockShape.Dense;
            if (s.Present)
            {
                long c = s.Width ?? b.Out;
                if (s.Train || b.Downsamples) perImage += b.In * b.InPixels;
                perImage += 2 * c * b.OutPixels + (s.Train ? c * b.OutPixels : 0) + 2L * b.Out * b.OutPixels;
                perBatch += 2 * c + 2L * b.Out;
                if (b.Downsamples)
                {
                    perImage += (long)b.Out * b.OutPixels;
                    perBatch += 2L * b.Out;
                }
            }
            else if (b.Downsamples)
            {
                perImage += b.In * b.InPixels + 2L * b.Out * b.OutPixels;
                perBatch += 2L * b.Out;
            }
        }
        perImage += config.Features + config.NumClasses + 1;
        return checked(batch * perImage * F32 + batch * I32 + perBatch * F32);
    }

    /// <summary>
    /// Bytes of the BatchNorm buffers (running_mean and running_var per channel, float32; num_batches_tracked,
    /// int64) that a worker with these block shapes allocates; they are charged as parameters.
    /// </summary>
    public static long ResNetBufferBytes(ResNetConfig config, IReadOnlyList<ResNetBlockShape>? blocks)
    {
        ArgumentNullException.ThrowIfNull(config);
        var infos = ResNetBlocks(config, 32);
        static long Bn(long channels) => 2 * channels * F32 + I64;
        long bytes = Bn(config.Width);
        for (int i = 0; i < infos.Count; i++)
        {
            var b = infos[i];
            var s = blocks?[i] ?? ResNetBlockShape.Dense;
            if (s.Present) bytes += Bn(s.Width ?? b.Out) + Bn(b.Out);
            if (b.Downsamples) bytes += Bn(b.Out);
        }
        return bytes;
    }

    /// <summary>Block shapes of worker <paramref name="worker"/> under <paramref name="plan"/>.</summary>
    public static IReadOnlyList<ResNetBlockShape> ResNetShapes(ResNetConfig config, SubnetworkPlan plan, int worker, Masking masking)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(plan);
        var infos = ResNetBlocks(config, 32);
        var shapes = Enumerable.Repeat(ResNetBlockShape.Dense, infos.Count).ToArray();
        var groups = GroupIndex(plan);
        for (int i = 0; i < infos.Count; i++)
        {
            string name = infos[i].Name;
            if (plan.Level == SubnetLevel.Neuron)
            {
                if (masking == Masking.Forward && groups.TryGetValue(name, out int g)) shapes[i] = new ResNetBlockShape(Width: plan.UnitsHeld(worker, g));
            }
            else if (HoldsBlock(plan, worker, name) is { } held)
            {
                shapes[i] = masking == Masking.Forward ? new ResNetBlockShape(Present: held) : new ResNetBlockShape(Train: held);
            }
        }
        return shapes;
    }

    // ---- plan lookups -----------------------------------------------------------------------------------

    private static Dictionary<string, int> GroupIndex(SubnetworkPlan plan)
    {
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int g = 0; g < plan.Groups.Count; g++) index[plan.Groups[g].Name] = g;
        return index;
    }

    /// <summary>Whether the worker holds the block unit named <paramref name="name"/>, or null when no group has such a unit.</summary>
    private static bool? HoldsBlock(SubnetworkPlan plan, int worker, string name)
    {
        for (int g = 0; g < plan.Groups.Count; g++)
        {
            var names = plan.Groups[g].UnitNames;
            if (names is null) continue;
            for (int u = 0; u < names.Count; u++)
                if (names[u] == name) return plan.Holds(worker, g, u);
        }
        return null;
    }
}
