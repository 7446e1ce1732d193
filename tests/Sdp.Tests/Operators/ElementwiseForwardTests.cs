using Sdp.Engine;
using Sdp.Engine.Backends;
using Sdp.Tests.Support;

namespace Sdp.Tests.Operators;


/// <summary>Forward values against hand-computed references, per backend, in float32.</summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class ElementwiseForwardTests(IBackend backend)
{
    private Tensor T(float[] v, params int[] shape) => Tensor.FromArray(v, new Shape(shape), backend);

    [Test]
    public void Unary_values()
    {
        using var scope = TensorScope.Begin();
        var x = T([-2f, -0.5f, 0f, 1f, 3f], 5);
        TensorAssert.Close(Ops.Relu(x), [0, 0, 0, 1, 3]);
        TensorAssert.Close(Ops.Exp(x), [Math.Exp(-2), Math.Exp(-0.5), 1, Math.E, Math.Exp(3)]);
        // silu(x) = x / (1 + e^-x)
        TensorAssert.Close(Ops.Silu(x), [-2 / (1 + Math.Exp(2)), -0.5 / (1 + Math.Exp(0.5)), 0, 1 / (1 + Math.Exp(-1)), 3 / (1 + Math.Exp(-3))]);
        // gelu(1) with the tanh approximation = 0.5·(1 + tanh(0.79788456·1.044715)) = 0.841192
        Assert.That(Ops.Gelu(T([1f], 1)).Item(), Is.EqualTo(0.8411920).Within(1e-6));
        TensorAssert.Close(Ops.Pow(T([4f, 9f], 2), 0.5), [2, 3]);
        TensorAssert.Close(Ops.Rsqrt(T([4f, 0.25f], 2)), [0.5, 2]);
    }

    [Test]
    public void Broadcast_binary_values()
    {
        using var scope = TensorScope.Begin();
        var a = T([1, 2, 3, 4, 5, 6], 2, 3);
        var row = T([10, 20, 30], 3);
        var col = T([100, 200], 2, 1);
        TensorAssert.Close(Ops.Add(a, row), [11, 22, 33, 14, 25, 36]);
        TensorAssert.Close(Ops.Mul(a, col), [100, 200, 300, 800, 1000, 1200]);
        TensorAssert.Close(Ops.Sub(col, row), [90, 80, 70, 190, 180, 170]);
        TensorAssert.Close(Ops.Div(a, T([2f], 1)), [0.5, 1, 1.5, 2, 2.5, 3]);
    }

    [Test]
    public void Reductions_values()
    {
        using var scope = TensorScope.Begin();
        var a = T([1, 5, 3, 4, 2, 6], 2, 3);
        TensorAssert.Close(Ops.Sum(a, 0), [5, 7, 9]);
        TensorAssert.Close(Ops.Sum(a, 1), [9, 12]);
        TensorAssert.Close(Ops.Mean(a), [3.5]);
        TensorAssert.Close(Ops.Max(a, 1), [5, 6]);
        TensorAssert.Close(Ops.Max(a, 0, keepDim: true), [4, 5, 6]);
        Assert.That(Ops.Max(a, 0, keepDim: true).Shape, Is.EqualTo(new Shape(1, 3)));
    }

    [Test]
    public void MatMul_values()
    {
        using var scope = TensorScope.Begin();
        // [[1,2],[3,4]]·[[5,6],[7,8]] = [[19,22],[43,50]]
        var a = T([1, 2, 3, 4], 2, 2);
        var b = T([5, 6, 7, 8], 2, 2);
        TensorAssert.Close(Ops.MatMul(a, b), [19, 22, 43, 50]);
        TensorAssert.Close(Ops.MatMul(a, b, transA: true), [26, 30, 38, 44]);
        TensorAssert.Close(Ops.MatMul(a, b, transB: true), [17, 23, 39, 53]);
        // linear: x·Wᵀ + bias
        var x = T([1, 1], 1, 2);
        TensorAssert.Close(Ops.Linear(x, b, T([1, -1], 2)), [12, 14]);
    }
}
