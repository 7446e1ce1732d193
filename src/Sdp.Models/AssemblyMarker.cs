namespace Sdp.Models;

internal static class AssemblyMarker { }
