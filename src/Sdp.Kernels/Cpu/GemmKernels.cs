// Register-blocked GEMM microkernels. Each computes one MR x NR tile of C from a packed A micro-panel
// (MR rows interleaved per k step) and a packed B micro-panel (NR contiguous columns per k step).
// The k loop is unrolled 4x; accumulators stay in vector registers (12 of them + 2 B vectors + 1 broadcast).
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Sdp.Kernels.Cpu;

/// <summary>Vector512 FMA: 6x32 register tile of <see cref="Vector512{T}"/> accumulators.</summary>
internal readonly unsafe struct SgemmKernel512 : IGemmKernel<float>
{
    public static int MR => 6;
    public static int NR => 32;
    public static int MC => 144;
    public static int KC => 256;
    public static int NC => 4096;
    public static string Name => "Vector512 FMA 6x32";

    /// <summary>C[6x32] = alpha * Ap·Bp + beta * C over <paramref name="kc"/> steps (beta == 0: C is not read).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(nint kc, float* a, float* b, float* c, nint ldc, float alpha, float beta)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        Vector512<float> b0, b1, av;
        float* r0 = c;
        float* r1 = r0 + ldc;
        float* r2 = r1 + ldc;
        float* r3 = r2 + ldc;
        float* r4 = r3 + ldc;
        float* r5 = r4 + ldc;
        if (Sse.IsSupported)
        {
            Sse.Prefetch0(r0 + 0);
            Sse.Prefetch0(r0 + 16);
            Sse.Prefetch0(r0 + 31);
            Sse.Prefetch0(r1 + 0);
            Sse.Prefetch0(r1 + 16);
            Sse.Prefetch0(r1 + 31);
            Sse.Prefetch0(r2 + 0);
            Sse.Prefetch0(r2 + 16);
            Sse.Prefetch0(r2 + 31);
            Sse.Prefetch0(r3 + 0);
            Sse.Prefetch0(r3 + 16);
            Sse.Prefetch0(r3 + 31);
            Sse.Prefetch0(r4 + 0);
            Sse.Prefetch0(r4 + 16);
            Sse.Prefetch0(r4 + 31);
            Sse.Prefetch0(r5 + 0);
            Sse.Prefetch0(r5 + 16);
            Sse.Prefetch0(r5 + 31);
        }

        nint p = kc;
        while (p >= 4)
        {
            b0 = Vector512.Load(b + 0);
            b1 = Vector512.Load(b + 16);
            av = Vector512.Create(a[0]);
            c00 = Vector512.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector512.FusedMultiplyAdd(av, b1, c01);
            av = Vector512.Create(a[1]);
            c10 = Vector512.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector512.FusedMultiplyAdd(av, b1, c11);
            av = Vector512.Create(a[2]);
            c20 = Vector512.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector512.FusedMultiplyAdd(av, b1, c21);
            av = Vector512.Create(a[3]);
            c30 = Vector512.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector512.FusedMultiplyAdd(av, b1, c31);
            av = Vector512.Create(a[4]);
            c40 = Vector512.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector512.FusedMultiplyAdd(av, b1, c41);
            av = Vector512.Create(a[5]);
            c50 = Vector512.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector512.FusedMultiplyAdd(av, b1, c51);
            b0 = Vector512.Load(b + 32);
            b1 = Vector512.Load(b + 48);
            av = Vector512.Create(a[6]);
            c00 = Vector512.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector512.FusedMultiplyAdd(av, b1, c01);
            av = Vector512.Create(a[7]);
            c10 = Vector512.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector512.FusedMultiplyAdd(av, b1, c11);
            av = Vector512.Create(a[8]);
            c20 = Vector512.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector512.FusedMultiplyAdd(av, b1, c21);
            av = Vector512.Create(a[9]);
            c30 = Vector512.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector512.FusedMultiplyAdd(av, b1, c31);
            av = Vector512.Create(a[10]);
            c40 = Vector512.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector512.FusedMultiplyAdd(av, b1, c41);
            av = Vector512.Create(a[11]);
            c50 = Vector512.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector512.FusedMultiplyAdd(av, b1, c51);
            b0 = Vector512.Load(b + 64);
            b1 = Vector512.Load(b + 80);
            av = Vector512.Create(a[12]);
            c00 = Vector512.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector512.FusedMultiplyAdd(av, b1, c01);
            av = Vector512.Create(a[13]);
            c10 = Vector512.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector512.FusedMultiplyAdd(av, b1, c11);
            av = Vector512.Create(a[14]);
            c20 = Vector512.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector512.FusedMultiplyAdd(av, b1, c21);
            av = Vector512.Create(a[15]);
            c30 = Vector512.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector512.FusedMultiplyAdd(av, b1, c31);
            av = Vector512.Create(a[16]);
            c40 = Vector512.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector512.FusedMultiplyAdd(av, b1, c41);
            av = Vector512.Create(a[17]);
            c50 = Vector512.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector512.FusedMultiplyAdd(av, b1, c51);
            b0 = Vector512.Load(b + 96);
            b1 = Vector512.Load(b + 112);
            av = Vector512.Create(a[18]);
            c00 = Vector512.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector512.FusedMultiplyAdd(av, b1, c01);
            av = Vector512.Create(a[19]);
            c10 = Vector512.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector512.FusedMultiplyAdd(av, b1, c11);
            av = Vector512.Create(a[20]);
            c20 = Vector512.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector512.FusedMultiplyAdd(av, b1, c21);
            av = Vector512.Create(a[21]);
            c30 = Vector512.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector512.FusedMultiplyAdd(av, b1, c31);
            av = Vector512.Create(a[22]);
            c40 = Vector512.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector512.FusedMultiplyAdd(av, b1, c41);
            av = Vector512.Create(a[23]);
            c50 = Vector512.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector512.FusedMultiplyAdd(av, b1, c51);
            a += 24;
            b += 128;
            p -= 4;
        }
        while (p > 0)
        {
            b0 = Vector512.Load(b + 0);
            b1 = Vector512.Load(b + 16);
            av = Vector512.Create(a[0]);
            c00 = Vector512.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector512.FusedMultiplyAdd(av, b1, c01);
            av = Vector512.Create(a[1]);
            c10 = Vector512.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector512.FusedMultiplyAdd(av, b1, c11);
            av = Vector512.Create(a[2]);
            c20 = Vector512.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector512.FusedMultiplyAdd(av, b1, c21);
            av = Vector512.Create(a[3]);
            c30 = Vector512.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector512.FusedMultiplyAdd(av, b1, c31);
            av = Vector512.Create(a[4]);
            c40 = Vector512.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector512.FusedMultiplyAdd(av, b1, c41);
            av = Vector512.Create(a[5]);
            c50 = Vector512.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector512.FusedMultiplyAdd(av, b1, c51);
            a += 6;
            b += 32;
            p--;
        }

        Vector512<float> va = Vector512.Create(alpha);
        if (beta == 0)
        {
            Vector512.Store(c00 * va, r0);
            Vector512.Store(c01 * va, r0 + 16);
            Vector512.Store(c10 * va, r1);
            Vector512.Store(c11 * va, r1 + 16);
            Vector512.Store(c20 * va, r2);
            Vector512.Store(c21 * va, r2 + 16);
            Vector512.Store(c30 * va, r3);
            Vector512.Store(c31 * va, r3 + 16);
            Vector512.Store(c40 * va, r4);
            Vector512.Store(c41 * va, r4 + 16);
            Vector512.Store(c50 * va, r5);
            Vector512.Store(c51 * va, r5 + 16);
        }
        else
        {
            Vector512<float> vb = Vector512.Create(beta);
            Vector512.Store(Vector512.FusedMultiplyAdd(c00, va, Vector512.Load(r0) * vb), r0);
            Vector512.Store(Vector512.FusedMultiplyAdd(c01, va, Vector512.Load(r0 + 16) * vb), r0 + 16);
            Vector512.Store(Vector512.FusedMultiplyAdd(c10, va, Vector512.Load(r1) * vb), r1);
            Vector512.Store(Vector512.FusedMultiplyAdd(c11, va, Vector512.Load(r1 + 16) * vb), r1 + 16);
            Vector512.Store(Vector512.FusedMultiplyAdd(c20, va, Vector512.Load(r2) * vb), r2);
            Vector512.Store(Vector512.FusedMultiplyAdd(c21, va, Vector512.Load(r2 + 16) * vb), r2 + 16);
            Vector512.Store(Vector512.FusedMultiplyAdd(c30, va, Vector512.Load(r3) * vb), r3);
            Vector512.Store(Vector512.FusedMultiplyAdd(c31, va, Vector512.Load(r3 + 16) * vb), r3 + 16);
            Vector512.Store(Vector512.FusedMultiplyAdd(c40, va, Vector512.Load(r4) * vb), r4);
            Vector512.Store(Vector512.FusedMultiplyAdd(c41, va, Vector512.Load(r4 + 16) * vb), r4 + 16);
            Vector512.Store(Vector512.FusedMultiplyAdd(c50, va, Vector512.Load(r5) * vb), r5);
            Vector512.Store(Vector512.FusedMultiplyAdd(c51, va, Vector512.Load(r5 + 16) * vb), r5 + 16);
        }
    }

    /// <summary>As <see cref="Run"/> on unpacked operands: A(r, p) at a[r*rsa + p*csa], B row p at b + p*rsb.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RunStrided(nint kc, float* a, nint rsa, nint csa, float* b, nint rsb, float* c, nint ldc, float alpha, float beta)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        Vector512<float> b0, b1, av;
        float* a0 = a;
        float* a1 = a0 + rsa;
        float* a2 = a1 + rsa;
        float* a3 = a2 + rsa;
        float* a4 = a3 + rsa;
        float* a5 = a4 + rsa;
        float* r0 = c;
        float* r1 = r0 + ldc;
        float* r2 = r1 + ldc;
        float* r3 = r2 + ldc;
        float* r4 = r3 + ldc;
        float* r5 = r4 + ldc;
        if (Sse.IsSupported)
        {
            Sse.Prefetch0(r0 + 0);
            Sse.Prefetch0(r0 + 16);
            Sse.Prefetch0(r0 + 31);
            Sse.Prefetch0(r1 + 0);
            Sse.Prefetch0(r1 + 16);
            Sse.Prefetch0(r1 + 31);
            Sse.Prefetch0(r2 + 0);
            Sse.Prefetch0(r2 + 16);
            Sse.Prefetch0(r2 + 31);
            Sse.Prefetch0(r3 + 0);
            Sse.Prefetch0(r3 + 16);
            Sse.Prefetch0(r3 + 31);
            Sse.Prefetch0(r4 + 0);
            Sse.Prefetch0(r4 + 16);
            Sse.Prefetch0(r4 + 31);
            Sse.Prefetch0(r5 + 0);
            Sse.Prefetch0(r5 + 16);
            Sse.Prefetch0(r5 + 31);
        }

        nint off = 0;
        for (nint p = 0; p < kc; p++)
        {
            b0 = Vector512.Load(b);
            b1 = Vector512.Load(b + 16);
            av = Vector512.Create(a0[off]);
            c00 = Vector512.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector512.FusedMultiplyAdd(av, b1, c01);
            av = Vector512.Create(a1[off]);
            c10 = Vector512.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector512.FusedMultiplyAdd(av, b1, c11);
            av = Vector512.Create(a2[off]);
            c20 = Vector512.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector512.FusedMultiplyAdd(av, b1, c21);
            av = Vector512.Create(a3[off]);
            c30 = Vector512.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector512.FusedMultiplyAdd(av, b1, c31);
            av = Vector512.Create(a4[off]);
            c40 = Vector512.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector512.FusedMultiplyAdd(av, b1, c41);
            av = Vector512.Create(a5[off]);
            c50 = Vector512.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector512.FusedMultiplyAdd(av, b1, c51);
            off += csa;
            b += rsb;
        }

        Vector512<float> va = Vector512.Create(alpha);
        if (beta == 0)
        {
            Vector512.Store(c00 * va, r0);
            Vector512.Store(c01 * va, r0 + 16);
            Vector512.Store(c10 * va, r1);
            Vector512.Store(c11 * va, r1 + 16);
            Vector512.Store(c20 * va, r2);
            Vector512.Store(c21 * va, r2 + 16);
            Vector512.Store(c30 * va, r3);
            Vector512.Store(c31 * va, r3 + 16);
            Vector512.Store(c40 * va, r4);
            Vector512.Store(c41 * va, r4 + 16);
            Vector512.Store(c50 * va, r5);
            Vector512.Store(c51 * va, r5 + 16);
        }
        else
        {
            Vector512<float> vb = Vector512.Create(beta);
            Vector512.Store(Vector512.FusedMultiplyAdd(c00, va, Vector512.Load(r0) * vb), r0);
            Vector512.Store(Vector512.FusedMultiplyAdd(c01, va, Vector512.Load(r0 + 16) * vb), r0 + 16);
            Vector512.Store(Vector512.FusedMultiplyAdd(c10, va, Vector512.Load(r1) * vb), r1);
            Vector512.Store(Vector512.FusedMultiplyAdd(c11, va, Vector512.Load(r1 + 16) * vb), r1 + 16);
            Vector512.Store(Vector512.FusedMultiplyAdd(c20, va, Vector512.Load(r2) * vb), r2);
            Vector512.Store(Vector512.FusedMultiplyAdd(c21, va, Vector512.Load(r2 + 16) * vb), r2 + 16);
            Vector512.Store(Vector512.FusedMultiplyAdd(c30, va, Vector512.Load(r3) * vb), r3);
            Vector512.Store(Vector512.FusedMultiplyAdd(c31, va, Vector512.Load(r3 + 16) * vb), r3 + 16);
            Vector512.Store(Vector512.FusedMultiplyAdd(c40, va, Vector512.Load(r4) * vb), r4);
            Vector512.Store(Vector512.FusedMultiplyAdd(c41, va, Vector512.Load(r4 + 16) * vb), r4 + 16);
            Vector512.Store(Vector512.FusedMultiplyAdd(c50, va, Vector512.Load(r5) * vb), r5);
            Vector512.Store(Vector512.FusedMultiplyAdd(c51, va, Vector512.Load(r5 + 16) * vb), r5 + 16);
        }
    }
}

/// <summary>Vector256 FMA: 6x16 register tile of <see cref="Vector256{T}"/> accumulators.</summary>
internal readonly unsafe struct SgemmKernel256 : IGemmKernel<float>
{
    public static int MR => 6;
    public static int NR => 16;
    public static int MC => 144;
    public static int KC => 256;
    public static int NC => 4096;
    public static string Name => "Vector256 FMA 6x16";

    /// <summary>C[6x16] = alpha * Ap·Bp + beta * C over <paramref name="kc"/> steps (beta == 0: C is not read).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(nint kc, float* a, float* b, float* c, nint ldc, float alpha, float beta)
    {
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        Vector256<float> b0, b1, av;
        float* r0 = c;
        float* r1 = r0 + ldc;
        float* r2 = r1 + ldc;
        float* r3 = r2 + ldc;
        float* r4 = r3 + ldc;
        float* r5 = r4 + ldc;
        if (Sse.IsSupported)
        {
            Sse.Prefetch0(r0 + 0);
            Sse.Prefetch0(r0 + 15);
            Sse.Prefetch0(r1 + 0);
            Sse.Prefetch0(r1 + 15);
            Sse.Prefetch0(r2 + 0);
            Sse.Prefetch0(r2 + 15);
            Sse.Prefetch0(r3 + 0);
            Sse.Prefetch0(r3 + 15);
            Sse.Prefetch0(r4 + 0);
            Sse.Prefetch0(r4 + 15);
            Sse.Prefetch0(r5 + 0);
            Sse.Prefetch0(r5 + 15);
        }

        nint p = kc;
        while (p >= 4)
        {
            b0 = Vector256.Load(b + 0);
            b1 = Vector256.Load(b + 8);
            av = Vector256.Create(a[0]);
            c00 = Vector256.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
            av = Vector256.Create(a[1]);
            c10 = Vector256.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
            av = Vector256.Create(a[2]);
            c20 = Vector256.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
            av = Vector256.Create(a[3]);
            c30 = Vector256.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
            av = Vector256.Create(a[4]);
            c40 = Vector256.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector256.FusedMultiplyAdd(av, b1, c41);
            av = Vector256.Create(a[5]);
            c50 = Vector256.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector256.FusedMultiplyAdd(av, b1, c51);
            b0 = Vector256.Load(b + 16);
            b1 = Vector256.Load(b + 24);
            av = Vector256.Create(a[6]);
            c00 = Vector256.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
            av = Vector256.Create(a[7]);
            c10 = Vector256.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
            av = Vector256.Create(a[8]);
            c20 = Vector256.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
            av = Vector256.Create(a[9]);
            c30 = Vector256.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
            av = Vector256.Create(a[10]);
            c40 = Vector256.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector256.FusedMultiplyAdd(av, b1, c41);
            av = Vector256.Create(a[11]);
            c50 = Vector256.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector256.FusedMultiplyAdd(av, b1, c51);
            b0 = Vector256.Load(b + 32);
            b1 = Vector256.Load(b + 40);
            av = Vector256.Create(a[12]);
            c00 = Vector256.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
            av = Vector256.Create(a[13]);
            c10 = Vector256.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
            av = Vector256.Create(a[14]);
            c20 = Vector256.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
            av = Vector256.Create(a[15]);
            c30 = Vector256.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
            av = Vector256.Create(a[16]);
            c40 = Vector256.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector256.FusedMultiplyAdd(av, b1, c41);
            av = Vector256.Create(a[17]);
            c50 = Vector256.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector256.FusedMultiplyAdd(av, b1, c51);
            b0 = Vector256.Load(b + 48);
            b1 = Vector256.Load(b + 56);
            av = Vector256.Create(a[18]);
            c00 = Vector256.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
            av = Vector256.Create(a[19]);
            c10 = Vector256.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
            av = Vector256.Create(a[20]);
            c20 = Vector256.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
            av = Vector256.Create(a[21]);
            c30 = Vector256.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
            av = Vector256.Create(a[22]);
            c40 = Vector256.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector256.FusedMultiplyAdd(av, b1, c41);
            av = Vector256.Create(a[23]);
            c50 = Vector256.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector256.FusedMultiplyAdd(av, b1, c51);
            a += 24;
            b += 64;
            p -= 4;
        }
        while (p > 0)
        {
            b0 = Vector256.Load(b + 0);
            b1 = Vector256.Load(b + 8);
            av = Vector256.Create(a[0]);
            c00 = Vector256.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
            av = Vector256.Create(a[1]);
            c10 = Vector256.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
            av = Vector256.Create(a[2]);
            c20 = Vector256.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
            av = Vector256.Create(a[3]);
            c30 = Vector256.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
            av = Vector256.Create(a[4]);
            c40 = Vector256.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector256.FusedMultiplyAdd(av, b1, c41);
            av = Vector256.Create(a[5]);
            c50 = Vector256.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector256.FusedMultiplyAdd(av, b1, c51);
            a += 6;
            b += 16;
            p--;
        }

        Vector256<float> va = Vector256.Create(alpha);
        if (beta == 0)
        {
            Vector256.Store(c00 * va, r0);
            Vector256.Store(c01 * va, r0 + 8);
            Vector256.Store(c10 * va, r1);
            Vector256.Store(c11 * va, r1 + 8);
            Vector256.Store(c20 * va, r2);
            Vector256.Store(c21 * va, r2 + 8);
            Vector256.Store(c30 * va, r3);
            Vector256.Store(c31 * va, r3 + 8);
            Vector256.Store(c40 * va, r4);
            Vector256.Store(c41 * va, r4 + 8);
            Vector256.Store(c50 * va, r5);
            Vector256.Store(c51 * va, r5 + 8);
        }
        else
        {
            Vector256<float> vb = Vector256.Create(beta);
            Vector256.Store(Vector256.FusedMultiplyAdd(c00, va, Vector256.Load(r0) * vb), r0);
            Vector256.Store(Vector256.FusedMultiplyAdd(c01, va, Vector256.Load(r0 + 8) * vb), r0 + 8);
            Vector256.Store(Vector256.FusedMultiplyAdd(c10, va, Vector256.Load(r1) * vb), r1);
            Vector256.Store(Vector256.FusedMultiplyAdd(c11, va, Vector256.Load(r1 + 8) * vb), r1 + 8);
            Vector256.Store(Vector256.FusedMultiplyAdd(c20, va, Vector256.Load(r2) * vb), r2);
            Vector256.Store(Vector256.FusedMultiplyAdd(c21, va, Vector256.Load(r2 + 8) * vb), r2 + 8);
            Vector256.Store(Vector256.FusedMultiplyAdd(c30, va, Vector256.Load(r3) * vb), r3);
            Vector256.Store(Vector256.FusedMultiplyAdd(c31, va, Vector256.Load(r3 + 8) * vb), r3 + 8);
            Vector256.Store(Vector256.FusedMultiplyAdd(c40, va, Vector256.Load(r4) * vb), r4);
            Vector256.Store(Vector256.FusedMultiplyAdd(c41, va, Vector256.Load(r4 + 8) * vb), r4 + 8);
            Vector256.Store(Vector256.FusedMultiplyAdd(c50, va, Vector256.Load(r5) * vb), r5);
            Vector256.Store(Vector256.FusedMultiplyAdd(c51, va, Vector256.Load(r5 + 8) * vb), r5 + 8);
        }
    }

    /// <summary>As <see cref="Run"/> on unpacked operands: A(r, p) at a[r*rsa + p*csa], B row p at b + p*rsb.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RunStrided(nint kc, float* a, nint rsa, nint csa, float* b, nint rsb, float* c, nint ldc, float alpha, float beta)
    {
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        Vector256<float> b0, b1, av;
        float* a0 = a;
        float* a1 = a0 + rsa;
        float* a2 = a1 + rsa;
        float* a3 = a2 + rsa;
        float* a4 = a3 + rsa;
        float* a5 = a4 + rsa;
        float* r0 = c;
        float* r1 = r0 + ldc;
        float* r2 = r1 + ldc;
        float* r3 = r2 + ldc;
        float* r4 = r3 + ldc;
        float* r5 = r4 + ldc;
        if (Sse.IsSupported)
        {
            Sse.Prefetch0(r0 + 0);
            Sse.Prefetch0(r0 + 15);
            Sse.Prefetch0(r1 + 0);
            Sse.Prefetch0(r1 + 15);
            Sse.Prefetch0(r2 + 0);
            Sse.Prefetch0(r2 + 15);
            Sse.Prefetch0(r3 + 0);
            Sse.Prefetch0(r3 + 15);
            Sse.Prefetch0(r4 + 0);
            Sse.Prefetch0(r4 + 15);
            Sse.Prefetch0(r5 + 0);
            Sse.Prefetch0(r5 + 15);
        }

        nint off = 0;
        for (nint p = 0; p < kc; p++)
        {
            b0 = Vector256.Load(b);
            b1 = Vector256.Load(b + 8);
            av = Vector256.Create(a0[off]);
            c00 = Vector256.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
            av = Vector256.Create(a1[off]);
            c10 = Vector256.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
            av = Vector256.Create(a2[off]);
            c20 = Vector256.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
            av = Vector256.Create(a3[off]);
            c30 = Vector256.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
            av = Vector256.Create(a4[off]);
            c40 = Vector256.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector256.FusedMultiplyAdd(av, b1, c41);
            av = Vector256.Create(a5[off]);
            c50 = Vector256.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector256.FusedMultiplyAdd(av, b1, c51);
            off += csa;
            b += rsb;
        }

        Vector256<float> va = Vector256.Create(alpha);
        if (beta == 0)
        {
            Vector256.Store(c00 * va, r0);
            Vector256.Store(c01 * va, r0 + 8);
            Vector256.Store(c10 * va, r1);
            Vector256.Store(c11 * va, r1 + 8);
            Vector256.Store(c20 * va, r2);
            Vector256.Store(c21 * va, r2 + 8);
            Vector256.Store(c30 * va, r3);
            Vector256.Store(c31 * va, r3 + 8);
            Vector256.Store(c40 * va, r4);
            Vector256.Store(c41 * va, r4 + 8);
            Vector256.Store(c50 * va, r5);
            Vector256.Store(c51 * va, r5 + 8);
        }
        else
        {
            Vector256<float> vb = Vector256.Create(beta);
            Vector256.Store(Vector256.FusedMultiplyAdd(c00, va, Vector256.Load(r0) * vb), r0);
            Vector256.Store(Vector256.FusedMultiplyAdd(c01, va, Vector256.Load(r0 + 8) * vb), r0 + 8);
            Vector256.Store(Vector256.FusedMultiplyAdd(c10, va, Vector256.Load(r1) * vb), r1);
            Vector256.Store(Vector256.FusedMultiplyAdd(c11, va, Vector256.Load(r1 + 8) * vb), r1 + 8);
            Vector256.Store(Vector256.FusedMultiplyAdd(c20, va, Vector256.Load(r2) * vb), r2);
            Vector256.Store(Vector256.FusedMultiplyAdd(c21, va, Vector256.Load(r2 + 8) * vb), r2 + 8);
            Vector256.Store(Vector256.FusedMultiplyAdd(c30, va, Vector256.Load(r3) * vb), r3);
            Vector256.Store(Vector256.FusedMultiplyAdd(c31, va, Vector256.Load(r3 + 8) * vb), r3 + 8);
            Vector256.Store(Vector256.FusedMultiplyAdd(c40, va, Vector256.Load(r4) * vb), r4);
            Vector256.Store(Vector256.FusedMultiplyAdd(c41, va, Vector256.Load(r4 + 8) * vb), r4 + 8);
            Vector256.Store(Vector256.FusedMultiplyAdd(c50, va, Vector256.Load(r5) * vb), r5);
            Vector256.Store(Vector256.FusedMultiplyAdd(c51, va, Vector256.Load(r5 + 8) * vb), r5 + 8);
        }
    }
}

/// <summary>Vector128: 6x8 register tile of <see cref="Vector128{T}"/> accumulators.</summary>
internal readonly unsafe struct SgemmKernel128 : IGemmKernel<float>
{
    public static int MR => 6;
    public static int NR => 8;
    public static int MC => 144;
    public static int KC => 256;
    public static int NC => 4096;
    public static string Name => "Vector128 6x8";

    /// <summary>C[6x8] = alpha * Ap·Bp + beta * C over <paramref name="kc"/> steps (beta == 0: C is not read).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(nint kc, float* a, float* b, float* c, nint ldc, float alpha, float beta)
    {
        Vector128<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        Vector128<float> b0, b1, av;
        float* r0 = c;
        float* r1 = r0 + ldc;
        float* r2 = r1 + ldc;
        float* r3 = r2 + ldc;
        float* r4 = r3 + ldc;
        float* r5 = r4 + ldc;
        if (Sse.IsSupported)
        {
            Sse.Prefetch0(r0 + 0);
            Sse.Prefetch0(r0 + 7);
            Sse.Prefetch0(r1 + 0);
            Sse.Prefetch0(r1 + 7);
            Sse.Prefetch0(r2 + 0);
            Sse.Prefetch0(r2 + 7);
            Sse.Prefetch0(r3 + 0);
            Sse.Prefetch0(r3 + 7);
            Sse.Prefetch0(r4 + 0);
            Sse.Prefetch0(r4 + 7);
            Sse.Prefetch0(r5 + 0);
            Sse.Prefetch0(r5 + 7);
        }

        nint p = kc;
        while (p >= 4)
        {
            b0 = Vector128.Load(b + 0);
            b1 = Vector128.Load(b + 4);
            av = Vector128.Create(a[0]);
            c00 = Vector128.MultiplyAddEstimate(av, b0, c00);
            c01 = Vector128.MultiplyAddEstimate(av, b1, c01);
            av = Vector128.Create(a[1]);
            c10 = Vector128.MultiplyAddEstimate(av, b0, c10);
            c11 = Vector128.MultiplyAddEstimate(av, b1, c11);
            av = Vector128.Create(a[2]);
            c20 = Vector128.MultiplyAddEstimate(av, b0, c20);
            c21 = Vector128.MultiplyAddEstimate(av, b1, c21);
            av = Vector128.Create(a[3]);
            c30 = Vector128.MultiplyAddEstimate(av, b0, c30);
            c31 = Vector128.MultiplyAddEstimate(av, b1, c31);
            av = Vector128.Create(a[4]);
            c40 = Vector128.MultiplyAddEstimate(av, b0, c40);
            c41 = Vector128.MultiplyAddEstimate(av, b1, c41);
            av = Vector128.Create(a[5]);
            c50 = Vector128.MultiplyAddEstimate(av, b0, c50);
            c51 = Vector128.MultiplyAddEstimate(av, b1, c51);
            b0 = Vector128.Load(b + 8);
            b1 = Vector128.Load(b + 12);
            av = Vector128.Create(a[6]);
            c00 = Vector128.MultiplyAddEstimate(av, b0, c00);
            c01 = Vector128.MultiplyAddEstimate(av, b1, c01);
            av = Vector128.Create(a[7]);
            c10 = Vector128.MultiplyAddEstimate(av, b0, c10);
            c11 = Vector128.MultiplyAddEstimate(av, b1, c11);
            av = Vector128.Create(a[8]);
            c20 = Vector128.MultiplyAddEstimate(av, b0, c20);
            c21 = Vector128.MultiplyAddEstimate(av, b1, c21);
            av = Vector128.Create(a[9]);
            c30 = Vector128.MultiplyAddEstimate(av, b0, c30);
            c31 = Vector128.MultiplyAddEstimate(av, b1, c31);
            av = Vector128.Create(a[10]);
            c40 = Vector128.MultiplyAddEstimate(av, b0, c40);
            c41 = Vector128.MultiplyAddEstimate(av, b1, c41);
            av = Vector128.Create(a[11]);
            c50 = Vector128.MultiplyAddEstimate(av, b0, c50);
            c51 = Vector128.MultiplyAddEstimate(av, b1, c51);
            b0 = Vector128.Load(b + 16);
            b1 = Vector128.Load(b + 20);
            av = Vector128.Create(a[12]);
            c00 = Vector128.MultiplyAddEstimate(av, b0, c00);
            c01 = Vector128.MultiplyAddEstimate(av, b1, c01);
            av = Vector128.Create(a[13]);
            c10 = Vector128.MultiplyAddEstimate(av, b0, c10);
            c11 = Vector128.MultiplyAddEstimate(av, b1, c11);
            av = Vector128.Create(a[14]);
            c20 = Vector128.MultiplyAddEstimate(av, b0, c20);
            c21 = Vector128.MultiplyAddEstimate(av, b1, c21);
            av = Vector128.Create(a[15]);
            c30 = Vector128.MultiplyAddEstimate(av, b0, c30);
            c31 = Vector128.MultiplyAddEstimate(av, b1, c31);
            av = Vector128.Create(a[16]);
            c40 = Vector128.MultiplyAddEstimate(av, b0, c40);
            c41 = Vector128.MultiplyAddEstimate(av, b1, c41);
            av = Vector128.Create(a[17]);
            c50 = Vector128.MultiplyAddEstimate(av, b0, c50);
            c51 = Vector128.MultiplyAddEstimate(av, b1, c51);
            b0 = Vector128.Load(b + 24);
            b1 = Vector128.Load(b + 28);
            av = Vector128.Create(a[18]);
            c00 = Vector128.MultiplyAddEstimate(av, b0, c00);
            c01 = Vector128.MultiplyAddEstimate(av, b1, c01);
            av = Vector128.Create(a[19]);
            c10 = Vector128.MultiplyAddEstimate(av, b0, c10);
            c11 = Vector128.MultiplyAddEstimate(av, b1, c11);
            av = Vector128.Create(a[20]);
            c20 = Vector128.MultiplyAddEstimate(av, b0, c20);
            c21 = Vector128.MultiplyAddEstimate(av, b1, c21);
            av = Vector128.Create(a[21]);
            c30 = Vector128.MultiplyAddEstimate(av, b0, c30);
            c31 = Vector128.MultiplyAddEstimate(av, b1, c31);
            av = Vector128.Create(a[22]);
            c40 = Vector128.MultiplyAddEstimate(av, b0, c40);
            c41 = Vector128.MultiplyAddEstimate(av, b1, c41);
            av = Vector128.Create(a[23]);
            c50 = Vector128.MultiplyAddEstimate(av, b0, c50);
            c51 = Vector128.MultiplyAddEstimate(av, b1, c51);
            a += 24;
            b += 32;
            p -= 4;
        }
        while (p > 0)
        {
            b0 = Vector128.Load(b + 0);
            b1 = Vector128.Load(b + 4);
            av = Vector128.Create(a[0]);
            c00 = Vector128.MultiplyAddEstimate(av, b0, c00);
            c01 = Vector128.MultiplyAddEstimate(av, b1, c01);
            av = Vector128.Create(a[1]);
            c10 = Vector128.MultiplyAddEstimate(av, b0, c10);
            c11 = Vector128.MultiplyAddEstimate(av, b1, c11);
            av = Vector128.Create(a[2]);
            c20 = Vector128.MultiplyAddEstimate(av, b0, c20);
            c21 = Vector128.MultiplyAddEstimate(av, b1, c21);
            av = Vector128.Create(a[3]);
            c30 = Vector128.MultiplyAddEstimate(av, b0, c30);
            c31 = Vector128.MultiplyAddEstimate(av, b1, c31);
            av = Vector128.Create(a[4]);
            c40 = Vector128.MultiplyAddEstimate(av, b0, c40);
            c41 = Vector128.MultiplyAddEstimate(av, b1, c41);
            av = Vector128.Create(a[5]);
            c50 = Vector128.MultiplyAddEstimate(av, b0, c50);
            c51 = Vector128.MultiplyAddEstimate(av, b1, c51);
            a += 6;
            b += 8;
            p--;
        }

        Vector128<float> va = Vector128.Create(alpha);
        if (beta == 0)
        {
            Vector128.Store(c00 * va, r0);
            Vector128.Store(c01 * va, r0 + 4);
            Vector128.Store(c10 * va, r1);
            Vector128.Store(c11 * va, r1 + 4);
            Vector128.Store(c20 * va, r2);
            Vector128.Store(c21 * va, r2 + 4);
            Vector128.Store(c30 * va, r3);
            Vector128.Store(c31 * va, r3 + 4);
            Vector128.Store(c40 * va, r4);
            Vector128.Store(c41 * va, r4 + 4);
            Vector128.Store(c50 * va, r5);
            Vector128.Store(c51 * va, r5 + 4);
        }
        else
        {
            Vector128<float> vb = Vector128.Create(beta);
            Vector128.Store(Vector128.MultiplyAddEstimate(c00, va, Vector128.Load(r0) * vb), r0);
            Vector128.Store(Vector128.MultiplyAddEstimate(c01, va, Vector128.Load(r0 + 4) * vb), r0 + 4);
            Vector128.Store(Vector128.MultiplyAddEstimate(c10, va, Vector128.Load(r1) * vb), r1);
            Vector128.Store(Vector128.MultiplyAddEstimate(c11, va, Vector128.Load(r1 + 4) * vb), r1 + 4);
            Vector128.Store(Vector128.MultiplyAddEstimate(c20, va, Vector128.Load(r2) * vb), r2);
            Vector128.Store(Vector128.MultiplyAddEstimate(c21, va, Vector128.Load(r2 + 4) * vb), r2 + 4);
            Vector128.Store(Vector128.MultiplyAddEstimate(c30, va, Vector128.Load(r3) * vb), r3);
            Vector128.Store(Vector128.MultiplyAddEstimate(c31, va, Vector128.Load(r3 + 4) * vb), r3 + 4);
            Vector128.Store(Vector128.MultiplyAddEstimate(c40, va, Vector128.Load(r4) * vb), r4);
            Vector128.Store(Vector128.MultiplyAddEstimate(c41, va, Vector128.Load(r4 + 4) * vb), r4 + 4);
            Vector128.Store(Vector128.MultiplyAddEstimate(c50, va, Vector128.Load(r5) * vb), r5);
            Vector128.Store(Vector128.MultiplyAddEstimate(c51, va, Vector128.Load(r5 + 4) * vb), r5 + 4);
        }
    }

    /// <summary>As <see cref="Run"/> on unpacked operands: A(r, p) at a[r*rsa + p*csa], B row p at b + p*rsb.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RunStrided(nint kc, float* a, nint rsa, nint csa, float* b, nint rsb, float* c, nint ldc, float alpha, float beta)
    {
        Vector128<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        Vector128<float> b0, b1, av;
        float* a0 = a;
        float* a1 = a0 + rsa;
        float* a2 = a1 + rsa;
        float* a3 = a2 + rsa;
        float* a4 = a3 + rsa;
        float* a5 = a4 + rsa;
        float* r0 = c;
        float* r1 = r0 + ldc;
        float* r2 = r1 + ldc;
        float* r3 = r2 + ldc;
        float* r4 = r3 + ldc;
        float* r5 = r4 + ldc;
        if (Sse.IsSupported)
        {
            Sse.Prefetch0(r0 + 0);
            Sse.Prefetch0(r0 + 7);
            Sse.Prefetch0(r1 + 0);
            Sse.Prefetch0(r1 + 7);
            Sse.Prefetch0(r2 + 0);
            Sse.Prefetch0(r2 + 7);
            Sse.Prefetch0(r3 + 0);
            Sse.Prefetch0(r3 + 7);
            Sse.Prefetch0(r4 + 0);
            Sse.Prefetch0(r4 + 7);
            Sse.Prefetch0(r5 + 0);
            Sse.Prefetch0(r5 + 7);
        }

        nint off = 0;
        for (nint p = 0; p < kc; p++)
        {
            b0 = Vector128.Load(b);
            b1 = Vector128.Load(b + 4);
            av = Vector128.Create(a0[off]);
            c00 = Vector128.MultiplyAddEstimate(av, b0, c00);
            c01 = Vector128.MultiplyAddEstimate(av, b1, c01);
            av = Vector128.Create(a1[off]);
            c10 = Vector128.MultiplyAddEstimate(av, b0, c10);
            c11 = Vector128.MultiplyAddEstimate(av, b1, c11);
            av = Vector128.Create(a2[off]);
            c20 = Vector128.MultiplyAddEstimate(av, b0, c20);
            c21 = Vector128.MultiplyAddEstimate(av, b1, c21);
            av = Vector128.Create(a3[off]);
            c30 = Vector128.MultiplyAddEstimate(av, b0, c30);
            c31 = Vector128.MultiplyAddEstimate(av, b1, c31);
            av = Vector128.Create(a4[off]);
            c40 = Vector128.MultiplyAddEstimate(av, b0, c40);
            c41 = Vector128.MultiplyAddEstimate(av, b1, c41);
            av = Vector128.Create(a5[off]);
            c50 = Vector128.MultiplyAddEstimate(av, b0, c50);
            c51 = Vector128.MultiplyAddEstimate(av, b1, c51);
            off += csa;
            b += rsb;
        }

        Vector128<float> va = Vector128.Create(alpha);
        if (beta == 0)
        {
            Vector128.Store(c00 * va, r0);
            Vector128.Store(c01 * va, r0 + 4);
            Vector128.Store(c10 * va, r1);
            Vector128.Store(c11 * va, r1 + 4);
            Vector128.Store(c20 * va, r2);
            Vector128.Store(c21 * va, r2 + 4);
            Vector128.Store(c30 * va, r3);
            Vector128.Store(c31 * va, r3 + 4);
            Vector128.Store(c40 * va, r4);
            Vector128.Store(c41 * va, r4 + 4);
            Vector128.Store(c50 * va, r5);
            Vector128.Store(c51 * va, r5 + 4);
        }
        else
        {
            Vector128<float> vb = Vector128.Create(beta);
            Vector128.Store(Vector128.MultiplyAddEstimate(c00, va, Vector128.Load(r0) * vb), r0);
            Vector128.Store(Vector128.MultiplyAddEstimate(c01, va, Vector128.Load(r0 + 4) * vb), r0 + 4);
            Vector128.Store(Vector128.MultiplyAddEstimate(c10, va, Vector128.Load(r1) * vb), r1);
            Vector128.Store(Vector128.MultiplyAddEstimate(c11, va, Vector128.Load(r1 + 4) * vb), r1 + 4);
            Vector128.Store(Vector128.MultiplyAddEstimate(c20, va, Vector128.Load(r2) * vb), r2);
            Vector128.Store(Vector128.MultiplyAddEstimate(c21, va, Vector128.Load(r2 + 4) * vb), r2 + 4);
            Vector128.Store(Vector128.MultiplyAddEstimate(c30, va, Vector128.Load(r3) * vb), r3);
            Vector128.Store(Vector128.MultiplyAddEstimate(c31, va, Vector128.Load(r3 + 4) * vb), r3 + 4);
            Vector128.Store(Vector128.MultiplyAddEstimate(c40, va, Vector128.Load(r4) * vb), r4);
            Vector128.Store(Vector128.MultiplyAddEstimate(c41, va, Vector128.Load(r4 + 4) * vb), r4 + 4);
            Vector128.Store(Vector128.MultiplyAddEstimate(c50, va, Vector128.Load(r5) * vb), r5);
            Vector128.Store(Vector128.MultiplyAddEstimate(c51, va, Vector128.Load(r5 + 4) * vb), r5 + 4);
        }
    }
}

/// <summary>Vector256 FMA: 6x8 register tile of <see cref="Vector256{T}"/> accumulators.</summary>
internal readonly unsafe struct DgemmKernel256 : IGemmKernel<double>
{
    public static int MR => 6;
    public static int NR => 8;
    public static int MC => 72;
    public static int KC => 256;
    public static int NC => 2048;
    public static string Name => "Vector256 FMA 6x8";

    /// <summary>C[6x8] = alpha * Ap·Bp + beta * C over <paramref name="kc"/> steps (beta == 0: C is not read).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(nint kc, double* a, double* b, double* c, nint ldc, double alpha, double beta)
    {
        Vector256<double> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        Vector256<double> b0, b1, av;
        double* r0 = c;
        double* r1 = r0 + ldc;
        double* r2 = r1 + ldc;
        double* r3 = r2 + ldc;
        double* r4 = r3 + ldc;
        double* r5 = r4 + ldc;
        if (Sse.IsSupported)
        {
            Sse.Prefetch0(r0 + 0);
            Sse.Prefetch0(r0 + 7);
            Sse.Prefetch0(r1 + 0);
            Sse.Prefetch0(r1 + 7);
            Sse.Prefetch0(r2 + 0);
            Sse.Prefetch0(r2 + 7);
            Sse.Prefetch0(r3 + 0);
            Sse.Prefetch0(r3 + 7);
            Sse.Prefetch0(r4 + 0);
            Sse.Prefetch0(r4 + 7);
            Sse.Prefetch0(r5 + 0);
            Sse.Prefetch0(r5 + 7);
        }

        nint p = kc;
        while (p >= 4)
        {
            b0 = Vector256.Load(b + 0);
            b1 = Vector256.Load(b + 4);
            av = Vector256.Create(a[0]);
            c00 = Vector256.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
            av = Vector256.Create(a[1]);
            c10 = Vector256.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
            av = Vector256.Create(a[2]);
            c20 = Vector256.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
            av = Vector256.Create(a[3]);
            c30 = Vector256.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
            av = Vector256.Create(a[4]);
            c40 = Vector256.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector256.FusedMultiplyAdd(av, b1, c41);
            av = Vector256.Create(a[5]);
            c50 = Vector256.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector256.FusedMultiplyAdd(av, b1, c51);
            b0 = Vector256.Load(b + 8);
            b1 = Vector256.Load(b + 12);
            av = Vector256.Create(a[6]);
            c00 = Vector256.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
            av = Vector256.Create(a[7]);
            c10 = Vector256.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
            av = Vector256.Create(a[8]);
            c20 = Vector256.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
            av = Vector256.Create(a[9]);
            c30 = Vector256.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
            av = Vector256.Create(a[10]);
            c40 = Vector256.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector256.FusedMultiplyAdd(av, b1, c41);
            av = Vector256.Create(a[11]);
            c50 = Vector256.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector256.FusedMultiplyAdd(av, b1, c51);
            b0 = Vector256.Load(b + 16);
            b1 = Vector256.Load(b + 20);
            av = Vector256.Create(a[12]);
            c00 = Vector256.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
            av = Vector256.Create(a[13]);
            c10 = Vector256.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
            av = Vector256.Create(a[14]);
            c20 = Vector256.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
            av = Vector256.Create(a[15]);
            c30 = Vector256.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
            av = Vector256.Create(a[16]);
            c40 = Vector256.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector256.FusedMultiplyAdd(av, b1, c41);
            av = Vector256.Create(a[17]);
            c50 = Vector256.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector256.FusedMultiplyAdd(av, b1, c51);
            b0 = Vector256.Load(b + 24);
            b1 = Vector256.Load(b + 28);
            av = Vector256.Create(a[18]);
            c00 = Vector256.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
            av = Vector256.Create(a[19]);
            c10 = Vector256.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
            av = Vector256.Create(a[20]);
            c20 = Vector256.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
            av = Vector256.Create(a[21]);
            c30 = Vector256.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
            av = Vector256.Create(a[22]);
            c40 = Vector256.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector256.FusedMultiplyAdd(av, b1, c41);
            av = Vector256.Create(a[23]);
            c50 = Vector256.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector256.FusedMultiplyAdd(av, b1, c51);
            a += 24;
            b += 32;
            p -= 4;
        }
        while (p > 0)
        {
            b0 = Vector256.Load(b + 0);
            b1 = Vector256.Load(b + 4);
            av = Vector256.Create(a[0]);
            c00 = Vector256.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
            av = Vector256.Create(a[1]);
            c10 = Vector256.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
            av = Vector256.Create(a[2]);
            c20 = Vector256.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
            av = Vector256.Create(a[3]);
            c30 = Vector256.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
            av = Vector256.Create(a[4]);
            c40 = Vector256.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector256.FusedMultiplyAdd(av, b1, c41);
            av = Vector256.Create(a[5]);
            c50 = Vector256.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector256.FusedMultiplyAdd(av, b1, c51);
            a += 6;
            b += 8;
            p--;
        }

        Vector256<double> va = Vector256.Create(alpha);
        if (beta == 0)
        {
            Vector256.Store(c00 * va, r0);
            Vector256.Store(c01 * va, r0 + 4);
            Vector256.Store(c10 * va, r1);
            Vector256.Store(c11 * va, r1 + 4);
            Vector256.Store(c20 * va, r2);
            Vector256.Store(c21 * va, r2 + 4);
            Vector256.Store(c30 * va, r3);
            Vector256.Store(c31 * va, r3 + 4);
            Vector256.Store(c40 * va, r4);
            Vector256.Store(c41 * va, r4 + 4);
            Vector256.Store(c50 * va, r5);
            Vector256.Store(c51 * va, r5 + 4);
        }
        else
        {
            Vector256<double> vb = Vector256.Create(beta);
            Vector256.Store(Vector256.FusedMultiplyAdd(c00, va, Vector256.Load(r0) * vb), r0);
            Vector256.Store(Vector256.FusedMultiplyAdd(c01, va, Vector256.Load(r0 + 4) * vb), r0 + 4);
            Vector256.Store(Vector256.FusedMultiplyAdd(c10, va, Vector256.Load(r1) * vb), r1);
            Vector256.Store(Vector256.FusedMultiplyAdd(c11, va, Vector256.Load(r1 + 4) * vb), r1 + 4);
            Vector256.Store(Vector256.FusedMultiplyAdd(c20, va, Vector256.Load(r2) * vb), r2);
            Vector256.Store(Vector256.FusedMultiplyAdd(c21, va, Vector256.Load(r2 + 4) * vb), r2 + 4);
            Vector256.Store(Vector256.FusedMultiplyAdd(c30, va, Vector256.Load(r3) * vb), r3);
            Vector256.Store(Vector256.FusedMultiplyAdd(c31, va, Vector256.Load(r3 + 4) * vb), r3 + 4);
            Vector256.Store(Vector256.FusedMultiplyAdd(c40, va, Vector256.Load(r4) * vb), r4);
            Vector256.Store(Vector256.FusedMultiplyAdd(c41, va, Vector256.Load(r4 + 4) * vb), r4 + 4);
            Vector256.Store(Vector256.FusedMultiplyAdd(c50, va, Vector256.Load(r5) * vb), r5);
            Vector256.Store(Vector256.FusedMultiplyAdd(c51, va, Vector256.Load(r5 + 4) * vb), r5 + 4);
        }
    }

    /// <summary>As <see cref="Run"/> on unpacked operands: A(r, p) at a[r*rsa + p*csa], B row p at b + p*rsb.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RunStrided(nint kc, double* a, nint rsa, nint csa, double* b, nint rsb, double* c, nint ldc, double alpha, double beta)
    {
        Vector256<double> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        Vector256<double> b0, b1, av;
        double* a0 = a;
        double* a1 = a0 + rsa;
        double* a2 = a1 + rsa;
        double* a3 = a2 + rsa;
        double* a4 = a3 + rsa;
        double* a5 = a4 + rsa;
        double* r0 = c;
        double* r1 = r0 + ldc;
        double* r2 = r1 + ldc;
        double* r3 = r2 + ldc;
        double* r4 = r3 + ldc;
        double* r5 = r4 + ldc;
        if (Sse.IsSupported)
        {
            Sse.Prefetch0(r0 + 0);
            Sse.Prefetch0(r0 + 7);
            Sse.Prefetch0(r1 + 0);
            Sse.Prefetch0(r1 + 7);
            Sse.Prefetch0(r2 + 0);
            Sse.Prefetch0(r2 + 7);
            Sse.Prefetch0(r3 + 0);
            Sse.Prefetch0(r3 + 7);
            Sse.Prefetch0(r4 + 0);
            Sse.Prefetch0(r4 + 7);
            Sse.Prefetch0(r5 + 0);
            Sse.Prefetch0(r5 + 7);
        }

        nint off = 0;
        for (nint p = 0; p < kc; p++)
        {
            b0 = Vector256.Load(b);
            b1 = Vector256.Load(b + 4);
            av = Vector256.Create(a0[off]);
            c00 = Vector256.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
            av = Vector256.Create(a1[off]);
            c10 = Vector256.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
            av = Vector256.Create(a2[off]);
            c20 = Vector256.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
            av = Vector256.Create(a3[off]);
            c30 = Vector256.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
            av = Vector256.Create(a4[off]);
            c40 = Vector256.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector256.FusedMultiplyAdd(av, b1, c41);
            av = Vector256.Create(a5[off]);
            c50 = Vector256.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector256.FusedMultiplyAdd(av, b1, c51);
            off += csa;
            b += rsb;
        }

        Vector256<double> va = Vector256.Create(alpha);
        if (beta == 0)
        {
            Vector256.Store(c00 * va, r0);
            Vector256.Store(c01 * va, r0 + 4);
            Vector256.Store(c10 * va, r1);
            Vector256.Store(c11 * va, r1 + 4);
            Vector256.Store(c20 * va, r2);
            Vector256.Store(c21 * va, r2 + 4);
            Vector256.Store(c30 * va, r3);
            Vector256.Store(c31 * va, r3 + 4);
            Vector256.Store(c40 * va, r4);
            Vector256.Store(c41 * va, r4 + 4);
            Vector256.Store(c50 * va, r5);
            Vector256.Store(c51 * va, r5 + 4);
        }
        else
        {
            Vector256<double> vb = Vector256.Create(beta);
            Vector256.Store(Vector256.FusedMultiplyAdd(c00, va, Vector256.Load(r0) * vb), r0);
            Vector256.Store(Vector256.FusedMultiplyAdd(c01, va, Vector256.Load(r0 + 4) * vb), r0 + 4);
            Vector256.Store(Vector256.FusedMultiplyAdd(c10, va, Vector256.Load(r1) * vb), r1);
            Vector256.Store(Vector256.FusedMultiplyAdd(c11, va, Vector256.Load(r1 + 4) * vb), r1 + 4);
            Vector256.Store(Vector256.FusedMultiplyAdd(c20, va, Vector256.Load(r2) * vb), r2);
            Vector256.Store(Vector256.FusedMultiplyAdd(c21, va, Vector256.Load(r2 + 4) * vb), r2 + 4);
            Vector256.Store(Vector256.FusedMultiplyAdd(c30, va, Vector256.Load(r3) * vb), r3);
            Vector256.Store(Vector256.FusedMultiplyAdd(c31, va, Vector256.Load(r3 + 4) * vb), r3 + 4);
            Vector256.Store(Vector256.FusedMultiplyAdd(c40, va, Vector256.Load(r4) * vb), r4);
            Vector256.Store(Vector256.FusedMultiplyAdd(c41, va, Vector256.Load(r4 + 4) * vb), r4 + 4);
            Vector256.Store(Vector256.FusedMultiplyAdd(c50, va, Vector256.Load(r5) * vb), r5);
            Vector256.Store(Vector256.FusedMultiplyAdd(c51, va, Vector256.Load(r5 + 4) * vb), r5 + 4);
        }
    }
}

/// <summary>Vector128: 6x4 register tile of <see cref="Vector128{T}"/> accumulators.</summary>
internal readonly unsafe struct DgemmKernel128 : IGemmKernel<double>
{
    public static int MR => 6;
    public static int NR => 4;
    public static int MC => 72;
    public static int KC => 256;
    public static int NC => 2048;
    public static string Name => "Vector128 6x4";

    /// <summary>C[6x4] = alpha * Ap·Bp + beta * C over <paramref name="kc"/> steps (beta == 0: C is not read).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(nint kc, double* a, double* b, double* c, nint ldc, double alpha, double beta)
    {
        Vector128<double> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        Vector128<double> b0, b1, av;
        double* r0 = c;
        double* r1 = r0 + ldc;
        double* r2 = r1 + ldc;
        double* r3 = r2 + ldc;
        double* r4 = r3 + ldc;
        double* r5 = r4 + ldc;
        if (Sse.IsSupported)
        {
            Sse.Prefetch0(r0 + 0);
            Sse.Prefetch0(r0 + 3);
            Sse.Prefetch0(r1 + 0);
            Sse.Prefetch0(r1 + 3);
            Sse.Prefetch0(r2 + 0);
            Sse.Prefetch0(r2 + 3);
            Sse.Prefetch0(r3 + 0);
            Sse.Prefetch0(r3 + 3);
            Sse.Prefetch0(r4 + 0);
            Sse.Prefetch0(r4 + 3);
            Sse.Prefetch0(r5 + 0);
            Sse.Prefetch0(r5 + 3);
        }

        nint p = kc;
        while (p >= 4)
        {
            b0 = Vector128.Load(b + 0);
            b1 = Vector128.Load(b + 2);
            av = Vector128.Create(a[0]);
            c00 = Vector128.MultiplyAddEstimate(av, b0, c00);
            c01 = Vector128.MultiplyAddEstimate(av, b1, c01);
            av = Vector128.Create(a[1]);
            c10 = Vector128.MultiplyAddEstimate(av, b0, c10);
            c11 = Vector128.MultiplyAddEstimate(av, b1, c11);
            av = Vector128.Create(a[2]);
            c20 = Vector128.MultiplyAddEstimate(av, b0, c20);
            c21 = Vector128.MultiplyAddEstimate(av, b1, c21);
            av = Vector128.Create(a[3]);
            c30 = Vector128.MultiplyAddEstimate(av, b0, c30);
            c31 = Vector128.MultiplyAddEstimate(av, b1, c31);
            av = Vector128.Create(a[4]);
            c40 = Vector128.MultiplyAddEstimate(av, b0, c40);
            c41 = Vector128.MultiplyAddEstimate(av, b1, c41);
            av = Vector128.Create(a[5]);
            c50 = Vector128.MultiplyAddEstimate(av, b0, c50);
            c51 = Vector128.MultiplyAddEstimate(av, b1, c51);
            b0 = Vector128.Load(b + 4);
            b1 = Vector128.Load(b + 6);
            av = Vector128.Create(a[6]);
            c00 = Vector128.MultiplyAddEstimate(av, b0, c00);
            c01 = Vector128.MultiplyAddEstimate(av, b1, c01);
            av = Vector128.Create(a[7]);
            c10 = Vector128.MultiplyAddEstimate(av, b0, c10);
            c11 = Vector128.MultiplyAddEstimate(av, b1, c11);
            av = Vector128.Create(a[8]);
            c20 = Vector128.MultiplyAddEstimate(av, b0, c20);
            c21 = Vector128.MultiplyAddEstimate(av, b1, c21);
            av = Vector128.Create(a[9]);
            c30 = Vector128.MultiplyAddEstimate(av, b0, c30);
            c31 = Vector128.MultiplyAddEstimate(av, b1, c31);
            av = Vector128.Create(a[10]);
            c40 = Vector128.MultiplyAddEstimate(av, b0, c40);
            c41 = Vector128.MultiplyAddEstimate(av, b1, c41);
            av = Vector128.Create(a[11]);
            c50 = Vector128.MultiplyAddEstimate(av, b0, c50);
            c51 = Vector128.MultiplyAddEstimate(av, b1, c51);
            b0 = Vector128.Load(b + 8);
            b1 = Vector128.Load(b + 10);
            av = Vector128.Create(a[12]);
            c00 = Vector128.MultiplyAddEstimate(av, b0, c00);
            c01 = Vector128.MultiplyAddEstimate(av, b1, c01);
            av = Vector128.Create(a[13]);
            c10 = Vector128.MultiplyAddEstimate(av, b0, c10);
            c11 = Vector128.MultiplyAddEstimate(av, b1, c11);
            av = Vector128.Create(a[14]);
            c20 = Vector128.MultiplyAddEstimate(av, b0, c20);
            c21 = Vector128.MultiplyAddEstimate(av, b1, c21);
            av = Vector128.Create(a[15]);
            c30 = Vector128.MultiplyAddEstimate(av, b0, c30);
            c31 = Vector128.MultiplyAddEstimate(av, b1, c31);
            av = Vector128.Create(a[16]);
            c40 = Vector128.MultiplyAddEstimate(av, b0, c40);
            c41 = Vector128.MultiplyAddEstimate(av, b1, c41);
            av = Vector128.Create(a[17]);
            c50 = Vector128.MultiplyAddEstimate(av, b0, c50);
            c51 = Vector128.MultiplyAddEstimate(av, b1, c51);
            b0 = Vector128.Load(b + 12);
            b1 = Vector128.Load(b + 14);
            av = Vector128.Create(a[18]);
            c00 = Vector128.MultiplyAddEstimate(av, b0, c00);
            c01 = Vector128.MultiplyAddEstimate(av, b1, c01);
            av = Vector128.Create(a[19]);
            c10 = Vector128.MultiplyAddEstimate(av, b0, c10);
            c11 = Vector128.MultiplyAddEstimate(av, b1, c11);
            av = Vector128.Create(a[20]);
            c20 = Vector128.MultiplyAddEstimate(av, b0, c20);
            c21 = Vector128.MultiplyAddEstimate(av, b1, c21);
            av = Vector128.Create(a[21]);
            c30 = Vector128.MultiplyAddEstimate(av, b0, c30);
            c31 = Vector128.MultiplyAddEstimate(av, b1, c31);
            av = Vector128.Create(a[22]);
            c40 = Vector128.MultiplyAddEstimate(av, b0, c40);
            c41 = Vector128.MultiplyAddEstimate(av, b1, c41);
            av = Vector128.Create(a[23]);
            c50 = Vector128.MultiplyAddEstimate(av, b0, c50);
            c51 = Vector128.MultiplyAddEstimate(av, b1, c51);
            a += 24;
            b += 16;
            p -= 4;
        }
        while (p > 0)
        {
            b0 = Vector128.Load(b + 0);
            b1 = Vector128.Load(b + 2);
            av = Vector128.Create(a[0]);
            c00 = Vector128.MultiplyAddEstimate(av, b0, c00);
            c01 = Vector128.MultiplyAddEstimate(av, b1, c01);
            av = Vector128.Create(a[1]);
            c10 = Vector128.MultiplyAddEstimate(av, b0, c10);
            c11 = Vector128.MultiplyAddEstimate(av, b1, c11);
            av = Vector128.Create(a[2]);
            c20 = Vector128.MultiplyAddEstimate(av, b0, c20);
            c21 = Vector128.MultiplyAddEstimate(av, b1, c21);
            av = Vector128.Create(a[3]);
            c30 = Vector128.MultiplyAddEstimate(av, b0, c30);
            c31 = Vector128.MultiplyAddEstimate(av, b1, c31);
            av = Vector128.Create(a[4]);
            c40 = Vector128.MultiplyAddEstimate(av, b0, c40);
            c41 = Vector128.MultiplyAddEstimate(av, b1, c41);
            av = Vector128.Create(a[5]);
            c50 = Vector128.MultiplyAddEstimate(av, b0, c50);
            c51 = Vector128.MultiplyAddEstimate(av, b1, c51);
            a += 6;
            b += 4;
            p--;
        }

        Vector128<double> va = Vector128.Create(alpha);
        if (beta == 0)
        {
            Vector128.Store(c00 * va, r0);
            Vector128.Store(c01 * va, r0 + 2);
            Vector128.Store(c10 * va, r1);
            Vector128.Store(c11 * va, r1 + 2);
            Vector128.Store(c20 * va, r2);
            Vector128.Store(c21 * va, r2 + 2);
            Vector128.Store(c30 * va, r3);
            Vector128.Store(c31 * va, r3 + 2);
            Vector128.Store(c40 * va, r4);
            Vector128.Store(c41 * va, r4 + 2);
            Vector128.Store(c50 * va, r5);
            Vector128.Store(c51 * va, r5 + 2);
        }
        else
        {
            Vector128<double> vb = Vector128.Create(beta);
            Vector128.Store(Vector128.MultiplyAddEstimate(c00, va, Vector128.Load(r0) * vb), r0);
            Vector128.Store(Vector128.MultiplyAddEstimate(c01, va, Vector128.Load(r0 + 2) * vb), r0 + 2);
            Vector128.Store(Vector128.MultiplyAddEstimate(c10, va, Vector128.Load(r1) * vb), r1);
            Vector128.Store(Vector128.MultiplyAddEstimate(c11, va, Vector128.Load(r1 + 2) * vb), r1 + 2);
            Vector128.Store(Vector128.MultiplyAddEstimate(c20, va, Vector128.Load(r2) * vb), r2);
            Vector128.Store(Vector128.MultiplyAddEstimate(c21, va, Vector128.Load(r2 + 2) * vb), r2 + 2);
            Vector128.Store(Vector128.MultiplyAddEstimate(c30, va, Vector128.Load(r3) * vb), r3);
            Vector128.Store(Vector128.MultiplyAddEstimate(c31, va, Vector128.Load(r3 + 2) * vb), r3 + 2);
            Vector128.Store(Vector128.MultiplyAddEstimate(c40, va, Vector128.Load(r4) * vb), r4);
            Vector128.Store(Vector128.MultiplyAddEstimate(c41, va, Vector128.Load(r4 + 2) * vb), r4 + 2);
            Vector128.Store(Vector128.MultiplyAddEstimate(c50, va, Vector128.Load(r5) * vb), r5);
            Vector128.Store(Vector128.MultiplyAddEstimate(c51, va, Vector128.Load(r5 + 2) * vb), r5 + 2);
        }
    }

    /// <summary>As <see cref="Run"/> on unpacked operands: A(r, p) at a[r*rsa + p*csa], B row p at b + p*rsb.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RunStrided(nint kc, double* a, nint rsa, nint csa, double* b, nint rsb, double* c, nint ldc, double alpha, double beta)
    {
        Vector128<double> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        Vector128<double> b0, b1, av;
        double* a0 = a;
        double* a1 = a0 + rsa;
        double* a2 = a1 + rsa;
        double* a3 = a2 + rsa;
        double* a4 = a3 + rsa;
        double* a5 = a4 + rsa;
        double* r0 = c;
        double* r1 = r0 + ldc;
        double* r2 = r1 + ldc;
        double* r3 = r2 + ldc;
        double* r4 = r3 + ldc;
        double* r5 = r4 + ldc;
        if (Sse.IsSupported)
        {
            Sse.Prefetch0(r0 + 0);
            Sse.Prefetch0(r0 + 3);
            Sse.Prefetch0(r1 + 0);
            Sse.Prefetch0(r1 + 3);
            Sse.Prefetch0(r2 + 0);
            Sse.Prefetch0(r2 + 3);
            Sse.Prefetch0(r3 + 0);
            Sse.Prefetch0(r3 + 3);
            Sse.Prefetch0(r4 + 0);
            Sse.Prefetch0(r4 + 3);
            Sse.Prefetch0(r5 + 0);
            Sse.Prefetch0(r5 + 3);
        }

        nint off = 0;
        for (nint p = 0; p < kc; p++)
        {
            b0 = Vector128.Load(b);
            b1 = Vector128.Load(b + 2);
            av = Vector128.Create(a0[off]);
            c00 = Vector128.MultiplyAddEstimate(av, b0, c00);
            c01 = Vector128.MultiplyAddEstimate(av, b1, c01);
            av = Vector128.Create(a1[off]);
            c10 = Vector128.MultiplyAddEstimate(av, b0, c10);
            c11 = Vector128.MultiplyAddEstimate(av, b1, c11);
            av = Vector128.Create(a2[off]);
            c20 = Vector128.MultiplyAddEstimate(av, b0, c20);
            c21 = Vector128.MultiplyAddEstimate(av, b1, c21);
            av = Vector128.Create(a3[off]);
            c30 = Vector128.MultiplyAddEstimate(av, b0, c30);
            c31 = Vector128.MultiplyAddEstimate(av, b1, c31);
            av = Vector128.Create(a4[off]);
            c40 = Vector128.MultiplyAddEstimate(av, b0, c40);
            c41 = Vector128.MultiplyAddEstimate(av, b1, c41);
            av = Vector128.Create(a5[off]);
            c50 = Vector128.MultiplyAddEstimate(av, b0, c50);
            c51 = Vector128.MultiplyAddEstimate(av, b1, c51);
            off += csa;
            b += rsb;
        }

        Vector128<double> va = Vector128.Create(alpha);
        if (beta == 0)
        {
            Vector128.Store(c00 * va, r0);
            Vector128.Store(c01 * va, r0 + 2);
            Vector128.Store(c10 * va, r1);
            Vector128.Store(c11 * va, r1 + 2);
            Vector128.Store(c20 * va, r2);
            Vector128.Store(c21 * va, r2 + 2);
            Vector128.Store(c30 * va, r3);
            Vector128.Store(c31 * va, r3 + 2);
            Vector128.Store(c40 * va, r4);
            Vector128.Store(c41 * va, r4 + 2);
            Vector128.Store(c50 * va, r5);
            Vector128.Store(c51 * va, r5 + 2);
        }
        else
        {
            Vector128<double> vb = Vector128.Create(beta);
            Vector128.Store(Vector128.MultiplyAddEstimate(c00, va, Vector128.Load(r0) * vb), r0);
            Vector128.Store(Vector128.MultiplyAddEstimate(c01, va, Vector128.Load(r0 + 2) * vb), r0 + 2);
            Vector128.Store(Vector128.MultiplyAddEstimate(c10, va, Vector128.Load(r1) * vb), r1);
            Vector128.Store(Vector128.MultiplyAddEstimate(c11, va, Vector128.Load(r1 + 2) * vb), r1 + 2);
            Vector128.Store(Vector128.MultiplyAddEstimate(c20, va, Vector128.Load(r2) * vb), r2);
            Vector128.Store(Vector128.MultiplyAddEstimate(c21, va, Vector128.Load(r2 + 2) * vb), r2 + 2);
            Vector128.Store(Vector128.MultiplyAddEstimate(c30, va, Vector128.Load(r3) * vb), r3);
            Vector128.Store(Vector128.MultiplyAddEstimate(c31, va, Vector128.Load(r3 + 2) * vb), r3 + 2);
            Vector128.Store(Vector128.MultiplyAddEstimate(c40, va, Vector128.Load(r4) * vb), r4);
            Vector128.Store(Vector128.MultiplyAddEstimate(c41, va, Vector128.Load(r4 + 2) * vb), r4 + 2);
            Vector128.Store(Vector128.MultiplyAddEstimate(c50, va, Vector128.Load(r5) * vb), r5);
            Vector128.Store(Vector128.MultiplyAddEstimate(c51, va, Vector128.Load(r5 + 2) * vb), r5 + 2);
        }
    }
}
