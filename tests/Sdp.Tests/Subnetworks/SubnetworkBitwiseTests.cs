using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using Sdp.Models.Checkpoints;
using Sdp.Tests.Support;

namespace Sdp.Tests.Subnetworks;

/// <summary>
/// The subnetworks the engine cuts from the dense module tree train bit for bit as the hand-built subnetworks did
/// before them (issue 15): two SDP steps of every variant (neuron and block level, forward and backward masking,
/// and the model switches), W = 4, C = 0.5, fixed plan and seed, are saved and every tensor is compared with the
/// SHA-256 recorded in <c>Fixtures/subnetwork-bitwise.json</c> by the code before the change.
/// <para>
/// The runs are child processes with AVX-512 off and 2 processors, so that their arithmetic is the 2-core AVX2
/// machine's where the fixture was recorded, whatever machine runs the tests, with the convolutions of that time. Record again (only when a change is
/// meant to change the numbers) with SDP_RECORD_SUBNETWORK_FIXTURE=path/to/subnetwork-bitwise.json.
/// </para>
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class SubnetworkBitwiseTests
{
    private const string LlamaConfigJson = """
        {"vocab_size":256,"hidden_size":16,"intermediate_size":24,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":16,"rms_norm_eps":1e-05}
        """;

    private const string ResNetConfigJson = """{"model":"resnet18","width":4,"num_classes":10,"in_channels":3}""";

    /// <summary>Variant name and its `sdp train` options beyond the common ones.</summary>
    private static readonly (string Name, string Options)[] Variants =
    [
        ("llama-neuron-forward", "--model llama --subnet neuron --masking forward"),
        ("llama-neuron-backward", "--model llama --subnet neuron --masking backward"),
        ("llama-block-forward", "--model llama --subnet block --masking forward"),
        ("llama-block-backward", "--model llama --subnet block --masking backward"),
        ("llama-neuron-forward-heads", "--model llama --subnet neuron --masking forward --mask-heads"),
        ("llama-neuron-backward-heads", "--model llama --subnet neuron --masking backward --mask-heads"),
        ("llama-neuron-forward-scaled", "--model llama --subnet neuron --masking forward --neuron-scale inverse-coverage"),
        ("llama-block-forward-sublayers", "--model llama --subnet block --masking forward --split-sublayers"),
        ("resnet-neuron-forward", "--model resnet18 --subnet neuron --masking forward"),
        ("resnet-neuron-backward", "--model resnet18 --subnet neuron --masking backward"),
        ("resnet-block-forward", "--model resnet18 --subnet block --masking forward"),
        ("resnet-block-backward", "--model resnet18 --subnet block --masking backward"),
        ("resnet-neuron-forward-scaled", "--model resnet18 --subnet neuron --masking forward --neuron-scale inverse-coverage"),
        ("resnet-block-forward-keep", "--model resnet18 --subnet block --masking forward --keep-downsample-blocks"),
    ];

    private static readonly string FixturePath = Path.Combine(AppContext.BaseDirectory, "Subnetworks", "Fixtures", "subnetwork-bitwise.json");

    [Test]
    public void EveryVariantTrainsBitForBitAsBeforeTheEngineCutSubnetworks()
    {
        string dir = Path.Combine(Path.GetTempPath(), "sdp-bitwise-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            File.WriteAllText(Path.Combine(dir, "llama.json"), LlamaConfigJson);
            File.WriteAllText(Path.Combine(dir, "resnet.json"), ResNetConfigJson);
            var observed = new SortedDictionary<string, SortedDictionary<string, string>>(StringComparer.Ordinal);
            foreach (var (name, options) in Variants)
            {
                string weights = Path.Combine(dir, name + ".safetensors");
                string config = Path.Combine(dir, options.Contains("llama", StringComparison.Ordinal) ? "llama.json" : "resnet.json");
                RunSdp($"train {options} --config {config} --mode sdp --workers 4 --coverage 0.5 --steps 2 --warmup 1 --batch 2 --seq 8 --seed 3 --schedule constant --eval-batches 1 --final-eval sample --save {weights}");
                observed[name] = TensorHashes(weights);
            }
            if (Environment.GetEnvironmentVariable("SDP_RECORD_SUBNETWORK_FIXTURE") is { Length: > 0 } record)
            {
                File.WriteAllText(record, JsonSerializer.Serialize(observed, new JsonSerializerOptions { WriteIndented = true }) + "\n");
                Assert.Ignore($"recorded {observed.Count} variants into {record}");
            }
            var expected = JsonSerializer.Deserialize<SortedDictionary<string, SortedDictionary<string, string>>>(File.ReadAllText(FixturePath))!;
            Assert.That(observed.Keys, Is.EqualTo(expected.Keys), "the variants of the fixture");
            Assert.Multiple(() =>
            {
                foreach (var (variant, tensors) in expected)
                {
                    Assert.That(observed[variant].Keys, Is.EqualTo(tensors.Keys), $"{variant}: tensor names");
                    foreach (var (tensor, hash) in tensors)
                    {
                        if (observed[variant].TryGetValue(tensor, out var got)) Assert.That(got, Is.EqualTo(hash), $"{variant}: {tensor} differs from the recorded bits");
                    }
                }
            });
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>SHA-256 of every tensor's stored bytes, with its dtype and shape, by name.</summary>
    private static SortedDictionary<string, string> TensorHashes(string path)
    {
        using var file = SafeTensorsFile.Read(path);
        byte[] all = File.ReadAllBytes(path);
        var hashes = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var name in file.Names)
        {
            var info = file.Info(name);
            var bytes = all.AsSpan(checked((int)info.FileOffset), checked((int)(info.End - info.Begin)));
            hashes[name] = $"{info.DTypeName} {info.Shape} {Convert.ToHexStringLower(SHA256.HashData(bytes))}";
        }
        return hashes;
    }

    private static void RunSdp(string commandLine)
    {
        var psi = new ProcessStartInfo(MpiJob.Sdp) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in commandLine.Split(' ', StringSplitOptions.RemoveEmptyEntries)) psi.ArgumentList.Add(a);
        // The recording machine's arithmetic: 256-bit vectors and 2 cores, whatever this machine has.
        psi.Environment["DOTNET_EnableAVX512F"] = "0";
        psi.Environment["DOTNET_PROCESSOR_COUNT"] = "2";
        // The convolutions of the recording (im2col + GEMM): the implicit-GEMM path, which came later, sums in
        // another order. What is checked here is the subnetwork mechanism, not the kernels.
        psi.Environment["SDP_CPU_CONV"] = "im2col";
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromSeconds(120)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"sdp {commandLine} did not finish in 120 s");
        }
        Assert.That(process.ExitCode, Is.Zero, $"sdp {commandLine}\n{stdout.Result}\n{stderr.Result}");
    }
}
