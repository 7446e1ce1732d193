using System.Globalization;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace Sdp.Bench;

/// <summary>A column of the suites' reports whose value is computed from the summary; shared boilerplate of <see cref="IColumn"/>.</summary>
public abstract class SuiteColumn(string name, string legend) : IColumn
{
    public string Id => GetType().Name + "." + ColumnName;

    public string ColumnName { get; } = name;

    public string Legend { get; } = legend;

    public bool AlwaysShow => true;

    public ColumnCategory Category => ColumnCategory.Custom;

    public int PriorityInCategory => 0;

    public virtual bool IsNumeric => true;

    public UnitType UnitType => UnitType.Dimensionless;

    public bool IsAvailable(Summary summary) => true;

    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => Value(summary, benchmarkCase) ?? "-";

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style) => GetValue(summary, benchmarkCase);

    /// <summary>The cell, or null when it cannot be computed (the case or its reference has no result).</summary>
    protected abstract string? Value(Summary summary, BenchmarkCase benchmarkCase);

    /// <summary>Mean nanoseconds of a case, or null when it did not run.</summary>
    protected static double? Mean(Summary summary, BenchmarkCase? benchmarkCase)
        => benchmarkCase is null ? null : summary[benchmarkCase]?.ResultStatistics?.Mean;

    /// <summary>The baseline method's case of the same parameters (BenchmarkDotNet's logical group).</summary>
    protected static BenchmarkCase? Baseline(Summary summary, BenchmarkCase benchmarkCase) => summary.GetBaseline(summary.GetLogicalGroupKey(benchmarkCase));

    protected static string Format(double value) => value.ToString("0.000", CultureInfo.InvariantCulture);
}

/// <summary>The same text on every row: what the suite's baseline is and where it runs (computed in the process that reports, which set the environment the benchmarks ran with).</summary>
public sealed class BaselineColumn(Func<string> describe) : SuiteColumn("Baseline", "The baseline every ratio is against, and its threads")
{
    public override bool IsNumeric => false;

    protected override string? Value(Summary summary, BenchmarkCase benchmarkCase) => describe();
}

/// <summary>
/// time / (d · baseline time), d the Density parameter: 1.0 when a masked kernel's time is exactly proportional to the
/// fraction of units it computes (`sdp bench masked`'s ratio; the target is at most 1.15 for d ≥ 0.25).
/// </summary>
public sealed class DensityRatioColumn() : SuiteColumn("Ratio/d", "Time / (density × baseline time): 1 = time proportional to the held units")
{
    protected override string? Value(Summary summary, BenchmarkCase benchmarkCase)
    {
        // The baseline itself computes every unit: dividing it by d would say nothing.
        if (summary.IsBaseline(benchmarkCase)) return null;
        if (Mean(summary, benchmarkCase) is not { } time || Mean(summary, Baseline(summary, benchmarkCase)) is not { } baseline) return null;
        double density = Convert.ToDouble(benchmarkCase.Parameters["Density"], CultureInfo.InvariantCulture);
        return Format(time / (density * baseline));
    }
}

/// <summary>
/// baseline time / time, where the baseline copies as many bytes as the benchmark reads and writes: the fraction of
/// the memory bandwidth (as a parallel copy achieves it) that the benchmark reaches.
/// </summary>
public sealed class BandwidthFractionColumn() : SuiteColumn("Bandwidth", "Fraction of the copy's bandwidth: baseline time / time, both moving the same bytes")
{
    protected override string? Value(Summary summary, BenchmarkCase benchmarkCase)
        => Mean(summary, benchmarkCase) is { } time && Mean(summary, Baseline(summary, benchmarkCase)) is { } baseline ? Format(baseline / time) : null;
}

/// <summary>
/// time / the time of the case whose <paramref name="parameter"/> is the reference value (<paramref name="isReference"/>)
/// and whose other parameters are the same: a baseline chosen among parameter values rather than methods (DP among the variants).
/// </summary>
public sealed class RelativeToParameterColumn(string name, string parameter, Func<object, bool> isReference)
    : SuiteColumn(name, $"Time relative to the case whose {parameter} is the reference, other parameters equal")
{
    protected override string? Value(Summary summary, BenchmarkCase benchmarkCase)
    {
        var reference = summary.BenchmarksCases.FirstOrDefault(c => c.Descriptor == benchmarkCase.Descriptor && isReference(c.Parameters[parameter])
            && c.Parameters.Items.Where(p => p.Name != parameter).Select(p => p.Value).SequenceEqual(benchmarkCase.Parameters.Items.Where(p => p.Name != parameter).Select(p => p.Value)));
        return Mean(summary, benchmarkCase) is { } time && Mean(summary, reference) is { } dp ? Format(time / dp) : null;
    }
}

/// <summary>A value computed from the case's parameters alone (no timing), e.g. a worker's held fraction.</summary>
public sealed class ParameterDerivedColumn(string name, string legend, Func<BenchmarkCase, string> value) : SuiteColumn(name, legend)
{
    protected override string? Value(Summary summary, BenchmarkCase benchmarkCase) => value(benchmarkCase);
}
