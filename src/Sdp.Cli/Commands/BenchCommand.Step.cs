using System.Globalization;
using Sdp.Engine;
using Sdp.Engine.Backends.Cuda;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Models.Data;
using Sdp.Models.Llama;
using Sdp.Models.Training;

namespace Sdp.Cli.Commands;

/// <summary>The model-FLOP utilisation of a LLaMA training step on a CUDA device (`sdp bench kernels --step`).</summary>
public static partial class BenchCommand
{
    /// <summary>
    /// Datasheet fp32 (non-tensor-core) peaks, the right denominator while dense GEMMs run in fp32 without TF32:
    /// H100 SXM and H200 67 TFLOP/s, H100 PCIe 51, A100 19.5. Matched on the device name.
    /// </summary>
    private static readonly (string Name, double Flops)[] Fp32Peaks = [("H200", 67e12), ("H100 PCIe", 51e12), ("H100", 67e12), ("A100", 19.5e12)];

    /// <summary>Times <paramref name="samples"/> AdamW training steps (after one warm-up) of LLaMA <paramref name="preset"/> and prints the MFU.</summary>
    private static void StepMfu(TextWriter output, CudaBackend cuda, string preset, int batch, int seq, int samples)
    {
        var inv = CultureInfo.InvariantCulture;
        var config = LlamaConfig.Preset(preset);
        var account = new MemoryAccount("bench");
        using var device = DeviceScope.Use(cuda);
        using var active = account.Activate();
        var model = new LlamaTrainable(new LlamaForCausalLM(config, new Rng(0)));
        var optimizer = new AdamW(model.Module.Parameters(), 1e-4);
        using var trainer = new Trainer(model, optimizer, new TokenBatches(new MarkovTokenSource(batch, seq)),
            new TrainerOptions { Steps = samples + 1, Schedule = new ConstantSchedule(1e-4) }, account);
        try
        {
            trainer.TrainStep(); // warm-up: kernel compilation, allocator growth
            var ms = new double[samples];
            for (int s = 0; s < samples; s++) ms[s] = trainer.TrainStep().StepMs;
            Array.Sort(ms);
            double median = ms[samples / 2];
            double flops = config.FlopsPerToken(seq) * batch * seq;
            double achieved = flops / (median / 1000);
            string name = cuda.Context.Name;
            var peak = Fp32Peaks.FirstOrDefault(p => name.Contains(p.Name, StringComparison.OrdinalIgnoreCase));
            output.WriteLine();
            output.WriteLine(string.Create(inv, $"step      LLaMA {preset} ({config.ParameterCount:N0} parameters), AdamW, batch {batch} x {seq} tokens, fp32 (no TF32), median of {samples} steps after 1 warm-up"));
            output.WriteLine(string.Create(inv, $"          {median:F1} ms per step, {batch * seq / (median / 1000):N0} tokens/s, {flops / 1e9:N1} GFLOP per step (6N + 12·L·h·T per token), {achieved / 1e12:F2} TFLOP/s"));
            output.WriteLine(peak.Name is null
                ? $"          MFU: no fp32 peak on record for '{name}'"
                : string.Create(inv, $"          MFU {achieved / peak.Flops:P1} of the {peak.Name}'s {peak.Flops / 1e12:F1} TFLOP/s fp32 (non-tensor) datasheet peak; peak memory {MemorySnapshot.FormatBytes(account.PeakTotal)}"));
        }
        finally
        {
            optimizer.Dispose();
            model.Dispose();
        }
    }
}
