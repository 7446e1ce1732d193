using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Tests.Support;

namespace Sdp.Tests.Autograd;


public class AutogradTests
{
    [SetUp]
    public void ClearTape() => Tape.Current.Clear();

    [Test]
    public void Gradients_accumulate_into_leaves_across_backward_passes()
    {
        var x = Tensor.FromArray([2.0], new Shape(1));
        x.RequiresGrad = true;
        using (TensorScope.Begin()) Ops.Sum(Ops.Mul(x, x)).Backward(); // d(x²)/dx = 4
        using (TensorScope.Begin()) Ops.Sum(Ops.Scale(x, 3)).Backward(); // += 3
        Assert.That(x.Grad!.Item(), Is.EqualTo(7.0));
        x.ZeroGrad();
        Assert.That(x.Grad, Is.Null);
    }

    [Test]
    public void No_grad_scope_records_nothing()
    {
        var x = Tensor.FromArray([1.0, 2.0], new Shape(2));
        x.RequiresGrad = true;
        using (GradMode.Disable())
        {
            var y = Ops.Exp(x);
            Assert.That(y.RequiresGrad, Is.False);
            Assert.That(Tape.Current.Count, Is.Zero);
        }
        var z = Ops.Exp(x);
        Assert.That(z.RequiresGrad, Is.True);
        Assert.That(Tape.Current.Count, Is.EqualTo(1));
        Tape.Current.Clear();
    }

    [Test]
    public void Backward_from_a_non_scalar_without_a_seed_names_the_shape()
    {
        var x = Tensor.FromArray([1.0, 2.0], new Shape(2));
        x.RequiresGrad = true;
        var y = Ops.Exp(x);
        var ex = Assert.Throws<InvalidOperationException>(() => y.Backward());
        Assert.That(ex!.Message, Does.Contain("not a scalar").And.Contain("(2,)"));
        y.Backward(Tensor.FromArray([1.0, 0.5], new Shape(2)));
        TensorAssert.Close(x.Grad!, [Math.Exp(1), 0.5 * Math.Exp(2)]);
    }

    [Test]
    public void Backward_from_a_tensor_that_does_not_require_grad_fails_clearly()
    {
        var x = Tensor.FromArray([1.0], new Shape(1));
        var ex = Assert.Throws<InvalidOperationException>(() => Ops.Exp(x).Backward());
        Assert.That(ex!.Message, Does.Contain("does not require grad"));
    }

    [Test]
    public void Use_after_dispose_names_the_tensor()
    {
        var x = Tensor.FromArray([1f, 2f], new Shape(2));
        x.Name = "weights";
        x.Dispose();
        var ex = Assert.Throws<ObjectDisposedException>(() => Ops.Exp(x));
        Assert.That(ex!.Message, Does.Contain("weights"));
    }

    [Test]
    public void Mismatched_operands_are_rejected_with_op_and_shapes()
    {
        using var scope = TensorScope.Begin();
        var a = Tensor.Zeros(new Shape(2, 3));
        var b = Tensor.Zeros(new Shape(4));
        var ex = Assert.Throws<ArgumentException>(() => Ops.Add(a, b));
        Assert.That(ex!.Message, Does.Contain("add").And.Contain("(2, 3)").And.Contain("(4,)"));
        var d = Tensor.Zeros(new Shape(2, 3), DType.Float64);
        ex = Assert.Throws<ArgumentException>(() => Ops.Mul(a, d));
        Assert.That(ex!.Message, Does.Contain("mul").And.Contain("float32").And.Contain("float64"));
        ex = Assert.Throws<ArgumentException>(() => Ops.MatMul(a, a));
        Assert.That(ex!.Message, Does.Contain("matmul").And.Contain("inner dimensions"));
    }

    [Test]
    public void A_second_backward_over_a_consumed_tape_fails_clearly()
    {
        var x = Tensor.FromArray([1.0], new Shape(1));
        x.RequiresGrad = true;
        var y = Ops.Sum(Ops.Exp(x));
        y.Backward();
        var ex = Assert.Throws<InvalidOperationException>(() => y.Backward());
        Assert.That(ex!.Message, Does.Contain("already consumed"));
    }
}
