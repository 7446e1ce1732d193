namespace Sdp.Engine;

internal static class AssemblyMarker { }
