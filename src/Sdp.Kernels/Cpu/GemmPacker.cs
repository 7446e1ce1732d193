namespace Sdp.Kernels.Cpu;

/// <summary>
/// Packs one GEMM operand straight into the microkernel's panel layout, for operands that are not a strided matrix
/// (an implicit im2col, say), so that they need not be materialised first. Blocks are packed as the driver packs
/// plain operands:
/// <list type="bullet">
/// <item>A block (rows i0.., depth p0..): panel q holds rows i0 + q·mr .. at dst + q·mr·depth, element (r, p) at
/// [p·mr + r]; rows past <c>rows</c> are zero.</item>
/// <item>B block (depth p0.., columns j0..): panel q holds columns j0 + q·nr .. at dst + q·nr·depth, element (p, j) at
/// [p·nr + j]; columns past <c>cols</c> are zero.</item>
/// </list>
/// Calls may come from several threads at once, for disjoint blocks. A packer may write up to 2 elements past the
/// end of an A block (the driver leaves slack there).
/// </summary>
public unsafe interface IGemmPacker<T> where T : unmanaged
{
    bool PacksA { get; }

    bool PacksB { get; }

    void PackA(int i0, int p0, int rows, int depth, T* dst, int mr);

    void PackB(int p0, int j0, int depth, int cols, T* dst, int nr);
}
