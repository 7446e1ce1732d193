namespace Sdp.Engine.Optim;

/// <summary>
/// A learning rate as a function of the step. <c>step</c> is the number of completed optimizer steps,
/// i.e. the 0-based index of the step about to run: set
/// <c>opt.LearningRate = schedule.LearningRate(opt.StepCount)</c> before each <c>opt.Step()</c>.
/// </summary>
public interface ILrSchedule
{
    /// <summary>The learning rate for step <paramref name="step"/> (&gt;= 0).</summary>
    double LearningRate(long step);
}

/// <summary>The same learning rate at every step.</summary>
public sealed record ConstantSchedule(double Lr) : ILrSchedule
{
    public double Lr { get; init; } = Schedules.CheckRate(Lr, nameof(Lr));

    public double LearningRate(long step)
    {
        Schedules.CheckStep(step);
        return Lr;
    }
}

/// <summary>
/// Linear warm-up followed by cosine decay (GPT-2 / llm.c style). With W = WarmupSteps, T = TotalSteps:
/// <code>
/// step &lt; W:        PeakLr · (step + 1) / W                         (PeakLr/W at step 0, PeakLr at step W-1)
/// W &lt;= step &lt; T:  MinLr + (PeakLr - MinLr) · (1 + cos(π·(step - W)/(T - W))) / 2   (PeakLr at step W)
/// step &gt;= T:       MinLr
/// </code>
/// WarmupSteps = 0 starts directly at PeakLr. Requires 0 &lt;= WarmupSteps &lt;= TotalSteps.
/// </summary>
public sealed record WarmupCosineSchedule(double PeakLr, long WarmupSteps, long TotalSteps, double MinLr = 0) : ILrSchedule
{
    public double PeakLr { get; init; } = Schedules.CheckRate(PeakLr, nameof(PeakLr));

    public long WarmupSteps { get; init; } = WarmupSteps >= 0 ? WarmupSteps
        : throw new ArgumentOutOfRangeException(nameof(WarmupSteps), WarmupSteps, "WarmupCosineSchedule: warm-up steps must be >= 0");

    public long TotalSteps { get; init; } = TotalSteps >= WarmupSteps && TotalSteps >= 0 ? TotalSteps
        : throw new ArgumentOutOfRangeException(nameof(TotalSteps), TotalSteps, $"WarmupCosineSchedule: total steps must be >= the warm-up steps ({WarmupSteps})");

    public double MinLr { get; init; } = Schedules.CheckRate(MinLr, nameof(MinLr));

    public double LearningRate(long step)
    {
        Schedules.CheckStep(step);
        if (step < WarmupSteps) return PeakLr * (step + 1) / WarmupSteps;
        if (step >= TotalSteps) return MinLr;
        double progress = (double)(step - WarmupSteps) / (TotalSteps - WarmupSteps);
        return MinLr + (PeakLr - MinLr) * 0.5 * (1 + Math.Cos(Math.PI * progress));
    }
}

/// <summary>Lr · Gamma^⌊step / StepSize⌋, as torch.optim.lr_scheduler.StepLR counted in steps.</summary>
public sealed record StepSchedule(double Lr, long StepSize, double Gamma) : ILrSchedule
{
    public double Lr { get; init; } = Schedules.CheckRate(Lr, nameof(Lr));

    public long StepSize { get; init; } = StepSize > 0 ? StepSize
        : throw new ArgumentOutOfRangeException(nameof(StepSize), StepSize, "StepSchedule: step size must be > 0");

    public double Gamma { get; init; } = double.IsFinite(Gamma) && Gamma >= 0 ? Gamma
        : throw new ArgumentOutOfRangeException(nameof(Gamma), Gamma, "StepSchedule: gamma must be finite and >= 0");

    public double LearningRate(long step)
    {
        Schedules.CheckStep(step);
        return Lr * Math.Pow(Gamma, step / StepSize);
    }
}

internal static class Schedules
{
    public static double CheckRate(double lr, string name)
        => double.IsFinite(lr) && lr >= 0 ? lr : throw new ArgumentOutOfRangeException(name, lr, $"learning-rate schedule: {name} must be finite and >= 0");

    public static void CheckStep(long step)
    {
        if (step < 0) throw new ArgumentOutOfRangeException(nameof(step), step, "learning-rate schedule: step must be >= 0");
    }
}
