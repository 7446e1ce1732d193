using Sdp.Engine;

namespace Sdp.Models.Checkpoints;

/// <summary>
/// One tensor's header entry: its element type, shape, and where its bytes lie. <see cref="Begin"/> and
/// <see cref="End"/> are the header's data_offsets, relative to the data buffer that follows the header;
/// <see cref="FileOffset"/> is where the bytes start in the file.
/// </summary>
public sealed record SafeTensorInfo(string Name, SafeTensorsDType DType, Shape Shape, long Begin, long End, long FileOffset)
{
    /// <summary>The dtype as the header spells it ("F32", "BF16", ...).</summary>
    public string DTypeName => DType.HeaderName();

    public long ByteLength => End - Begin;

    public long Numel => Shape.Numel;
}
