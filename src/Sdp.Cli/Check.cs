namespace Sdp.Cli;

/// <summary>Option range checks; each failure names the option and what was expected.</summary>
public static class Check
{
    public static int Positive(int v, string name) => v > 0 ? v : throw new UsageException($"{name} must be a positive integer, got {v}");

    public static int AtLeast(int v, int min, string name) => v >= min ? v : throw new UsageException($"{name} must be at least {min}, got {v}");

    public static double PositiveReal(double v, string name) => v > 0 && double.IsFinite(v) ? v : throw new UsageException($"{name} must be a positive number, got {v}");

    public static double NonNegativeReal(double v, string name) => v >= 0 && double.IsFinite(v) ? v : throw new UsageException($"{name} must be a number >= 0, got {v}");

    /// <summary>--coverage C for W workers: C·W must be a whole number of holders in [1, W]; the error names the nearest valid coverages.</summary>
    public static double Coverage(int workers, double coverage)
    {
        try
        {
            Sdp.Engine.Subnetworks.SubnetworkPlan.HoldersFor(workers, coverage);
            return coverage;
        }
        catch (ArgumentException e)
        {
            throw new UsageException($"--coverage: {e.Message}");
        }
    }
}
