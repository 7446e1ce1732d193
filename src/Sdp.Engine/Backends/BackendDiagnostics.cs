namespace Sdp.Engine.Backends;

/// <summary>
/// What a backend reports about itself for `sdp doctor` and run summaries, so callers need not know its
/// kernels. A snapshot: read <see cref="IBackend.Diagnostics"/> again for current values.
/// </summary>
/// <param name="Description">One line naming the backend and its main settings.</param>
/// <param name="Facts">(name, value) pairs in display order: kernel choices, threads, vector width, buffers.</param>
/// <param name="ProcessWorkspaceLabel">What <paramref name="ProcessWorkspaceBytes"/> counts, as printed.</param>
/// <param name="ProcessWorkspaceBytes">
/// Memory the backend holds for the whole process, outside every worker's <see cref="Memory.MemoryAccount"/>
/// (on the CPU: the GEMM's thread-local packing buffers).
/// </param>
public sealed record BackendDiagnostics(
    string Description, IReadOnlyList<(string Name, string Value)> Facts, string ProcessWorkspaceLabel, long ProcessWorkspaceBytes);
