using Sdp.Engine;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// The CUDA backend's IndexSelect and IndexAdd against the CPU backend: every dtype, int32 and int64 indices with
/// repeats, assigning and accumulating. Exact: IndexAdd adds repeated indices in increasing k on both, so even
/// float sums agree bit for bit. A bad index throws the CPU's exception before anything is written.
/// </summary>
[TestFixtureSource(typeof(CudaDevices), nameof(CudaDevices.Implementations))]
[NonParallelizable]
public class IndexingCrossCheckTests(CudaImplementation implementation) : OpCrossCheckFixture(implementation)
{
    private static readonly DType[] All = [DType.Float32, DType.Float64, DType.Int32, DType.Int64];

    private (Tensor Cpu, Tensor Gpu) Indices(Random rng, int count, int size, bool int64)
    {
        var v = new double[count];
        for (int i = 0; i < count; i++) v[i] = rng.Next(size);
        return Pair(v, int64 ? DType.Int64 : DType.Int32, count);
    }

    [TestCase(new[] { 4, 5, 3 }, 1, 9)]
    [TestCase(new[] { 4, 5, 3 }, 0, 7)]
    [TestCase(new[] { 4, 5, 3 }, 2, 11)]
    [TestCase(new[] { 2, 1, 3, 6 }, 3, 1)]
    [TestCase(new[] { 9, 33 }, 0, 40)]
    public void IndexSelect_and_IndexAdd_match_the_cpu(int[] dims, int axis, int k)
    {
        int[] picked = (int[])dims.Clone();
        picked[axis] = k;
        foreach (var dtype in All)
        {
            foreach (bool int64 in new[] { false, true })
            {
                var rng = new Random(3 + k);
                var (ic, ig) = Indices(rng, k, dims[axis], int64);
                var (xc, xg) = Random(rng, dtype, dims);
                var (yc, yg) = Poisoned(dtype, picked);
                Cpu.IndexSelect(xc, axis, ic, yc, accumulate: false);
                Cuda.IndexSelect(xg, axis, ig, yg, accumulate: false);
                AssertSame(yc, yg, $"index_select {dtype} int64 {int64}");

                var (ac, ag) = Random(rng, dtype, picked);
                Cpu.IndexSelect(xc, axis, ic, ac, accumulate: true);
                Cuda.IndexSelect(xg, axis, ig, ag, accumulate: true);
                AssertSame(ac, ag, $"index_select += {dtype} int64 {int64}");

                var (sc, sg) = Random(rng, dtype, picked);
                Cpu.IndexAdd(sc, axis, ic, xc);
                Cuda.IndexAdd(sg, axis, ig, xg);
                AssertSame(xc, xg, $"index_add {dtype} int64 {int64}");
            }
        }
    }

    [Test]
    public void IndexAdd_sums_many_repeats_in_k_order()
    {
        // An embedding-like gradient: one outer index, 400 indices into 9 rows.
        var rng = new Random(5);
        var (ic, ig) = Indices(rng, 400, 9, int64: false);
        var (sc, sg) = Pair(Values(rng, 400 * 37, DType.Float32, -1000, 1000), DType.Float32, 400, 37);
        var (dc, dg) = Random(rng, DType.Float32, 9, 37);
        Cpu.IndexAdd(sc, 0, ic, dc);
        Cuda.IndexAdd(sg, 0, ig, dg);
        AssertSame(dc, dg, "index_add with repeats");
    }

    [Test]
    public void A_bad_index_throws_the_cpu_message_and_writes_nothing([Values(false, true)] bool int64)
    {
        var (xc, xg) = Random(new Random(6), DType.Float32, 5, 3);
        var (ic, ig) = Pair([1, 7, 2], int64 ? DType.Int64 : DType.Int32, 3);
        var (yc, yg) = Random(new Random(7), DType.Float32, 3, 3);
        var before = yg.ToDoubles();
        var cpu = Assert.Throws<ArgumentOutOfRangeException>(() => Cpu.IndexSelect(xc, 0, ic, yc, accumulate: false))!;
        var cuda = Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.IndexSelect(xg, 0, ig, yg, accumulate: false))!;
        Assert.That(cuda.Message, Is.EqualTo(cpu.Message));
        Assert.That(cuda.Message, Does.Contain("index 7 at position 1").And.Contain("size 5"));
        Assert.That(yg.ToDoubles(), Is.EqualTo(before), "nothing written");

        var (nc, ng) = Pair([-1], int64 ? DType.Int64 : DType.Int32, 1);
        var (sc, sg) = Random(new Random(8), DType.Float32, 5, 1);
        var dstBefore = xg.ToDoubles();
        cpu = Assert.Throws<ArgumentOutOfRangeException>(() => Cpu.IndexAdd(sc, 1, nc, xc))!;
        cuda = Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.IndexAdd(sg, 1, ng, xg))!;
        Assert.That(cuda.Message, Is.EqualTo(cpu.Message));
        Assert.That(xg.ToDoubles(), Is.EqualTo(dstBefore), "nothing written");
    }
}
