using System.Buffers.Binary;
using System.IO.Compression;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Sdp.Models.Checkpoints;
using Sdp.Models.Data;
using Sdp.Tests.Cli;
using Sdp.Tests.Data;

namespace Sdp.Tests.Reliability;

/// <summary>
/// The corruption suite's verdicts end to end, through `sdp` itself: for a corrupted file of each kind a command reads,
/// exit code 2 and one "sdp: ..." line naming the file, no stack trace and nothing written; a simulated worker that
/// fails on its data is named in that line.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class CorruptionCliTests : CliTestBase
{
    private const string Outputs = "--metrics m.jsonl --save out";

    [Test]
    public void Eval_of_weights_whose_header_claims_ten_to_the_eighteen_bytes()
    {
        SaveLlama("w.safetensors", SmallLlama);
        var bytes = File.ReadAllBytes("w.safetensors");
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, 1_000_000_000_000_000_000);
        File.WriteAllBytes("w.safetensors", bytes);
        var before = Listing();
        AssertUsageError(Sdp(Args("eval --checkpoint w.safetensors --data synthetic --batch 2 --seq 8")), before, "w.safetensors", "header length 1000000000000000000");
    }

    [Test]
    public void Train_with_a_config_naming_a_field_twice()
    {
        File.WriteAllText("c.json", """{"vocab_size": 256, "hidden_size": 32, "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}""");
        var before = Listing();
        AssertUsageError(Train($"--config c.json {Outputs}"), before, "c.json", "hidden_size");
    }

    [Test]
    public void Train_with_a_config_that_is_not_utf8()
    {
        File.WriteAllBytes("c.json", [.. "{\"vocab_size\": 256, \"torch_dtype\": \"float"u8, 0xFF, .. "\"}"u8]);
        var before = Listing();
        AssertUsageError(Train($"--config c.json {Outputs}"), before, "c.json", "UTF-8");
    }

    [Test]
    public void Train_on_a_cifar_batch_with_label_200()
    {
        Directory.CreateDirectory("cifar");
        var records = new byte[2 * Cifar10.RecordBytes];
        records[Cifar10.RecordBytes] = 200;
        foreach (string f in Cifar10.TrainFiles.Append(Cifar10.TestFile)) File.WriteAllBytes(Path.Combine("cifar", f), records);
        var before = Listing();
        AssertUsageError(Train($"--model resnet18 --config {ResNetConfigJson} --data cifar --batch 1 {Outputs}"), before, "data_batch_1.bin", "label 200");
    }

    [Test]
    public void Train_on_mnist_whose_gzip_member_was_cut_inside_its_trailer()
    {
        Directory.CreateDirectory("mnist");
        RawFiles.Mnist("mnist", 4, 6);
        foreach (string f in Directory.GetFiles("mnist"))
        {
            using (var output = File.Create(f + ".gz"))
            using (var gz = new GZipStream(output, CompressionLevel.Optimal)) gz.Write(File.ReadAllBytes(f));
            File.Delete(f);
        }
        string images = Path.Combine("mnist", "train-images-idx3-ubyte.gz");
        var member = File.ReadAllBytes(images);
        File.WriteAllBytes(images, member[..^3]);
        var before = Listing();
        AssertUsageError(Train($"--model resnet18 --config {ResNetConfigJson} --data mnist --batch 2 {Outputs}"), before, "train-images-idx3-ubyte.gz", "gzip");
    }

    [Test]
    public void Train_on_a_named_pipe_is_refused_without_opening_it()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("mkfifo");
        Assert.That(MakeFifo(Path.Combine(Dir, "shard.bin"), 0b110_000_000), Is.Zero);
        var before = Listing();
        AssertUsageError(Train($"--data shard.bin {Outputs}"), before, "shard.bin", "not a regular file");
    }

    [Test]
    public void Resume_from_a_state_whose_learning_rate_is_out_of_range()
    {
        Assert.That(Train("--steps 2 --save ck").ExitCode, Is.Zero);
        string state = Path.Combine("ck", SdpCheckpoint.WorkerDirectory(0), TrainingCheckpoint.StateFileName);
        var json = JsonNode.Parse(File.ReadAllText(state))!;
        json["optimizer"]!["learning_rate"] = JsonValue.Create(-1.0);
        File.WriteAllText(state, json.ToJsonString());
        var before = Listing();
        AssertUsageError(Train("--steps 4 --resume ck --metrics m.jsonl"), before, "state.json", "learning rate");
    }

    [Test]
    public void A_worker_that_fails_on_its_data_is_named()
    {
        // Ids of GPT-2's range into the tiny preset's 4,096 (given explicitly, so nothing is inferred): every worker's
        // first batch fails its vocabulary check; the error names the worker that failed first.
        RawFiles.Shard("gpt2.bin", [.. Enumerable.Range(0, 400).Select(i => 50_000 + i % 200)]);
        var before = Listing();
        var r = Train($"--config tiny --data gpt2.bin --workers 2 {Outputs}");
        AssertUsageError(r, before, "gpt2.bin", "vocabulary");
        Assert.That(r.Err, Does.Match("^sdp: worker [01]: --data 'gpt2.bin'"));
    }

    [DllImport("libc", EntryPoint = "mkfifo", SetLastError = true)]
    private static extern int MakeFifo(string path, uint mode);
}
