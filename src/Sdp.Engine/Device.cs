namespace Sdp.Engine;

public enum DeviceKind
{
    Cpu,
    Cuda,
}

/// <summary>Where a tensor's storage lives. Ordinal selects the GPU for CUDA.</summary>
public readonly record struct Device(DeviceKind Kind, int Ordinal = 0)
{
    public static Device Cpu => new(DeviceKind.Cpu);

    public override string ToString() => Kind == DeviceKind.Cpu ? "cpu" : $"cuda:{Ordinal}";
}
