using System.Text;
using System.Text.Json;
using Sdp.Engine;

namespace Sdp.Models.ResNet;

/// <summary>
/// Shape of a CIFAR-style <see cref="ResNet18"/>: stage widths are Width·{1, 2, 4, 8}. Saved with
/// checkpoints as JSON: <c>{"model": "resnet18", "width": 64, "num_classes": 10, "in_channels": 3}</c>.
/// Construction does not validate (so <c>with</c> works freely); <see cref="Validate"/>, the model
/// constructor and <see cref="FromJson(string, string)"/> do.
/// </summary>
public sealed record ResNetConfig(int Width = 64, int NumClasses = 10, int InChannels = 3)
{
    /// <summary>The value of the "model" key in the JSON form.</summary>
    public const string ModelName = "resnet18";

    /// <summary>Largest width whose last stage (8·Width channels) still fits an int.</summary>
    public const int MaxWidth = int.MaxValue / 8;

    /// <summary>Channels of stage <paramref name="stage"/> (0..3): Width·2^stage.</summary>
    public int StageChannels(int stage)
    {
        if (stage is < 0 or > 3) throw new ArgumentOutOfRangeException(nameof(stage), $"ResNetConfig: stage must be in [0, 3], got {stage}");
        return Width << stage;
    }

    /// <summary>Stride of block <paramref name="block"/> of stage <paramref name="stage"/>: 2 for the first block of stages 1..3, else 1.</summary>
    public static int BlockStride(int stage, int block) => stage > 0 && block == 0 ? 2 : 1;

    /// <summary>
    /// The 8 BasicBlocks in network order ("layer1.0" … "layer4.1") for square <paramref name="imageSize"/>
    /// inputs: channels, input and output pixels per image (3x3 convs with padding 1), and whether the block
    /// has a projection shortcut.
    /// </summary>
    public IReadOnlyList<ResNetBlockGeometry> Blocks(int imageSize)
    {
        if (imageSize < 1) throw new ArgumentException($"ResNetConfig: image size must be positive, got {imageSize}");
        var list = new List<ResNetBlockGeometry>();
        int inC = Width, size = imageSize;
        for (int s = 0; s < 4; s++)
        {
            int outC = StageChannels(s);
            for (int b = 0; b < 2; b++)
            {
                int stride = BlockStride(s, b);
                int blockIn = b == 0 ? inC : outC;
                long inPixels = (long)size * size;
                size = (size - 1) / stride + 1;
                list.Add(new ResNetBlockGeometry(FormattableString.Invariant($"layer{s + 1}.{b}"), blockIn, outC, inPixels, (long)size * size, stride != 1 || blockIn != outC));
            }
            inC = outC;
        }
        return list;
    }

    /// <summary>Features entering the classifier: 8·Width.</summary>
    public int Features => 8 * Width;

    /// <summary>
    /// Trainable parameters (not buffers) of the model this config builds, without building it:
    /// every conv and BN of the stem and the blocks, the projection shortcuts, and fc.
    /// </summary>
    public long ParameterCount
    {
        get
        {
            Validate();
            return CountParameters();
        }
    }

    /// <summary>The count of <see cref="ParameterCount"/>, in checked arithmetic: a width so large that it overflows throws.</summary>
    private long CountParameters()
    {
        checked
        {
            long w = Width;
            long total = 9L * InChannels * w + 2 * w; // stem conv + BN
            long inC = w;
            for (int s = 0; s < 4; s++)
            {
                long outC = w << s;
                for (int b = 0; b < 2; b++)
                {
                    long blockIn = b == 0 ? inC : outC;
                    total += 9 * blockIn * outC + 2 * outC + 9 * outC * outC + 2 * outC;
                    if (BlockStride(s, b) != 1 || blockIn != outC) total += blockIn * outC + 2 * outC; // projection
                }
                inC = outC;
            }
            return total + 8L * Width * NumClasses + NumClasses; // fc
        }
    }

    /// <summary>Throws when a field is out of range; the message names the field.</summary>
    public void Validate()
    {
        Check(Width, nameof(Width), "width", MaxWidth);
        Check(NumClasses, nameof(NumClasses), "num_classes", int.MaxValue);
        Check(InChannels, nameof(InChannels), "in_channels", int.MaxValue);
        try
        {
            CountParameters();
        }
        catch (OverflowException)
        {
            throw new ArgumentOutOfRangeException(nameof(Width), Width, $"ResNetConfig: Width (width) {Width} with {InChannels} input channels and {NumClasses} classes makes more than 2^63 parameters");
        }

        static void Check(int value, string field, string key, int max)
        {
            if (value < 1 || value > max)
                throw new ArgumentOutOfRangeException(field, value, $"ResNetConfig: {field} ({key}) must be in [1, {max}], got {value}");
        }
    }

    /// <summary>The config as one JSON object with snake_case keys (and "model": "resnet18").</summary>
    public string ToJson()
    {
        Validate();
        using var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            writer.WriteStartObject();
            writer.WriteString("model", ModelName);
            writer.WriteNumber("width", Width);
            writer.WriteNumber("num_classes", NumClasses);
            writer.WriteNumber("in_channels", InChannels);
            writer.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray());
    }

    /// <summary>
    /// Parses <see cref="ToJson"/>'s format. Missing keys take the defaults; "model", when present,
    /// must be "resnet18"; unknown keys, a key given twice, non-integer values and out-of-range values are
    /// <see cref="InvalidDataException"/>s that name <paramref name="source"/> and the key.
    /// </summary>
    public static ResNetConfig FromJson(string json, string source = "ResNetConfig")
    {
        ArgumentNullException.ThrowIfNull(json);
        return FromJson(Encoding.UTF8.GetBytes(json), source);
    }

    /// <summary>As <see cref="FromJson(string, string)"/>, from UTF-8 text (a file's bytes are parsed where they lie).</summary>
    private static ResNetConfig FromJson(ReadOnlyMemory<byte> json, string source)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, InputFile.StrictJson());
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{source}: not valid JSON: {e.Message}", e);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{source}: JSON must be an object, got {doc.RootElement.ValueKind}");
            var config = new ResNetConfig();
            foreach (var field in doc.RootElement.EnumerateObject())
            {
                switch (field.Name)
                {
                    case "model":
                        if (field.Value.ValueKind != JsonValueKind.String || field.Value.GetString() != ModelName)
                            throw new InvalidDataException($"{source}: model must be \"{ModelName}\", got {field.Value.GetRawText()}");
                        break;
                    case "width":
                        config = config with { Width = Int(field, source) };
                        break;
                    case "num_classes":
                        config = config with { NumClasses = Int(field, source) };
                        break;
                    case "in_channels":
                        config = config with { InChannels = Int(field, source) };
                        break;
                    default:
                        throw new InvalidDataException($"{source}: unknown key \"{field.Name}\" (expected model, width, num_classes, in_channels)");
                }
            }
            try
            {
                config.Validate();
            }
            catch (ArgumentOutOfRangeException e)
            {
                throw new InvalidDataException($"{source}: {e.Message.Split('\n')[0].Replace($" (Parameter '{e.ParamName}')", "", StringComparison.Ordinal)}", e);
            }
            return config;
        }

        static int Int(JsonProperty field, string source)
        {
            if (field.Value.ValueKind != JsonValueKind.Number || !field.Value.TryGetInt32(out int value))
                throw new InvalidDataException($"{source}: {field.Name} must be an integer, got {field.Value.GetRawText()}");
            return value;
        }
    }

    /// <summary>
    /// Reads a ResNet config JSON file (UTF-8) as <see cref="FromJson(string, string)"/> does; errors name the file, or start with
    /// <paramref name="source"/> when given (an option and the file: "--config 'r.json'").
    /// </summary>
    public static ResNetConfig Load(string path, string? source = null)
        => FromJson(InputFile.ReadUtf8(path, "ResNetConfig"), source ?? $"ResNetConfig '{path}'");
}

/// <summary>One BasicBlock of <see cref="ResNetConfig.Blocks"/>: name, channels, input/output pixels per image, projection shortcut or not.</summary>
public readonly record struct ResNetBlockGeometry(string Name, int In, int Out, long InPixels, long OutPixels, bool Downsamples);
