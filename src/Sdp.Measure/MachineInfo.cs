using System.Runtime.InteropServices;

namespace Sdp.Measure;

/// <summary>What a measurement ran on, for the line that labels every table: the CPU's model name, its logical cores and SIMD tier, the OS and .NET.</summary>
public static class MachineInfo
{
    /// <summary>
    /// The CPU's model name as <c>lscpu</c> prints it (the "model name" line of /proc/cpuinfo on Linux), or the
    /// architecture where there is no such file.
    /// </summary>
    public static string CpuModel()
    {
        const string cpuinfo = "/proc/cpuinfo";
        try
        {
            if (File.Exists(cpuinfo))
            {
                foreach (string line in File.ReadLines(cpuinfo))
                {
                    int colon = line.IndexOf(':');
                    if (colon > 0 && line[..colon].Trim() == "model name") return line[(colon + 1)..].Trim();
                }
            }
        }
        catch (IOException)
        {
            // Unreadable: fall back to the architecture, which is still a label.
        }
        return $"{RuntimeInformation.ProcessArchitecture} CPU";
    }

    /// <summary>The 1-minute load average (Linux /proc/loadavg), or null where there is none: above the core count, other work shared the cores.</summary>
    public static double? LoadAverage()
    {
        const string loadavg = "/proc/loadavg";
        try
        {
            return File.Exists(loadavg) && double.TryParse(File.ReadAllText(loadavg).Split(' ', StringSplitOptions.RemoveEmptyEntries).FirstOrDefault(),
                System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double load) ? load : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>"AMD EPYC, 2 logical cores (AVX2), Linux 6.1.0 (X64), .NET 10.0.1".</summary>
    public static string Describe()
        => $"{CpuModel()}, {Environment.ProcessorCount} logical core{(Environment.ProcessorCount == 1 ? "" : "s")} ({OpenBlasCores.TierName(OpenBlasCores.CpuTier())}), " +
           $"{RuntimeInformation.OSDescription.Trim()} ({RuntimeInformation.ProcessArchitecture}), .NET {Environment.Version}";
}
