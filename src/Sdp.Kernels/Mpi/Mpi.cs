using System.Text;
using Sdp.Kernels.Mpi.Native;

namespace Sdp.Kernels.Mpi;

/// <summary>The MPI thread support levels, in mpi.h's order.</summary>
public enum MpiThreadLevel
{
    Single = MpiNative.MPI_THREAD_SINGLE,
    Funneled = MpiNative.MPI_THREAD_FUNNELED,
    Serialized = MpiNative.MPI_THREAD_SERIALIZED,
    Multiple = MpiNative.MPI_THREAD_MULTIPLE,
}

/// <summary>The element types Sdp sends.</summary>
public enum MpiDataType
{
    Byte,
    Int32,
    Int64,
    Float32,
    Float64,
}

/// <summary>An MPI call that returned an error code; the message names the call and MPI_Error_string's text.</summary>
public sealed class MpiException(string call, int code, string message) : Exception(message)
{
    /// <summary>The failing MPI function.</summary>
    public string Call { get; } = call;

    /// <summary>Its MPI error code.</summary>
    public int Code { get; } = code;
}

/// <summary>
/// The safe layer over <see cref="MpiNative"/>: loading Open MPI, initialising and finalising the process's MPI
/// (once per process, as MPI allows), and checked calls. MPI_COMM_WORLD is switched to MPI_ERRORS_RETURN at
/// initialisation (communicators split from it inherit it), so a failing call returns its code, which
/// <see cref="Check"/> turns into an <see cref="MpiException"/> naming the call, instead of MPI's default of
/// aborting the job without a word about where.
/// </summary>
public static unsafe class Mpi
{
    private static readonly object Gate = new();
    private static MpiNative? _native;
    private static string? _why;
    private static MpiComm? _world;

    /// <summary>The loaded library, or null with the reason (cached: the first attempt decides).</summary>
    public static MpiNative? TryLoad(out string why)
    {
        lock (Gate)
        {
            if (_native is null && _why is null)
            {
                _native = MpiNative.TryLoad(out string w);
                if (_native is null) _why = w;
            }
            why = _why ?? "";
            return _native;
        }
    }

    /// <summary>The loaded library; throws <see cref="DllNotFoundException"/> saying how to install it when missing.</summary>
    public static MpiNative Native => TryLoad(out string why) ?? throw new DllNotFoundException($"MPI: {why}");

    /// <summary>Whether MPI_Init(_thread) has been called in this process (by anyone).</summary>
    public static bool IsInitialized
    {
        get
        {
            var api = Native;
            int flag;
            Check(api.MPI_Initialized(&flag), "MPI_Initialized");
            return flag != 0;
        }
    }

    /// <summary>Whether MPI_Finalize has been called in this process.</summary>
    public static bool IsFinalized
    {
        get
        {
            var api = Native;
            int flag;
            Check(api.MPI_Finalized(&flag), "MPI_Finalized");
            return flag != 0;
        }
    }

    /// <summary>
    /// MPI_Init_thread asking for <paramref name="required"/>, unless MPI is already initialised (then
    /// MPI_Query_thread); returns the level MPI provides, which may be lower than asked. Throws when MPI was
    /// already finalised: MPI cannot be initialised twice in one process.
    /// </summary>
    public static MpiThreadLevel Init(MpiThreadLevel required = MpiThreadLevel.Multiple)
    {
        lock (Gate)
        {
            var api = Native;
            if (IsFinalized) throw new InvalidOperationException("MPI: MPI_Finalize has already run in this process; MPI cannot be initialised again");
            int provided;
            if (IsInitialized)
            {
                Check(api.MPI_Query_thread(&provided), "MPI_Query_thread");
            }
            else
            {
                int argc = 0;
                Check(api.MPI_Init_thread(&argc, null, (int)required, &provided), "MPI_Init_thread");
            }
            Check(api.MPI_Comm_set_errhandler(api.CommWorld, api.ErrorsReturn), "MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN)");
            return (MpiThreadLevel)provided;
        }
    }

    /// <summary>MPI_COMM_WORLD (after <see cref="Init"/>); never freed.</summary>
    public static MpiComm World
    {
        get
        {
            lock (Gate)
            {
                if (!IsInitialized) throw new InvalidOperationException("MPI: MPI_COMM_WORLD is used before MPI_Init_thread (call Mpi.Init first)");
                return _world ??= new MpiComm(Native.CommWorld, owned: false, "MPI_COMM_WORLD");
            }
        }
    }

    /// <summary>
    /// Environment variables through which launchers tell a process its rank among the job's processes on its node:
    /// Open MPI's mpirun, Slurm's srun, MPICH/Intel MPI. The first that is set wins.
    /// </summary>
    public static readonly string[] LocalRankVariables = ["OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"];

    /// <summary>
    /// This process's rank among the job's processes on its node (the GPU it should use, modulo the node's GPU
    /// count), from the launcher's environment (<see cref="LocalRankVariables"/>); null when no launcher set one.
    /// Throws naming the variable when its value is not a non-negative integer.
    /// </summary>
    public static int? LocalRank()
    {
        foreach (string name in LocalRankVariables)
        {
            string? value = Environment.GetEnvironmentVariable(name);
            if (string.IsNullOrEmpty(value)) continue;
            return int.TryParse(value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int rank)
                ? rank
                : throw new FormatException($"MPI: environment variable {name} is '{value}', expected the process's local rank (a non-negative integer)");
        }
        return null;
    }

    /// <summary>Environment variables through which launchers tell a process the job's size: mpirun, PMI (MPICH, srun), Slurm.</summary>
    public static readonly string[] JobSizeVariables = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"];

    /// <summary>The job's size from the launcher's environment (<see cref="JobSizeVariables"/>), readable before MPI is initialised; null outside a job.</summary>
    public static int? JobSize()
    {
        foreach (string name in JobSizeVariables)
            if (int.TryParse(Environment.GetEnvironmentVariable(name), out int size) && size > 0) return size;
        return null;
    }

    /// <summary>MPI_Finalize, when MPI is initialised and not yet finalised (collective: every rank calls it).</summary>
    public static void Shutdown()
    {
        lock (Gate)
        {
            if (TryLoad(out _) is not { } api || !IsInitialized || IsFinalized) return;
            Check(api.MPI_Finalize(), "MPI_Finalize");
        }
    }

    /// <summary>MPI_Abort on MPI_COMM_WORLD: ends every process of the job with <paramref name="code"/>. Does not return.</summary>
    public static void Abort(int code)
    {
        var api = Native;
        int status = api.MPI_Abort(api.CommWorld, code);
        // MPI_Abort does not return on Open MPI; if it ever does, still end this process.
        Console.Error.WriteLine($"MPI_Abort returned {Describe(status)}; exiting with code {code}");
        Environment.Exit(code);
    }

    /// <summary>MPI_Error_string's text for <paramref name="code"/>, or a fallback naming the code (outside MPI_Init…MPI_Finalize, where MPI forbids the call).</summary>
    public static string ErrorString(int code)
    {
        var api = Native;
        // MPI_Error_string may only be called between MPI_Init and MPI_Finalize (Open MPI aborts the process otherwise).
        int initialized = 0, finalized = 0;
        if (api.MPI_Initialized(&initialized) != MpiNative.MPI_SUCCESS || initialized == 0
            || api.MPI_Finalized(&finalized) != MpiNative.MPI_SUCCESS || finalized != 0)
            return $"MPI error {code}";
        byte* text = stackalloc byte[MpiNative.MPI_MAX_ERROR_STRING + 1];
        int length = 0;
        if (api.MPI_Error_string(code, text, &length) != MpiNative.MPI_SUCCESS || length <= 0)
            return $"unknown MPI error {code}";
        return Encoding.UTF8.GetString(text, Math.Min(length, MpiNative.MPI_MAX_ERROR_STRING));
    }

    /// <summary>Throws <see cref="MpiException"/> naming <paramref name="call"/> unless <paramref name="status"/> is MPI_SUCCESS.</summary>
    public static void Check(int status, string call)
    {
        if (status != MpiNative.MPI_SUCCESS)
            throw new MpiException(call, status, $"{call} failed: {Describe(status)}");
    }

    private static string Describe(int status) => $"error {status} ({ErrorString(status)})";

    /// <summary>The predefined datatype handle of <paramref name="type"/>.</summary>
    public static nint Handle(MpiDataType type)
    {
        var api = Native;
        return type switch
        {
            MpiDataType.Byte => api.Byte,
            MpiDataType.Int32 => api.Int,
            MpiDataType.Int64 => api.Int64,
            MpiDataType.Float32 => api.Float,
            MpiDataType.Float64 => api.Double,
            _ => throw new ArgumentOutOfRangeException(nameof(type), type, "MPI: unknown datatype"),
        };
    }
}
