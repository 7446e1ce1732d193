namespace Sdp.Kernels.Cuda;

/// <summary>The repository's <c>kernels.cu</c>, embedded in this assembly so a packaged build carries it.</summary>
public static class CudaKernels
{
    private static readonly Lazy<string> SourceText = new(() =>
    {
        using var stream = typeof(CudaKernels).Assembly.GetManifestResourceStream("kernels.cu")
            ?? throw new InvalidOperationException("Sdp.Kernels was built without its embedded kernels.cu resource");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    });

    /// <summary>The CUDA source of every custom kernel (NVRTC-compatible; see docs/kernels.md).</summary>
    public static string Source => SourceText.Value;

    /// <summary>Compiles <see cref="Source"/> for <paramref name="context"/>'s device.</summary>
    public static CudaModule Compile(CudaContext context) => CudaModule.Compile(context, Source, "kernels.cu");
}
