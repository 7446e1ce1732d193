using System.Globalization;
using Sdp.Engine.Memory;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Subnetworks;

namespace Sdp.Cli;

/// <summary>
/// --max-memory SIZE, a per-worker budget: `sdp train`, `sdp plan` and `sdp memory` check the analytical memory model
/// (<see cref="MemoryModel"/>) against it before anything is allocated, and refuse a configuration whose largest
/// worker would exceed it, naming the coverage and the per-worker batch nearest to the given ones that fit.
/// </summary>
public static class MemoryBudget
{
    public const string Option = "--max-memory";

    public const string Description = "Per-worker memory budget (512MiB, 2GiB, 1.5GB, or bytes): refuse a configuration the memory model says exceeds it";

    private static readonly (string Suffix, double Bytes)[] Units =
    [
        ("TiB", 1L << 40), ("GiB", 1L << 30), ("MiB", 1L << 20), ("KiB", 1L << 10),
        ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3),
        ("T", 1L << 40), ("G", 1L << 30), ("M", 1L << 20), ("K", 1L << 10), ("B", 1),
    ];

    /// <summary>Bytes from "512MiB", "2 GiB", "1.5GB" (KiB/MiB/GiB/TiB and bare K/M/G/T are powers of 1024, KB/MB/GB/TB of 1000) or a plain byte count.</summary>
    public static long Parse(string text)
    {
        string t = text.Trim();
        double scale = 1;
        foreach (var (suffix, bytes) in Units)
        {
            if (!t.EndsWith(suffix, StringComparison.OrdinalIgnoreCase)) continue;
            (t, scale) = (t[..^suffix.Length].TrimEnd(), bytes);
            break;
        }
        if (!double.TryParse(t, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double value) || value * scale < 1 || value * scale > long.MaxValue)
            throw new UsageException($"{Option}: '{text}' is not a memory size; expected a positive number of bytes with an optional unit, as 512MiB, 2GiB or 1.5GB");
        return (long)(value * scale);
    }

    /// <summary>
    /// Throws a usage error when the largest worker of <paramref name="estimate"/> exceeds <paramref name="budget"/>: what it
    /// needs by category, and the largest coverage (SDP) and the largest per-worker batch below the given ones that fit.
    /// </summary>
    public static void Require(MemoryEstimate estimate, long budget)
    {
        if (estimate.MaxTotal <= budget) return;
        int worker = estimate.MaxWorker;
        var c = estimate.PerWorker[worker];
        string who = estimate.Variant is null ? "every worker" : $"worker {worker}";
        string need = $"{who} needs {B(c.Total)} by the memory model (parameters {B(c.Parameters)}, gradients {B(c.Gradients)}, optimizer state {B(c.OptimizerState)}, activations {B(c.Activations)})";
        var fits = new List<string>();
        if (estimate.Variant is { } variant)
        {
            int holders = SubnetworkPlan.HoldersFor(estimate.Workers, variant.Coverage);
            for (int h = holders - 1; h >= 1; h--)
            {
                var smaller = MemoryModel.Estimate(estimate.Workload, estimate.Optimizer, estimate.Workers, variant with { Coverage = (double)h / estimate.Workers });
                if (smaller.MaxTotal > budget) continue;
                fits.Add(string.Create(CultureInfo.InvariantCulture, $"--coverage {(double)h / estimate.Workers:0.###} ({B(smaller.MaxTotal)})"));
                break;
            }
        }
        // Activations grow with the batch, so the largest batch that fits is found by bisection.
        int low = 0, high = estimate.Workload.Batch;
        while (high - low > 1)
        {
            int mid = low + (high - low) / 2;
            if (MemoryModel.Estimate(estimate.Workload with { Batch = mid }, estimate.Optimizer, estimate.Workers, estimate.Variant).MaxTotal <= budget) low = mid;
            else high = mid;
        }
        if (low > 0)
            fits.Add($"--batch {low} per worker ({B(MemoryModel.Estimate(estimate.Workload with { Batch = low }, estimate.Optimizer, estimate.Workers, estimate.Variant).MaxTotal)})");
        var smallest = estimate.Variant is { } v ? v with { Coverage = 1.0 / estimate.Workers } : null;
        string smallestName = smallest is null ? "--batch 1" : string.Create(CultureInfo.InvariantCulture, $"--batch 1 at --coverage {smallest.Coverage:0.###}");
        string advice = fits.Count > 0 ? $"fits: {string.Join(" or ", fits)}"
            : $"nothing nearer fits: even {smallestName} needs {B(MemoryModel.Estimate(estimate.Workload with { Batch = 1 }, estimate.Optimizer, estimate.Workers, smallest).MaxTotal)}";
        throw new UsageException($"{Option} {B(budget)}: {need}; {advice}");
    }

    private static string B(long bytes) => MemorySnapshot.FormatBytes(bytes);
}
