namespace Sdp.Engine.Distributed;

/// <summary>
/// Ranks called a collective set-up step (CreateGroup) with arguments that disagree. A multi-process
/// communicator gathers every rank's arguments first, so this is thrown alike on every rank, with the same
/// message naming both lists, and the ranks may shut down cleanly (no rank is left waiting in a collective).
/// </summary>
public sealed class CollectiveMismatchException(string message) : InvalidOperationException(message);
