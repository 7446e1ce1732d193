using Sdp.Engine;
using Sdp.Tests.Support;

namespace Sdp.Tests.Operators;


/// <summary>Float64 finite-difference checks for the elementwise, reduction and matmul families.</summary>
public class ElementwiseGradTests
{
    // [2, 600]: more than one block of the vectorised kernels (SiLU backward works in blocks of 512), and a tail.
    private static readonly int[][] Shapes = [[1], [7], [3, 5], [2, 1, 4], [2, 600]];

    [TestCaseSource(nameof(Shapes))]
    public void Unary_ops_match_finite_differences(int[] shape)
    {
        var rng = new Rng(1);
        var x = GradCheck.Input(rng, shape);
        var pos = GradCheck.Positive(rng, 0.5, 2.0, shape);
        GradCheck.Check(t => Ops.Neg(t[0]), [x]);
        GradCheck.Check(t => Ops.Exp(t[0]), [x]);
        GradCheck.Check(t => Ops.Log(t[0]), [pos]);
        GradCheck.Check(t => Ops.Sqrt(t[0]), [pos]);
        GradCheck.Check(t => Ops.Rsqrt(t[0]), [pos]);
        GradCheck.Check(t => Ops.Pow(t[0], 2.5), [pos]);
        GradCheck.Check(t => Ops.Pow(t[0], 3), [x]);
        GradCheck.Check(t => Ops.Relu(t[0]), [x]);
        GradCheck.Check(t => Ops.Silu(t[0]), [x]);
        GradCheck.Check(t => Ops.Gelu(t[0]), [x]);
        GradCheck.Check(t => Ops.Tanh(t[0]), [x]);
        GradCheck.Check(t => Ops.Sigmoid(t[0]), [x]);
        GradCheck.Check(t => Ops.Scale(t[0], -1.5), [x]);
        GradCheck.Check(t => Ops.AddScalar(t[0], 0.25), [x]);
    }

    [TestCase(new[] { 3, 4 }, new[] { 3, 4 })]
    [TestCase(new[] { 3, 4 }, new[] { 4 })]
    [TestCase(new[] { 3, 1 }, new[] { 1, 5 })]
    [TestCase(new[] { 2, 3, 4 }, new[] { 3, 1 })]
    [TestCase(new[] { 1 }, new[] { 2, 3 })]
    [TestCase(new int[0], new[] { 2, 2 })]
    public void Binary_ops_with_broadcasting_match_finite_differences(int[] sa, int[] sb)
    {
        var rng = new Rng(2);
        var a = GradCheck.Input(rng, sa);
        var b = GradCheck.Positive(rng, 0.5, 2.0, sb);
        GradCheck.Check(t => Ops.Add(t[0], t[1]), [a, b]);
        GradCheck.Check(t => Ops.Sub(t[0], t[1]), [a, b]);
        GradCheck.Check(t => Ops.Mul(t[0], t[1]), [a, b]);
        GradCheck.Check(t => Ops.Div(t[0], t[1]), [a, b]);
    }

    [Test]
    public void Reductions_match_finite_differences()
    {
        var rng = new Rng(3);
        var x = GradCheck.Input(rng, 3, 4, 5);
        GradCheck.Check(t => Ops.Sum(t[0]), [x]);
        GradCheck.Check(t => Ops.Mean(t[0]), [x]);
        GradCheck.Check(t => Ops.Sum(t[0], 1), [x]);
        GradCheck.Check(t => Ops.Sum(t[0], [0, 2], keepDim: true), [x]);
        GradCheck.Check(t => Ops.Mean(t[0], -1), [x]);
        GradCheck.Check(t => Ops.Max(t[0], 1), [x]);
        GradCheck.Check(t => Ops.Max(t[0], [0, 2]), [x]);
        var one = GradCheck.Input(rng, 1, 1);
        GradCheck.Check(t => Ops.Max(t[0], 0), [one]);
    }

    [TestCase(false, false)]
    [TestCase(true, false)]
    [TestCase(false, true)]
    [TestCase(true, true)]
    public void MatMul_matches_finite_differences(bool transA, bool transB)
    {
        var rng = new Rng(4);
        int m = 3, k = 5, n = 2;
        var a = GradCheck.Input(rng, transA ? [2, k, m] : [2, m, k]);
        var b = GradCheck.Input(rng, transB ? [2, n, k] : [2, k, n]);
        var shared = GradCheck.Input(rng, transB ? [n, k] : [k, n]);
        GradCheck.Check(t => Ops.MatMul(t[0], t[1], transA, transB), [a, b]);
        GradCheck.Check(t => Ops.MatMul(t[0], t[1], transA, transB), [a, shared]);
        var a1 = GradCheck.Input(rng, transA ? [k, m] : [m, k]);
        GradCheck.Check(t => Ops.MatMul(t[0], t[1], transA, transB), [a1, b]);
    }

    [Test]
    public void Linear_and_views_match_finite_differences()
    {
        var rng = new Rng(5);
        var x = GradCheck.Input(rng, 2, 3, 4);
        var w = GradCheck.Input(rng, 5, 4);
        var bias = GradCheck.Input(rng, 5);
        GradCheck.Check(t => Ops.Linear(t[0], t[1], t[2]), [x, w, bias]);
        GradCheck.Check(t => Ops.Linear(t[0], t[1]), [x, w]);
        GradCheck.Check(t => Ops.Reshape(t[0], 4, -1), [x]);
        GradCheck.Check(t => Ops.Narrow(t[0], 1, 1), [x]);
        GradCheck.Check(t => Ops.Clone(t[0]), [x]);
    }

    [Test]
    public void Fan_out_accumulates_gradients_from_every_use()
    {
        var rng = new Rng(6);
        var x = GradCheck.Input(rng, 4);
        GradCheck.Check(t => Ops.Mul(Ops.Exp(t[0]), Ops.Add(t[0], Ops.Add(Ops.Mul(t[0], t[0]), t[0]))), [x]);
    }
}
