using Sdp.Cli;
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

    [TestCase(2)]
    [TestCase(0)]
    public void A_failing_worker_aborts_the_group_and_its_error_names_it(int failing)
    {
        var sdp = SdpRun(4, SubnetLevel.Block, Masking.Forward, 0.5) with { CollectiveTimeout = TimeSpan.FromMinutes(10) };
        using var trainer = new Trainer(LlamaModel(SubnetLevel.Block), sdp, AdamW, w => w == failing ? new FailingSource(Tokens(w, 4), 2) : Tokens(w, 4), Options(3));
        trainer.TrainStep();
        var clock = Stopwatch.StartNew();
        var e = Assert.Throws<WorkerFailedException>(() => trainer.TrainStep());
        Assert.Multiple(() =>
        {
            Assert.That(e!.Message, Is.EqualTo($"worker {failing}: shard 3: truncated batch"));
            Assert.That(e.Worker, Is.EqualTo(failing));
            // The worker's own error is kept whole, so callers classify it as before: bad input stays bad input.
            Assert.That(e.Cause, Is.TypeOf<InvalidDataException>().And.Message.EqualTo("shard 3: truncated batch"));
            Assert.That(CliRunner.IsBadInput(e), Is.True);
            Assert.That(CliRunner.MessageOf(e), Is.EqualTo($"worker {failing}: shard 3: truncated batch"));
            // The other workers were released by the abort, not by the 10-minute collective timeout.
            Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromMinutes(2)));
        });
    }

    [Test]
    public void A_failing_single_worker_throws_its_own_error()
    {
        // One worker waits for nobody: its error is the step's error, with nothing to name.
        using var trainer = new Trainer(LlamaModel(SubnetLevel.Block), Dp(1), AdamW, w => new FailingSource(Tokens(w, 1), 1), Options(3));
        var e = Assert.Throws<InvalidDataException>(() => trainer.TrainStep());
        Assert.That(e!.Message, Is.EqualTo("shard 3: truncated batch"));
    }

    [Test]
    public void A_worker_that_fails_with_an_internal_error_is_not_bad_input()
    {
        var failed = new WorkerFailedException(1, new InvalidOperationException("buffer overrun"));
        Assert.Multiple(() =>
        {
            Assert.That(failed.Message, Is.EqualTo("worker 1: buffer overrun"));
            Assert.That(CliRunner.IsBadInput(failed), Is.False);
        });
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
