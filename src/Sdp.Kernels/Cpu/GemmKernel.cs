namespace Sdp.Kernels.Cpu;

/// <summary>
/// A register-blocked GEMM microkernel plus the cache-blocking parameters tuned for it.
/// Implemented by structs so the generic driver is specialised (and the constants folded) per kernel.
/// </summary>
internal unsafe interface IGemmKernel<T> where T : unmanaged
{
    /// <summary>Rows of C per microtile (A is packed in MR-row panels).</summary>
    static abstract int MR { get; }

    /// <summary>Columns of C per microtile (B is packed in NR-column panels).</summary>
    static abstract int NR { get; }

    /// <summary>Rows of A packed per block (a multiple of MR; the packed block should sit in L2).</summary>
    static abstract int MC { get; }

    /// <summary>Depth of one packed block (a KC x NR panel of B should sit in L1).</summary>
    static abstract int KC { get; }

    /// <summary>Columns of B packed per block (a multiple of NR; the packed block should sit in L3).</summary>
    static abstract int NC { get; }

    static abstract string Name { get; }

    /// <summary>
    /// C[MR x NR] (row stride <paramref name="ldc"/>) = alpha * Ap·Bp + beta * C, where Ap holds MR values per k step and
    /// Bp holds NR values per k step. beta == 0 means C is write-only.
    /// </summary>
    static abstract void Run(nint kc, T* a, T* b, T* c, nint ldc, T alpha, T beta);

    /// <summary>
    /// As <see cref="Run"/> on operands in place: A(r, p) at a[r*rsa + p*csa] and B(p, 0..NR) at b + p*rsb
    /// (used for small problems, where packing would cost as much as it saves).
    /// </summary>
    static abstract void RunStrided(nint kc, T* a, nint rsa, nint csa, T* b, nint rsb, T* c, nint ldc, T alpha, T beta);
}
