using Sdp.Engine;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// The CUDA backend's Permute, ReadSlice and WriteSlice against the CPU backend, every dtype, assigning (output
/// NaN-poisoned) and accumulating (output seeded): pure data movement, so exact.
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable]
public class ShapeCrossCheckTests(CudaImplementation implementation) : OpCrossCheckFixture(implementation)
{
    private static readonly DType[] All = [DType.Float32, DType.Float64, DType.Int32, DType.Int64];

    private static readonly object[] PermuteCases =
    [
        new object[] { new[] { 2, 3, 4, 5 }, new[] { 0, 2, 1, 3 } },
        new object[] { new[] { 2, 3, 4, 5 }, new[] { 3, 2, 1, 0 } },
        new object[] { new[] { 2, 3, 4, 5 }, new[] { 1, 3, 0, 2 } },
        new object[] { new[] { 1, 5, 1, 3 }, new[] { 2, 3, 0, 1 } },
        new object[] { new[] { 37, 45 }, new[] { 1, 0 } },
        new object[] { new[] { 3, 33, 17 }, new[] { 0, 2, 1 } },
        new object[] { new[] { 7, 5 }, new[] { 0, 1 } },
        new object[] { new[] { 9 }, new[] { 0 } },
        new object[] { new[] { 2, 3, 2, 3, 2, 3, 2, 3, 2, 3 }, new[] { 0, 1, 2, 3, 4, 5, 6, 7, 9, 8 } }, // rank 10, coalesces to 3 axes
        new object[] { new[] { 2, 3, 2, 3, 2, 3, 2, 3, 2, 3 }, new[] { 9, 7, 5, 3, 1, 0, 2, 4, 6, 8 } }, // 10 axes even coalesced: refused
    ];

    [TestCaseSource(nameof(PermuteCases))]
    public void Permute_matches_the_cpu(int[] dims, int[] perm)
    {
        int[] yDims = [.. perm.Select(a => dims[a])];
        foreach (var dtype in All)
        {
            foreach (bool accumulate in new[] { false, true })
            {
                var rng = new Random(1);
                var (xc, xg) = Random(rng, dtype, dims);
                var (yc, yg) = accumulate ? Random(rng, dtype, yDims) : Poisoned(dtype, yDims);
                if (dims.Length > 8 && !PermuteFitsTheKernel(dims, perm))
                {
                    Assert.That(() => Cuda.Permute(xg, perm, yg, accumulate), Throws.InstanceOf<NotSupportedException>().With.Message.Contains("permute"));
                    continue;
                }
                Cpu.Permute(xc, perm, yc, accumulate);
                Cuda.Permute(xg, perm, yg, accumulate);
                AssertSame(yc, yg, $"permute {dtype} accumulate {accumulate}");
            }
        }
    }

    /// <summary>Whether the permute coalesces to at most 8 axes (output neighbours that are neighbours in x merge).</summary>
    private static bool PermuteFitsTheKernel(int[] dims, int[] perm)
    {
        int axes = 0, prev = -2;
        foreach (int a in perm)
        {
            if (dims[a] == 1) continue;
            if (a != prev + 1) axes++;
            prev = a;
        }
        return axes <= 8;
    }

    [TestCase(new[] { 2, 3, 4, 5 }, 2, 1, 2)]
    [TestCase(new[] { 2, 3, 4, 5 }, 3, 4, 1)]
    [TestCase(new[] { 2, 3, 4, 5 }, 0, 0, 2)]
    [TestCase(new[] { 1, 7, 1 }, 1, 2, 5)]
    [TestCase(new[] { 30, 51 }, 1, 17, 33)]
    public void ReadSlice_and_WriteSlice_match_the_cpu(int[] dims, int axis, int start, int length)
    {
        int[] small = (int[])dims.Clone();
        small[axis] = length;
        foreach (var dtype in All)
        {
            foreach (bool accumulate in new[] { false, true })
            {
                var rng = new Random(2);
                var (bc, bg) = Random(rng, dtype, dims);
                var (sc, sg) = accumulate ? Random(rng, dtype, small) : Poisoned(dtype, small);
                Cpu.ReadSlice(bc, axis, start, sc, accumulate);
                Cuda.ReadSlice(bg, axis, start, sg, accumulate);
                AssertSame(sc, sg, $"read slice {dtype} accumulate {accumulate}");

                // Write a fresh window back into a seeded big tensor: the elements outside it must stay.
                var (wc, wg) = Random(rng, dtype, small);
                Cpu.WriteSlice(wc, axis, start, bc, accumulate);
                Cuda.WriteSlice(wg, axis, start, bg, accumulate);
                AssertSame(bc, bg, $"write slice {dtype} accumulate {accumulate}");
            }
        }
    }
}
