namespace Sdp.Engine;

public enum DeviceKind
{
    Cpu,
    Cuda,

    /// <summary>Shapes and dtypes without storage (<see cref="Backends.Meta.MetaBackend"/>).</summary>
    Meta,
}

/// <summary>Where a tensor's storage lives. Ordinal selects the GPU for CUDA.</summary>
public readonly record struct Device(DeviceKind Kind, int Ordinal = 0)
{
    public static Device Cpu => new(DeviceKind.Cpu);

    public static Device Meta => new(DeviceKind.Meta);

    public override string ToString() => Kind switch
    {
        DeviceKind.Cpu => "cpu",
        DeviceKind.Meta => "meta",
        _ => $"cuda:{Ordinal}",
    };
}
