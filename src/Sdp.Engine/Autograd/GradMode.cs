namespace Sdp.Engine.Autograd;

/// <summary>Whether ops record onto the tape on this thread. Mirrors torch.no_grad.</summary>
public static class GradMode
{
    [ThreadStatic] private static int _disabledDepth;

    public static bool IsEnabled => _disabledDepth == 0;

    /// <summary>No op records a tape node until the returned scope is disposed (evaluation, optimizer steps).</summary>
    public static IDisposable Disable()
    {
        _disabledDepth++;
        return new Enable();
    }

    private sealed class Enable : IDisposable
    {
        private bool _done;

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            _disabledDepth--;
        }
    }
}
