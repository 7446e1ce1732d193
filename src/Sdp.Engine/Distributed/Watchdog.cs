using System.Globalization;

namespace Sdp.Engine.Distributed;

/// <summary>
/// Ends a multi-process job when one of its phases (setting up, a step, an evaluation, a save) outlasts the
/// timeout. MPI and NCCL collectives wait forever for a peer that hung or died unnoticed by the launcher, so every
/// process watches its own phases: the first to expire calls <see cref="IProcessGroup.Abort"/>, which ends every
/// process with a message naming this rank and the phase it waited in. One phase at a time; the timer thread only
/// ever reads the phase's name.
/// </summary>
public sealed class Watchdog : IDisposable
{
    private readonly TimeSpan _timeout;
    private readonly Action<string> _expire;
    private readonly Timer _timer;
    private readonly Lock _gate = new();
    private string? _phase;
    private long _armed;

    /// <param name="timeout">How long a phase may take.</param>
    /// <param name="expire">Called once, on a timer thread, with what expired; ends the job (<see cref="IProcessGroup.Abort"/>).</param>
    public Watchdog(TimeSpan timeout, Action<string> expire)
    {
        if (timeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(timeout), $"Watchdog: the timeout must be positive, got {timeout}");
        ArgumentNullException.ThrowIfNull(expire);
        (_timeout, _expire) = (timeout, expire);
        _timer = new Timer(Expired);
    }

    /// <summary>Watches <paramref name="phase"/> (e.g. "step 17") until the result is disposed; inside a watched phase, nothing more.</summary>
    public IDisposable Watch(string phase)
    {
        long armed;
        lock (_gate)
        {
            // A phase inside a watched one (assembling the model while saving) is covered by the outer phase's deadline.
            if (_phase is not null) return Nested.Instance;
            _phase = phase;
            armed = ++_armed;
            _timer.Change(_timeout, Timeout.InfiniteTimeSpan);
        }
        return new Phase(this, armed);
    }

    private void Expired(object? state)
    {
        string? phase;
        lock (_gate) phase = _phase;
        if (phase is null) return;
        _expire(string.Create(CultureInfo.InvariantCulture,
            $"{phase} did not finish within {_timeout.TotalSeconds:0.###} s (--comm-timeout): another rank has hung or died, or the timeout is too short for this phase"));
    }

    private void Disarm(long armed)
    {
        lock (_gate)
        {
            if (armed != _armed || _phase is null) return;
            _phase = null;
            _timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        }
    }

    public void Dispose() => _timer.Dispose();

    private sealed class Nested : IDisposable
    {
        public static readonly Nested Instance = new();

        public void Dispose()
        {
        }
    }

    private sealed class Phase(Watchdog owner, long armed) : IDisposable
    {
        public void Dispose() => owner.Disarm(armed);
    }
}
