using Sdp.Engine.Backends.Cpu;
using Sdp.Kernels.Cpu;

namespace Sdp.Tests.Memory;

public class BackendDiagnosticsTests
{
    [Test]
    public void Cpu_ReportsGemmKernelThreadsSimdAndPackingBuffers()
    {
        var d = CpuBackend.Instance.Diagnostics;
        var facts = d.Facts.ToDictionary(f => f.Name, f => f.Value);

        Assert.That(d.Description, Does.StartWith("cpu").And.Contain(Gemm.KernelName));
        Assert.That(facts.Keys, Is.EqualTo(new[] { "gemm kernel", "op threads", "simd width", "gemm buffers", "host pool" }));
        Assert.That(facts["gemm kernel"], Is.EqualTo($"{Gemm.KernelName}, {Gemm.MaxThreads} threads"));
        Assert.That(facts["simd width"], Does.StartWith($"{System.Numerics.Vector<byte>.Count * 8}-bit"));
        Assert.That(d.ProcessWorkspaceLabel, Is.EqualTo("GEMM packing buffers and cached host blocks (per process, all threads)"));
        Assert.That(d.ProcessWorkspaceBytes, Is.GreaterThanOrEqualTo(0));
    }

    [Test]
    public void Cpu_WorkspaceIsReadWhenAsked()
    {
        // Packing buffers are thread-local and kept: a GEMM on a fresh thread adds one, which the next read shows.
        long during = 0;
        var t = new Thread(() =>
        {
            unsafe
            {
                const int n = 256;
                var a = new float[n * n];
                var c = new float[n * n];
                fixed (float* pa = a, pc = c) Gemm.Sgemm(false, false, n, n, n, 1f, pa, n, pa, n, 0f, pc, n, 1);
            }
            during = CpuBackend.Instance.Diagnostics.ProcessWorkspaceBytes;
        });
        t.Start();
        t.Join();
        Assert.That(during, Is.GreaterThan(0));
    }
}
