using System.Globalization;
using System.Runtime.Intrinsics.X86;

namespace Sdp.Measure;

/// <summary>
/// What <c>openblas_get_config()</c> says about the loaded build, e.g.
/// "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64": the version, the build flags, and the core
/// it runs (in a DYNAMIC_ARCH build the core chosen at load time, from the CPU or from OPENBLAS_CORETYPE).
/// </summary>
public sealed record OpenBlasBuildConfig(string Raw, string? Version, bool DynamicArch, string? Core, int? MaxThreads)
{
    /// <summary>
    /// Parses the string as OpenBLAS's openblas_get_config.c assembles it: "OpenBLAS", the version, optional flags,
    /// the core name, then "MAX_THREADS=n". Parts that are not where that layout puts them are left null, so an
    /// unexpected string is still reported (as <see cref="Raw"/>) instead of failing the benchmark.
    /// </summary>
    public static OpenBlasBuildConfig Parse(string raw)
    {
        ArgumentNullException.ThrowIfNull(raw);
        string[] tokens = raw.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        string? version = tokens.Length >= 2 && tokens[0] == "OpenBLAS" ? tokens[1] : null;
        bool dynamicArch = tokens.Contains("DYNAMIC_ARCH");
        int at = Array.FindIndex(tokens, t => t.StartsWith("MAX_THREADS=", StringComparison.Ordinal));
        int? maxThreads = at >= 0 && int.TryParse(tokens[at]["MAX_THREADS=".Length..], NumberStyles.None, CultureInfo.InvariantCulture, out int m) ? m : null;
        // The core name is printed right before MAX_THREADS; with no version in front it cannot be told from a flag.
        string? core = version is not null && at >= 3 ? tokens[at - 1] : null;
        return new OpenBlasBuildConfig(raw, version, dynamicArch, core, maxThreads);
    }
}

/// <summary>The widest x86 SIMD extension that an OpenBLAS core's kernels need, weakest first.</summary>
public enum SimdTier
{
    /// <summary>Not an x86 core known here (ARM, POWER, a name this table lacks): never compared.</summary>
    Unknown = 0,
    Sse = 1,
    Avx = 2,
    Avx2 = 3,
    Avx512 = 4,
}

/// <summary>
/// Whether OPENBLAS_CORETYPE makes OpenBLAS run a weaker kernel than this CPU could, so that a benchmark against it
/// would flatter Sdp. OpenBLAS reads the variable once, when the library loads, and in a DYNAMIC_ARCH build then
/// runs that core's kernels whatever the CPU offers.
/// </summary>
public sealed record OpenBlasCoreCheck(string? Forced, SimdTier ForcedTier, SimdTier CpuTier)
{
    /// <summary>The environment variable OpenBLAS reads its forced core from.</summary>
    public const string CoreTypeVariable = "OPENBLAS_CORETYPE";

    /// <summary>Set beside OPENBLAS_CORETYPE where older OpenBLAS builds misjudge a CPU's cache; it tunes blocking for the forced core.</summary>
    public const string L2SizeVariable = "OPENBLAS_L2_SIZE";

    /// <summary>The core OpenBLAS should run on this CPU (null where <see cref="CpuTier"/> is unknown).</summary>
    public string? BestCore => OpenBlasCores.BestCoreFor(CpuTier);

    /// <summary>True when the variable names a known core whose kernels use less of the CPU than it supports.</summary>
    public bool ForcesWeaker => Forced is not null && ForcedTier != SimdTier.Unknown && CpuTier != SimdTier.Unknown && ForcedTier < CpuTier;

    /// <summary>The check for this process: OPENBLAS_CORETYPE as the environment has it now, and this CPU.</summary>
    public static OpenBlasCoreCheck Current()
    {
        string? forced = Environment.GetEnvironmentVariable(CoreTypeVariable);
        if (string.IsNullOrWhiteSpace(forced)) forced = null;
        return new OpenBlasCoreCheck(forced?.Trim(), forced is null ? SimdTier.Unknown : OpenBlasCores.TierOf(forced.Trim()), OpenBlasCores.CpuTier());
    }

    /// <summary>One sentence: what the variable does to OpenBLAS on this CPU.</summary>
    public string Describe()
    {
        string cpu = CpuTier == SimdTier.Unknown ? "this CPU (no x86 core table for it)" : $"this CPU's {OpenBlasCores.TierName(CpuTier)} (best core {BestCore})";
        if (Forced is null) return $"{CoreTypeVariable} is unset: OpenBLAS picks its core from the CPU; {cpu}";
        if (ForcedTier == SimdTier.Unknown) return $"{CoreTypeVariable}={Forced} is not a core this check knows, so it is not compared with {cpu}";
        string forced = $"{CoreTypeVariable}={Forced} forces an {OpenBlasCores.TierName(ForcedTier)} core";
        return ForcesWeaker ? $"{forced}, weaker than {cpu}"
            : ForcedTier > CpuTier && CpuTier != SimdTier.Unknown ? $"{forced}, beyond {cpu}: OpenBLAS may fall back or fault"
            : $"{forced}, matching {cpu}";
    }
}

/// <summary>OpenBLAS's x86-64 core names (as OPENBLAS_CORETYPE and openblas_get_corename spell them) by the SIMD they need.</summary>
public static class OpenBlasCores
{
    // From OpenBLAS's DYNAMIC_ARCH core list (driver/others/dynamic.c). Bulldozer's family has AVX (and FMA4) but not
    // AVX2; Zen runs the Haswell kernels; Cooperlake and SapphireRapids add bf16/fp16 paths to SkylakeX's AVX-512
    // single-precision kernels. Matching ignores case: non-DYNAMIC builds report "HASWELL", dynamic ones "Haswell".
    private static readonly Dictionary<string, SimdTier> s_tiers = new(StringComparer.OrdinalIgnoreCase)
    {
        ["Katmai"] = SimdTier.Sse, ["Coppermine"] = SimdTier.Sse, ["Northwood"] = SimdTier.Sse, ["Prescott"] = SimdTier.Sse,
        ["Banias"] = SimdTier.Sse, ["Atom"] = SimdTier.Sse, ["Core2"] = SimdTier.Sse, ["Penryn"] = SimdTier.Sse,
        ["Dunnington"] = SimdTier.Sse, ["Nehalem"] = SimdTier.Sse, ["Athlon"] = SimdTier.Sse, ["Opteron"] = SimdTier.Sse,
        ["Opteron_SSE3"] = SimdTier.Sse, ["Barcelona"] = SimdTier.Sse, ["Nano"] = SimdTier.Sse, ["Bobcat"] = SimdTier.Sse,
        ["Sandybridge"] = SimdTier.Avx, ["Bulldozer"] = SimdTier.Avx, ["Piledriver"] = SimdTier.Avx,
        ["Steamroller"] = SimdTier.Avx, ["Excavator"] = SimdTier.Avx,
        ["Haswell"] = SimdTier.Avx2, ["Zen"] = SimdTier.Avx2,
        ["SkylakeX"] = SimdTier.Avx512, ["Cooperlake"] = SimdTier.Avx512, ["SapphireRapids"] = SimdTier.Avx512,
    };

    /// <summary>The tier of a core name; <see cref="SimdTier.Unknown"/> for names not in the table.</summary>
    public static SimdTier TierOf(string core)
    {
        ArgumentNullException.ThrowIfNull(core);
        return s_tiers.GetValueOrDefault(core.Trim(), SimdTier.Unknown);
    }

    /// <summary>
    /// The core whose single-precision kernels a CPU of <paramref name="tier"/> runs best: the generic core of that
    /// tier, which any CPU of the tier can execute (null for <see cref="SimdTier.Unknown"/>).
    /// </summary>
    public static string? BestCoreFor(SimdTier tier) => tier switch
    {
        SimdTier.Avx512 => "SkylakeX",
        SimdTier.Avx2 => "Haswell",
        SimdTier.Avx => "Sandybridge",
        SimdTier.Sse => "Nehalem",
        _ => null,
    };

    /// <summary>The tier from what the CPU and OS support (the same cpuid bits OpenBLAS tests).</summary>
    public static SimdTier CpuTier() => CpuTier(
        avx512: Avx512F.IsSupported && Avx512BW.IsSupported && Avx512DQ.IsSupported && Avx512F.VL.IsSupported,
        avx2: Avx2.IsSupported && Fma.IsSupported, avx: Avx.IsSupported, sse: Sse3.IsSupported);

    /// <summary>The tier of a CPU with these features (SkylakeX's kernels need AVX-512 F, BW, DQ and VL; Haswell's AVX2 and FMA).</summary>
    public static SimdTier CpuTier(bool avx512, bool avx2, bool avx, bool sse)
        => avx512 ? SimdTier.Avx512 : avx2 ? SimdTier.Avx2 : avx ? SimdTier.Avx : sse ? SimdTier.Sse : SimdTier.Unknown;

    public static string TierName(SimdTier tier) => tier switch
    {
        SimdTier.Avx512 => "AVX-512",
        SimdTier.Avx2 => "AVX2",
        SimdTier.Avx => "AVX",
        SimdTier.Sse => "SSE",
        _ => "unknown",
    };
}
