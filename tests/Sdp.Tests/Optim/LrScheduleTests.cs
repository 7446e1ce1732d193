using Sdp.Engine.Optim;

namespace Sdp.Tests.Optim;

public class LrScheduleTests
{
    [Test]
    public void Constant_is_constant()
    {
        var s = new ConstantSchedule(3e-4);
        Assert.That(new[] { s.LearningRate(0), s.LearningRate(1), s.LearningRate(1_000_000) }, Is.All.EqualTo(3e-4));
    }

    [Test]
    public void Warmup_cosine_at_its_boundaries()
    {
        // Peak 1, W = 10, T = 110, min 0.1.
        var s = new WarmupCosineSchedule(1.0, 10, 110, 0.1);
        Assert.That(s.LearningRate(0), Is.EqualTo(0.1).Within(1e-15), "step 0: Peak·1/W");
        Assert.That(s.LearningRate(4), Is.EqualTo(0.5).Within(1e-15), "step 4: Peak·5/W");
        Assert.That(s.LearningRate(9), Is.EqualTo(1.0).Within(1e-15), "step W-1: Peak");
        Assert.That(s.LearningRate(10), Is.EqualTo(1.0).Within(1e-15), "step W: cosine starts at Peak");
        // Half-way through the decay cos(π/2) = 0: min + (peak-min)/2 = 0.55.
        Assert.That(s.LearningRate(60), Is.EqualTo(0.55).Within(1e-15));
        // One step into the decay: min + 0.9·(1 + cos(π/100))/2.
        Assert.That(s.LearningRate(11), Is.EqualTo(0.1 + 0.9 * 0.5 * (1 + Math.Cos(Math.PI / 100))).Within(1e-15));
        Assert.That(s.LearningRate(109), Is.GreaterThan(0.1).And.LessThan(0.1 + 1e-3));
        Assert.That(s.LearningRate(110), Is.EqualTo(0.1).Within(1e-15), "step T: MinLr");
        Assert.That(s.LearningRate(111), Is.EqualTo(0.1));
        Assert.That(s.LearningRate(10_000), Is.EqualTo(0.1));
    }

    [Test]
    public void Warmup_cosine_without_warmup_or_without_decay()
    {
        var noWarmup = new WarmupCosineSchedule(2.0, 0, 100);
        Assert.That(noWarmup.LearningRate(0), Is.EqualTo(2.0));
        Assert.That(noWarmup.LearningRate(50), Is.EqualTo(1.0).Within(1e-15));
        Assert.That(noWarmup.LearningRate(100), Is.Zero);
        var warmupOnly = new WarmupCosineSchedule(2.0, 4, 4, 0.5);
        Assert.That(warmupOnly.LearningRate(0), Is.EqualTo(0.5));
        Assert.That(warmupOnly.LearningRate(3), Is.EqualTo(2.0));
        Assert.That(warmupOnly.LearningRate(4), Is.EqualTo(0.5));
    }

    [Test]
    public void Step_schedule_decays_every_step_size_steps()
    {
        var s = new StepSchedule(1.0, 3, 0.5);
        Assert.That(new[] { 0L, 1, 2, 3, 5, 6, 9 }.Select(s.LearningRate), Is.EqualTo(new[] { 1.0, 1, 1, 0.5, 0.5, 0.25, 0.125 }));
    }

    [Test]
    public void Bad_arguments_are_rejected()
    {
        Assert.That(() => new WarmupCosineSchedule(1.0, 10, 5), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("total steps"));
        Assert.That(() => new WarmupCosineSchedule(1.0, -1, 5), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("warm-up"));
        Assert.That(() => new WarmupCosineSchedule(double.NaN, 1, 5), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("PeakLr"));
        Assert.That(() => new StepSchedule(1.0, 0, 0.5), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("step size"));
        Assert.That(() => new ConstantSchedule(-1), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => new ConstantSchedule(1).LearningRate(-1), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("step"));
    }
}
