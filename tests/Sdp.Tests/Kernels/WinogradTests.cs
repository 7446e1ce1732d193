using Sdp.Engine;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Memory;
using Sdp.Kernels.Cpu;
using Sdp.Tests.Operators;
using Sdp.Tests.Support;

namespace Sdp.Tests.Kernels;

/// <summary>
/// Winograd F(2x2, 3x3) and F(4x4, 3x3) convolutions of the CPU backend (float32): forward, input gradient and weight
/// gradient against the float64 7-loop reference on fresh random inputs, over awkward geometries (planes that are not
/// a multiple of the tile, 1 x 1 planes, channel counts that are not a multiple of the 8 vector lanes, padding 0, 1 and
/// 2, groups of tiles that split the batch). Outputs are poisoned with NaN first (a pass that reads what it should only
/// write fails), and the accumulating gradients are seeded with random non-zero values (they must add, not overwrite).
/// <para>Tolerance: errors are measured against the largest reference magnitude of the tensor. F(4,3)'s transforms
/// have entries up to 8 (Aᵀ) and 5 (Bᵀ) and the 1/6, 1/12, 1/24 of G, which amplify float32 rounding: on ResNet-18's
/// shapes (batch 32, 64-512 channels) its errors are 5e-6 to 1.3e-5, F(2,3)'s 3e-7 to 8e-7 (like implicit GEMM's
/// 3e-7 to 6e-7); on the small shapes here they stay below 3e-6 and 3e-7. The bounds, 1e-4 for F(4,3) and 1e-5 for
/// F(2,3), sit about ten times above the worst and far below what a wrong transform, tile offset or edge gives (order 1).
/// Results must also be identical bit for bit with 1 and 2 threads.</para>
/// </summary>
[NonParallelizable]
public class WinogradTests
{
    private int _oldTile, _oldWeightTile, _oldGroup, _oldMin, _oldThreads;
    private CpuConvAlgorithm _oldAlgorithm;
    private bool _oldLegacy;

    [SetUp]
    public void Save()
    {
        _oldTile = CpuBackend.WinogradTile;
        _oldWeightTile = CpuBackend.WinogradWeightGradTile;
        _oldGroup = CpuBackend.WinogradGroupTiles;
        _oldMin = CpuBackend.WinogradMinChannels;
        _oldThreads = CpuParallel.MaxThreads;
        _oldAlgorithm = CpuBackend.ConvAlgorithm;
        _oldLegacy = CpuBackend.WinogradLegacyTransforms;
        CpuBackend.ConvAlgorithm = CpuConvAlgorithm.Winograd;
        CpuBackend.WinogradMinChannels = 1;
    }

    [TearDown]
    public void Restore()
    {
        CpuBackend.WinogradTile = _oldTile;
        CpuBackend.WinogradWeightGradTile = _oldWeightTile;
        CpuBackend.WinogradGroupTiles = _oldGroup;
        CpuBackend.WinogradMinChannels = _oldMin;
        CpuParallel.MaxThreads = _oldThreads;
        CpuBackend.ConvAlgorithm = _oldAlgorithm;
        CpuBackend.WinogradLegacyTransforms = _oldLegacy;
    }

    /// <summary>(N, C, H, W, O, padding): odd planes, 1 x 1 and 1-row planes, channels off the lane width, and the
    /// ResNet-like 8 x 8 plane with 17 channels.</summary>
    private static readonly (int N, int C, int H, int W, int O, int Pad)[] Shapes =
    [
        (2, 3, 7, 5, 5, 1),
        (3, 9, 6, 6, 11, 1),
        (2, 8, 9, 11, 8, 0),
        (1, 13, 5, 7, 4, 2),
        (4, 5, 1, 1, 9, 1),
        (2, 7, 1, 6, 3, 1),
        (3, 17, 8, 8, 19, 1),
        (2, 4, 3, 3, 6, 0),
    ];

    private static double Tolerance(int m) => m == 2 ? 1e-5 : 1e-4;

    /// <summary>The transform matrices compute the 1-d correlation exactly (up to float rounding of 1/6, 1/12, 1/24).</summary>
    [TestCase(2)]
    [TestCase(4)]
    public void Transforms_compute_the_correlation(int m)
    {
        var tr = WinogradTransform.ForTile(m);
        var rng = new Rng(5);
        int alpha = tr.Alpha;
        var d = ConvReference.Random(rng, alpha);
        var g = ConvReference.Random(rng, 3);
        var gd = MatVec(tr.Filter.Dense, alpha, 3, g);
        var bd = MatVec(tr.InputT.Dense, alpha, alpha, d);
        var y = MatVec(tr.OutputT.Dense, m, alpha, [.. gd.Zip(bd, (a, b) => a * b)]);
        for (int i = 0; i < m; i++)
        {
            double expected = g[0] * d[i] + g[1] * d[i + 1] + g[2] * d[i + 2];
            Assert.That(y[i], Is.EqualTo(expected).Within(1e-6), $"output {i}");
        }
    }

    [Test]
    public void Forward_matches_the_reference([Values(2, 4)] int m, [Values(1, 2)] int threads)
    {
        CpuBackend.WinogradTile = m;
        CpuParallel.MaxThreads = threads;
        var rng = new Rng(41);
        foreach (var (n, c, h, w, o, pad) in Shapes)
        {
            foreach (int groupTiles in new[] { 512, 3 })
            {
                CpuBackend.WinogradGroupTiles = groupTiles;
                var xv = ConvReference.Random(rng, n * c * h * w);
                var wv = ConvReference.Random(rng, o * c * 9);
                var bv = ConvReference.Random(rng, o);
                int oh = h + 2 * pad - 2, ow = w + 2 * pad - 2;
                using var x = Tensor.FromDoubles(xv, new Shape(n, c, h, w));
                using var wt = Tensor.FromDoubles(wv, new Shape(o, c, 3, 3));
                using var b = Tensor.FromDoubles(bv, new Shape(o));
                using var y = Tensor.Full(new Shape(n, o, oh, ow), double.NaN);
                CpuBackend.Instance.Conv2d(x, wt, b, y, 1, pad);
                AssertClose(y.ToDoubles(), ConvReference.Conv2d(xv, [n, c, h, w], wv, [o, c, 3, 3], bv, 1, pad), Tolerance(m), $"forward {(n, c, h, w, o, pad)}, {groupTiles} tiles a group");
            }
        }
    }

    [Test]
    public void Gradients_match_the_reference_and_accumulate([Values(2, 4)] int m, [Values(1, 2)] int threads)
    {
        CpuBackend.WinogradTile = CpuBackend.WinogradWeightGradTile = m;
        CpuParallel.MaxThreads = threads;
        var rng = new Rng(42);
        foreach (var (n, c, h, w, o, pad) in Shapes)
        {
            foreach (int groupTiles in new[] { 512, 3 })
            {
                CpuBackend.WinogradGroupTiles = groupTiles;
                var xv = ConvReference.Random(rng, n * c * h * w);
                var wv = ConvReference.Random(rng, o * c * 9);
                int oh = h + 2 * pad - 2, ow = w + 2 * pad - 2;
                var dyv = ConvReference.Random(rng, n * o * oh * ow);
                var dxSeed = ConvReference.Random(rng, xv.Length);
                var dwSeed = ConvReference.Random(rng, wv.Length);
                using var x = Tensor.FromDoubles(xv, new Shape(n, c, h, w));
                using var wt = Tensor.FromDoubles(wv, new Shape(o, c, 3, 3));
                using var dy = Tensor.FromDoubles(dyv, new Shape(n, o, oh, ow));
                using var dx = Tensor.FromDoubles(dxSeed, x.Shape);
                using var dw = Tensor.FromDoubles(dwSeed, wt.Shape);
                CpuBackend.Instance.Conv2dBackward(x, wt, dy, dx, dw, null, 1, pad);
                var (dxRef, dwRef) = ConvReference.Conv2dBackward(xv, [n, c, h, w], wv, [o, c, 3, 3], dyv, 1, pad);
                string what = $"{(n, c, h, w, o, pad)}, {groupTiles} tiles a group";
                // The seeds are of the size of the gradients, so accumulating is tested at the tolerance's scale.
                AssertClose(dx.ToDoubles(), [.. dxRef.Zip(dxSeed, (a, s) => a + s)], Tolerance(m), "dx " + what);
                AssertClose(dw.ToDoubles(), [.. dwRef.Zip(dwSeed, (a, s) => a + s)], Tolerance(m), "dw " + what);
            }
        }
    }

    /// <summary>Forward, dx and dw are bit for bit the same with 1 and 2 threads, for several group sizes (the weight
    /// gradient sums over groups, and the forward runs transforms and GEMMs on whichever thread claims them).</summary>
    [TestCase(4, 512)]
    [TestCase(4, 7)]
    [TestCase(2, 64)]
    public void Results_do_not_depend_on_the_thread_count(int m, int groupTiles)
    {
        CpuBackend.WinogradTile = CpuBackend.WinogradWeightGradTile = m;
        CpuBackend.WinogradGroupTiles = groupTiles;
        var rng = new Rng(43);
        var x = Tensor.Randn(new Shape(5, 19, 13, 10), rng);
        var w = Tensor.Randn(new Shape(21, 19, 3, 3), rng);
        var dy = Tensor.Randn(new Shape(5, 21, 13, 10), rng);
        float[][] Run(int threads)
        {
            CpuParallel.MaxThreads = threads;
            using var y = Tensor.Zeros(dy.Shape);
            using var dx = Tensor.Zeros(x.Shape);
            using var dw = Tensor.Zeros(w.Shape);
            CpuBackend.Instance.Conv2d(x, w, null, y, 1, 1);
            CpuBackend.Instance.Conv2dBackward(x, w, dy, dx, dw, null, 1, 1);
            return [y.ToArray<float>(), dx.ToArray<float>(), dw.ToArray<float>()];
        }

        var one = Run(1);
        var two = Run(2);
        for (int i = 0; i < 3; i++) Assert.That(two[i], Is.EqualTo(one[i]), new[] { "y", "dx", "dw" }[i]);
    }

    /// <summary>The row transforms (bands, 8 x 8 transposes, padded point strides) compute what the first version's per-tile
    /// transforms computed, bit for bit: the same operations on the same values, only moved differently. On every awkward
    /// shape, so that edge tiles, channel blocks of fewer than 8 and rows that are not a multiple of 8 pixels are covered;
    /// dx and dw are seeded with random values (beta = 1), y poisoned with NaN (beta = 0 must not read it).</summary>
    [Test]
    public void Row_transforms_match_the_per_tile_transforms_bit_for_bit([Values(2, 4)] int m)
    {
        CpuBackend.WinogradTile = CpuBackend.WinogradWeightGradTile = m;
        CpuBackend.WinogradGroupTiles = 5;
        var rng = new Rng(46);
        foreach (var (n, c, h, w, o, pad) in Shapes.Append((3, 16, 19, 21, 24, 1)))
        {
            int oh = h + 2 * pad - 2, ow = w + 2 * pad - 2;
            var x = Tensor.Randn(new Shape(n, c, h, w), rng);
            var wt = Tensor.Randn(new Shape(o, c, 3, 3), rng);
            var dy = Tensor.Randn(new Shape(n, o, oh, ow), rng);
            var dxSeed = Tensor.Randn(x.Shape, rng).ToArray<float>();
            var dwSeed = Tensor.Randn(wt.Shape, rng).ToArray<float>();
            float[][] Run(bool legacy)
            {
                CpuBackend.WinogradLegacyTransforms = legacy;
                using var y = Tensor.Full(dy.Shape, double.NaN);
                using var dx = Tensor.FromArray(dxSeed, x.Shape);
                using var dw = Tensor.FromArray(dwSeed, wt.Shape);
                CpuBackend.Instance.Conv2d(x, wt, null, y, 1, pad);
                CpuBackend.Instance.Conv2dBackward(x, wt, dy, dx, dw, null, 1, pad);
                return [y.ToArray<float>(), dx.ToArray<float>(), dw.ToArray<float>()];
            }

            var rows = Run(false);
            var tiles = Run(true);
            for (int i = 0; i < 3; i++) Assert.That(rows[i], Is.EqualTo(tiles[i]), $"{new[] { "y", "dx", "dw" }[i]} of {(n, c, h, w, o, pad)}");
            Assert.That(rows[0].Any(float.IsNaN), Is.False, "y is written everywhere");
        }
    }

    /// <summary>The transformed buffers are workspace tensors, charged to the account and freed; their size shows that the
    /// Winograd path ran (<see cref="WinogradWorkspaceBytes"/>), and the implicit path's column offsets were not needed.</summary>
    [TestCase(2, 1)]
    [TestCase(4, 2)]
    public void Buffers_are_workspace_and_are_freed(int m, int threads)
    {
        CpuBackend.WinogradTile = m;
        CpuBackend.WinogradGroupTiles = 512;
        CpuParallel.MaxThreads = threads;
        var rng = new Rng(44);
        var x = Tensor.Randn(new Shape(4, 8, 9, 9), rng);
        var w = Tensor.Randn(new Shape(6, 8, 3, 3), rng);
        var account = new MemoryAccount("winograd");
        using (account.Activate())
        {
            using var y = Ops.Conv2d(x, w, null, 1, 1);
            Assert.That(account.CurrentTotal, Is.EqualTo(y.ByteLength), "only the output stays allocated");
            int tiles = 4 * ((9 + m - 1) / m) * ((9 + m - 1) / m);
            Assert.That(account.PeakBytes(MemoryCategory.Workspace), Is.EqualTo(y.ByteLength + WinogradWorkspaceBytes(m, 8, 6, tiles, 9, threads)));
        }
        Assert.That(account.CurrentTotal, Is.Zero);
    }

    /// <summary>
    /// The workspace of one Winograd call: α² points x (O·C filters, tiles·C inputs, tiles·O products), each point's run padded
    /// to an odd number of 64-byte lines (so that the points' streams do not share cache sets), plus one band per thread for
    /// the row transforms: α rows of ⌈OW/m⌉·m + 2 pixels x 8 channels.
    /// </summary>
    private static long WinogradWorkspaceBytes(int m, int c, int o, int tiles, int ow, int threads)
    {
        static long Padded(long len)
        {
            long lines = (len + 15) / 16;
            return 16 * (lines % 2 == 0 ? lines + 1 : lines);
        }

        int alpha = m + 2;
        long band = (long)alpha * ((((ow + m - 1) / m) * m) + 2) * 8;
        return ((alpha * alpha * (Padded((long)o * c) + Padded((long)tiles * c) + Padded((long)tiles * o))) + (threads * band)) * sizeof(float);
    }

    /// <summary>The forward rule by shape (tile size 0): F(4x4) from 128 tiles over the batch (winograd-fast only; the
    /// default stops at F(2x2)), else F(2x2) from 128 tiles, else implicit GEMM (whose only workspace is its column
    /// offsets); float64 always runs implicit GEMM. Told apart by the workspace each charges.</summary>
    [TestCase(8, 16, DType.Float32, CpuConvAlgorithm.WinogradFast, 4)] // 8 images x 16 tiles of 4x4
    [TestCase(8, 16, DType.Float32, CpuConvAlgorithm.Winograd, 2)]     // the default: F(2x2) in the forward pass
    [TestCase(32, 4, DType.Float32, CpuConvAlgorithm.WinogradFast, 2)] // 32 x 1 tile of 4x4, 32 x 4 of 2x2
    [TestCase(4, 4, DType.Float32, CpuConvAlgorithm.Winograd, 0)]      // 16 tiles of 2x2: implicit
    [TestCase(8, 16, DType.Float64, CpuConvAlgorithm.Winograd, 0)]
    public void The_tile_size_follows_the_batch_tiles(int n, int plane, DType dtype, CpuConvAlgorithm algorithm, int tile)
    {
        CpuBackend.ConvAlgorithm = algorithm;
        CpuBackend.WinogradTile = 0;
        CpuBackend.WinogradMinChannels = 8;
        CpuBackend.WinogradGroupTiles = 512;
        CpuParallel.MaxThreads = 2;
        var rng = new Rng(45);
        var x = Tensor.Randn(new Shape(n, 8, plane, plane), rng, dtype: dtype);
        var w = Tensor.Randn(new Shape(8, 8, 3, 3), rng, dtype: dtype);
        var account = new MemoryAccount("winograd rule");
        using (account.Activate())
        {
            using var y = Ops.Conv2d(x, w, null, 1, 1);
            long workspace = tile == 0
                ? (long)n * plane * plane * sizeof(int)
                : WinogradWorkspaceBytes(tile, 8, 8, n * ((plane + tile - 1) / tile) * ((plane + tile - 1) / tile), plane, 2);
            Assert.That(account.PeakBytes(MemoryCategory.Workspace), Is.EqualTo(y.ByteLength + workspace));
        }
    }

    /// <summary>Which tile each pass of the default algorithm runs, told apart by the results, bit for bit, against each
    /// pass with its tile forced: F(2x2) in the forward pass (winograd-fast: F(4x4)), F(4x4) in the input gradient and the
    /// weight gradient (16 images x 16 tiles of 4 x 4: enough for F(4x4)). F(2x2) and F(4x4) round differently, so a pass
    /// that ran the other tile fails.</summary>
    [TestCase(CpuConvAlgorithm.Winograd, 2)]
    [TestCase(CpuConvAlgorithm.WinogradFast, 4)]
    public void Each_pass_runs_its_tile_by_default(CpuConvAlgorithm algorithm, int forwardTile)
    {
        CpuParallel.MaxThreads = 2;
        var rng = new Rng(46);
        var x = Tensor.Randn(new Shape(16, 8, 16, 16), rng);
        var w = Tensor.Randn(new Shape(8, 8, 3, 3), rng);
        var dy = Tensor.Randn(new Shape(16, 8, 16, 16), rng);
        float[][] Run(int tile, int weightTile)
        {
            CpuBackend.WinogradTile = tile;
            CpuBackend.WinogradWeightGradTile = weightTile;
            using var y = Tensor.Full(dy.Shape, float.NaN);
            using var dx = Tensor.Zeros(x.Shape);
            using var dw = Tensor.Zeros(w.Shape);
            CpuBackend.Instance.Conv2d(x, w, null, y, 1, 1);
            CpuBackend.Instance.Conv2dBackward(x, w, dy, dx, dw, null, 1, 1);
            return [y.ToArray<float>(), dx.ToArray<float>(), dw.ToArray<float>()];
        }

        CpuBackend.ConvAlgorithm = algorithm;
        var byDefault = Run(0, 0);
        var forwardForced = Run(forwardTile, 4);
        var gradientsForced = Run(4, 4);
        var otherForward = Run(6 - forwardTile, 4);
        Assert.That(byDefault[0], Is.EqualTo(forwardForced[0]), "forward");
        Assert.That(byDefault[0], Is.Not.EqualTo(otherForward[0]), "the two forward tiles must round differently for this test to tell them apart");
        Assert.That(byDefault[1], Is.EqualTo(gradientsForced[1]), "input gradient");
        Assert.That(byDefault[2], Is.EqualTo(gradientsForced[2]), "weight gradient");
        Assert.That(Run(2, 2)[1], Is.Not.EqualTo(gradientsForced[1]), "F(2x2) and F(4x4) input gradients must differ for this test to tell them apart");
    }

    /// <summary>SDP_CPU_CONV's values.</summary>
    [Test]
    public void The_environment_variable_names_the_algorithm()
    {
        Assert.That(CpuBackend.ParseConvAlgorithm(null), Is.EqualTo(CpuConvAlgorithm.Winograd));
        Assert.That(CpuBackend.ParseConvAlgorithm("winograd"), Is.EqualTo(CpuConvAlgorithm.Winograd));
        Assert.That(CpuBackend.ParseConvAlgorithm("winograd-fast"), Is.EqualTo(CpuConvAlgorithm.WinogradFast));
        Assert.That(CpuBackend.ParseConvAlgorithm("implicit"), Is.EqualTo(CpuConvAlgorithm.Implicit));
        Assert.That(CpuBackend.ParseConvAlgorithm("im2col"), Is.EqualTo(CpuConvAlgorithm.Im2col));
        Assert.That(() => CpuBackend.ParseConvAlgorithm("fft"), Throws.InvalidOperationException.With.Message.Contains("fft"));
    }

    /// <summary>max |actual - expected| ≤ tol · max |expected|.</summary>
    private static void AssertClose(double[] actual, double[] expected, double tol, string what)
    {
        Assert.That(actual, Has.Length.EqualTo(expected.Length), what);
        double scale = expected.Max(Math.Abs), worst = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            double err = Math.Abs(actual[i] - expected[i]);
            worst = double.IsNaN(err) ? double.PositiveInfinity : Math.Max(worst, err);
        }
        Assert.That(worst, Is.LessThanOrEqualTo(tol * scale), $"{what}: max error {worst:G3} against the largest magnitude {scale:G3}");
    }

    private static double[] MatVec(float[] a, int rows, int cols, double[] v)
    {
        var r = new double[rows];
        for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) r[i] += a[i * cols + j] * v[j];
        return r;
    }
}
