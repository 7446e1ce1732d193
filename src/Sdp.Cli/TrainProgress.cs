using Sdp.Models.Training;
using Spectre.Console;

namespace Sdp.Cli;

/// <summary>
/// Training progress: a live Spectre.Console bar when stdout is a terminal, plain lines every few
/// steps when it is redirected (logs, CI), so captured output stays readable.
/// </summary>
public sealed class TrainProgress(TextWriter output, bool plain, long totalSteps, long startStep)
{
    private readonly long _every = Math.Max(1, totalSteps / 20);
    private ProgressTask? _task;

    public void Run(Action training)
    {
        if (plain)
        {
            training();
            return;
        }
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                _task = ctx.AddTask("training", maxValue: totalSteps);
                _task.Value = startStep;
                training();
            });
    }

    public void Report(StepMetrics m)
    {
        string line = $"step {m.Step,6}/{totalSteps}  loss {m.Loss:F4}  lr {m.LearningRate:E2}  grad_norm {m.GradNorm:F3}  {m.StepMs:F0} ms  {m.ItemsPerSecond:N0} {m.ItemUnit}/s";
        if (_task is not null)
        {
            _task.Value = m.Step;
            _task.Description = $"loss {m.Loss:F4}";
            return;
        }
        if (m.Step % _every == 0 || m.Step == startStep + 1 || m.Step == totalSteps) output.WriteLine(line);
    }

    public void Note(string line)
    {
        if (_task is not null) AnsiConsole.MarkupLine(Markup.Escape(line));
        else output.WriteLine(line);
    }
}
