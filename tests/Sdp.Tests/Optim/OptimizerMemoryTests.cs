using Sdp.Engine;
using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Tests.Support;
using static Sdp.Tests.Optim.OptimTest;

namespace Sdp.Tests.Optim;

/// <summary>Optimizer state is allocated lazily, per parameter, charged to OptimizerState, and freed by Dispose.</summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class OptimizerMemoryTests(IBackend backend)
{
    [SetUp]
    public void ClearTape() => Tape.Current.Clear();

    private static IEnumerable<TestCaseData> Cases()
    {
        // optimizer kind, state tensors per parameter
        yield return new TestCaseData("adamw", 2).SetArgDisplayNames("AdamW");
        yield return new TestCaseData("sgd-momentum", 1).SetArgDisplayNames("SGD momentum");
        yield return new TestCaseData("sgd", 0).SetArgDisplayNames("SGD");
    }

    private static Optimizer Create(string kind, Tensor[] ps) => kind switch
    {
        "adamw" => new AdamW(ps),
        "sgd-momentum" => new Sgd(ps, 0.1, momentum: 0.9),
        _ => new Sgd(ps, 0.1),
    };

    [TestCaseSource(nameof(Cases))]
    public void State_is_lazy_exact_and_freed(string kind, int statesPerParam)
    {
        var account = new MemoryAccount(kind);
        using (account.Activate())
        {
            var a = Param(new double[12], DType.Float32, backend, 3, 4); // 48 B
            var b = Param(new double[5], DType.Float64, backend, 5);     // 40 B
            var opt = Create(kind, [a, b]);
            Assert.That(account.CurrentBytes(MemoryCategory.OptimizerState), Is.Zero, "nothing before the first step");

            SetGrads([a, b], [new double[12], null]);
            Assert.That(account.CurrentBytes(MemoryCategory.OptimizerState), Is.Zero, "backward allocates no state");
            opt.Step();
            Assert.That(account.CurrentBytes(MemoryCategory.OptimizerState), Is.EqualTo(statesPerParam * 48), "only the parameter that had a gradient");

            SetGrads([a, b], [new double[12], new double[5]]);
            opt.Step();
            opt.Step();
            Assert.That(account.CurrentBytes(MemoryCategory.OptimizerState), Is.EqualTo(statesPerParam * (48 + 40)), "state is allocated once per parameter");
            Assert.That(account.CurrentBytes(MemoryCategory.Gradients), Is.EqualTo(48 + 40));
            Assert.That(account.CurrentBytes(MemoryCategory.Workspace) + account.CurrentBytes(MemoryCategory.Activations), Is.Zero, "the step leaves nothing transient");
            Assert.That(opt.State(0), Has.Count.EqualTo(statesPerParam));
            Assert.That(opt.State(0).Values.Select(t => t.Shape), Is.All.EqualTo(a.Shape));

            opt.ZeroGrad();
            Assert.That(account.CurrentBytes(MemoryCategory.Gradients), Is.Zero, "ZeroGrad frees the gradients");
            opt.Dispose();
            Assert.That(account.CurrentBytes(MemoryCategory.OptimizerState), Is.Zero, "Dispose frees the state");
            a.Dispose();
            b.Dispose();
        }
        Assert.That(account.CurrentTotal, Is.Zero);
    }

    [Test]
    public void State_is_not_owned_by_the_scope_open_during_the_first_step()
    {
        var account = new MemoryAccount("scoped");
        using (account.Activate())
        {
            var p = Param([1, 2, 3], DType.Float32, backend);
            using var opt = new AdamW([p]);
            using (var scope = TensorScope.Begin())
            {
                SetGrads([p], [[1, 1, 1]]);
                opt.Step();
                Assert.That(scope.Count, Is.Zero, "state tensors are not registered in the step's scope");
            }
            Assert.That(account.CurrentBytes(MemoryCategory.OptimizerState), Is.EqualTo(24));
            Assert.That(opt.State(0)["exp_avg"].IsDisposed, Is.False);
            opt.ZeroGrad();
            p.Dispose();
        }
    }
}
