// kernels.cu: every custom CUDA kernel of Sdp, in one NVRTC-compiled source.
//
// Compiled two ways (see ../shared/reference/cuda-emulation.md and docs/kernels.md):
//   - by NVRTC for the GPU (no host headers, nothing NVRTC does not provide built in);
//   - as host C++ by the emulated device, whose header defines CUDAEMU and supplies threadIdx/blockIdx/...,
//     __syncthreads, warp shuffles, atomicAdd and the math functions.
// Rules kept here: every kernel is extern "C"; no INFINITY (use __int_as_float(0x7f800000)); dynamic shared
// memory only through the one fixed declaration below; no inline PTX (none is needed yet); no double atomics
// and no double warp shuffles (double reductions go through shared memory), so both paths see the same code.
//
// The CPU backend (src/Sdp.Engine/Backends/Cpu/CpuBackend.*.cs, src/Sdp.Kernels/Cpu/MaskedGemm.cs) is the
// specification: each kernel's comment names the IBackend method (or MaskedGemm / sync step) it implements.
// Tensors are contiguous and row-major; element counts are 64-bit (long long), GEMM dims are int.
// Index tensors are int32, strictly increasing (held units) unless a kernel says otherwise; they are not
// bounds-checked here (the host validated them when it set Tensor.Held).
//
// Sections
//   0. Common helpers (index maps, block reductions)
//   1. SDP: index-aware tiled SGEMM (row-/column-masked forward, input gradients, compact weight gradients)
//        sgemm_gather_nn / _nt / _tn / _tt           generic: C = alpha op(A[maps]) op(B[maps]) + beta C[maps]
//        sdp_linear_rows_forward                     y(M,K)   = x · W[idx,:]ᵀ
//        sdp_linear_cols_forward                     y(M,N)   = x' · W[:,idx]ᵀ    (x' compact or x[:,idx])
//        sdp_linear_rows_backward_input              dx(M,in) (+)= dy' · W[idx,:]
//        sdp_linear_cols_backward_input              dx'(M,K) (+)= dy · W[:,idx]  (dx' compact or dx[:,idx])
//        sdp_weight_grad_rows                        dW(K,in) (+)= dy[:,idx]ᵀ · x  (MatMulWeightGradHeld axis 0)
//        sdp_weight_grad_cols                        dW(out,K) (+)= dyᵀ · x[:,idx] (MatMulWeightGradHeld axis 1)
//        sdp_weight_grad_rows_f64, _cols_f64         the same two in float64 (MatMulWeightGradHeld, float64)
//   2. SDP: held slices, buckets and holder-count normalisation
//        sdp_slice_copy_{f32,f64,i32,i64}            GatherHeld, ScatterHeld, ReadSlice, WriteSlice, bucket
//                                                    pack / unpack (÷|H|), IndexSelect (int32 indices)
//        sdp_masked_average_f32                      MaskedGemm.MaskedAverage (W workers on one device)
//   3. Reductions
//        sdp_sumsq_partial_{f32,f64}, sdp_sumsq_finish   AddSumOfSquares (float64, two passes, deterministic)
//   4. Elementwise
//        fill_*, cast_*_*, unary_*, unary_backward_*, binary_*, binary_scalar_*, binary_bcast_*
//   5. Fused optimizer updates
//        sgd_step_*, sgd_step_held_*, adamw_step_*, adamw_step_held_*
//   6. Softmax and fused cross-entropy
//        softmax_forward_*, softmax_backward_*, cross_entropy_forward_*, cross_entropy_backward_*
//  10. Shape, indexing and axis reductions
//        permute_*                                   Permute (any dtype, =|+=)
//        sum_to_shape_*, sum_to_shape_partial_*, sum_to_shape_finish_*   SumToShape
//        reduce_axis_*, reduce_axis_block_*, max_axis_backward_*         ReduceAxis, MaxAxisBackward
//        index_select_*, index_add_*                 IndexSelect, IndexAdd (int32 or int64 indices, any dtype)

extern __shared__ __align__(16) unsigned char dyn_smem[];

// NVRTC and the emulator provide __launch_bounds__; the clang-14 compile check's prelude does not.
#if defined(SDP_CLANG_CHECK) && !defined(__launch_bounds__)
#define __launch_bounds__(...) __attribute__((launch_bounds(__VA_ARGS__)))
#endif

// ============================================================================================================
// 0. Common helpers
// ============================================================================================================

#define SDP_POS_INF_F __int_as_float(0x7f800000)

// Threads per block of every 1-D kernel (elementwise, copies, optimizers, reduction passes). Block
// reductions below assume blockDim.x is a power of two no larger than SDP_MAX_THREADS.
#define SDP_THREADS 256
#define SDP_MAX_THREADS 1024

// Position k through an optional index map: map[k], or base + k when map is null.
__device__ __forceinline__ long long sdp_map(const int* map, long long k, long long base)
{
    return map ? (long long)map[k] : base + k;
}

// First global thread index and the grid stride of a 1-D grid-stride loop.
__device__ __forceinline__ long long sdp_gtid() { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ long long sdp_gstride() { return (long long)gridDim.x * blockDim.x; }

// Per-type math, overloaded so the templates below need no float/double branches.
__device__ __forceinline__ float sdp_exp(float x) { return expf(x); }
__device__ __forceinline__ double sdp_exp(double x) { return exp(x); }
__device__ __forceinline__ float sdp_log(float x) { return logf(x); }
__device__ __forceinline__ double sdp_log(double x) { return log(x); }
__device__ __forceinline__ float sdp_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double sdp_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float sdp_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double sdp_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float sdp_pow(float x, float p) { return powf(x, p); }
__device__ __forceinline__ double sdp_pow(double x, double p) { return pow(x, p); }

// Sum over the block of one double per thread, through shared memory in a fixed tree order (no double
// shuffles, no atomics): deterministic for a given blockDim. Every thread must call it; the result is valid in
// thread 0. blockDim.x must be a power of two <= SDP_MAX_THREADS.
__device__ double sdp_block_sum_double(double v)
{
    __shared__ double red[SDP_MAX_THREADS];
    red[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1)
    {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    double r = red[0];
    __syncthreads(); // red may be reused by the caller's next reduction
    return r;
}

// Device error flag (CudaBackend.ErrorFlag): int32[4] = {code, flat index, value, limit}, read at the next host wait.
// The first reporter claims the flag (atomicCAS on the code) and fills in the rest, so one bad element is named.
#define SDP_ERR_EMBEDDING_ID 1
#define SDP_ERR_ROPE_POSITION 2
__device__ void sdp_raise(int* flag, int code, long long index, long long value, long long limit)
{
    if (atomicCAS(flag, 0, code) == 0)
    {
        flag[1] = (int)index;
        flag[2] = (int)value;
        flag[3] = (int)limit;
    }
}

// Warp-level float reductions (full mask: every lane of the warp must call them).
__device__ __forceinline__ float sdp_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float sdp_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide float sum / max, the result broadcast to every thread (all threads must call; blockDim.x a
// multiple of 32, at most 1024). Fixed order: deterministic for a given blockDim.
__device__ float sdp_block_sum_float(float v)
{
    __shared__ float part[32];
    v = sdp_warp_sum(v);
    unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    unsigned nw = blockDim.x >> 5;
    float r = lane < nw ? part[lane] : 0.0f;
    r = sdp_warp_sum(r);
    __syncthreads();
    return r;
}

__device__ float sdp_block_max_float(float v)
{
    __shared__ float part[32];
    v = sdp_warp_max(v);
    unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    unsigned nw = blockDim.x >> 5;
    float r = lane < nw ? part[lane] : -SDP_POS_INF_F;
    r = sdp_warp_max(r);
    __syncthreads();
    return r;
}

// ============================================================================================================
// 1. SDP: index-aware tiled SGEMM
// ============================================================================================================
//
// C[cm(m), cn(n)] = alpha · Σ_k a(m, k) · b(k, n) + beta · C[cm(m), cn(n)]     (m < M, n < N, k < K)
//   a(m, k) = A[am(m) * lda + ak(k)]          (TA false: A stored M x lda)
//           = A[ak(k) * lda + am(m)]          (TA true:  A stored K x lda, i.e. op(A) = Aᵀ)
//   b(k, n) = B[bk(k) * ldb + bn(n)]          (TB false: B stored K x ldb)
//           = B[bn(n) * ldb + bk(k)]          (TB true:  B stored N x ldb, i.e. op(B) = Bᵀ)
// Every map (am, ak, bk, bn, cm, cn) is an optional int32 index array; null means the identity. This is
// IBackend.MatMul's convention (transA/transB) with CUTLASS-style gather/scatter added: held rows or
// columns are read through the index array inside the tile loads, so no gathered copy is materialised.
// beta == 0 means C is not read (outputs may be poisoned). Templated on the element type T: float (fp32
// accumulation; every sgemm_* / sdp_linear_* kernel) or double (the _f64 weight gradients); each output's sum
// runs over k in increasing order (deterministic, no atomics). Batched over blockIdx.z with element strides
// (a stride of 0 shares an operand across the batch); maps apply within each batch item.
//
// Tiling: 128 x 128 output tile per block of 256 threads, K step 8, each thread an 8 x 8 register block at
// rows ty + 16 i and columns tx + 16 j (interleaved, so shared-memory reads are conflict-free and the
// epilogue's stores are coalesced). Tiles are staged through registers: the next K slice is loaded from
// global memory while the current one is multiplied. Out-of-range rows/columns/k load as 0 and are not
// stored, so any M, N, K (including 0) is handled.
// Launch: grid (ceil(N/128), ceil(M/128), batch), block 256, no dynamic shared memory (8.4 KiB static for
// float, 16.9 KiB for double).

#define SDP_GEMM_BM 128
#define SDP_GEMM_BN 128
#define SDP_GEMM_BK 8
#define SDP_GEMM_THREADS 256
#define SDP_GEMM_PAD 4

template <typename T, bool TA, bool TB>
__device__ __forceinline__ void sdp_gemm_body(
    int M, int N, int K, T alpha,
    const T* __restrict__ A, long long lda, long long strideA, const int* __restrict__ am, const int* __restrict__ ak,
    const T* __restrict__ B, long long ldb, long long strideB, const int* __restrict__ bk, const int* __restrict__ bn,
    T beta, T* C, long long ldc, long long strideC, const int* __restrict__ cm, const int* __restrict__ cn)
{
    __shared__ T As[SDP_GEMM_BK][SDP_GEMM_BM + SDP_GEMM_PAD];
    __shared__ T Bs[SDP_GEMM_BK][SDP_GEMM_BN + SDP_GEMM_PAD];

    const int tid = threadIdx.x;
    const int tx = tid & 15, ty = tid >> 4;
    const int m0 = blockIdx.y * SDP_GEMM_BM, n0 = blockIdx.x * SDP_GEMM_BN;
    const long long z = blockIdx.z;
    A += z * strideA;
    B += z * strideB;
    C += z * strideC;

    // Load assignment. K-contiguous operand (A when !TA, B when TB): 8 consecutive threads read 8 consecutive k
    // of one row, 32 rows per pass, 4 passes. Row-contiguous operand (A when TA, B when !TB): 128 consecutive
    // threads read 128 consecutive rows of one k, 2 k per pass, 4 passes.
    const int kc_k = tid & 7, kc_r = tid >> 3;     // K-contiguous: k in tile, first row
    const int rc_r = tid & 127, rc_k = tid >> 7;   // row-contiguous: row in tile, first k

    T ra[4], rb[4];
    T acc[8][8];
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++) acc[i][j] = (T)0;

    // Global -> registers for the K slice starting at k0.
    auto load = [&](int k0) {
        for (int p = 0; p < 4; p++)
        {
            int r, k;
            if (!TA) { r = kc_r + 32 * p; k = kc_k; } else { r = rc_r; k = rc_k + 2 * p; }
            int m = m0 + r, kk = k0 + k;
            T v = (T)0;
            if (m < M && kk < K)
            {
                long long mi = sdp_map(am, m, 0), ki = sdp_map(ak, kk, 0);
                v = TA ? A[ki * lda + mi] : A[mi * lda + ki];
            }
            ra[p] = v;
        }
        for (int p = 0; p < 4; p++)
        {
            int r, k;
            if (TB) { r = kc_r + 32 * p; k = kc_k; } else { r = rc_r; k = rc_k + 2 * p; }
            int n = n0 + r, kk = k0 + k;
            T v = (T)0;
            if (n < N && kk < K)
            {
                long long ni = sdp_map(bn, n, 0), ki = sdp_map(bk, kk, 0);
                v = TB ? B[ni * ldb + ki] : B[ki * ldb + ni];
            }
            rb[p] = v;
        }
    };

    if (K > 0) load(0);
    for (int k0 = 0; k0 < K; k0 += SDP_GEMM_BK)
    {
        for (int p = 0; p < 4; p++)
        {
            if (!TA) As[kc_k][kc_r + 32 * p] = ra[p]; else As[rc_k + 2 * p][rc_r] = ra[p];
            if (TB) Bs[kc_k][kc_r + 32 * p] = rb[p]; else Bs[rc_k + 2 * p][rc_r] = rb[p];
        }
        __syncthreads();
        if (k0 + SDP_GEMM_BK < K) load(k0 + SDP_GEMM_BK);
        for (int kk = 0; kk < SDP_GEMM_BK; kk++)
        {
            T a[8], b[8];
            for (int i = 0; i < 8; i++) a[i] = As[kk][ty + 16 * i];
            for (int j = 0; j < 8; j++) b[j] = Bs[kk][tx + 16 * j];
            for (int i = 0; i < 8; i++)
                for (int j = 0; j < 8; j++) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }

    for (int i = 0; i < 8; i++)
    {
        int m = m0 + ty + 16 * i;
        if (m >= M) continue;
        T* crow = C + sdp_map(cm, m, 0) * ldc;
        for (int j = 0; j < 8; j++)
        {
            int n = n0 + tx + 16 * j;
            if (n >= N) continue;
            T* c = crow + sdp_map(cn, n, 0);
            T v = alpha * acc[i][j];
            if (beta != (T)0) v += beta * *c;
            *c = v;
        }
    }
}

#define SDP_GEMM_GENERIC(NAME, TA, TB)                                                                                  \
    extern "C" __global__ void __launch_bounds__(SDP_GEMM_THREADS) NAME(                                               \
        int M, int N, int K, float alpha,                                                                              \
        const float* A, long long lda, long long strideA, const int* am, const int* ak,                                \
        const float* B, long long ldb, long long strideB, const int* bk, const int* bn,                                \
        float beta, float* C, long long ldc, long long strideC, const int* cm, const int* cn)                          \
    {                                                                                                                  \
        sdp_gemm_body<float, TA, TB>(M, N, K, alpha, A, lda, strideA, am, ak, B, ldb, strideB, bk, bn, beta, C, ldc, strideC, \
                              cm, cn);                                                                                 \
    }

// sgemm_gather_nn: C = alpha·A[am,ak]·B[bk,bn] + beta·C          A (M,K), B (K,N)       IBackend.MatMul (no trans)
// sgemm_gather_nt: C = alpha·A[am,ak]·B[bn,bk]ᵀ + beta·C         A (M,K), B (N,K)       IBackend.MatMul (transB)
// sgemm_gather_tn: C = alpha·A[ak,am]ᵀ·B[bk,bn] + beta·C         A (K,M), B (K,N)       IBackend.MatMul (transA)
// sgemm_gather_tt: C = alpha·A[ak,am]ᵀ·B[bn,bk]ᵀ + beta·C        A (K,M), B (N,K)       IBackend.MatMul (both)
// All maps may be null (then this is a plain batched SGEMM, usable for MatMul where cuBLAS is not wanted).
SDP_GEMM_GENERIC(sgemm_gather_nn, false, false)
SDP_GEMM_GENERIC(sgemm_gather_nt, false, true)
SDP_GEMM_GENERIC(sgemm_gather_tn, true, false)
SDP_GEMM_GENERIC(sgemm_gather_tt, true, true)

// Row-masked Linear forward (output units held; MaskedGemm.SgemmGatherB):
//   y (M, K) = x (M, inDim) · W[idx, :]ᵀ (+ beta·y),  W (outDim, inDim), idx (K) held output rows.
//   Column j of y is unit idx[j]. Launch: grid (ceil(K/128), ceil(M/128)), block 256.
extern "C" __global__ void __launch_bounds__(SDP_GEMM_THREADS) sdp_linear_rows_forward(
    const float* x, const float* w, const int* idx, float* y, int M, int inDim, int K, float beta)
{
    sdp_gemm_body<float, false, true>(M, K, inDim, 1.0f, x, inDim, 0, nullptr, nullptr, w, inDim, 0, nullptr, idx,
                               beta, y, K, 0, nullptr, nullptr);
}

// Column-masked Linear forward (input units held; MaskedGemm.SgemmGatherK):
//   y (M, N) = x' · W[:, idx]ᵀ (+ beta·y),  W (N, wCols), idx (K) held input columns, and
//   x' = x (M, K) compact when xFull == 0, or x[:, idx] of a full x (M, wCols) when xFull != 0.
//   Launch: grid (ceil(N/128), ceil(M/128)), block 256.
extern "C" __global__ void __launch_bounds__(SDP_GEMM_THREADS) sdp_linear_cols_forward(
    const float* x, const float* w, const int* idx, float* y, int M, int N, int wCols, int K, int xFull, float beta)
{
    sdp_gemm_body<float, false, true>(M, N, K, 1.0f, x, xFull ? wCols : K, 0, nullptr, xFull ? idx : nullptr,
                               w, wCols, 0, idx, nullptr, beta, y, N, 0, nullptr, nullptr);
}

// Input gradient of the row-masked Linear:
//   dx (M, inDim) = dy' (M, K) · W[idx, :] + beta·dx   (beta 1: the += contract), W (outDim, inDim).
//   dy' is compact (M, K) when dyFull == 0, or dy[:, idx] of a full dy (M, outDim) when dyFull != 0 (backward
//   masking feeding only held units' paths). Launch: grid (ceil(inDim/128), ceil(M/128)), block 256.
extern "C" __global__ void __launch_bounds__(SDP_GEMM_THREADS) sdp_linear_rows_backward_input(
    const float* dy, const float* w, const int* idx, float* dx, int M, int outDim, int inDim, int K, int dyFull, float beta)
{
    sdp_gemm_body<float, false, false>(M, inDim, K, 1.0f, dy, dyFull ? outDim : K, 0, nullptr, dyFull ? idx : nullptr,
                                w, inDim, 0, idx, nullptr, beta, dx, inDim, 0, nullptr, nullptr);
}

// Input gradient of the column-masked Linear:
//   dx' = dy (M, N) · W[:, idx] + beta·dx',  W (N, wCols);  dx' is compact (M, K) when dxFull == 0, or the held
//   columns dx[:, idx] of a full dx (M, wCols) when dxFull != 0 (other columns untouched).
//   Launch: grid (ceil(K/128), ceil(M/128)), block 256.
extern "C" __global__ void __launch_bounds__(SDP_GEMM_THREADS) sdp_linear_cols_backward_input(
    const float* dy, const float* w, const int* idx, float* dx, int M, int N, int wCols, int K, int dxFull, float beta)
{
    sdp_gemm_body<float, false, false>(M, K, N, 1.0f, dy, N, 0, nullptr, nullptr, w, wCols, 0, nullptr, idx,
                                beta, dx, dxFull ? wCols : K, 0, nullptr, dxFull ? idx : nullptr);
}

// Compact weight gradient, held output rows (IBackend.MatMulWeightGradHeld axis 0 with dyFull = 1, beta = 1;
// MaskedGemm.SgemmWeightGradRows with dwFull = false):
//   dW (K, inDim) = dy'ᵀ · x (tokens, inDim) + beta·dW,  dy' = dy[:, idx] of a full dy (tokens, outDim) when
//   dyFull != 0, else a compact dy (tokens, K). Launch: grid (ceil(inDim/128), ceil(K/128)), block 256.
// Compact weight gradient, held input columns (IBackend.MatMulWeightGradHeld axis 1 with xFull = 1, beta = 1;
// MaskedGemm.SgemmWeightGradCols with dwFull = false):
//   dW (outDim, K) = dyᵀ (tokens, outDim)ᵀ · x' + beta·dW,  x' = x[:, idx] of a full x (tokens, inDim) when
//   xFull != 0, else a compact x (tokens, K). Launch: grid (ceil(K/128), ceil(outDim/128)), block 256.
// sdp_weight_grad_rows / _cols are float32 (fp32 accumulation); sdp_weight_grad_rows_f64 / _cols_f64 run the same
// tiled body in float64 (fp64 accumulation, k increasing; 16.9 KiB static shared memory): the float64 path of
// MatMulWeightGradHeld (gradient checks), exact up to summation order, with no gathered copy.
template <typename T>
__device__ __forceinline__ void sdp_weight_grad_rows_body(const T* dy, const T* x, const int* idx, T* dw, int tokens, int outDim,
                                                          int inDim, int K, int dyFull, T beta)
{
    sdp_gemm_body<T, true, false>(K, inDim, tokens, (T)1, dy, dyFull ? outDim : K, 0, dyFull ? idx : nullptr, nullptr,
                                  x, inDim, 0, nullptr, nullptr, beta, dw, inDim, 0, nullptr, nullptr);
}

template <typename T>
__device__ __forceinline__ void sdp_weight_grad_cols_body(const T* dy, const T* x, const int* idx, T* dw, int tokens, int outDim,
                                                          int inDim, int K, int xFull, T beta)
{
    sdp_gemm_body<T, true, false>(outDim, K, tokens, (T)1, dy, outDim, 0, nullptr, nullptr,
                                  x, xFull ? inDim : K, 0, nullptr, xFull ? idx : nullptr, beta, dw, K, 0, nullptr, nullptr);
}

extern "C" __global__ void __launch_bounds__(SDP_GEMM_THREADS) sdp_weight_grad_rows(
    const float* dy, const float* x, const int* idx, float* dw, int tokens, int outDim, int inDim, int K, int dyFull, float beta)
{
    sdp_weight_grad_rows_body<float>(dy, x, idx, dw, tokens, outDim, inDim, K, dyFull, beta);
}

extern "C" __global__ void __launch_bounds__(SDP_GEMM_THREADS) sdp_weight_grad_cols(
    const float* dy, const float* x, const int* idx, float* dw, int tokens, int outDim, int inDim, int K, int xFull, float beta)
{
    sdp_weight_grad_cols_body<float>(dy, x, idx, dw, tokens, outDim, inDim, K, xFull, beta);
}

extern "C" __global__ void __launch_bounds__(SDP_GEMM_THREADS) sdp_weight_grad_rows_f64(
    const double* dy, const double* x, const int* idx, double* dw, int tokens, int outDim, int inDim, int K, int dyFull, double beta)
{
    sdp_weight_grad_rows_body<double>(dy, x, idx, dw, tokens, outDim, inDim, K, dyFull, beta);
}

extern "C" __global__ void __launch_bounds__(SDP_GEMM_THREADS) sdp_weight_grad_cols_f64(
    const double* dy, const double* x, const int* idx, double* dw, int tokens, int outDim, int inDim, int K, int xFull, double beta)
{
    sdp_weight_grad_cols_body<double>(dy, x, idx, dw, tokens, outDim, inDim, K, xFull, beta);
}

// ============================================================================================================
// 2. SDP: held slices, buckets and holder-count normalisation
// ============================================================================================================
//
// sdp_slice_copy_<T>: viewing src as (outer, srcN, inner) and dst as (outer, dstN, inner),
//   for o < outer, k < K, i < inner:
//     dst[o, dmap(k), i] (= | +=) src[o, smap(k), i] / divisor
//   with smap(k) = srcMap ? srcMap[k] : srcStart + k and dmap(k) = dstMap ? dstMap[k] : dstStart + k.
//   The divisor is *divisorPtr when divisorPtr is non-null (a device scalar, e.g. the holder count |H| that
//   HolderGroupedSync keeps on the device), else the divisor argument; 1 divides nothing (exact).
//   It is IEEE division (v / |H|), as HolderGroupedSync does with Binary(Div) after the all-reduce, not a
//   multiplication by 1/|H|, so results match the CPU bit for bit when the sums match.
// Implements:
//   GatherHeld(full, axis, idx, compact, acc):  srcMap = idx, srcN = N, dstN = K, dstStart = 0, accumulate = acc
//   ScatterHeld(compact, axis, idx, full):      dstMap = idx, srcN = K, dstN = N, srcStart = 0, accumulate = 0
//   ReadSlice(src, axis, start, dst, acc):      srcStart = start, dstStart = 0, K = dst.Shape[axis]
//   WriteSlice(src, axis, start, dst, acc):     srcStart = 0, dstStart = start, K = src.Shape[axis]
//   bucket pack (SyncBuckets.Pack):             ReadSlice of the (full or compact) gradient into the bucket view
//   bucket unpack with ÷|H| fused:              WriteSlice with divisorPtr = |H| (replaces Binary(Div) + Unpack)
//   compact gradient -> full-size bucket / full gradient (+ ÷|H|): dstMap = idx; and the reverse with srcMap = idx
//   IndexSelect with int32 indices (no validation here; repeated indices are fine when reading).
// Scatters (dstMap) need distinct indices when accumulating; held indices are strictly increasing.
// Launch: 1-D grid-stride, block 256, grid min(ceil(outer·K·inner / 256), 65535). The integer int variants
// copy bit patterns (no divisor).

template <typename T>
__device__ __forceinline__ void sdp_slice_copy_body(
    const T* __restrict__ src, T* __restrict__ dst, const int* __restrict__ srcMap, const int* __restrict__ dstMap,
    long long outer, long long srcN, long long dstN, long long K, long long inner, long long srcStart, long long dstStart,
    int accumulate, T divisor, const T* divisorPtr, bool divide)
{
    long long ki = K * inner, total = outer * ki;
    if (total == 0) return;
    T div = divide ? (divisorPtr ? *divisorPtr : divisor) : (T)1;
    bool scale = divide && div != (T)1;
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride())
    {
        long long o = e / ki, rem = e - o * ki;
        long long k = rem / inner, i = rem - k * inner;
        T v = src[(o * srcN + sdp_map(srcMap, k, srcStart)) * inner + i];
        if (scale) v = v / div;
        T* d = dst + (o * dstN + sdp_map(dstMap, k, dstStart)) * inner + i;
        *d = accumulate ? *d + v : v;
    }
}

#define SDP_SLICE_COPY_FLOAT(SFX, T)                                                                                   \
    extern "C" __global__ void sdp_slice_copy_##SFX(const T* src, T* dst, const int* srcMap, const int* dstMap,      \
        long long outer, long long srcN, long long dstN, long long K, long long inner, long long srcStart,             \
        long long dstStart, int accumulate, T divisor, const T* divisorPtr)                                            \
    {                                                                                                                  \
        sdp_slice_copy_body<T>(src, dst, srcMap, dstMap, outer, srcN, dstN, K, inner, srcStart, dstStart, accumulate,  \
                               divisor, divisorPtr, true);                                                             \
    }

#define SDP_SLICE_COPY_INT(SFX, T)                                                                                     \
    extern "C" __global__ void sdp_slice_copy_##SFX(const T* src, T* dst, const int* srcMap, const int* dstMap,      \
        long long outer, long long srcN, long long dstN, long long K, long long inner, long long srcStart,             \
        long long dstStart, int accumulate)                                                                            \
    {                                                                                                                  \
        sdp_slice_copy_body<T>(src, dst, srcMap, dstMap, outer, srcN, dstN, K, inner, srcStart, dstStart, accumulate,  \
                               (T)1, nullptr, false);                                                                  \
    }

SDP_SLICE_COPY_FLOAT(f32, float)
SDP_SLICE_COPY_FLOAT(f64, double)
SDP_SLICE_COPY_INT(i32, int)
SDP_SLICE_COPY_INT(i64, long long)

// sdp_masked_average_f32: holder-masked average of W workers' gradients that live on one device
// (MaskedGemm.MaskedAverage; the simulated-workers-on-one-GPU form of the bucket all-reduce + ÷|H|).
//   grads: device array of W pointers, each a full (outer, units, inner) float tensor;
//   held:  W x units bytes, held[w * units + u] != 0 when worker w holds unit u;
//   dst[o, u, i] = (Σ_{w in order, held[w,u]} grads[w][o, u, i]) · (1 / count(u)), 0 where count(u) == 0.
//   Unheld entries of a worker's gradient are never read. Rows units: outer = 1, inner = cols; column units:
//   outer = rows, inner = 1. Multiplies by the float reciprocal as MaskedAverage does.
//   Launch: 1-D grid-stride, block 256, grid min(ceil(outer·units·inner / 256), 65535).
extern "C" __global__ void sdp_masked_average_f32(const float* const* grads, const unsigned char* held, int workers,
                                                  long long outer, long long units, long long inner, float* dst)
{
    long long ui = units * inner, total = outer * ui;
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride())
    {
        long long u = (e % ui) / inner;
        float s = 0.0f;
        int count = 0;
        for (int w = 0; w < workers; w++)
        {
            if (held[(long long)w * units + u])
            {
                s += grads[w][e];
                count++;
            }
        }
        dst[e] = count == 0 ? 0.0f : s * (1.0f / (float)count);
    }
}

// ============================================================================================================
// 3. Reductions
// ============================================================================================================
//
// AddSumOfSquares(x, divisor, total): total (float64 scalar on the device) += (Σ x²) / divisor, Σ in float64.
// Two passes, no atomics, deterministic for a given grid size:
//   sdp_sumsq_partial_<T>(x, n, partials): block b writes partials[b] = Σ over its grid-stride elements of
//     (double)x², summed per thread in index order, then over the block in a fixed shared-memory tree.
//     Launch: block 256, grid G = min(ceil(n / 256), 1024) (chosen from n alone, so the result does not depend
//     on the GPU), partials a float64 scratch of >= G elements (1024 doubles suffice: an engine buffer).
//   sdp_sumsq_finish(partials, count, divisor, total): one block of 256: total[0] += (Σ partials) / divisor.
// The two launches go on the same stream; nothing is read back to the host. The CPU sums in index order, so
// results agree to float64 rounding (about 1e-15 relative), not bitwise.

template <typename T>
__device__ __forceinline__ void sdp_sumsq_partial_body(const T* __restrict__ x, long long n, double* partials)
{
    double acc = 0.0;
    for (long long e = sdp_gtid(); e < n; e += sdp_gstride())
    {
        double v = (double)x[e];
        acc += v * v;
    }
    double s = sdp_block_sum_double(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

extern "C" __global__ void sdp_sumsq_partial_f32(const float* x, long long n, double* partials) { sdp_sumsq_partial_body<float>(x, n, partials); }
extern "C" __global__ void sdp_sumsq_partial_f64(const double* x, long long n, double* partials) { sdp_sumsq_partial_body<double>(x, n, partials); }

extern "C" __global__ void sdp_sumsq_finish(const double* partials, int count, double divisor, double* total)
{
    double acc = 0.0;
    for (int b = threadIdx.x; b < count; b += blockDim.x) acc += partials[b];
    double s = sdp_block_sum_double(acc);
    if (threadIdx.x == 0) total[0] += s / divisor;
}

// ============================================================================================================
// 4. Elementwise
// ============================================================================================================
// All 1-D grid-stride: block 256, grid min(ceil(n / 256), 65535). Suffixes: f32, f64, i32, i64.

// fill_<T>(dst, value, n): dst[i] = value (IBackend.Fill; the host converts value to the dtype).
#define SDP_FILL(SFX, T)                                                                                               \
    extern "C" __global__ void fill_##SFX(T* dst, T value, long long n)                                               \
    {                                                                                                                  \
        for (long long e = sdp_gtid(); e < n; e += sdp_gstride()) dst[e] = value;                                      \
    }
SDP_FILL(f32, float)
SDP_FILL(f64, double)
SDP_FILL(i32, int)
SDP_FILL(i64, long long)

// cast_<S>_<D>(src, dst, n): dst[i] = (D)(double)src[i] (IBackend.Cast; through float64 as the CPU does, so
// int64 -> float32 rounds the same way; float -> int truncates toward zero). cast_x_x is a plain copy
// (IBackend.Copy within a device).
#define SDP_CAST(SS, S, DS, D)                                                                                         \
    extern "C" __global__ void cast_##SS##_##DS(const S* src, D* dst, long long n)                                    \
    {                                                                                                                  \
        for (long long e = sdp_gtid(); e < n; e += sdp_gstride()) dst[e] = (D)(double)src[e];                          \
    }
#define SDP_CAST_FROM(SS, S)                                                                                           \
    SDP_CAST(SS, S, f32, float)                                                                                        \
    SDP_CAST(SS, S, f64, double)                                                                                       \
    SDP_CAST(SS, S, i32, int)                                                                                          \
    SDP_CAST(SS, S, i64, long long)
SDP_CAST_FROM(f32, float)
SDP_CAST_FROM(f64, double)
SDP_CAST_FROM(i32, int)
SDP_CAST_FROM(i64, long long)

// Unary op codes: the numeric values of Sdp.Engine.Backends.UnaryOp.
#define SDP_U_NEG 0
#define SDP_U_EXP 1
#define SDP_U_LOG 2
#define SDP_U_SQRT 3
#define SDP_U_RSQRT 4
#define SDP_U_POW 5
#define SDP_U_RELU 6
#define SDP_U_SILU 7
#define SDP_U_GELU 8
#define SDP_U_TANH 9
#define SDP_U_SIGMOID 10
#define SDP_U_SCALE 11
#define SDP_U_ADDSCALAR 12

template <typename T>
__device__ __forceinline__ T sdp_gelu_tanh(T x)
{
    const T c = (T)0.7978845608028654; // sqrt(2/pi)
    T inner = c * (x + (T)0.044715 * x * x * x);
    return (T)0.5 * x * ((T)1 + sdp_tanh(inner));
}

template <typename T>
__device__ __forceinline__ T sdp_gelu_tanh_grad(T x)
{
    const T c = (T)0.7978845608028654, k = (T)0.044715;
    T th = sdp_tanh(c * (x + k * x * x * x));
    T sech2 = (T)1 - th * th;
    return (T)0.5 * ((T)1 + th) + (T)0.5 * x * sech2 * c * ((T)1 + (T)3 * k * x * x);
}

template <typename T>
__device__ __forceinline__ T sdp_unary(int op, T x, T p)
{
    switch (op)
    {
    case SDP_U_NEG: return -x;
    case SDP_U_EXP: return sdp_exp(x);
    case SDP_U_LOG: return sdp_log(x);
    case SDP_U_SQRT: return sdp_sqrt(x);
    case SDP_U_RSQRT: return (T)1 / sdp_sqrt(x);
    case SDP_U_POW: return sdp_pow(x, p);
    case SDP_U_RELU: return x != x ? x : (x > (T)0 ? x : (T)0); // NaN propagates, -0 -> +0 (TensorPrimitives.Max)
    case SDP_U_SILU: return x / ((T)1 + sdp_exp(-x));
    case SDP_U_GELU: return sdp_gelu_tanh(x);
    case SDP_U_TANH: return sdp_tanh(x);
    case SDP_U_SIGMOID: return (T)1 / ((T)1 + sdp_exp(-x));
    case SDP_U_SCALE: return x * p;
    default: return x + p; // SDP_U_ADDSCALAR
    }
}

// d op(x) / dx, from x and the forward output y, as CpuBackend.UnaryBackward computes it.
template <typename T>
__device__ __forceinline__ T sdp_unary_grad(int op, T x, T y, T p)
{
    switch (op)
    {
    case SDP_U_NEG: return (T)-1;
    case SDP_U_EXP: return y;
    case SDP_U_LOG: return (T)1 / x;
    case SDP_U_SQRT: return (T)0.5 / y;
    case SDP_U_RSQRT: return (T)-0.5 * y / x;
    case SDP_U_POW: return p * sdp_pow(x, p - (T)1);
    case SDP_U_RELU: return x > (T)0 ? (T)1 : (T)0;
    case SDP_U_SILU: { T s = (T)1 / ((T)1 + sdp_exp(-x)); return s * ((T)1 + x * ((T)1 - s)); }
    case SDP_U_GELU: return sdp_gelu_tanh_grad(x);
    case SDP_U_TANH: return (T)1 - y * y;
    case SDP_U_SIGMOID: return y * ((T)1 - y);
    case SDP_U_SCALE: return p;
    default: return (T)1; // SDP_U_ADDSCALAR
    }
}

// unary_<T>(op, x, y, n, p): y = op(x; p), y may alias x (IBackend.Unary; op = UnaryOp's value).
// unary_backward_<T>(op, x, y, dy, dx, n, p): dx += dy · op'(x) (IBackend.UnaryBackward). For Relu the CPU
// adds dy only where x > 0, which this equals (dy · 0 = 0 for finite dy; a NaN/inf dy at x <= 0 is the one
// difference: the CPU skips it, here it becomes NaN). Kept exact by the relu special case below.
#define SDP_UNARY(SFX, T)                                                                                              \
    extern "C" __global__ void unary_##SFX(int op, const T* x, T* y, long long n, T p)                               \
    {                                                                                                                  \
        for (long long e = sdp_gtid(); e < n; e += sdp_gstride()) y[e] = sdp_unary<T>(op, x[e], p);                   \
    }                                                                                                                  \
    extern "C" __global__ void unary_backward_##SFX(int op, const T* x, const T* y, const T* dy, T* dx, long long n, T p) \
    {                                                                                                                  \
        for (long long e = sdp_gtid(); e < n; e += sdp_gstride())                                                      \
        {                                                                                                              \
            if (op == SDP_U_RELU) { if (x[e] > (T)0) dx[e] += dy[e]; continue; }                                       \
            dx[e] += sdp_unary_grad<T>(op, x[e], y[e], p) * dy[e];                                                     \
        }                                                                                                              \
    }
SDP_UNARY(f32, float)
SDP_UNARY(f64, double)

// Binary op codes: the numeric values of Sdp.Engine.Backends.BinaryOp.
#define SDP_B_ADD 0
#define SDP_B_SUB 1
#define SDP_B_MUL 2
#define SDP_B_DIV 3

template <typename T>
__device__ __forceinline__ T sdp_binary(int op, T a, T b)
{
    switch (op)
    {
    case SDP_B_ADD: return a + b;
    case SDP_B_SUB: return a - b;
    case SDP_B_MUL: return a * b;
    default: return a / b;
    }
}

// Broadcast descriptor, passed by value: y's shape (rank <= 8) and a's and b's element strides viewed with y's
// rank (0 on broadcast axes), exactly CpuBackend.BroadcastStrides. Host layout: 3 x 8 int64, then int32 rank
// and 4 bytes of padding (200 bytes).
struct SdpBcast
{
    long long shape[8];
    long long sa[8];
    long long sb[8];
    int rank;
    int pad;
};

// binary_<T>(op, a, b, y, n): y = a op b, all of n elements (IBackend.Binary, same-shape case; y may alias).
// binary_scalar_<T>(op, a, b, y, n, scalarSide): one operand is a single device element: scalarSide 1:
//   y = a[i] op b[0]; scalarSide 0: y = a[0] op b[i] (IBackend.Binary with a one-element operand, e.g. the
//   bucket ÷ holder count of HolderGroupedSync).
// binary_bcast_<T>(op, a, b, y, n, desc): general NumPy broadcast through SdpBcast (IBackend.Binary).
#define SDP_BINARY(SFX, T)                                                                                             \
    extern "C" __global__ void binary_##SFX(int op, const T* a, const T* b, T* y, long long n)                       \
    {                                                                                                                  \
        for (long long e = sdp_gtid(); e < n; e += sdp_gstride()) y[e] = sdp_binary<T>(op, a[e], b[e]);               \
    }                                                                                                                  \
    extern "C" __global__ void binary_scalar_##SFX(int op, const T* a, const T* b, T* y, long long n, int scalarSide) \
    {                                                                                                                  \
        if (scalarSide)                                                                                                \
        {                                                                                                              \
            T s = b[0];                                                                                                \
            for (long long e = sdp_gtid(); e < n; e += sdp_gstride()) y[e] = sdp_binary<T>(op, a[e], s);              \
        }                                                                                                              \
        else                                                                                                           \
        {                                                                                                              \
            T s = a[0];                                                                                                \
            for (long long e = sdp_gtid(); e < n; e += sdp_gstride()) y[e] = sdp_binary<T>(op, s, b[e]);              \
        }                                                                                                              \
    }                                                                                                                  \
    extern "C" __global__ void binary_bcast_##SFX(int op, const T* a, const T* b, T* y, long long n, SdpBcast d)     \
    {                                                                                                                  \
        for (long long e = sdp_gtid(); e < n; e += sdp_gstride())                                                      \
        {                                                                                                              \
            long long rem = e, oa = 0, ob = 0;                                                                         \
            for (int ax = d.rank - 1; ax >= 0; ax--)                                                                   \
            {                                                                                                          \
                long long s = d.shape[ax], q = rem / s, idx = rem - q * s;                                             \
                rem = q;                                                                                               \
                oa += idx * d.sa[ax];                                                                                  \
                ob += idx * d.sb[ax];                                                                                  \
            }                                                                                                          \
            y[e] = sdp_binary<T>(op, a[oa], b[ob]);                                                                    \
        }                                                                                                              \
    }
SDP_BINARY(f32, float)
SDP_BINARY(f64, double)

// ============================================================================================================
// 5. Fused optimizer updates
// ============================================================================================================
// Formulas and operation order exactly as CpuBackend.Optim.cs (no fused multiply-add there; NVRTC contracts
// a*b+c into FMA unless compiled with --fmad=false, which the bit-for-bit cross-check should use).
// Host-side scalars are computed in float64 as CpuBackend does, then rounded to T:
//   SGD:   lr, mu = momentum, keep = 1 - dampening, wd = weightDecay; decay = (weightDecay != 0);
//          buf null exactly when momentum == 0; first = firstStep; nesterov.
//   AdamW: decay = 1 - lr·weightDecay, hasDecay = (weightDecay != 0), w1 = 1 - beta1,
//          lerpFromStart = (1 - beta1 < 0.5), b2 = beta2, c2 = 1 - beta2, eps,
//          negStep = -(lr / (1 - beta1^step)), bias2Sqrt = sqrt(1 - beta2^step).
// The _held variants update a FULL parameter's held slices in place, straight from a COMPACT gradient and
// compact optimizer state: viewing the parameter as (outer, N, inner) and grad/state as (outer, K, inner),
// element (o, k, i) of the compact tensors updates param[o, idx[k], i]. No gathered copy of the parameter.
// Launch: 1-D grid-stride over n (= outer·K·inner for _held), block 256, grid min(ceil(n / 256), 65535).

template <typename T>
__device__ __forceinline__ void sdp_sgd_elem(T* p, T g, T* b, T lr, T mu, T keep, T wd, int decay, int first, int nesterov)
{
    T d = g;
    if (decay) d += wd * *p;
    if (b)
    {
        T buf = first ? d : mu * *b + keep * d;
        *b = buf;
        d = nesterov ? d + mu * buf : buf;
    }
    *p = *p - lr * d;
}

template <typename T>
__device__ __forceinline__ void sdp_adamw_elem(T* p, T g, T* m, T* v, T decay, int hasDecay, T w1, int lerpFromStart,
                                               T b2, T c2, T eps, T negStep, T bias2Sqrt)
{
    T pi = *p, mi = *m, vi = *v;
    if (hasDecay) pi *= decay;
    mi = lerpFromStart ? mi + w1 * (g - mi) : g - (g - mi) * ((T)1 - w1);
    vi = vi * b2 + c2 * g * g;
    T denom = sdp_sqrt(vi) / bias2Sqrt + eps;
    pi += negStep * mi / denom;
    *p = pi;
    *m = mi;
    *v = vi;
}

// Compact element e = (o, k, i) -> full parameter element (o, idx[k], i).
__device__ __forceinline__ long long sdp_held_elem(long long e, const int* idx, long long N, long long K, long long inner)
{
    long long ki = K * inner, o = e / ki, rem = e - o * ki, k = rem / inner, i = rem - k * inner;
    return (o * N + idx[k]) * inner + i;
}

// sgd_step_<T>: IBackend.SgdStep. param, grad, buf (nullable) of n elements.
// sgd_step_held_<T>: the same over a full param (outer, N, inner) at held idx (K), grad/buf compact (outer, K, inner).
// adamw_step_<T>: IBackend.AdamWStep. param, grad, m, v of n elements.
// adamw_step_held_<T>: the same over a full param at held idx, grad/m/v compact.
#define SDP_OPTIM(SFX, T)                                                                                              \
    extern "C" __global__ void sgd_step_##SFX(T* param, const T* grad, T* buf, long long n, T lr, T mu, T keep, T wd, \
                                              int decay, int first, int nesterov)                                     \
    {                                                                                                                  \
        for (long long e = sdp_gtid(); e < n; e += sdp_gstride())                                                      \
            sdp_sgd_elem<T>(param + e, grad[e], buf ? buf + e : nullptr, lr, mu, keep, wd, decay, first, nesterov);    \
    }                                                                                                                  \
    extern "C" __global__ void sgd_step_held_##SFX(T* param, const T* grad, T* buf, const int* idx, long long outer,  \
                                                   long long N, long long K, long long inner, T lr, T mu, T keep, T wd, \
                                                   int decay, int first, int nesterov)                                \
    {                                                                                                                  \
        long long n = outer * K * inner;                                                                               \
        for (long long e = sdp_gtid(); e < n; e += sdp_gstride())                                                      \
            sdp_sgd_elem<T>(param + sdp_held_elem(e, idx, N, K, inner), grad[e], buf ? buf + e : nullptr, lr, mu, keep, \
                            wd, decay, first, nesterov);                                                               \
    }                                                                                                                  \
    extern "C" __global__ void adamw_step_##SFX(T* param, const T* grad, T* m, T* v, long long n, T decay, int hasDecay, \
                                                T w1, int lerpFromStart, T b2, T c2, T eps, T negStep, T bias2Sqrt)    \
    {                                                                                                                  \
        for (long long e = sdp_gtid(); e < n; e += sdp_gstride())                                                      \
            sdp_adamw_elem<T>(param + e, grad[e], m + e, v + e, decay, hasDecay, w1, lerpFromStart, b2, c2, eps,       \
                              negStep, bias2Sqrt);                                                                     \
    }                                                                                                                  \
    extern "C" __global__ void adamw_step_held_##SFX(T* param, const T* grad, T* m, T* v, const int* idx,             \
                                                     long long outer, long long N, long long K, long long inner,       \
                                                     T decay, int hasDecay, T w1, int lerpFromStart, T b2, T c2, T eps, \
                                                     T negStep, T bias2Sqrt)                                           \
    {                                                                                                                  \
        long long n = outer * K * inner;                                                                               \
        for (long long e = sdp_gtid(); e < n; e += sdp_gstride())                                                      \
            sdp_adamw_elem<T>(param + sdp_held_elem(e, idx, N, K, inner), grad[e], m + e, v + e, decay, hasDecay, w1,  \
                              lerpFromStart, b2, c2, eps, negStep, bias2Sqrt);                                         \
    }
SDP_OPTIM(f32, float)
SDP_OPTIM(f64, double)

// ============================================================================================================
// 6. Softmax and fused cross-entropy (float32)
// ============================================================================================================
// One block per row, block 256 (a multiple of 32, power of two not required), grid = rows (1-D; rows beyond
// 2^31 - 1 are not supported). Row sums are block reductions in a fixed order: deterministic, but a different
// order from the CPU's vectorised sums, so compare with a tolerance (about 1e-6 relative).

// softmax_forward_f32(x, y, rows, V, log): IBackend.Softmax. y = exp(x - max) / Σ exp(x - max), or for log
// y = x - (max + log Σ exp(x - max)). y may not alias x.
extern "C" __global__ void softmax_forward_f32(const float* x, float* y, long long rows, int V, int logOut)
{
    long long r = blockIdx.x;
    if (r >= rows || V == 0) return;
    const float* xr = x + r * V;
    float* yr = y + r * V;
    float mx = -SDP_POS_INF_F;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, xr[j]);
    mx = sdp_block_max_float(mx);
    float s = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += expf(xr[j] - mx);
    s = sdp_block_sum_float(s);
    if (logOut)
    {
        float shift = mx + logf(s);
        for (int j = threadIdx.x; j < V; j += blockDim.x) yr[j] = xr[j] - shift;
    }
    else
    {
        float inv = 1.0f / s;
        for (int j = threadIdx.x; j < V; j += blockDim.x) yr[j] = expf(xr[j] - mx) * inv;
    }
}

// softmax_backward_f32(y, dy, dx, rows, V, log): IBackend.SoftmaxBackward.
//   softmax: dx += y ⊙ (dy - Σ dy·y);  log-softmax: dx += dy - exp(y) · Σ dy.
extern "C" __global__ void softmax_backward_f32(const float* y, const float* dy, float* dx, long long rows, int V, int logOut)
{
    long long r = blockIdx.x;
    if (r >= rows || V == 0) return;
    const float* yr = y + r * V;
    const float* dyr = dy + r * V;
    float* dxr = dx + r * V;
    float s = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += logOut ? dyr[j] : dyr[j] * yr[j];
    s = sdp_block_sum_float(s);
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        dxr[j] += logOut ? dyr[j] - expf(yr[j]) * s : yr[j] * (dyr[j] - s);
}

// Target of row r from an int32 (targets64 == 0) or int64 target tensor.
__device__ __forceinline__ long long sdp_target(const void* targets, int targets64, long long r)
{
    return targets64 ? ((const long long*)targets)[r] : (long long)((const int*)targets)[r];
}

// cross_entropy_forward_f32(logits, targets, targets64, ignoreIndex, rows, V, lse, rowLoss):
// IBackend.CrossEntropy, per-row part. lse[r] = max + log Σ exp(logits[r] - max); rowLoss (nullable)
// [r] = lse[r] - logits[r, t_r], 0 where t_r == ignoreIndex. Targets must have been validated (the CPU
// validates before writing; the CUDA backend validates on the host or with a check kernel first).
// For reduction Sum / Mean, run cross_entropy_reduce_f32 after it (one block, deterministic, float64).
extern "C" __global__ void cross_entropy_forward_f32(const float* logits, const void* targets, int targets64, int ignoreIndex,
                                                     long long rows, int V, float* lse, float* rowLoss)
{
    long long r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = logits + r * V;
    float mx = -SDP_POS_INF_F;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, xr[j]);
    mx = sdp_block_max_float(mx);
    float s = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += expf(xr[j] - mx);
    s = sdp_block_sum_float(s);
    if (threadIdx.x == 0)
    {
        float l = mx + logf(s);
        lse[r] = l;
        if (rowLoss)
        {
            long long t = sdp_target(targets, targets64, r);
            rowLoss[r] = t == ignoreIndex ? 0.0f : l - xr[t];
        }
    }
}

// cross_entropy_reduce_f32(logits, targets, targets64, ignoreIndex, rows, V, lse, mean, loss):
// loss[0] = Σ_{r not ignored} (lse[r] - logits[r, t_r]) in float64 (divided by the count for mean; 0 when
// nothing counts). One block of 256 threads, grid 1; per-thread sums in row order, then a fixed tree: the
// CPU sums strictly in row order, so this agrees to float64 rounding.
extern "C" __global__ void cross_entropy_reduce_f32(const float* logits, const void* targets, int targets64, int ignoreIndex,
                                                    long long rows, int V, const float* lse, int mean, float* loss)
{
    double acc = 0.0, cnt = 0.0;
    for (long long r = threadIdx.x; r < rows; r += blockDim.x)
    {
        long long t = sdp_target(targets, targets64, r);
        if (t == ignoreIndex) continue;
        acc += (double)(lse[r] - logits[r * V + t]);
        cnt += 1.0;
    }
    double total = sdp_block_sum_double(acc);
    double count = sdp_block_sum_double(cnt);
    if (threadIdx.x == 0)
    {
        if (mean) total = count == 0.0 ? 0.0 : total / count;
        loss[0] = (float)total;
    }
}

// cross_entropy_backward_f32(logits, targets, targets64, ignoreIndex, rows, V, lse, dloss, reduction, count,
// dlogits): IBackend.CrossEntropyBackward. dlogits[r, v] += exp(logits[r, v] - lse[r]) · g_r, then
// dlogits[r, t_r] -= g_r; rows with t_r == ignoreIndex get nothing. g_r = dloss[r] (reduction 0, None),
// dloss[0] (1, Sum) or dloss[0] / count (2, Mean; count = non-ignored rows, from the host or a count kernel;
// 0 gives g = 0). One block per row, block 256.
extern "C" __global__ void cross_entropy_backward_f32(const float* logits, const void* targets, int targets64, int ignoreIndex,
                                                      long long rows, int V, const float* lse, const float* dloss,
                                                      int reduction, long long count, float* dlogits)
{
    long long r = blockIdx.x;
    if (r >= rows) return;
    long long t = sdp_target(targets, targets64, r);
    if (t == ignoreIndex) return;
    float g = reduction == 0 ? dloss[r] : dloss[0];
    if (reduction == 2) g = count == 0 ? 0.0f : g / (float)count;
    float l = lse[r];
    const float* xr = logits + r * V;
    float* dxr = dlogits + r * V;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
    {
        dxr[j] += expf(xr[j] - l) * g;
        if (j == t) dxr[j] -= g; // the one-hot term, by the thread that owns the element, after its softmax term
    }
}

// ============================================================================================================
// 7. Transformer: embedding, RMSNorm, RoPE, head swaps, causal GQA attention
// ============================================================================================================

// (section 7 kernels)

// ============================================================================================================
// 8. Convolution, BatchNorm and pooling (NCHW)
// ============================================================================================================

// (section 8 kernels)

// ============================================================================================================
// 9. Dropout
// ============================================================================================================

// (section 9 kernels)

// ============================================================================================================
// 10. Shape, indexing and axis reductions
// ============================================================================================================

// Every kernel here is written once as a template over the element type T and instantiated for f32, f64, i32 and
// i64 where the CPU runs the op on any dtype (permute, index select/add), for f32 and f64 where it is float only
// (sum-to-shape, axis reductions, max backward). Unless a kernel says otherwise: 1-D grid-stride, block 256,
// grid min(ceil(n / 256), 65535). Index tensors here are int32 (indices64 == 0) or int64, validated on the host
// by the backend before the launch (IndexSelect / IndexAdd throw before writing, as the CPU does).

// Reads index k of an int32 (wide == 0) or int64 index tensor.
__device__ __forceinline__ long long sdp_index_at(const void* indices, int wide, long long k)
{
    return wide ? ((const long long*)indices)[k] : (long long)((const int*)indices)[k];
}

// A strided view of up to 8 axes, passed by value (136 bytes): dims[a] and the element stride of each axis in the
// tensor it addresses. Host layout: 2 x 8 int64, then int32 rank and 4 bytes of padding.
struct SdpStrided
{
    long long dims[8];
    long long strides[8];
    int rank;
    int pad;
};

// permute_<T>(x, y, n, view, accumulate): IBackend.Permute.
//   y (n elements, row-major over view.dims) (=|+=) x[Σ_a i_a · view.strides[a]], where view.dims are y's dims and
//   view.strides[a] the stride in x of the x axis that output axis a comes from. The host coalesces the permute
//   first (size-1 axes dropped, output axes that stay neighbours in x merged, as CpuBackend.CoalescePermute), so
//   the rank is at most 8 for any practical permute. One thread per output element: writes coalesced, reads
//   coalesced whenever the innermost output axis has stride 1 in x. y must not alias x.
template <typename T>
__device__ __forceinline__ void sdp_permute_body(const T* __restrict__ x, T* __restrict__ y, long long n, const SdpStrided& v,
                                                 int accumulate)
{
    for (long long e = sdp_gtid(); e < n; e += sdp_gstride())
    {
        long long rem = e, off = 0;
        for (int a = v.rank - 1; a >= 0; a--)
        {
            long long d = v.dims[a], q = rem / d;
            off += (rem - q * d) * v.strides[a];
            rem = q;
        }
        y[e] = accumulate ? y[e] + x[off] : x[off];
    }
}

#define SDP_PERMUTE(SFX, T)                                                                                            \
    extern "C" __global__ void permute_##SFX(const T* x, T* y, long long n, SdpStrided view, int accumulate)          \
    {                                                                                                                  \
        sdp_permute_body<T>(x, y, n, view, accumulate);                                                               \
    }
SDP_PERMUTE(f32, float)
SDP_PERMUTE(f64, double)
SDP_PERMUTE(i32, int)
SDP_PERMUTE(i64, long long)

// Sum-to-shape (IBackend.SumToShape: dst += src summed over the broadcast axes), described by SdpBcast (§4) with
//   shape = src's dims, sa = src's strides, sb = dst's strides viewed with src's rank, 0 on the summed axes
//   (CpuBackend.BroadcastStrides(dst, src)), coalesced by the host (size-1 axes dropped, neighbours merged).
// Axes with sb != 0 are "kept": they enumerate dst's elements in row-major order. Axes with sb == 0 are "summed":
// their row-major enumeration visits a dst element's sources in increasing source index, which is the order the
// CPU's sequential walk adds them in.
//
// sum_to_shape_<T>(src, dst, m, d): dst (m elements) += Σ over the summed axes, one thread per dst element,
//   acc = dst[e]; acc += each source in increasing index: bit for bit the CPU's result. Used when dst has enough
//   elements to fill the GPU, or the sums are short.
// sum_to_shape_partial_<T>(src, partials, m, chunks, chunkLen, d) + sum_to_shape_finish_<T>(partials, dst, m,
//   chunks): for a small dst with long sums (a bias gradient over many tokens). partials (chunks, m): chunk c of
//   dst element e sums sources t in [c·chunkLen, (c+1)·chunkLen) of its summed enumeration, in order, from 0;
//   the finish adds dst[e] + Σ_c partials[c, e] in increasing c. Deterministic (no atomics), but the grouping
//   differs from the CPU's single running sum: agrees to float rounding (about 1e-6 relative in fp32).
//   Both 1-D grid-stride: the partial pass over chunks·m items, the finish over m.

// Source offset of dst element e (its kept coordinates) and the total count of summed elements.
__device__ __forceinline__ long long sdp_sum_to_shape_base(const SdpBcast& d, long long e)
{
    long long rem = e, off = 0;
    for (int a = d.rank - 1; a >= 0; a--)
    {
        if (d.sb[a] == 0) continue;
        long long n = d.shape[a], q = rem / n;
        off += (rem - q * n) * d.sa[a];
        rem = q;
    }
    return off;
}

// Σ of the summed sources t in [t0, t1) of the element at source offset base, in increasing t (an odometer over
// the summed axes, innermost fastest).
template <typename T>
__device__ __forceinline__ T sdp_sum_to_shape_run(const T* __restrict__ src, const SdpBcast& d, long long base, long long t0,
                                                  long long t1, T acc)
{
    if (t0 >= t1) return acc;
    long long idx[8];
    long long off = base, rem = t0;
    for (int a = d.rank - 1; a >= 0; a--)
    {
        idx[a] = 0;
        if (d.sb[a] != 0) continue;
        long long n = d.shape[a], q = rem / n;
        idx[a] = rem - q * n;
        off += idx[a] * d.sa[a];
        rem = q;
    }
    for (long long t = t0; t < t1; t++)
    {
        acc += src[off];
        for (int a = d.rank - 1; a >= 0; a--)
        {
            if (d.sb[a] != 0) continue;
            off += d.sa[a];
            if (++idx[a] < d.shape[a]) break;
            off -= d.sa[a] * d.shape[a];
            idx[a] = 0;
        }
    }
    return acc;
}

// Number of source elements summed into each dst element.
__device__ __forceinline__ long long sdp_sum_to_shape_count(const SdpBcast& d)
{
    long long c = 1;
    for (int a = 0; a < d.rank; a++)
        if (d.sb[a] == 0) c *= d.shape[a];
    return c;
}

#define SDP_SUM_TO_SHAPE(SFX, T)                                                                                       \
    extern "C" __global__ void sum_to_shape_##SFX(const T* src, T* dst, long long m, SdpBcast d)                      \
    {                                                                                                                  \
        long long count = sdp_sum_to_shape_count(d);                                                                   \
        for (long long e = sdp_gtid(); e < m; e += sdp_gstride())                                                      \
            dst[e] = sdp_sum_to_shape_run<T>(src, d, sdp_sum_to_shape_base(d, e), 0, count, dst[e]);                  \
    }                                                                                                                  \
    extern "C" __global__ void sum_to_shape_partial_##SFX(const T* src, T* partials, long long m, long long chunks,   \
                                                         long long chunkLen, SdpBcast d)                               \
    {                                                                                                                  \
        long long count = sdp_sum_to_shape_count(d), items = chunks * m;                                               \
        for (long long w = sdp_gtid(); w < items; w += sdp_gstride())                                                  \
        {                                                                                                              \
            long long c = w / m, e = w - c * m, t0 = c * chunkLen, t1 = t0 + chunkLen < count ? t0 + chunkLen : count; \
            partials[w] = sdp_sum_to_shape_run<T>(src, d, sdp_sum_to_shape_base(d, e), t0, t1, (T)0);                 \
        }                                                                                                              \
    }                                                                                                                  \
    extern "C" __global__ void sum_to_shape_finish_##SFX(const T* partials, T* dst, long long m, long long chunks)    \
    {                                                                                                                  \
        for (long long e = sdp_gtid(); e < m; e += sdp_gstride())                                                      \
        {                                                                                                              \
            T acc = dst[e];                                                                                            \
            for (long long c = 0; c < chunks; c++) acc += partials[c * m + e];                                         \
            dst[e] = acc;                                                                                              \
        }                                                                                                              \
    }
SDP_SUM_TO_SHAPE(f32, float)
SDP_SUM_TO_SHAPE(f64, double)

// Axis reductions (IBackend.ReduceAxis): x (outer, r, inner) -> y (outer, inner), op 0 Sum, 1 Max (ReduceOp's
// values); for Max, argmax (nullable, int64, y's shape) gets the first index attaining the max, a NaN winning over
// every number (the first NaN), exactly as CpuBackend.ReduceAxis: best starts at -inf with index 0.
//
// reduce_axis_<T>(op, x, y, argmax, outer, r, inner): one thread per output (o, i), k increasing; Sum starts at 0:
//   bit for bit the CPU's result. Used when there are enough outputs to fill the GPU (or r is short).
// reduce_axis_block_<T>(op, x, y, argmax, outer, r, inner): one block of exactly 256 threads per output (blocks
//   grid-stride over outer·inner; grid min(outer·inner, 65535)), threads striding over k, then a fixed
//   shared-memory tree. For few outputs with a long axis (a full sum). Max is still exact (the combine rule below
//   keeps "NaN first, then the largest, ties to the lowest index", which is what the sequential scan returns);
//   Sum's grouping differs from the CPU's running sum: about 1e-6 relative in fp32.
#define SDP_R_SUM 0
#define SDP_R_MAX 1

// Whether candidate (v, k) beats (best, bestAt) for the max: a NaN beats any number (the lower index among NaNs),
// then the larger value, then, on a tie, the lower index.
template <typename T>
__device__ __forceinline__ bool sdp_max_beats(T v, long long k, T best, long long bestAt)
{
    bool vn = v != v, bn = best != best;
    if (vn || bn) return vn && (!bn || k < bestAt);
    return v > best || (v == best && k < bestAt);
}

template <typename T>
__device__ __forceinline__ T sdp_neg_inf();
template <>
__device__ __forceinline__ float sdp_neg_inf<float>() { return -SDP_POS_INF_F; }
template <>
__device__ __forceinline__ double sdp_neg_inf<double>() { return -(double)SDP_POS_INF_F; }

template <typename T>
__device__ __forceinline__ void sdp_reduce_axis_body(int op, const T* __restrict__ x, T* __restrict__ y, long long* argmax,
                                                     long long outer, long long r, long long inner)
{
    long long n = outer * inner;
    for (long long oi = sdp_gtid(); oi < n; oi += sdp_gstride())
    {
        long long o = oi / inner, i = oi - o * inner;
        const T* col = x + o * r * inner + i;
        if (op == SDP_R_SUM)
        {
            T acc = (T)0;
            for (long long k = 0; k < r; k++) acc += col[k * inner];
            y[oi] = acc;
        }
        else
        {
            T best = sdp_neg_inf<T>();
            long long bestAt = 0;
            for (long long k = 0; k < r; k++)
            {
                T v = col[k * inner];
                if (v > best || (v != v && best == best))
                {
                    best = v;
                    bestAt = k;
                }
            }
            y[oi] = best;
            if (argmax) argmax[oi] = bestAt;
        }
    }
}

// Block sums in a fixed order (every thread must call; result in thread 0): float through the warp-shuffle
// reduction of §0, double through the shared-memory tree of §0.
__device__ __forceinline__ float sdp_block_sum_of(float v) { return sdp_block_sum_float(v); }
__device__ __forceinline__ double sdp_block_sum_of(double v) { return sdp_block_sum_double(v); }

template <typename T>
__device__ __forceinline__ void sdp_reduce_axis_block_body(int op, const T* __restrict__ x, T* __restrict__ y, long long* argmax,
                                                           long long outer, long long r, long long inner)
{
    __shared__ T best_v[SDP_THREADS];
    __shared__ long long best_k[SDP_THREADS];
    const long long none = 0x7fffffffffffffffLL; // loses every tie: a thread that saw no element
    long long n = outer * inner;
    unsigned t = threadIdx.x;
    for (long long oi = blockIdx.x; oi < n; oi += gridDim.x)
    {
        long long o = oi / inner, i = oi - o * inner;
        const T* col = x + o * r * inner + i;
        if (op == SDP_R_SUM)
        {
            T acc = (T)0;
            for (long long k = t; k < r; k += blockDim.x) acc += col[k * inner];
            acc = sdp_block_sum_of(acc);
            if (t == 0) y[oi] = acc;
            continue;
        }
        T best = sdp_neg_inf<T>();
        long long bestAt = none;
        for (long long k = t; k < r; k += blockDim.x)
        {
            T v = col[k * inner];
            if (sdp_max_beats(v, k, best, bestAt))
            {
                best = v;
                bestAt = k;
            }
        }
        best_v[t] = best;
        best_k[t] = bestAt;
        __syncthreads();
        for (unsigned s = blockDim.x / 2; s > 0; s >>= 1)
        {
            if (t < s && sdp_max_beats(best_v[t + s], best_k[t + s], best_v[t], best_k[t]))
            {
                best_v[t] = best_v[t + s];
                best_k[t] = best_k[t + s];
            }
            __syncthreads();
        }
        if (t == 0)
        {
            y[oi] = best_v[0];
            if (argmax) argmax[oi] = best_k[0] == none ? 0 : best_k[0];
        }
        __syncthreads(); // best_v / best_k are reused by the next output
    }
}

#define SDP_REDUCE_AXIS(SFX, T)                                                                                        \
    extern "C" __global__ void reduce_axis_##SFX(int op, const T* x, T* y, long long* argmax, long long outer,         \
                                                 long long r, long long inner)                                         \
    {                                                                                                                  \
        sdp_reduce_axis_body<T>(op, x, y, argmax, outer, r, inner);                                                    \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(SDP_THREADS) reduce_axis_block_##SFX(                                 \
        int op, const T* x, T* y, long long* argmax, long long outer, long long r, long long inner)                    \
    {                                                                                                                  \
        sdp_reduce_axis_block_body<T>(op, x, y, argmax, outer, r, inner);                                              \
    }
SDP_REDUCE_AXIS(f32, float)
SDP_REDUCE_AXIS(f64, double)

// max_axis_backward_<T>(dy, argmax, dx, n, r, inner): IBackend.MaxAxisBackward. dy, argmax (outer, inner) with
//   n = outer·inner elements; dx (outer, r, inner) += dy at r = argmax: dx[(o·r + argmax[oi])·inner + i] += dy[oi].
//   Every (o, i) owns a distinct dx element, so threads never collide. One thread per dy element.
#define SDP_MAX_AXIS_BACKWARD(SFX, T)                                                                                  \
    extern "C" __global__ void max_axis_backward_##SFX(const T* dy, const long long* argmax, T* dx, long long n,      \
                                                       long long r, long long inner)                                   \
    {                                                                                                                  \
        for (long long oi = sdp_gtid(); oi < n; oi += sdp_gstride())                                                   \
        {                                                                                                              \
            long long o = oi / inner, i = oi - o * inner;                                                              \
            dx[(o * r + argmax[oi]) * inner + i] += dy[oi];                                                            \
        }                                                                                                              \
    }
SDP_MAX_AXIS_BACKWARD(f32, float)
SDP_MAX_AXIS_BACKWARD(f64, double)

// index_select_<T>(x, y, indices, indices64, outer, N, K, inner, accumulate): IBackend.IndexSelect.
//   x (outer, N, inner), indices (K) int32 or int64, y (outer, K, inner):
//   y[o, k, i] (=|+=) x[o, indices[k], i]. One thread per y element (distinct outputs, repeats only read).
// index_add_<T>(src, dst, indices, indices64, outer, N, K, inner): IBackend.IndexAdd.
//   src (outer, K, inner), dst (outer, N, inner): dst[o, indices[k], i] += src[o, k, i]. One thread per (o, i)
//   column walking k in increasing order: repeated indices accumulate in k order, no atomics, and each dst element
//   gets exactly the CPU's sequence of additions (bit for bit). 1-D grid-stride over outer·inner.
template <typename T>
__device__ __forceinline__ void sdp_index_select_body(const T* __restrict__ x, T* __restrict__ y, const void* indices, int wide,
                                                      long long outer, long long N, long long K, long long inner, int accumulate)
{
    long long ki = K * inner, total = outer * ki;
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride())
    {
        long long o = e / ki, rem = e - o * ki, k = rem / inner, i = rem - k * inner;
        T v = x[(o * N + sdp_index_at(indices, wide, k)) * inner + i];
        y[e] = accumulate ? y[e] + v : v;
    }
}

template <typename T>
__device__ __forceinline__ void sdp_index_add_body(const T* __restrict__ src, T* __restrict__ dst, const void* indices, int wide,
                                                   long long outer, long long N, long long K, long long inner)
{
    long long total = outer * inner;
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride())
    {
        long long o = e / inner, i = e - o * inner;
        const T* s = src + o * K * inner + i;
        T* d = dst + o * N * inner + i;
        for (long long k = 0; k < K; k++)
        {
            T* at = d + sdp_index_at(indices, wide, k) * inner;
            *at = *at + s[k * inner];
        }
    }
}

#define SDP_INDEXING(SFX, T)                                                                                           \
    extern "C" __global__ void index_select_##SFX(const T* x, T* y, const void* indices, int indices64,              \
                                                  long long outer, long long N, long long K, long long inner,          \
                                                  int accumulate)                                                      \
    {                                                                                                                  \
        sdp_index_select_body<T>(x, y, indices, indices64, outer, N, K, inner, accumulate);                            \
    }                                                                                                                  \
    extern "C" __global__ void index_add_##SFX(const T* src, T* dst, const void* indices, int indices64,             \
                                               long long outer, long long N, long long K, long long inner)             \
    {                                                                                                                  \
        sdp_index_add_body<T>(src, dst, indices, indices64, outer, N, K, inner);                                       \
    }
SDP_INDEXING(f32, float)
SDP_INDEXING(f64, double)
SDP_INDEXING(i32, int)
SDP_INDEXING(i64, long long)
