// cudaemu.h — makes NVRTC-style CUDA source compile as host C++20 for the emulated device.
//
// The emulator's nvrtcCompileProgram force-includes this header (clang++ -include) in front of the
// kernel source, so kernels.cu stays exactly what NVRTC compiles for the GPU. Design notes:
// ../../../shared/reference/cuda-emulation.md. Rules the source must follow:
//   - kernels are extern "C"; no host headers (NVRTC has none), so this header includes none either:
//     a kernel file may typedef its own int64_t etc. without clashing with <stdint.h>;
//   - dynamic shared memory is declared in the one fixed form
//       extern __shared__ __align__(16) unsigned char dyn_smem[];
//   - inline PTX only under #ifndef CUDAEMU.
// Everything a kernel calls lands in libcudaemu.so (cudaemu.cpp): thread coordinates, barriers and
// warp rendezvous are calls into the fiber scheduler of the worker thread running the block.

#pragma once
#define CUDAEMU 1

// ---- the ABI shared with libcudaemu (cudaemu.cpp includes only this part) -----------------------
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

// What the running fiber sees; libcudaemu keeps one per fiber.
struct cudaemu_thread_ctx { uint3 threadIdx; uint3 blockIdx; dim3 blockDim; dim3 gridDim; };

struct cudaemu_kernel_entry {
    const char* name;
    void (*thunk)(void**);
    unsigned nparams;
    const unsigned char* sizes;    // bytes per parameter
    const unsigned char* pointers; // 1 where the parameter is a pointer (checked against device memory)
};

enum { CUDAEMU_SYNCWARP = 0, CUDAEMU_SHFL = 1, CUDAEMU_SHFL_XOR = 2, CUDAEMU_SHFL_DOWN = 3, CUDAEMU_SHFL_UP = 4,
       CUDAEMU_BALLOT = 5, CUDAEMU_ANY = 6, CUDAEMU_ALL = 7 };

extern "C" {
// const: within one fiber the answer never changes, so the compiler may keep it across barriers.
const cudaemu_thread_ctx* cudaemu_ctx(void) __attribute__((const));
void cudaemu_syncthreads(void);
// One warp-level operation: every lane named in mask must reach it (a rendezvous of fibers).
unsigned long long cudaemu_warp_op(int op, unsigned int mask, unsigned long long value, int arg, int width);
[[noreturn]] void cudaemu_trap(const char* what);
// Dynamic shared memory lives in libcudaemu (one buffer per worker thread). The kernel's own
// declaration sits inside extern "C" too, so it must name this very C-linkage symbol.
extern thread_local __attribute__((aligned(16))) unsigned char dyn_smem[];
}

#ifndef CUDAEMU_RUNTIME

// ---- keywords -----------------------------------------------------------------------------------
// A kernel is exported and kept, so the emulator's thunk (generated at compile time) can call it;
// the marker attribute pair is also how nvrtcCompileProgram finds kernel names in the preprocessed text.
#define __global__ __attribute__((visibility("default"), used))
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __constant__
#define __align__(n) __attribute__((aligned(n)))
// One copy per worker OS thread = one copy per running block (a worker runs one block at a time).
// At block scope thread_local implies static, so `__shared__ float s[256];` needs no `static`.
#define __shared__ thread_local

typedef __SIZE_TYPE__ size_t;

// ---- vector types ------------------------------------------------------------------------------
struct __align__(8) float2 { float x, y; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(8) int2 { int x, y; };
struct __align__(16) int4 { int x, y, z, w; };
struct __align__(16) uint4 { unsigned int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

extern "C" int printf(const char*, ...);

#define threadIdx (::cudaemu_ctx()->threadIdx)
#define blockIdx (::cudaemu_ctx()->blockIdx)
#define blockDim (::cudaemu_ctx()->blockDim)
#define gridDim (::cudaemu_ctx()->gridDim)
#define warpSize 32

// ---- barriers, warps ----------------------------------------------------------------------------
inline void __syncthreads() { cudaemu_syncthreads(); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
inline void __trap() { cudaemu_trap("__trap()"); }

inline void __syncwarp(unsigned int mask = 0xffffffffu) { cudaemu_warp_op(CUDAEMU_SYNCWARP, mask, 0, 0, 32); }

template <class T>
inline T cudaemu_shfl(int op, unsigned int mask, T v, int arg, int width) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    unsigned long long raw = 0;
    __builtin_memcpy(&raw, &v, sizeof(T));
    raw = cudaemu_warp_op(op, mask, raw, arg, width);
    T r;
    __builtin_memcpy(&r, &raw, sizeof(T));
    return r;
}
template <class T> inline T __shfl_sync(unsigned int m, T v, int src, int w = 32) { return cudaemu_shfl(CUDAEMU_SHFL, m, v, src, w); }
template <class T> inline T __shfl_xor_sync(unsigned int m, T v, int lm, int w = 32) { return cudaemu_shfl(CUDAEMU_SHFL_XOR, m, v, lm, w); }
template <class T> inline T __shfl_down_sync(unsigned int m, T v, unsigned int d, int w = 32) { return cudaemu_shfl(CUDAEMU_SHFL_DOWN, m, v, (int)d, w); }
template <class T> inline T __shfl_up_sync(unsigned int m, T v, unsigned int d, int w = 32) { return cudaemu_shfl(CUDAEMU_SHFL_UP, m, v, (int)d, w); }
inline unsigned int __ballot_sync(unsigned int m, int p) { return (unsigned int)cudaemu_warp_op(CUDAEMU_BALLOT, m, p != 0, 0, 32); }
inline int __any_sync(unsigned int m, int p) { return (int)cudaemu_warp_op(CUDAEMU_ANY, m, p != 0, 0, 32); }
inline int __all_sync(unsigned int m, int p) { return (int)cudaemu_warp_op(CUDAEMU_ALL, m, p != 0, 0, 32); }

// ---- atomics: blocks run on several OS threads, so these are real atomics -----------------------
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline float atomicAdd(float* p, float v) {
    float old, want;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do { want = old + v; } while (!__atomic_compare_exchange(p, &old, &want, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
inline double atomicAdd(double* p, double v) {
    double old, want;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do { want = old + v; } while (!__atomic_compare_exchange(p, &old, &want, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
inline int atomicMax(int* p, int v) { int o = __atomic_load_n(p, __ATOMIC_RELAXED); while (o < v && !__atomic_compare_exchange_n(p, &o, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} return o; }
inline int atomicMin(int* p, int v) { int o = __atomic_load_n(p, __ATOMIC_RELAXED); while (o > v && !__atomic_compare_exchange_n(p, &o, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} return o; }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline unsigned int atomicExch(unsigned int* p, unsigned int v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline float atomicExch(float* p, float v) { float r; __atomic_exchange(p, &v, &r, __ATOMIC_RELAXED); return r; }
inline int atomicCAS(int* p, int cmp, int v) { __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); return cmp; }
inline unsigned int atomicCAS(unsigned int* p, unsigned int cmp, unsigned int v) { __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); return cmp; }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v) { __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); return cmp; }

// ---- math: the libm subset NVRTC provides, as builtins (no <math.h>, see the top) ---------------
#define CUDAEMU_F1(name) inline float name(float x) { return __builtin_##name(x); }
#define CUDAEMU_D1(name) inline double name(double x) { return __builtin_##name(x); }
extern "C++" {
CUDAEMU_F1(expf) CUDAEMU_F1(exp2f) CUDAEMU_F1(logf) CUDAEMU_F1(log2f) CUDAEMU_F1(log1pf) CUDAEMU_F1(expm1f)
CUDAEMU_F1(sqrtf) CUDAEMU_F1(tanhf) CUDAEMU_F1(sinf) CUDAEMU_F1(cosf) CUDAEMU_F1(fabsf) CUDAEMU_F1(floorf)
CUDAEMU_F1(ceilf) CUDAEMU_F1(roundf) CUDAEMU_F1(truncf) CUDAEMU_F1(erff) CUDAEMU_F1(erfcf)
CUDAEMU_D1(exp) CUDAEMU_D1(log) CUDAEMU_D1(sqrt) CUDAEMU_D1(tanh) CUDAEMU_D1(fabs) CUDAEMU_D1(floor) CUDAEMU_D1(ceil)
CUDAEMU_D1(exp2) CUDAEMU_D1(log2) CUDAEMU_D1(log1p) CUDAEMU_D1(expm1) CUDAEMU_D1(sin) CUDAEMU_D1(cos) CUDAEMU_D1(round)
CUDAEMU_D1(trunc) CUDAEMU_D1(erf) CUDAEMU_D1(erfc)
inline double pow(double x, double y) { return __builtin_pow(x, y); }
inline double fmax(double a, double b) { return __builtin_fmax(a, b); }
inline double fmin(double a, double b) { return __builtin_fmin(a, b); }
inline double fma(double a, double b, double c) { return __builtin_fma(a, b, c); }
inline double rsqrt(double x) { return 1.0 / __builtin_sqrt(x); }
inline bool isnan(double x) { return __builtin_isnan(x); }
inline bool isinf(double x) { return __builtin_isinf(x); }
inline bool isfinite(double x) { return __builtin_isfinite(x); }
inline double __longlong_as_double(long long i) { return __builtin_bit_cast(double, i); }
inline long long __double_as_longlong(double d) { return __builtin_bit_cast(long long, d); }
}
#undef CUDAEMU_F1
#undef CUDAEMU_D1
inline float powf(float x, float y) { return __builtin_powf(x, y); }
inline float fmaxf(float a, float b) { return __builtin_fmaxf(a, b); }
inline float fminf(float a, float b) { return __builtin_fminf(a, b); }
inline float fmaf(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline float rsqrtf(float x) { return 1.0f / __builtin_sqrtf(x); }
inline float __expf(float x) { return __builtin_expf(x); }
inline float __logf(float x) { return __builtin_logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fmaf_rn(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline bool isnan(float x) { return __builtin_isnan(x); }
inline bool isinf(float x) { return __builtin_isinf(x); }
inline bool isfinite(float x) { return __builtin_isfinite(x); }
inline float __int_as_float(int i) { return __builtin_bit_cast(float, i); }
inline int __float_as_int(float f) { return __builtin_bit_cast(int, f); }
inline float __uint_as_float(unsigned int i) { return __builtin_bit_cast(float, i); }
inline unsigned int __float_as_uint(float f) { return __builtin_bit_cast(unsigned int, f); }
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline float max(float a, float b) { return __builtin_fmaxf(a, b); }
inline float min(float a, float b) { return __builtin_fminf(a, b); }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <class T> inline T __ldg(const T* p) { return *p; }

// ---- launch thunks ------------------------------------------------------------------------------
// nvrtcCompileProgram appends one `extern "C" void cudaemu_thunk_<kernel>(void** kernelParams)` per
// kernel it finds; these templates unpack cuLaunchKernel's array of pointers-to-arguments into a
// typed call and describe the parameters (sizes, which are pointers) for launch-time checks.
namespace cudaemu_detail {
template <unsigned... I> struct seq {};
template <unsigned N, unsigned... I> struct make_seq : make_seq<N - 1, N - 1, I...> {};
template <unsigned... I> struct make_seq<0, I...> { using type = seq<I...>; };
template <class T> struct is_ptr { static constexpr unsigned char value = 0; };
template <class T> struct is_ptr<T*> { static constexpr unsigned char value = 1; };
template <class... A> struct params {
    static constexpr unsigned count = sizeof...(A);
    static constexpr unsigned char sizes[sizeof...(A) + 1] = {(unsigned char)sizeof(A)..., 0};
    static constexpr unsigned char pointers[sizeof...(A) + 1] = {is_ptr<A>::value..., 0};
};
template <class... A, unsigned... I>
inline void call(void (*f)(A...), void** p, seq<I...>) { f(*static_cast<A*>(p[I])...); }
template <class... A>
inline void invoke(void (*f)(A...), void** p) { call(f, p, typename make_seq<sizeof...(A)>::type{}); }
template <class... A> constexpr params<A...> describe(void (*)(A...)) { return {}; }
} // namespace cudaemu_detail
#endif // CUDAEMU_RUNTIME
