using System.Runtime.CompilerServices;

namespace Sdp.Kernels.Cuda;

/// <summary>
/// The arguments of one kernel launch, in the kernel's parameter order, packed for cuLaunchKernel's
/// <c>void** kernelParams</c>: each value is copied into one buffer (8-byte aligned slots), and the launch
/// passes a pointer to each slot. For kernels with more parameters than <see cref="CudaFunction.Launch{T0}"/>'s
/// typed overloads take; the value types must match the kernel's C types exactly (int vs long long, float vs
/// double).
/// </summary>
public sealed class KernelArgs
{
    private byte[] _bytes = new byte[128];
    private readonly List<int> _offsets = [];
    private int _used;

    public int Count => _offsets.Count;

    public KernelArgs Add<T>(T value) where T : unmanaged
    {
        int size = Unsafe.SizeOf<T>();
        int offset = (_used + 7) & ~7;
        if (offset + size > _bytes.Length) Array.Resize(ref _bytes, Math.Max(_bytes.Length * 2, offset + size));
        Unsafe.WriteUnaligned(ref _bytes[offset], value);
        _offsets.Add(offset);
        _used = offset + size;
        return this;
    }

    /// <summary>Launches <paramref name="function"/> with these arguments.</summary>
    public unsafe void Launch(CudaFunction function, Dim3 grid, Dim3 block, uint sharedBytes = 0, CudaStream? stream = null)
    {
        void** pointers = stackalloc void*[Math.Max(1, _offsets.Count)];
        fixed (byte* data = _bytes)
        {
            for (int i = 0; i < _offsets.Count; i++) pointers[i] = data + _offsets[i];
            function.LaunchRaw(grid, block, sharedBytes, stream, pointers);
        }
    }
}
