using Sdp.Engine;
using Sdp.Models.Checkpoints;
using static Sdp.Tests.Checkpoints.CheckpointTest;

namespace Sdp.Tests.Checkpoints;

/// <summary>ModuleCheckpoint: a Module's parameters and buffers by dotted name, strict loading that reports every mismatch.</summary>
public class ModuleCheckpointTests
{
    private string _dir = "";

    [SetUp]
    public void CreateDirectory() => _dir = NewScratchDirectory();

    [TearDown]
    public void DeleteDirectory() => DeleteScratchDirectory(_dir);

    /// <summary>Module order: a module's own parameters before its children's, all parameters before the buffers.</summary>
    private static readonly string[] Names = ["gain", "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "input_scale", "seen"];

    private static Dictionary<string, long[]> Snapshot(TinyNet net) => ModuleCheckpoint.StateDict(net).ToDictionary(e => e.Name, e => Bits(e.Tensor));

    [Test]
    public void Save_then_load_restores_every_parameter_and_buffer_bit_exactly([Values(DType.Float32, DType.Float64)] DType dtype)
    {
        using var source = new TinyNet(new Rng(1), dtype);
        using var target = new TinyNet(new Rng(2), dtype);
        string path = Path.Combine(_dir, "model.safetensors");
        ModuleCheckpoint.Save(source, path, new Dictionary<string, string> { ["config"] = "{\"hidden\": 8}" });

        using (var file = SafeTensorsFile.Read(path))
        {
            Assert.That(file.Names, Is.EqualTo(Names), "parameters first, then buffers, PyTorch-style names");
            Assert.That(file.Metadata, Is.EquivalentTo(new Dictionary<string, string> { ["config"] = "{\"hidden\": 8}", ["format"] = "pt" }));
        }
        Assert.That(Snapshot(target), Is.Not.EqualTo(Snapshot(source)));
        var result = ModuleCheckpoint.LoadInto(target, path);
        Assert.That(Snapshot(target), Is.EqualTo(Snapshot(source)));
        Assert.That(result.Loaded, Is.EqualTo(Names));
        Assert.That(result.Missing, Is.Empty);
        Assert.That(result.Unexpected, Is.Empty);
        Assert.That(target.First.Weight.RequiresGrad, Is.True, "loading keeps the parameters trainable leaves");
    }

    [Test]
    public void Load_converts_to_the_model_dtype()
    {
        using var source = new TinyNet(new Rng(1));
        using var wide = new TinyNet(new Rng(2), DType.Float64);
        string path = Path.Combine(_dir, "model.safetensors");
        ModuleCheckpoint.Save(source, path);
        ModuleCheckpoint.LoadInto(wide, path);
        foreach (var ((name, a), (_, b)) in ModuleCheckpoint.StateDict(source).Zip(ModuleCheckpoint.StateDict(wide)))
        {
            Assert.That(b.ToDoubles(), Is.EqualTo(a.ToDoubles()), $"{name}: float32 widened exactly");
        }
    }

    [Test]
    public void Bf16_checkpoint_loads_the_rounded_values()
    {
        using var source = new TinyNet(new Rng(1));
        using var target = new TinyNet(new Rng(2));
        string path = Path.Combine(_dir, "model-bf16.safetensors");
        ModuleCheckpoint.Save(source, path, storeAs: SafeTensorsDType.BF16);
        using (var file = SafeTensorsFile.Read(path))
        {
            Assert.That(file.Info("layers.0.weight").DType, Is.EqualTo(SafeTensorsDType.BF16));
            Assert.That(file.Info("seen").DType, Is.EqualTo(SafeTensorsDType.I64));
        }
        ModuleCheckpoint.LoadInto(target, path);
        var w = source.First.Weight.ToArray<float>();
        var r = target.First.Weight.ToArray<float>();
        for (int i = 0; i < w.Length; i++)
        {
            Assert.That(BitConverter.SingleToUInt32Bits(r[i]) & 0xFFFF, Is.Zero, "a BF16 value");
            Assert.That(r[i], Is.EqualTo(w[i]).Within(Math.Abs(w[i]) * Math.Pow(2, -8)), "within half a BF16 ulp");
        }
        Assert.That(target.Seen.ToArray<long>(), Is.EqualTo(source.Seen.ToArray<long>()));
    }

    [Test]
    public void Strict_load_lists_every_mismatch_at_once_and_changes_nothing()
    {
        using var model = new TinyNet(new Rng(2));
        using var scope = TensorScope.Begin();
        string path = Path.Combine(_dir, "wrong.safetensors");
        SafeTensorsFile.Write(path, [
            ("layers.0.weight", Tensor.Zeros(new Shape(3, 4))),       // model has (8, 4)
            ("layers.0.bias", Tensor.Zeros(new Shape(8))),
            ("layers.1.weight", Tensor.Zeros(new Shape(3, 8))),
            // layers.1.bias missing
            ("gain", Tensor.Zeros(new Shape(1, 3))),                  // model has (3,)
            ("input_scale", Tensor.Zeros(new Shape(4))),
            ("seen", Tensor.Zeros(new Shape(2))),                     // F32 into the int64 buffer
            ("head.weight", Tensor.Zeros(new Shape(2))),              // not in the model
        ]);
        var before = Snapshot(model);
        var ex = Assert.Throws<InvalidDataException>(() => ModuleCheckpoint.LoadInto(model, path));
        TestContext.Out.WriteLine(ex!.Message);
        Assert.That(ex.Message, Does.Contain($"checkpoint '{Path.GetFullPath(path)}' does not match the model (5 problems)"));
        Assert.That(ex.Message, Does.Contain("missing from the checkpoint: layers.1.bias"));
        Assert.That(ex.Message, Does.Contain("unexpected in the checkpoint: head.weight"));
        Assert.That(ex.Message, Does.Contain("layers.0.weight: checkpoint (3, 4) vs model (8, 4)"));
        Assert.That(ex.Message, Does.Contain("gain: checkpoint (1, 3) vs model (3,)"));
        Assert.That(ex.Message, Does.Contain("seen: checkpoint F32 cannot be loaded into int64"));
        Assert.That(Snapshot(model), Is.EqualTo(before), "nothing was loaded");
    }

    [Test]
    public void Non_strict_load_skips_missing_and_unexpected_names_but_not_shape_mismatches()
    {
        using var source = new TinyNet(new Rng(1));
        using var model = new TinyNet(new Rng(2));
        using var scope = TensorScope.Begin();
        string path = Path.Combine(_dir, "partial.safetensors");
        SafeTensorsFile.Write(path, [("layers.0.weight", source.First.Weight), ("extra", Tensor.Ones(new Shape(1)))]);
        var result = ModuleCheckpoint.LoadInto(model, path, strict: false);
        Assert.That(result.Loaded, Is.EqualTo(new[] { "layers.0.weight" }));
        Assert.That(result.Missing, Is.EqualTo(Names.Where(n => n != "layers.0.weight")));
        Assert.That(result.Unexpected, Is.EqualTo(new[] { "extra" }));
        Assert.That(Bits(model.First.Weight), Is.EqualTo(Bits(source.First.Weight)));

        SafeTensorsFile.Write(path, [("gain", Tensor.Ones(new Shape(4)))]);
        var ex = Assert.Throws<InvalidDataException>(() => ModuleCheckpoint.LoadInto(model, path, strict: false));
        Assert.That(ex!.Message, Does.Contain("(1 problem)").And.Contain("gain: checkpoint (4,) vs model (3,)").And.Not.Contain("missing from"));
    }
}
