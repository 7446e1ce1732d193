using System.Runtime.InteropServices;
using Sdp.Engine.Memory;

namespace Sdp.Engine.Backends.Cpu;

/// <summary>Native, 64-byte aligned host memory (aligned for Vector512 loads), outside the GC heap.</summary>
public sealed unsafe class CpuStorage : Storage
{
    internal CpuStorage(CpuBackend backend, long byteLength, MemoryCategory category, MemoryAccount account)
        : base(backend, byteLength, category, account)
    {
        Pointer = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(byteLength, 1), 64);
    }

    public byte* Pointer { get; private set; }

    protected override void Free()
    {
        NativeMemory.AlignedFree(Pointer);
        Pointer = null;
    }
}
