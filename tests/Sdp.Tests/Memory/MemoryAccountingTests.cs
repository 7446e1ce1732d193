using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Memory;

namespace Sdp.Tests.Memory;


public class MemoryAccountingTests
{
    [Test]
    public void Allocations_are_charged_to_the_active_account_and_category()
    {
        var account = new MemoryAccount("worker0");
        using (account.Activate())
        {
            Tensor p;
            using (MemoryAccount.Use(MemoryCategory.Parameters)) p = Tensor.Zeros(new Shape(10, 10));
            Assert.That(account.CurrentBytes(MemoryCategory.Parameters), Is.EqualTo(400));
            using (var scope = TensorScope.Begin())
            {
                _ = Tensor.Zeros(new Shape(25));
                Assert.That(account.CurrentBytes(MemoryCategory.Workspace), Is.EqualTo(100));
            }
            Assert.That(account.CurrentBytes(MemoryCategory.Workspace), Is.Zero);
            Assert.That(account.PeakBytes(MemoryCategory.Workspace), Is.EqualTo(100));
            p.Dispose();
        }
        Assert.That(account.CurrentTotal, Is.Zero);
        Assert.That(account.PeakTotal, Is.EqualTo(500));
        account.ResetPeaks();
        Assert.That(account.PeakTotal, Is.Zero);
    }

    [Test]
    public void Peak_equals_the_sum_of_live_tensors_at_the_peak()
    {
        var account = new MemoryAccount("peak");
        using (account.Activate())
        using (var scope = TensorScope.Begin())
        {
            var a = Tensor.Zeros(new Shape(100));      // 400 B live
            var b = Tensor.Zeros(new Shape(50));       // 600 B live
            b.Dispose();                               // 400
            var c = Tensor.Zeros(new Shape(300));      // 1600 <- peak: a + c
            c.Dispose();
            var d = Tensor.Zeros(new Shape(10));       // 440
            Assert.That(account.PeakTotal, Is.EqualTo(a.ByteLength + 300 * 4));
            Assert.That(account.CurrentTotal, Is.EqualTo(a.ByteLength + d.ByteLength));
            Assert.That(account.LiveAllocations, Is.EqualTo(2));
        }
        Assert.That(account.CurrentTotal, Is.Zero);
    }

    [Test]
    public void Views_share_storage_and_free_it_with_the_last_reference()
    {
        var account = new MemoryAccount("views");
        using (account.Activate())
        {
            var a = Tensor.Zeros(new Shape(4, 8));
            var v = a.Reshape(8, 4);
            var rows = a.Narrow(1, 2);
            Assert.That(account.CurrentTotal, Is.EqualTo(128));
            a.Dispose();
            v.Dispose();
            Assert.That(account.CurrentTotal, Is.EqualTo(128), "the narrow view still holds the storage");
            Assert.That(rows.ToArray<float>(), Has.Length.EqualTo(16));
            rows.Dispose();
            Assert.That(account.CurrentTotal, Is.Zero);
        }
    }

    [Test]
    public void Saved_activations_count_as_activations_and_are_freed_by_backward()
    {
        var account = new MemoryAccount("tape");
        Tape.Current.Clear();
        using (account.Activate())
        {
            Tensor w;
            using (MemoryAccount.Use(MemoryCategory.Parameters))
            {
                w = Tensor.Ones(new Shape(64, 64));
                w.RequiresGrad = true;
            }
            var x = Tensor.Ones(new Shape(16, 64));
            long h1Bytes = 16 * 64 * 4;
            // Nothing is kept by the caller: every intermediate is disposed at once, so whatever stays
            // allocated is held by the tape.
            Tensor loss;
            using (var h = Ops.Linear(x, w))
            using (var a = Ops.Relu(h))
            {
                loss = Ops.Sum(a);
            }
            // linear saves x (the input) and w (a parameter); relu saves h.
            Assert.That(account.CurrentBytes(MemoryCategory.Activations), Is.EqualTo(x.ByteLength + h1Bytes));
            loss.Backward();
            loss.Dispose();
            x.Dispose();
            Assert.That(account.CurrentBytes(MemoryCategory.Activations), Is.Zero, "backward releases every saved tensor");
            Assert.That(account.CurrentBytes(MemoryCategory.Workspace), Is.Zero, "no transient gradient survives backward");
            Assert.That(account.CurrentBytes(MemoryCategory.Gradients), Is.EqualTo(w.ByteLength));
            Assert.That(account.PeakBytes(MemoryCategory.Activations), Is.EqualTo(x.ByteLength + h1Bytes));
            w.ZeroGrad();
            w.Dispose();
        }
        Assert.That(account.CurrentTotal, Is.Zero);
    }
}
