using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Optim;
using Sdp.Tests.Support;
using static Sdp.Tests.Optim.OptimTest;

namespace Sdp.Tests.Optim;

[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class GradClipTests(IBackend backend)
{
    [SetUp]
    public void ClearTape() => Tape.Current.Clear();

    [Test]
    public void Clips_to_max_norm_across_all_parameters([Values(DType.Float32, DType.Float64)] DType dtype)
    {
        // Gradients [3, 4] and [12]: global norm sqrt(9 + 16 + 144) = 13. The third parameter has no grad.
        using var scope = TensorScope.Begin();
        var a = Param([0, 0], dtype, backend);
        var b = Param([0], dtype, backend);
        var c = Param([0, 0, 0], dtype, backend);
        SetGrads([a, b, c], [[3, 4], [12], null]);
        double norm = GradClip.ClipGlobalNorm([a, b, c], 6.5);
        Assert.That(norm, Is.EqualTo(13.0).Within(1e-12));
        double f = 6.5 / (13.0 + 1e-6); // ≈ 0.5
        double tol = dtype == DType.Float32 ? 1e-6 : 1e-14;
        TensorAssert.Close(a.Grad!, [3 * f, 4 * f], tol, tol);
        TensorAssert.Close(b.Grad!, [12 * f], tol, tol);
        Assert.That(c.Grad, Is.Null);
        // Clipping again measures the clipped norm, 13·f < 6.5, and changes nothing.
        Assert.That(GradClip.ClipGlobalNorm([a, b, c], 6.5), Is.EqualTo(13 * f).Within(1e-5));
        TensorAssert.Close(a.Grad!, [3 * f, 4 * f], tol, tol);
        foreach (var p in new[] { a, b, c }) p.ZeroGrad();
    }

    [Test]
    public void Is_a_no_op_under_the_max()
    {
        using var scope = TensorScope.Begin();
        var a = Param([0, 0], DType.Float32, backend);
        SetGrads([a], [[3, 4]]);
        Assert.That(GradClip.ClipGlobalNorm([a], 100), Is.EqualTo(5.0).Within(1e-12));
        TensorAssert.Close(a.Grad!, [3, 4], 0, 0);
        Assert.That(GradClip.ClipGlobalNorm([Param([1], DType.Float32, backend)], 1), Is.Zero, "no gradients: norm 0");
        a.ZeroGrad();
    }

    [Test]
    public void Non_finite_norm_is_returned_and_grads_are_left_alone()
    {
        using var scope = TensorScope.Begin();
        var a = Param([0, 0], DType.Float32, backend);
        var b = Param([0], DType.Float32, backend);
        SetGrads([a, b], [[3, 4], [double.PositiveInfinity]]);
        Assert.That(GradClip.ClipGlobalNorm([a, b], 1), Is.EqualTo(double.PositiveInfinity));
        TensorAssert.Close(a.Grad!, [3, 4], 0, 0);
        SetGrads([a, b], [[3, 4], [double.NaN]]);
        Assert.That(GradClip.ClipGlobalNorm([a, b], 1), Is.NaN);
        TensorAssert.Close(a.Grad!, [3, 4], 0, 0);
        Assert.That(() => GradClip.ClipGlobalNorm([a], 0), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("maxNorm"));
        a.ZeroGrad();
        b.ZeroGrad();
    }
}
