namespace Sdp.Kernels;

internal static class AssemblyMarker { }
