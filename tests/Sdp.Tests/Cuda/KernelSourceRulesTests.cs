using System.Text.RegularExpressions;
using Sdp.Kernels.Cuda;

namespace Sdp.Tests.Cuda;

/// <summary>
/// The lint CI runs on kernels.cu: the rules of ../shared/reference/cuda-emulation.md that keep one source valid
/// for NVRTC and for the emulated device (which compiles it as host C++). Each rule is also shown to fire on a
/// planted violation, so a rule that silently stopped matching would fail here.
/// </summary>
public class KernelSourceRulesTests
{
    /// <summary>Each rule broken in <paramref name="source"/>, as "line N: what".</summary>
    public static List<string> Violations(string source)
    {
        var found = new List<string>();
        string[] lines = source.Split('\n');
        int sharedDeclarations = 0;
        var conditionals = new Stack<bool>(); // per #if level: whether it is an #ifndef CUDAEMU block
        for (int i = 0; i < lines.Length; i++)
        {
            string code = StripComment(lines[i]);
            string trimmed = code.TrimStart();
            if (trimmed.StartsWith("#if", StringComparison.Ordinal)) conditionals.Push(Regex.IsMatch(trimmed, @"^#ifndef\s+CUDAEMU\b|^#if\s+!defined\(CUDAEMU\)"));
            else if (trimmed.StartsWith("#endif", StringComparison.Ordinal) && conditionals.Count > 0) conditionals.Pop();
            else if (trimmed.StartsWith("#else", StringComparison.Ordinal) && conditionals.Count > 0) { conditionals.Pop(); conditionals.Push(false); } // the #else of #ifndef CUDAEMU is the emulator's side

            if (trimmed.StartsWith("#include", StringComparison.Ordinal)) found.Add($"line {i + 1}: #include (NVRTC has no host headers)");
            if (Regex.IsMatch(code, @"\bINFINITY\b")) found.Add($"line {i + 1}: INFINITY (use __int_as_float(0x7f800000))");
            if (Regex.IsMatch(code, @"\bextern\s+__shared__")) sharedDeclarations++;
            if (Regex.IsMatch(code, @"__global__") && !Regex.IsMatch(code, "extern\\s+\"C\"\\s+__global__"))
                found.Add($"line {i + 1}: a __global__ kernel without extern \"C\" (the emulator and cuModuleGetFunction look kernels up by their C name)");
            if (Regex.IsMatch(code, @"\basm\s*(volatile\s*)?\(") && !conditionals.Contains(true))
                found.Add($"line {i + 1}: inline PTX outside #ifndef CUDAEMU (the emulator compiles host C++)");
            if (Regex.IsMatch(code, @"atomicAdd\s*\(\s*\(\s*double\s*\*|atomicAdd\s*\([^;]*\(double\)"))
                found.Add($"line {i + 1}: a double atomic (its order differs between devices; reduce doubles through shared memory)");
        }
        if (sharedDeclarations != 1) found.Add($"{sharedDeclarations} `extern __shared__` declarations (exactly one, the fixed dyn_smem, is allowed)");
        return found;
    }

    private static string StripComment(string line)
    {
        int c = line.IndexOf("//", StringComparison.Ordinal);
        return c < 0 ? line : line[..c];
    }

    [Test]
    public void Kernels_cu_keeps_the_emulation_rules()
    {
        var violations = Violations(CudaKernels.Source);
        Assert.That(violations, Is.Empty, string.Join("\n", violations));
    }

    private const string Clean = "extern __shared__ __align__(16) unsigned char dyn_smem[];\nextern \"C\" __global__ void k(float* x) { x[0] = 1; }\n";

    [TestCase("#include <math.h>\n", "#include")]
    [TestCase("extern \"C\" __global__ void bad(float* x) { x[0] = INFINITY; }\n", "INFINITY")]
    [TestCase("__global__ void mangled(float* x) { }\n", "without extern \"C\"")]
    [TestCase("extern \"C\" __global__ void p(float* x) { asm(\"mov.u32 %0, 1;\"); }\n", "inline PTX")]
    [TestCase("extern \"C\" __global__ void d(double* x) { atomicAdd((double*)x, 1.0); }\n", "double atomic")]
    [TestCase("extern __shared__ float second[];\n", "2 `extern __shared__`")]
    public void Each_rule_fires_on_a_planted_violation(string planted, string expected)
    {
        Assert.That(Violations(Clean), Is.Empty, "the clean sample passes");
        Assert.That(Violations(Clean + planted), Has.Some.Contains(expected));
    }

    [Test]
    public void Inline_PTX_under_ifndef_CUDAEMU_is_allowed()
    {
        string guarded = Clean + "#ifndef CUDAEMU\nextern \"C\" __global__ void p(float* x) { asm volatile(\"membar.gl;\"); }\n#endif\n";
        Assert.That(Violations(guarded), Is.Empty);
    }
}
