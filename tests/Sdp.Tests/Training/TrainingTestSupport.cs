using Sdp.Engine;
using Sdp.Engine.Optim;
using Sdp.Models.Checkpoints;
using Sdp.Models.Llama;
using Sdp.Models.Training;

namespace Sdp.Tests.Training;

/// <summary>Helpers shared by the training-loop tests: small models, scratch directories, bit-for-bit comparisons.</summary>
internal static class TrainingTestSupport
{
    /// <summary>A LLaMA small enough for tens of CPU steps per test: 2 layers, GQA (4 query heads over 2 key/value heads).</summary>
    public static LlamaConfig SmallLlama { get; } = new(vocabSize: 64, hiddenSize: 32, intermediateSize: 48, numHiddenLayers: 2,
        numAttentionHeads: 4, numKeyValueHeads: 2, rmsNormEps: 1e-5, maxPositionEmbeddings: 64);

    public static LlamaTrainable NewLlama(LlamaConfig config, ulong seed) => new(new LlamaForCausalLM(config, new Rng(seed)));

    /// <summary>A fresh empty directory under the system temp directory.</summary>
    public static string NewScratchDirectory()
    {
        string dir = Path.Combine(Path.GetTempPath(), "sdp-training-tests", $"{TestContext.CurrentContext.Test.MethodName}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        return dir;
    }

    public static void DeleteScratchDirectory(string dir)
    {
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
    }

    /// <summary>The exact bit patterns of a tensor's elements (floats as raw IEEE bits, integers as values).</summary>
    public static long[] Bits(Tensor t) => t.DType switch
    {
        DType.Float32 => Array.ConvertAll(t.ToArray<float>(), v => (long)BitConverter.SingleToUInt32Bits(v)),
        DType.Float64 => Array.ConvertAll(t.ToArray<double>(), BitConverter.DoubleToInt64Bits),
        DType.Int32 => Array.ConvertAll(t.ToArray<int>(), v => (long)v),
        _ => t.ToArray<long>(),
    };

    public static long[] Bits(IEnumerable<double> values) => [.. values.Select(BitConverter.DoubleToInt64Bits)];

    /// <summary>Every parameter and buffer (BatchNorm running statistics included) equal bit for bit, by name.</summary>
    public static void AssertSameModuleState(ITrainable expected, ITrainable actual)
    {
        var e = ModuleCheckpoint.StateDict(expected.Module).ToList();
        var a = ModuleCheckpoint.StateDict(actual.Module).ToList();
        Assert.That(a.Select(x => x.Name), Is.EqualTo(e.Select(x => x.Name)));
        for (int i = 0; i < e.Count; i++) Assert.That(Bits(a[i].Tensor), Is.EqualTo(Bits(e[i].Tensor)), e[i].Name);
    }

    /// <summary>Step counts, learning rate and every state tensor of every parameter equal bit for bit.</summary>
    public static void AssertSameOptimizerState(Optimizer expected, Optimizer actual)
    {
        Assert.That(actual.GetType(), Is.EqualTo(expected.GetType()));
        Assert.That(actual.StepCount, Is.EqualTo(expected.StepCount), "optimizer step count");
        Assert.That(BitConverter.DoubleToInt64Bits(actual.LearningRate), Is.EqualTo(BitConverter.DoubleToInt64Bits(expected.LearningRate)), "learning rate");
        Assert.That(actual.Parameters, Has.Count.EqualTo(expected.Parameters.Count));
        for (int i = 0; i < expected.Parameters.Count; i++)
        {
            string name = expected.Parameters[i].Name ?? $"parameter {i}";
            Assert.That(actual.ParameterStepCount(i), Is.EqualTo(expected.ParameterStepCount(i)), $"{name} step count");
            var e = expected.State(i);
            var a = actual.State(i);
            Assert.That(e, Is.Not.Empty, $"{name} has optimizer state after training");
            Assert.That(a.Keys, Is.EquivalentTo(e.Keys), name);
            foreach (var (state, t) in e) Assert.That(Bits(a[state]), Is.EqualTo(Bits(t)), $"{name}.{state}");
        }
    }
}
