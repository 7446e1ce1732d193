using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Sdp.Kernels.Cuda;

/// <summary>
/// The raw CUDA entry points: one <c>delegate* unmanaged</c> per C function, with the C signature
/// (cuda.h, nvrtc.h), resolved by name from library handles. The same table is filled from the NVIDIA
/// libraries or from the emulated device; nothing above it asks which (see <see cref="Implementation"/>
/// for reports only). Names are the C names, including the <c>_v2</c> exports the headers #define the
/// plain names to. Handles (contexts, streams, events, modules, functions, programs) are opaque nint.
/// The cuBLAS and NCCL tables (<see cref="Cublas"/>, <see cref="Nccl"/>) are loaded on first use from the
/// same implementation: libcublas.so.* and libnccl.so.2 beside the real driver, libcudaemu.so for the emulator.
/// </summary>
public sealed unsafe class CudaApi
{
    // ---- driver (cuda.h) ----
    public readonly delegate* unmanaged<uint, CUresult> cuInit;
    public readonly delegate* unmanaged<int*, CUresult> cuDriverGetVersion;
    public readonly delegate* unmanaged<int*, CUresult> cuDeviceGetCount;
    public readonly delegate* unmanaged<int*, int, CUresult> cuDeviceGet;
    public readonly delegate* unmanaged<byte*, int, int, CUresult> cuDeviceGetName;
    public readonly delegate* unmanaged<int*, CUdeviceAttribute, int, CUresult> cuDeviceGetAttribute;
    public readonly delegate* unmanaged<nint*, int, CUresult> cuDevicePrimaryCtxRetain;
    public readonly delegate* unmanaged<int, CUresult> cuDevicePrimaryCtxRelease_v2;
    public readonly delegate* unmanaged<nint, CUresult> cuCtxSetCurrent;
    public readonly delegate* unmanaged<CUresult> cuCtxSynchronize;
    public readonly delegate* unmanaged<nuint*, nuint*, CUresult> cuMemGetInfo_v2;
    public readonly delegate* unmanaged<CUdeviceptr*, nuint, CUresult> cuMemAlloc_v2;
    public readonly delegate* unmanaged<CUdeviceptr, CUresult> cuMemFree_v2;
    public readonly delegate* unmanaged<CUdeviceptr, void*, nuint, CUresult> cuMemcpyHtoD_v2;
    public readonly delegate* unmanaged<void*, CUdeviceptr, nuint, CUresult> cuMemcpyDtoH_v2;
    public readonly delegate* unmanaged<CUdeviceptr, CUdeviceptr, nuint, CUresult> cuMemcpyDtoD_v2;
    public readonly delegate* unmanaged<CUdeviceptr, void*, nuint, nint, CUresult> cuMemcpyHtoDAsync_v2;
    public readonly delegate* unmanaged<void*, CUdeviceptr, nuint, nint, CUresult> cuMemcpyDtoHAsync_v2;
    public readonly delegate* unmanaged<CUdeviceptr, CUdeviceptr, nuint, nint, CUresult> cuMemcpyDtoDAsync_v2;
    public readonly delegate* unmanaged<CUdeviceptr, byte, nuint, CUresult> cuMemsetD8_v2;
    public readonly delegate* unmanaged<CUdeviceptr, uint, nuint, CUresult> cuMemsetD32_v2;
    public readonly delegate* unmanaged<CUdeviceptr, byte, nuint, nint, CUresult> cuMemsetD8Async;
    public readonly delegate* unmanaged<CUdeviceptr, uint, nuint, nint, CUresult> cuMemsetD32Async;
    public readonly delegate* unmanaged<nint*, uint, CUresult> cuStreamCreate;
    public readonly delegate* unmanaged<nint, CUresult> cuStreamDestroy_v2;
    public readonly delegate* unmanaged<nint, CUresult> cuStreamSynchronize;
    public readonly delegate* unmanaged<nint*, uint, CUresult> cuEventCreate;
    public readonly delegate* unmanaged<nint, nint, CUresult> cuEventRecord;
    public readonly delegate* unmanaged<nint, CUresult> cuEventSynchronize;
    public readonly delegate* unmanaged<float*, nint, nint, CUresult> cuEventElapsedTime;
    public readonly delegate* unmanaged<nint, CUresult> cuEventDestroy_v2;
    public readonly delegate* unmanaged<nint*, void*, CUresult> cuModuleLoadData;
    public readonly delegate* unmanaged<nint*, nint, byte*, CUresult> cuModuleGetFunction;
    public readonly delegate* unmanaged<nint, CUresult> cuModuleUnload;
    public readonly delegate* unmanaged<nint, CUfunctionAttribute, int, CUresult> cuFuncSetAttribute;
    public readonly delegate* unmanaged<nint, uint, uint, uint, uint, uint, uint, uint, nint, void**, void**, CUresult> cuLaunchKernel;
    public readonly delegate* unmanaged<CUresult, byte**, CUresult> cuGetErrorName;
    public readonly delegate* unmanaged<CUresult, byte**, CUresult> cuGetErrorString;

    // ---- NVRTC (nvrtc.h) ----
    public readonly delegate* unmanaged<int*, int*, NvrtcResult> nvrtcVersion;
    public readonly delegate* unmanaged<nint*, byte*, byte*, int, byte**, byte**, NvrtcResult> nvrtcCreateProgram;
    public readonly delegate* unmanaged<nint, int, byte**, NvrtcResult> nvrtcCompileProgram;
    public readonly delegate* unmanaged<nint, nuint*, NvrtcResult> nvrtcGetPTXSize;
    public readonly delegate* unmanaged<nint, byte*, NvrtcResult> nvrtcGetPTX;
    public readonly delegate* unmanaged<nint, nuint*, NvrtcResult> nvrtcGetProgramLogSize;
    public readonly delegate* unmanaged<nint, byte*, NvrtcResult> nvrtcGetProgramLog;
    public readonly delegate* unmanaged<nint*, NvrtcResult> nvrtcDestroyProgram;
    public readonly delegate* unmanaged<NvrtcResult, byte*> nvrtcGetErrorString;

    // ---- emulator extension: the detail behind the last failed call on this thread; null on the real driver ----
    public readonly delegate* unmanaged<byte*> cudaemuGetLastErrorMessage;

    internal CudaApi(CudaImplementation implementation, nint driver, string driverPath, nint nvrtc, string nvrtcPath)
    {
        Implementation = implementation;
        DriverHandle = driver;
        DriverPath = driverPath;
        _cublas = new Lazy<CublasApi>(() => Cuda.LoadCublas(this));
        _nccl = new Lazy<NcclApi>(() => Cuda.LoadNccl(this));
        NvrtcPath = nvrtcPath;
        cuInit = (delegate* unmanaged<uint, CUresult>)Export(driver, nameof(cuInit));
        cuDriverGetVersion = (delegate* unmanaged<int*, CUresult>)Export(driver, nameof(cuDriverGetVersion));
        cuDeviceGetCount = (delegate* unmanaged<int*, CUresult>)Export(driver, nameof(cuDeviceGetCount));
        cuDeviceGet = (delegate* unmanaged<int*, int, CUresult>)Export(driver, nameof(cuDeviceGet));
        cuDeviceGetName = (delegate* unmanaged<byte*, int, int, CUresult>)Export(driver, nameof(cuDeviceGetName));
        cuDeviceGetAttribute = (delegate* unmanaged<int*, CUdeviceAttribute, int, CUresult>)Export(driver, nameof(cuDeviceGetAttribute));
        cuDevicePrimaryCtxRetain = (delegate* unmanaged<nint*, int, CUresult>)Export(driver, nameof(cuDevicePrimaryCtxRetain));
        cuDevicePrimaryCtxRelease_v2 = (delegate* unmanaged<int, CUresult>)Export(driver, nameof(cuDevicePrimaryCtxRelease_v2));
        cuCtxSetCurrent = (delegate* unmanaged<nint, CUresult>)Export(driver, nameof(cuCtxSetCurrent));
        cuCtxSynchronize = (delegate* unmanaged<CUresult>)Export(driver, nameof(cuCtxSynchronize));
        cuMemGetInfo_v2 = (delegate* unmanaged<nuint*, nuint*, CUresult>)Export(driver, nameof(cuMemGetInfo_v2));
        cuMemAlloc_v2 = (delegate* unmanaged<CUdeviceptr*, nuint, CUresult>)Export(driver, nameof(cuMemAlloc_v2));
        cuMemFree_v2 = (delegate* unmanaged<CUdeviceptr, CUresult>)Export(driver, nameof(cuMemFree_v2));
        cuMemcpyHtoD_v2 = (delegate* unmanaged<CUdeviceptr, void*, nuint, CUresult>)Export(driver, nameof(cuMemcpyHtoD_v2));
        cuMemcpyDtoH_v2 = (delegate* unmanaged<void*, CUdeviceptr, nuint, CUresult>)Export(driver, nameof(cuMemcpyDtoH_v2));
        cuMemcpyDtoD_v2 = (delegate* unmanaged<CUdeviceptr, CUdeviceptr, nuint, CUresult>)Export(driver, nameof(cuMemcpyDtoD_v2));
        cuMemcpyHtoDAsync_v2 = (delegate* unmanaged<CUdeviceptr, void*, nuint, nint, CUresult>)Export(driver, nameof(cuMemcpyHtoDAsync_v2));
        cuMemcpyDtoHAsync_v2 = (delegate* unmanaged<void*, CUdeviceptr, nuint, nint, CUresult>)Export(driver, nameof(cuMemcpyDtoHAsync_v2));
        cuMemcpyDtoDAsync_v2 = (delegate* unmanaged<CUdeviceptr, CUdeviceptr, nuint, nint, CUresult>)Export(driver, nameof(cuMemcpyDtoDAsync_v2));
        cuMemsetD8_v2 = (delegate* unmanaged<CUdeviceptr, byte, nuint, CUresult>)Export(driver, nameof(cuMemsetD8_v2));
        cuMemsetD32_v2 = (delegate* unmanaged<CUdeviceptr, uint, nuint, CUresult>)Export(driver, nameof(cuMemsetD32_v2));
        cuMemsetD8Async = (delegate* unmanaged<CUdeviceptr, byte, nuint, nint, CUresult>)Export(driver, nameof(cuMemsetD8Async));
        cuMemsetD32Async = (delegate* unmanaged<CUdeviceptr, uint, nuint, nint, CUresult>)Export(driver, nameof(cuMemsetD32Async));
        cuStreamCreate = (delegate* unmanaged<nint*, uint, CUresult>)Export(driver, nameof(cuStreamCreate));
        cuStreamDestroy_v2 = (delegate* unmanaged<nint, CUresult>)Export(driver, nameof(cuStreamDestroy_v2));
        cuStreamSynchronize = (delegate* unmanaged<nint, CUresult>)Export(driver, nameof(cuStreamSynchronize));
        cuEventCreate = (delegate* unmanaged<nint*, uint, CUresult>)Export(driver, nameof(cuEventCreate));
        cuEventRecord = (delegate* unmanaged<nint, nint, CUresult>)Export(driver, nameof(cuEventRecord));
        cuEventSynchronize = (delegate* unmanaged<nint, CUresult>)Export(driver, nameof(cuEventSynchronize));
        cuEventElapsedTime = (delegate* unmanaged<float*, nint, nint, CUresult>)Export(driver, nameof(cuEventElapsedTime));
        cuEventDestroy_v2 = (delegate* unmanaged<nint, CUresult>)Export(driver, nameof(cuEventDestroy_v2));
        cuModuleLoadData = (delegate* unmanaged<nint*, void*, CUresult>)Export(driver, nameof(cuModuleLoadData));
        cuModuleGetFunction = (delegate* unmanaged<nint*, nint, byte*, CUresult>)Export(driver, nameof(cuModuleGetFunction));
        cuModuleUnload = (delegate* unmanaged<nint, CUresult>)Export(driver, nameof(cuModuleUnload));
        cuFuncSetAttribute = (delegate* unmanaged<nint, CUfunctionAttribute, int, CUresult>)Export(driver, nameof(cuFuncSetAttribute));
        cuLaunchKernel = (delegate* unmanaged<nint, uint, uint, uint, uint, uint, uint, uint, nint, void**, void**, CUresult>)Export(driver, nameof(cuLaunchKernel));
        cuGetErrorName = (delegate* unmanaged<CUresult, byte**, CUresult>)Export(driver, nameof(cuGetErrorName));
        cuGetErrorString = (delegate* unmanaged<CUresult, byte**, CUresult>)Export(driver, nameof(cuGetErrorString));

        nvrtcVersion = (delegate* unmanaged<int*, int*, NvrtcResult>)Export(nvrtc, nameof(nvrtcVersion));
        nvrtcCreateProgram = (delegate* unmanaged<nint*, byte*, byte*, int, byte**, byte**, NvrtcResult>)Export(nvrtc, nameof(nvrtcCreateProgram));
        nvrtcCompileProgram = (delegate* unmanaged<nint, int, byte**, NvrtcResult>)Export(nvrtc, nameof(nvrtcCompileProgram));
        nvrtcGetPTXSize = (delegate* unmanaged<nint, nuint*, NvrtcResult>)Export(nvrtc, nameof(nvrtcGetPTXSize));
        nvrtcGetPTX = (delegate* unmanaged<nint, byte*, NvrtcResult>)Export(nvrtc, nameof(nvrtcGetPTX));
        nvrtcGetProgramLogSize = (delegate* unmanaged<nint, nuint*, NvrtcResult>)Export(nvrtc, nameof(nvrtcGetProgramLogSize));
        nvrtcGetProgramLog = (delegate* unmanaged<nint, byte*, NvrtcResult>)Export(nvrtc, nameof(nvrtcGetProgramLog));
        nvrtcDestroyProgram = (delegate* unmanaged<nint*, NvrtcResult>)Export(nvrtc, nameof(nvrtcDestroyProgram));
        nvrtcGetErrorString = (delegate* unmanaged<NvrtcResult, byte*>)Export(nvrtc, nameof(nvrtcGetErrorString));

        cudaemuGetLastErrorMessage = NativeLibrary.TryGetExport(driver, nameof(cudaemuGetLastErrorMessage), out nint detail)
            ? (delegate* unmanaged<byte*>)detail
            : null;
    }

    private readonly Lazy<CublasApi> _cublas;
    private readonly Lazy<NcclApi> _nccl;

    public CudaImplementation Implementation { get; }

    /// <summary>The library handle the driver entry points came from (for the emulator, also cuBLAS and NCCL).</summary>
    internal nint DriverHandle { get; }

    /// <summary>cuBLAS of the same implementation, loaded on first use; throws DllNotFoundException when absent.</summary>
    public CublasApi Cublas => _cublas.Value;

    /// <summary>NCCL of the same implementation, loaded on first use; throws DllNotFoundException when absent.</summary>
    public NcclApi Nccl => _nccl.Value;

    /// <summary>Where the driver entry points came from (libcuda.so.1, or libcudaemu.so).</summary>
    public string DriverPath { get; }

    /// <summary>Where the NVRTC entry points came from (libnvrtc.so.*, or libcudaemu.so).</summary>
    public string NvrtcPath { get; }

    private static nint Export(nint library, string name) =>
        NativeLibrary.TryGetExport(library, name, out nint p)
            ? p
            : throw new EntryPointNotFoundException($"CUDA entry point {name} is missing from the loaded library");

    /// <summary>Throws <see cref="CudaException"/> unless <paramref name="result"/> is success; the message names
    /// the call (by default the expression that produced the status), cuGetErrorName/String and the emulator's detail.</summary>
    public void Check(CUresult result, [CallerArgumentExpression(nameof(result))] string call = "")
    {
        if (result != CUresult.Success) throw Error(result, call);
    }

    public CudaException Error(CUresult result, string call)
    {
        string name = ErrorName(result);
        string text = ErrorString(result);
        string message = $"{call} failed: {name} ({(int)result}): {text}";
        string? detail = EmulatorDetail();
        if (!string.IsNullOrEmpty(detail)) message += Environment.NewLine + "emulated device: " + detail;
        return new CudaException(result, call, message);
    }

    public void Check(NvrtcResult result, [CallerArgumentExpression(nameof(result))] string call = "")
    {
        if (result != NvrtcResult.Success) throw new NvrtcException(result, call, $"{call} failed: {NvrtcErrorString(result)} ({(int)result})");
    }

    public string ErrorName(CUresult result)
    {
        byte* s = null;
        return cuGetErrorName(result, &s) == CUresult.Success && s != null ? Marshal.PtrToStringUTF8((nint)s)! : $"CUresult {(int)result}";
    }

    public string ErrorString(CUresult result)
    {
        byte* s = null;
        return cuGetErrorString(result, &s) == CUresult.Success && s != null ? Marshal.PtrToStringUTF8((nint)s)! : "unrecognized error code";
    }

    public string NvrtcErrorString(NvrtcResult result)
    {
        byte* s = nvrtcGetErrorString(result);
        return s != null ? Marshal.PtrToStringUTF8((nint)s)! : $"nvrtcResult {(int)result}";
    }

    /// <summary>The emulated device's account of this thread's last failure (block, thread, allocation); null on the real driver.</summary>
    public string? EmulatorDetail() =>
        cudaemuGetLastErrorMessage == null ? null : Marshal.PtrToStringUTF8((nint)cudaemuGetLastErrorMessage());

    public override string ToString() =>
        Implementation == CudaImplementation.Emulated ? $"emulated device ({DriverPath})" : $"NVIDIA driver ({DriverPath}), NVRTC ({NvrtcPath})";
}
