using System.Text;
using Sdp.Engine;

namespace Sdp.Tests.Checkpoints;

/// <summary>Helpers shared by the checkpoint tests: a scratch directory per test, fixture bytes, bit comparisons.</summary>
internal static class CheckpointTest
{
    /// <summary>A fresh empty directory under the system temp directory.</summary>
    public static string NewScratchDirectory()
    {
        string dir = Path.Combine(Path.GetTempPath(), "sdp-ckpt-tests", $"{TestContext.CurrentContext.Test.MethodName}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        return dir;
    }

    public static void DeleteScratchDirectory(string dir)
    {
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
    }

    /// <summary>
    /// A safetensors file as the reference writer lays it out: u64 LE header length, the header JSON
    /// padded with spaces to a multiple of 8 (unless <paramref name="pad"/> is false), then the data.
    /// </summary>
    public static byte[] Fixture(string headerJson, byte[] data, bool pad = true)
    {
        var header = Encoding.UTF8.GetBytes(headerJson).ToList();
        while (pad && header.Count % 8 != 0) header.Add((byte)' ');
        var bytes = new List<byte>();
        bytes.AddRange(BitConverter.GetBytes((ulong)header.Count));
        bytes.AddRange(header);
        bytes.AddRange(data);
        return [.. bytes];
    }

    /// <summary>The exact bit patterns of a tensor's elements, for bit-for-bit comparisons (NaN payloads and -0 included).</summary>
    public static long[] Bits(Tensor t) => t.DType switch
    {
        DType.Float32 => Array.ConvertAll(t.ToArray<float>(), v => (long)BitConverter.SingleToUInt32Bits(v)),
        DType.Float64 => Array.ConvertAll(t.ToArray<double>(), BitConverter.DoubleToInt64Bits),
        DType.Int32 => Array.ConvertAll(t.ToArray<int>(), v => (long)v),
        _ => t.ToArray<long>(),
    };

    /// <summary>Files (not directories) directly in <paramref name="dir"/>, by name.</summary>
    public static string[] FileNames(string dir) => [.. Directory.GetFiles(dir).Select(Path.GetFileName).Order()!];
}
