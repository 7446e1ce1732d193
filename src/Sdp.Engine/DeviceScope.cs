using Sdp.Engine.Backends;

namespace Sdp.Engine;

/// <summary>
/// The device new tensors are created on, chosen once where work starts and never assumed. Factories
/// (<see cref="Tensor.Empty"/>, <see cref="Tensor.FromArray{T}"/>, …) and modules (<see cref="Nn.Module"/>
/// parameters) that are not given a backend use <see cref="Current"/>: the device opened on this thread
/// with <see cref="Use"/> (a trainer opens its worker's device on the worker's thread), else the process
/// default that a composition root (the CLI, a test fixture, an example's Main) set with
/// <see cref="SetProcessDefault"/>. With neither, creating a tensor is an error: the engine has no
/// built-in device. Ops never consult the scope: their outputs live on their inputs' device.
/// </summary>
public static class DeviceScope
{
    [ThreadStatic] private static IBackend? _current;
    private static IBackend? _processDefault;

    /// <summary>The device tensors created on this thread without an explicit backend go to.</summary>
    public static IBackend Current => _current ?? _processDefault ?? throw new InvalidOperationException(
        "no device is selected: open DeviceScope.Use(backend) around the work (a trainer does this for each worker), " +
        "set a process default with DeviceScope.SetProcessDefault(backend) in the program's entry point, or pass a backend explicitly");

    /// <summary>Makes <paramref name="backend"/> current on the calling thread until the returned scope is disposed.</summary>
    public static IDisposable Use(IBackend backend)
    {
        ArgumentNullException.ThrowIfNull(backend);
        var previous = _current;
        _current = backend;
        return new Restore(previous);
    }

    /// <summary>Sets the device for threads that opened none; for composition roots only. Null clears it.</summary>
    public static void SetProcessDefault(IBackend? backend) => _processDefault = backend;

    private sealed class Restore(IBackend? previous) : IDisposable
    {
        private bool _done;

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            _current = previous;
        }
    }
}
