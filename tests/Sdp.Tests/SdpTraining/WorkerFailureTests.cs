using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Distributed;
using Sdp.Engine.Subnetworks;
using Sdp.Engine;
using Sdp.Models.Data;
using Sdp.Models.Training;
using Sdp.Tests.Support;
using System.Diagnostics;
using static Sdp.Tests.SdpTraining.SdpTestSupport;

namespace Sdp.Tests.SdpTraining;

/// <summary>What happens when one simulated worker fails: the group is aborted and the cause is reported.</summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class WorkerFailureTests(IBackend backend) : DeviceFixture(backend)
{
    [TearDown]
    public void ClearTape() => Tape.Current.Clear();

    /// <summary>Delegates to a real source and throws on a chosen batch.</summary>
    private sealed class FailingSource(IBatchSource inner, int failAt) : IBatchSource
    {
        private int _batches;

        public DataLoaderState State { get => inner.State; set => inner.State = value; }

        public (Tensor Inputs, Tensor Targets) NextBatch()
            => ++_batches == failAt ? throw new InvalidDataException("shard 3: truncated batch") : inner.NextBatch();
    }

    [Test]
    public void A_failing_worker_aborts_the_group_and_its_error_is_rethrown()
    {
        var sdp = SdpRun(4, SubnetLevel.Block, Masking.Forward, 0.5) with { CollectiveTimeout = TimeSpan.FromMinutes(10) };
        using var trainer = new Trainer(LlamaModel(SubnetLevel.Block), sdp, AdamW, w => w == 2 ? new FailingSource(Tokens(w, 4), 2) : Tokens(w, 4), Options(3));
        trainer.TrainStep();
        var clock = Stopwatch.StartNew();
        var e = Assert.Throws<InvalidDataException>(() => trainer.TrainStep());
        Assert.That(e!.Message, Does.Contain("truncated batch"));
        // The other workers were released by the abort, not by the 10-minute collective timeout.
        Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromMinutes(2)));
    }

    [Test]
    public void Abort_fails_pending_and_later_collectives_naming_the_reason()
    {
        var comms = InProcessCommunicator.Create(2, TimeSpan.FromMinutes(10));
        using var buffer = Tensor.Zeros(new Shape(3));
        var waiting = Task.Run(() => comms[0].World.AllReduceSum(buffer));
        Thread.Sleep(50);
        comms[1].Abort("worker 1 failed: out of data");
        var pending = Assert.Throws<OperationCanceledException>(() => waiting.GetAwaiter().GetResult());
        Assert.That(pending!.Message, Does.Contain("rank 1 aborted the group: worker 1 failed: out of data"));
        Assert.Throws<OperationCanceledException>(() => comms[0].Barrier());
    }
}
