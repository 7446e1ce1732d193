using System.Runtime.InteropServices;

namespace Sdp.Kernels.Mpi.Native;

/// <summary>
/// The raw MPI entry points Sdp uses, from Open MPI's libmpi.so.40 (Debian's openmpi-bin/libopenmpi-dev): one
/// <c>delegate* unmanaged</c> per C function with the C signature of mpi.h, and the predefined handles. In Open
/// MPI, <c>MPI_Comm</c>, <c>MPI_Datatype</c>, <c>MPI_Op</c> and <c>MPI_Errhandler</c> are pointers, and the
/// predefined ones (<c>MPI_COMM_WORLD</c>, <c>MPI_FLOAT</c>, <c>MPI_SUM</c>, …) are the addresses of global
/// objects (<c>#define MPI_COMM_WORLD OMPI_PREDEFINED_GLOBAL(MPI_Comm, ompi_mpi_comm_world)</c>, i.e.
/// <c>&amp;ompi_mpi_comm_world</c>), so they are the addresses <see cref="NativeLibrary.GetExport"/> returns for
/// those symbols. Counts and displacements are C <c>int</c>; every function returns an MPI error code. Nothing
/// here checks anything: <see cref="Mpi"/> is the safe layer.
/// </summary>
public sealed unsafe partial class MpiNative
{
    /// <summary>The soname of Open MPI 3.x/4.x's C library.</summary>
    public const string LibraryName = "libmpi.so.40";

    // Constants of Open MPI 4.1's mpi.h (checked against /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h).
    public const int MPI_SUCCESS = 0;
    public const int MPI_UNDEFINED = -32766;
    public const int MPI_MAX_ERROR_STRING = 256; // OPAL_MAX_ERROR_STRING
    public const int MPI_THREAD_SINGLE = 0, MPI_THREAD_FUNNELED = 1, MPI_THREAD_SERIALIZED = 2, MPI_THREAD_MULTIPLE = 3;

    // (argc*, argv***, required, provided*)
    public readonly delegate* unmanaged<int*, byte***, int, int*, int> MPI_Init_thread;
    public readonly delegate* unmanaged<int*, int> MPI_Initialized;
    public readonly delegate* unmanaged<int*, int> MPI_Finalized;
    public readonly delegate* unmanaged<int*, int> MPI_Query_thread;
    public readonly delegate* unmanaged<int> MPI_Finalize;
    // (comm, errorcode)
    public readonly delegate* unmanaged<nint, int, int> MPI_Abort;
    // (errorcode, string, resultlen*)
    public readonly delegate* unmanaged<int, byte*, int*, int> MPI_Error_string;
    // (comm, errhandler)
    public readonly delegate* unmanaged<nint, nint, int> MPI_Comm_set_errhandler;
    public readonly delegate* unmanaged<nint, int*, int> MPI_Comm_rank;
    public readonly delegate* unmanaged<nint, int*, int> MPI_Comm_size;
    // (comm, color, key, newcomm*)
    public readonly delegate* unmanaged<nint, int, int, nint*, int> MPI_Comm_split;
    public readonly delegate* unmanaged<nint*, int> MPI_Comm_free;
    public readonly delegate* unmanaged<nint, int> MPI_Barrier;
    // (buffer, count, datatype, root, comm)
    public readonly delegate* unmanaged<void*, int, nint, int, nint, int> MPI_Bcast;
    // (sendbuf, sendcount, sendtype, recvbuf, recvcount, recvtype, comm)
    public readonly delegate* unmanaged<void*, int, nint, void*, int, nint, nint, int> MPI_Allgather;
    // (sendbuf, sendcount, sendtype, recvbuf, recvcounts[], displs[], recvtype, comm)
    public readonly delegate* unmanaged<void*, int, nint, void*, int*, int*, nint, nint, int> MPI_Allgatherv;
    // (sendbuf, sendcounts[], sdispls[], sendtype, recvbuf, recvcounts[], rdispls[], recvtype, comm)
    public readonly delegate* unmanaged<void*, int*, int*, nint, void*, int*, int*, nint, nint, int> MPI_Alltoallv;

    /// <summary>Predefined handles: the addresses of Open MPI's global objects.</summary>
    public readonly nint CommWorld, CommNull, ErrorsReturn, Byte, Int, Int64, Float, Double, OpSum;

    private MpiNative(nint library, string path)
    {
        Path = path;
        MPI_Init_thread = (delegate* unmanaged<int*, byte***, int, int*, int>)Export(library, nameof(MPI_Init_thread));
        MPI_Initialized = (delegate* unmanaged<int*, int>)Export(library, nameof(MPI_Initialized));
        MPI_Finalized = (delegate* unmanaged<int*, int>)Export(library, nameof(MPI_Finalized));
        MPI_Query_thread = (delegate* unmanaged<int*, int>)Export(library, nameof(MPI_Query_thread));
        MPI_Finalize = (delegate* unmanaged<int>)Export(library, nameof(MPI_Finalize));
        MPI_Abort = (delegate* unmanaged<nint, int, int>)Export(library, nameof(MPI_Abort));
        MPI_Error_string = (delegate* unmanaged<int, byte*, int*, int>)Export(library, nameof(MPI_Error_string));
        MPI_Comm_set_errhandler = (delegate* unmanaged<nint, nint, int>)Export(library, nameof(MPI_Comm_set_errhandler));
        MPI_Comm_rank = (delegate* unmanaged<nint, int*, int>)Export(library, nameof(MPI_Comm_rank));
        MPI_Comm_size = (delegate* unmanaged<nint, int*, int>)Export(library, nameof(MPI_Comm_size));
        MPI_Comm_split = (delegate* unmanaged<nint, int, int, nint*, int>)Export(library, nameof(MPI_Comm_split));
        MPI_Comm_free = (delegate* unmanaged<nint*, int>)Export(library, nameof(MPI_Comm_free));
        MPI_Barrier = (delegate* unmanaged<nint, int>)Export(library, nameof(MPI_Barrier));
        MPI_Bcast = (delegate* unmanaged<void*, int, nint, int, nint, int>)Export(library, nameof(MPI_Bcast));
        MPI_Allgather = (delegate* unmanaged<void*, int, nint, void*, int, nint, nint, int>)Export(library, nameof(MPI_Allgather));
        MPI_Allgatherv = (delegate* unmanaged<void*, int, nint, void*, int*, int*, nint, nint, int>)Export(library, nameof(MPI_Allgatherv));
        MPI_Alltoallv = (delegate* unmanaged<void*, int*, int*, nint, void*, int*, int*, nint, nint, int>)Export(library, nameof(MPI_Alltoallv));
        CommWorld = Export(library, "ompi_mpi_comm_world");
        CommNull = Export(library, "ompi_mpi_comm_null");
        ErrorsReturn = Export(library, "ompi_mpi_errors_return");
        Byte = Export(library, "ompi_mpi_byte");
        Int = Export(library, "ompi_mpi_int");
        Int64 = Export(library, "ompi_mpi_int64_t");
        Float = Export(library, "ompi_mpi_float");
        Double = Export(library, "ompi_mpi_double");
        OpSum = Export(library, "ompi_mpi_op_sum");
    }

    /// <summary>Where the entry points came from.</summary>
    public string Path { get; }

    /// <summary>
    /// Loads libmpi.so.40, or returns null with the reason. The library is first opened RTLD_GLOBAL, as mpi4py
    /// does: Open MPI dlopens its components (btl, pml, coll, …), which resolve symbols of libmpi and libopen-pal
    /// from the global namespace; .NET's own loader opens libraries RTLD_LOCAL.
    /// </summary>
    public static MpiNative? TryLoad(out string why)
    {
        why = "";
        if (!OperatingSystem.IsLinux())
        {
            why = "the MPI bindings are written against Open MPI on Linux";
            return null;
        }
        nint global = dlopen(LibraryName, RTLD_NOW | RTLD_GLOBAL);
        if (global == 0)
        {
            nint err = dlerror();
            why = $"{LibraryName} could not be loaded ({(err == 0 ? "no detail" : Marshal.PtrToStringUTF8(err))}); install Open MPI: apt-get install openmpi-bin libopenmpi-dev";
            return null;
        }
        nint library = NativeLibrary.Load(LibraryName);
        try
        {
            return new MpiNative(library, LibraryName);
        }
        catch (EntryPointNotFoundException e)
        {
            why = $"{LibraryName} is not Open MPI's: {e.Message}";
            return null;
        }
    }

    private static nint Export(nint library, string name) =>
        NativeLibrary.TryGetExport(library, name, out nint p)
            ? p
            : throw new EntryPointNotFoundException($"MPI symbol {name} is missing from {LibraryName}");

    private const int RTLD_NOW = 2, RTLD_GLOBAL = 0x100;

    [LibraryImport("libc.so.6", EntryPoint = "dlopen", StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint dlopen(string file, int mode);

    [LibraryImport("libc.so.6", EntryPoint = "dlerror")]
    private static partial nint dlerror();
}
