using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Sdp.Kernels.Cpu;

/// <summary>AVX packing helpers for float32 (8x8 register transposes instead of element-by-element gathers).</summary>
internal static unsafe class GemmPack
{
    /// <summary>
    /// Packs 6 rows of A (row stride lda, kc columns) into one MR=6 panel: dst[p*6 + r] = a[r*lda + p].
    /// Stores are 8 wide and overlap forwards, so up to 2 floats past the panel end are clobbered (callers leave slack;
    /// a following panel is packed after this one and overwrites them).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PackA6Float(float* a, nint lda, int kc, float* dst)
    {
        float* a0 = a, a1 = a0 + lda, a2 = a1 + lda, a3 = a2 + lda, a4 = a3 + lda, a5 = a4 + lda;
        Vector256<float> z = Vector256<float>.Zero;
        int p = 0;
        for (; p + 8 <= kc; p += 8)
        {
            Transpose8x8Store(
                Vector256.Load(a0 + p), Vector256.Load(a1 + p), Vector256.Load(a2 + p), Vector256.Load(a3 + p),
                Vector256.Load(a4 + p), Vector256.Load(a5 + p), z, z, dst + (p * 6), 6);
        }

        for (; p < kc; p++)
        {
            float* d = dst + (p * 6);
            d[0] = a0[p];
            d[1] = a1[p];
            d[2] = a2[p];
            d[3] = a3[p];
            d[4] = a4[p];
            d[5] = a5[p];
        }
    }

    /// <summary>
    /// Packs 8 columns of op(B) = Bᵀ (B stored with row stride ldb; row j holds column j of op(B)) into an NR-wide
    /// panel: dst[p*nr + j] = b[j*ldb + p] for j &lt; 8, p &lt; kc.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PackBT8Float(float* b, nint ldb, int kc, float* dst, int nr)
    {
        float* b0 = b, b1 = b0 + ldb, b2 = b1 + ldb, b3 = b2 + ldb, b4 = b3 + ldb, b5 = b4 + ldb, b6 = b5 + ldb, b7 = b6 + ldb;
        int p = 0;
        for (; p + 8 <= kc; p += 8)
        {
            Transpose8x8Store(
                Vector256.Load(b0 + p), Vector256.Load(b1 + p), Vector256.Load(b2 + p), Vector256.Load(b3 + p),
                Vector256.Load(b4 + p), Vector256.Load(b5 + p), Vector256.Load(b6 + p), Vector256.Load(b7 + p),
                dst + ((nint)p * nr), nr);
        }

        for (; p < kc; p++)
        {
            float* d = dst + ((nint)p * nr);
            d[0] = b0[p];
            d[1] = b1[p];
            d[2] = b2[p];
            d[3] = b3[p];
            d[4] = b4[p];
            d[5] = b5[p];
            d[6] = b6[p];
            d[7] = b7[p];
        }
    }

    /// <summary>As <see cref="PackBT8Float"/> with the 8 source rows given by pointer (a row gather): dst[p*nr + j] = row_j[p].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PackBT8FloatRows(float* b0, float* b1, float* b2, float* b3, float* b4, float* b5, float* b6, float* b7, int kc, float* dst, int nr)
    {
        int p = 0;
        for (; p + 8 <= kc; p += 8)
        {
            Transpose8x8Store(
                Vector256.Load(b0 + p), Vector256.Load(b1 + p), Vector256.Load(b2 + p), Vector256.Load(b3 + p),
                Vector256.Load(b4 + p), Vector256.Load(b5 + p), Vector256.Load(b6 + p), Vector256.Load(b7 + p),
                dst + ((nint)p * nr), nr);
        }

        for (; p < kc; p++)
        {
            float* d = dst + ((nint)p * nr);
            d[0] = b0[p];
            d[1] = b1[p];
            d[2] = b2[p];
            d[3] = b3[p];
            d[4] = b4[p];
            d[5] = b5[p];
            d[6] = b6[p];
            d[7] = b7[p];
        }
    }

    /// <summary>
    /// Packs 8 rows of B (row stride ldb) at the gathered columns idx[0..kc) into an NR-wide panel:
    /// dst[p*nr + j] = b[j*ldb + idx[p]] (AVX2 gathers along each row, then 8x8 transposes).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PackBT8FloatGatherK(float* b, nint ldb, int* idx, int kc, float* dst, int nr)
    {
        float* b0 = b, b1 = b0 + ldb, b2 = b1 + ldb, b3 = b2 + ldb, b4 = b3 + ldb, b5 = b4 + ldb, b6 = b5 + ldb, b7 = b6 + ldb;
        int p = 0;
        for (; p + 8 <= kc; p += 8)
        {
            Vector256<int> ix = Vector256.Load(idx + p);
            Transpose8x8Store(
                Avx2.GatherVector256(b0, ix, 4), Avx2.GatherVector256(b1, ix, 4), Avx2.GatherVector256(b2, ix, 4), Avx2.GatherVector256(b3, ix, 4),
                Avx2.GatherVector256(b4, ix, 4), Avx2.GatherVector256(b5, ix, 4), Avx2.GatherVector256(b6, ix, 4), Avx2.GatherVector256(b7, ix, 4),
                dst + ((nint)p * nr), nr);
        }

        for (; p < kc; p++)
        {
            int q = idx[p];
            float* d = dst + ((nint)p * nr);
            d[0] = b0[q];
            d[1] = b1[q];
            d[2] = b2[q];
            d[3] = b3[q];
            d[4] = b4[q];
            d[5] = b5[q];
            d[6] = b6[q];
            d[7] = b7[q];
        }
    }

    /// <summary>dst[j] = s[idx[j]] for j &lt; 8 (one AVX2 gather).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Gather8Float(float* s, int* idx, float* dst) => Vector256.Store(Avx2.GatherVector256(s, Vector256.Load(idx), 4), dst);

    /// <summary>Transposes rows r0..r7 and stores output row q (= element q of every input) at d + q*stride.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose8x8Store(
        Vector256<float> r0, Vector256<float> r1, Vector256<float> r2, Vector256<float> r3,
        Vector256<float> r4, Vector256<float> r5, Vector256<float> r6, Vector256<float> r7, float* d, nint stride)
    {
        // Per 128-bit lane: interleave pairs, then quads; finally swap lanes.
        Vector256<float> t0 = Avx.UnpackLow(r0, r1), t1 = Avx.UnpackHigh(r0, r1);
        Vector256<float> t2 = Avx.UnpackLow(r2, r3), t3 = Avx.UnpackHigh(r2, r3);
        Vector256<float> t4 = Avx.UnpackLow(r4, r5), t5 = Avx.UnpackHigh(r4, r5);
        Vector256<float> t6 = Avx.UnpackLow(r6, r7), t7 = Avx.UnpackHigh(r6, r7);
        Vector256<float> u0 = Avx.Shuffle(t0, t2, 0x44), u1 = Avx.Shuffle(t0, t2, 0xEE);
        Vector256<float> u2 = Avx.Shuffle(t1, t3, 0x44), u3 = Avx.Shuffle(t1, t3, 0xEE);
        Vector256<float> u4 = Avx.Shuffle(t4, t6, 0x44), u5 = Avx.Shuffle(t4, t6, 0xEE);
        Vector256<float> u6 = Avx.Shuffle(t5, t7, 0x44), u7 = Avx.Shuffle(t5, t7, 0xEE);
        Vector256.Store(Avx.Permute2x128(u0, u4, 0x20), d);
        Vector256.Store(Avx.Permute2x128(u1, u5, 0x20), d + stride);
        Vector256.Store(Avx.Permute2x128(u2, u6, 0x20), d + (2 * stride));
        Vector256.Store(Avx.Permute2x128(u3, u7, 0x20), d + (3 * stride));
        Vector256.Store(Avx.Permute2x128(u0, u4, 0x31), d + (4 * stride));
        Vector256.Store(Avx.Permute2x128(u1, u5, 0x31), d + (5 * stride));
        Vector256.Store(Avx.Permute2x128(u2, u6, 0x31), d + (6 * stride));
        Vector256.Store(Avx.Permute2x128(u3, u7, 0x31), d + (7 * stride));
    }
}
