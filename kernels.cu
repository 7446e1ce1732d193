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
//   6. Softmax and fused cross-entropy (f32, f64)
//        softmax_forward_*, softmax_backward_*, cross_entropy_check_targets, cross_entropy_forward_*,
//        cross_entropy_reduce_*, cross_entropy_mean_scale_*, cross_entropy_backward_*
//   7. Transformer (f32, f64; ids and positions int32 or int64, bounds-checked through the device error flag)
//        embedding_forward_*, embedding_sort_keys, embedding_merge_pass, embedding_backward_*,
//        rms_norm_forward_*, rms_norm_backward_dx_*, rms_norm_backward_dw_partial_*, rms_norm_backward_dw_finish_*,
//        rope_*, attention_swap_heads_*, attention_forward_*, attention_backward_dq_*, attention_backward_dkdv_*
//   8. Convolution, BatchNorm and pooling (NCHW)
//        conv2d_im2col_f32, conv2d_col2im_f32, conv2d_pack_dy_f32, conv2d_add_bias_f32   Conv2d(Backward) f32, around cuBLAS Sgemm
//        conv2d_direct_forward_f64, conv2d_direct_backward_input_f64, conv2d_direct_backward_weight_f64   Conv2d(Backward) f64
//        conv2d_bias_grad_{f32,f64}                  dbias, per-channel fixed-order sums
//        batchnorm2d_forward_*, batchnorm2d_backward_*                          BatchNorm2d(Backward), one block per channel
//        maxpool2d_forward_*, maxpool2d_backward_*, adaptive_avgpool2d_forward_*, adaptive_avgpool2d_backward_*
//   9. Dropout (f32, f64)
//        dropout_forward_*, dropout_backward_*
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

// Element i of an int32 (is64 == 0) or int64 index tensor (targets, ids, position ids, gather indices).
__device__ __forceinline__ long long sdp_index_at(const void* indices, int is64, long long i)
{
    return is64 ? ((const long long*)indices)[i] : (long long)((const int*)indices)[i];
}

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
// 6. Softmax and fused cross-entropy
// ============================================================================================================
// Row kernels: one block per row, grid-stride over rows (grid min(rows, 65535)), block RowThreads(V) =
// the smallest power of two >= V, clamped to [32, 256] (a multiple of 32 for the float shuffles, a power of
// two for the double tree). Row sums are block reductions in a fixed order that depends only on V:
// deterministic, but not the CPU's vectorised order, so compare with a tolerance (about 1e-6 relative in fp32,
// 1e-15 in fp64). Every kernel exists as _f32 and _f64 (one template each).

// Block-wide double max / sum through a shared-memory tree (no double shuffles), in a fixed order, the result
// broadcast to every thread. All threads must call; blockDim.x a power of two <= SDP_MAX_THREADS.
template <bool IsMax>
__device__ double sdp_block_reduce_double(double v)
{
    __shared__ double red[SDP_MAX_THREADS];
    red[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1)
    {
        if (threadIdx.x < s)
            red[threadIdx.x] = IsMax ? fmax(red[threadIdx.x], red[threadIdx.x + s]) : red[threadIdx.x] + red[threadIdx.x + s];
        __syncthreads();
    }
    double r = red[0];
    __syncthreads(); // red may be reused by the caller's next reduction
    return r;
}

// Row reductions by type: float through the warp-shuffle reductions of §0, double through the tree above.
__device__ __forceinline__ float sdp_row_max(float v) { return sdp_block_max_float(v); }
__device__ __forceinline__ double sdp_row_max(double v) { return sdp_block_reduce_double<true>(v); }
__device__ __forceinline__ float sdp_row_sum(float v) { return sdp_block_sum_float(v); }
__device__ __forceinline__ double sdp_row_sum(double v) { return sdp_block_reduce_double<false>(v); }
__device__ __forceinline__ float sdp_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double sdp_max(double a, double b) { return fmax(a, b); }

// Cross-entropy target out of [0, V) and not the ignore index (device error flag code; CudaBackend.DeviceError).
#define SDP_ERR_CE_TARGET 3

// softmax_forward_<T>(x, y, rows, V, log): IBackend.Softmax. x, y (rows, V); y = exp(x - max) · (1 / Σ exp(x - max)),
// or for log y = x - (max + log Σ exp(x - max)), the CPU's operation order. y may not alias x.
template <typename T>
__device__ void sdp_softmax_forward_body(const T* __restrict__ x, T* __restrict__ y, long long rows, int V, int logOut)
{
    for (long long r = blockIdx.x; r < rows; r += gridDim.x)
    {
        const T* xr = x + r * V;
        T* yr = y + r * V;
        T mx = -(T)SDP_POS_INF_F;
        for (int j = threadIdx.x; j < V; j += blockDim.x) mx = sdp_max(mx, xr[j]);
        mx = sdp_row_max(mx);
        T s = 0;
        for (int j = threadIdx.x; j < V; j += blockDim.x) s += sdp_exp(xr[j] - mx);
        s = sdp_row_sum(s);
        if (logOut)
        {
            T shift = mx + sdp_log(s);
            for (int j = threadIdx.x; j < V; j += blockDim.x) yr[j] = xr[j] - shift;
        }
        else
        {
            T inv = (T)1 / s;
            for (int j = threadIdx.x; j < V; j += blockDim.x) yr[j] = sdp_exp(xr[j] - mx) * inv;
        }
    }
}

// softmax_backward_<T>(y, dy, dx, rows, V, log): IBackend.SoftmaxBackward, all (rows, V).
//   softmax: dx += y ⊙ (dy - Σ dy·y);  log-softmax: dx += dy - exp(y) · Σ dy.
template <typename T>
__device__ void sdp_softmax_backward_body(const T* __restrict__ y, const T* __restrict__ dy, T* dx, long long rows, int V, int logOut)
{
    for (long long r = blockIdx.x; r < rows; r += gridDim.x)
    {
        const T* yr = y + r * V;
        const T* dyr = dy + r * V;
        T* dxr = dx + r * V;
        T s = 0;
        for (int j = threadIdx.x; j < V; j += blockDim.x) s += logOut ? dyr[j] : dyr[j] * yr[j];
        s = sdp_row_sum(s);
        for (int j = threadIdx.x; j < V; j += blockDim.x)
            dxr[j] += logOut ? dyr[j] - sdp_exp(yr[j]) * s : yr[j] * (dyr[j] - s);
    }
}

// cross_entropy_check_targets(targets, targets64, ignoreIndex, rows, V, flag): IBackend.CrossEntropy's target
// validation without a host read. A target outside [0, V) that is not ignoreIndex raises SDP_ERR_CE_TARGET
// {row, target, V} on the device error flag; the kernels below then write nothing (they skip when the flag is
// set), and the next host read throws. 1-D launch over rows.
extern "C" __global__ void cross_entropy_check_targets(const void* targets, int targets64, int ignoreIndex, long long rows, int V, int* flag)
{
    for (long long r = sdp_gtid(); r < rows; r += sdp_gstride())
    {
        long long t = sdp_index_at(targets, targets64, r);
        if (t != ignoreIndex && (t < 0 || t >= V)) sdp_raise(flag, SDP_ERR_CE_TARGET, r, t, V);
    }
}

// cross_entropy_forward_<T>(logits, targets, targets64, ignoreIndex, rows, V, lse, rowLoss, flag):
// IBackend.CrossEntropy, per-row part. logits (rows, V), targets (rows), lse (rows), rowLoss (rows, nullable).
// lse[r] = max + log Σ exp(logits[r] - max); rowLoss[r] = lse[r] - logits[r, t_r], 0 where t_r == ignoreIndex.
// Runs after cross_entropy_check_targets on the same stream and returns at once when the flag is set (a bad
// target, or any earlier device error): nothing is written, as the CPU throws before writing.
// For reduction Sum / Mean, cross_entropy_reduce_<T> follows.
template <typename T>
__device__ void sdp_cross_entropy_forward_body(const T* __restrict__ logits, const void* targets, int targets64, int ignoreIndex,
                                               long long rows, int V, T* lse, T* rowLoss, const int* flag)
{
    if (flag[0] != 0) return;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x)
    {
        const T* xr = logits + r * V;
        T mx = -(T)SDP_POS_INF_F;
        for (int j = threadIdx.x; j < V; j += blockDim.x) mx = sdp_max(mx, xr[j]);
        mx = sdp_row_max(mx);
        T s = 0;
        for (int j = threadIdx.x; j < V; j += blockDim.x) s += sdp_exp(xr[j] - mx);
        s = sdp_row_sum(s);
        if (threadIdx.x == 0)
        {
            T l = mx + sdp_log(s);
            lse[r] = l;
            if (rowLoss)
            {
                long long t = sdp_index_at(targets, targets64, r);
                rowLoss[r] = t == ignoreIndex ? (T)0 : l - xr[t];
            }
        }
    }
}

// cross_entropy_reduce_<T>(logits, targets, targets64, ignoreIndex, rows, V, lse, mean, loss, flag):
// loss[0] = Σ_{r not ignored} (lse[r] - logits[r, t_r]) in float64 (divided by the count for mean; 0 when
// nothing counts), then rounded to T. One block of 256 threads, grid 1; per-thread sums in row order, then a
// fixed tree: the CPU sums strictly in row order, so the two agree to float64 rounding. Skips when the flag is set.
template <typename T>
__device__ void sdp_cross_entropy_reduce_body(const T* __restrict__ logits, const void* targets, int targets64, int ignoreIndex,
                                              long long rows, int V, const T* __restrict__ lse, int mean, T* loss, const int* flag)
{
    if (flag[0] != 0) return;
    double acc = 0.0, cnt = 0.0;
    for (long long r = threadIdx.x; r < rows; r += blockDim.x)
    {
        long long t = sdp_index_at(targets, targets64, r);
        if (t == ignoreIndex) continue;
        acc += (double)(lse[r] - logits[r * V + t]);
        cnt += 1.0;
    }
    double total = sdp_block_reduce_double<false>(acc);
    double count = sdp_block_reduce_double<false>(cnt);
    if (threadIdx.x == 0)
    {
        if (mean) total = count == 0.0 ? 0.0 : total / count;
        loss[0] = (T)total;
    }
}

// cross_entropy_mean_scale_<T>(targets, targets64, ignoreIndex, rows, dloss, g): g[0] = dloss[0] / count, with
// count the non-ignored rows (0 gives g = 0): the shared row gradient of reduction Mean, kept on the device.
// One block of 256 threads, grid 1 (integer counts: exact in any order).
template <typename T>
__device__ void sdp_cross_entropy_mean_scale_body(const void* targets, int targets64, int ignoreIndex, long long rows,
                                                  const T* dloss, T* g)
{
    double cnt = 0.0;
    for (long long r = threadIdx.x; r < rows; r += blockDim.x)
        if (sdp_index_at(targets, targets64, r) != ignoreIndex) cnt += 1.0;
    double count = sdp_block_reduce_double<false>(cnt);
    if (threadIdx.x == 0) g[0] = count == 0.0 ? (T)0 : dloss[0] / (T)count;
}

// cross_entropy_backward_<T>(logits, targets, targets64, ignoreIndex, rows, V, lse, g, gPerRow, dlogits, flag):
// IBackend.CrossEntropyBackward. dlogits[r, v] += exp(logits[r, v] - lse[r]) · g_r, then dlogits[r, t_r] -= g_r;
// rows with t_r == ignoreIndex get nothing. g_r = g[r] when gPerRow (reduction None: g = dloss), else g[0]
// (Sum: g = dloss; Mean: g = the output of cross_entropy_mean_scale_<T>). A target outside [0, V) (possible
// only if the forward's error was not read yet) is raised again and its row skipped, so nothing is written
// out of bounds.
template <typename T>
__device__ void sdp_cross_entropy_backward_body(const T* __restrict__ logits, const void* targets, int targets64, int ignoreIndex,
                                                long long rows, int V, const T* __restrict__ lse, const T* __restrict__ g,
                                                int gPerRow, T* dlogits, int* flag)
{
    for (long long r = blockIdx.x; r < rows; r += gridDim.x)
    {
        long long t = sdp_index_at(targets, targets64, r);
        if (t == ignoreIndex) continue;
        if (t < 0 || t >= V)
        {
            if (threadIdx.x == 0) sdp_raise(flag, SDP_ERR_CE_TARGET, r, t, V);
            continue;
        }
        T gr = g[gPerRow ? r : 0];
        T l = lse[r];
        const T* xr = logits + r * V;
        T* dxr = dlogits + r * V;
        for (int j = threadIdx.x; j < V; j += blockDim.x)
        {
            dxr[j] += sdp_exp(xr[j] - l) * gr;
            if (j == t) dxr[j] -= gr; // the one-hot term, by the thread that owns the element, after its softmax term
        }
    }
}

#define SDP_SOFTMAX(SFX, T)                                                                                            \
    extern "C" __global__ void softmax_forward_##SFX(const T* x, T* y, long long rows, int V, int logOut)              \
    {                                                                                                                  \
        sdp_softmax_forward_body<T>(x, y, rows, V, logOut);                                                            \
    }                                                                                                                  \
    extern "C" __global__ void softmax_backward_##SFX(const T* y, const T* dy, T* dx, long long rows, int V, int logOut) \
    {                                                                                                                  \
        sdp_softmax_backward_body<T>(y, dy, dx, rows, V, logOut);                                                      \
    }                                                                                                                  \
    extern "C" __global__ void cross_entropy_forward_##SFX(const T* logits, const void* targets, int targets64,       \
        int ignoreIndex, long long rows, int V, T* lse, T* rowLoss, const int* flag)                                   \
    {                                                                                                                  \
        sdp_cross_entropy_forward_body<T>(logits, targets, targets64, ignoreIndex, rows, V, lse, rowLoss, flag);       \
    }                                                                                                                  \
    extern "C" __global__ void cross_entropy_reduce_##SFX(const T* logits, const void* targets, int targets64,        \
        int ignoreIndex, long long rows, int V, const T* lse, int mean, T* loss, const int* flag)                      \
    {                                                                                                                  \
        sdp_cross_entropy_reduce_body<T>(logits, targets, targets64, ignoreIndex, rows, V, lse, mean, loss, flag);     \
    }                                                                                                                  \
    extern "C" __global__ void cross_entropy_mean_scale_##SFX(const void* targets, int targets64, int ignoreIndex,    \
        long long rows, const T* dloss, T* g)                                                                          \
    {                                                                                                                  \
        sdp_cross_entropy_mean_scale_body<T>(targets, targets64, ignoreIndex, rows, dloss, g);                         \
    }                                                                                                                  \
    extern "C" __global__ void cross_entropy_backward_##SFX(const T* logits, const void* targets, int targets64,      \
        int ignoreIndex, long long rows, int V, const T* lse, const T* g, int gPerRow, T* dlogits, int* flag)          \
    {                                                                                                                  \
        sdp_cross_entropy_backward_body<T>(logits, targets, targets64, ignoreIndex, rows, V, lse, g, gPerRow, dlogits, \
                                           flag);                                                                      \
    }
SDP_SOFTMAX(f32, float)
SDP_SOFTMAX(f64, double)

// ============================================================================================================
// 7. Transformer: embedding, RMSNorm, RoPE, head swaps, causal GQA attention
// ============================================================================================================
// Index tensors here (ids, position ids) are int32 or int64 (an is64 flag selects) and ARE bounds-checked:
// IBackend.Transformer says a device backend reports a bad id or position through the device error flag
// (sdp_raise) and leaves that output element unwritten, so nothing is read or written out of bounds.
// Every float kernel exists as _f32 and _f64 (one template each).

// embedding_forward_<T>(weight, ids, ids64, y, n, C, V, flag): IBackend.Embedding.
//   weight (V, C), ids (n), y (n, C): y[i, c] = weight[ids[i], c]. An id outside [0, V) raises
//   SDP_ERR_EMBEDDING_ID {i, id, V} (once per row, from its c == 0 element) and leaves row i unwritten.
//   1-D launch over n·C.
template <typename T>
__device__ void sdp_embedding_forward_body(const T* __restrict__ weight, const void* ids, int ids64, T* __restrict__ y,
                                           long long n, long long C, long long V, int* flag)
{
    long long total = n * C;
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride())
    {
        long long i = e / C, c = e - i * C;
        long long id = sdp_index_at(ids, ids64, i);
        if (id < 0 || id >= V)
        {
            if (c == 0) sdp_raise(flag, SDP_ERR_EMBEDDING_ID, i, id, V);
            continue;
        }
        y[e] = weight[id * C + c];
    }
}

// EmbeddingBackward, deterministic without float atomics: the (id, i) pairs are sorted stably by id, then each
// run of equal ids is summed by one thread per channel in increasing i, straight into dweight, exactly the
// CPU's order (dweight[id] += dy[i] for i ascending), so results match the CPU bit for bit without FMA.
//   embedding_sort_keys(ids, ids64, n, V, keys, flag): keys[i] = id << 32 | i (1-D over n). An id outside
//     [0, V) (the forward already raised it; raised again in case nothing read it) gets the sentinel id V, which
//     sorts last and is skipped. n < 2^32.
//   embedding_merge_pass(src, dst, n, width): one pass of a bottom-up merge sort: runs [s, s + width) and
//     [s + width, s + 2·width) of src merge into dst; each key finds its place by a binary search in the other
//     run (keys are distinct, so the result is unique). 1-D over n; ceil(log2 n) passes, ping-ponging buffers.
//   embedding_backward_<T>(dy, keys, n, C, V, dweight): dy (n, C), dweight (V, C) +=. Thread (p, c) with p the
//     first sorted position of an id's run sums that run in order into dweight[id, c]. 1-D over n·C.
extern "C" __global__ void embedding_sort_keys(const void* ids, int ids64, long long n, long long V, long long* keys, int* flag)
{
    for (long long i = sdp_gtid(); i < n; i += sdp_gstride())
    {
        long long id = sdp_index_at(ids, ids64, i);
        if (id < 0 || id >= V)
        {
            sdp_raise(flag, SDP_ERR_EMBEDDING_ID, i, id, V);
            id = V;
        }
        keys[i] = (id << 32) | i;
    }
}

// Number of keys in run[0, len) smaller than key (run sorted ascending).
__device__ __forceinline__ long long sdp_count_below(const long long* run, long long len, long long key)
{
    long long lo = 0, hi = len;
    while (lo < hi)
    {
        long long mid = (lo + hi) >> 1;
        if (run[mid] < key) lo = mid + 1; else hi = mid;
    }
    return lo;
}

extern "C" __global__ void embedding_merge_pass(const long long* src, long long* dst, long long n, long long width)
{
    for (long long i = sdp_gtid(); i < n; i += sdp_gstride())
    {
        long long start = i / (2 * width) * (2 * width);
        long long mid = min(start + width, n), end = min(start + 2 * width, n);
        long long key = src[i];
        long long pos = i < mid ? (i - start) + sdp_count_below(src + mid, end - mid, key)
                                : (i - mid) + sdp_count_below(src + start, mid - start, key);
        dst[start + pos] = key;
    }
}

template <typename T>
__device__ void sdp_embedding_backward_body(const T* __restrict__ dy, const long long* __restrict__ keys, long long n,
                                            long long C, long long V, T* dweight)
{
    long long total = n * C;
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride())
    {
        long long p = e / C, c = e - p * C;
        long long id = keys[p] >> 32;
        if (id >= V || (p > 0 && (keys[p - 1] >> 32) == id)) continue; // the sentinel, or not the run's first
        T* dst = dweight + id * C + c;
        T acc = *dst;
        for (long long q = p; q < n && (keys[q] >> 32) == id; q++) acc += dy[(keys[q] & 0xffffffffLL) * C + c];
        *dst = acc;
    }
}

// rms_norm_forward_<T>(x, weight, rstd, y, rows, C, eps): IBackend.RmsNorm. x, y (rows, C), weight (C), rstd (rows).
//   rstd[r] = 1 / sqrt(Σ x² / C + eps); y = (x · rstd) · weight, the CPU's operation order. Row kernel (as §6):
//   grid min(rows, 65535), block RowThreads(C).
template <typename T>
__device__ void sdp_rms_norm_forward_body(const T* __restrict__ x, const T* __restrict__ w, T* rstd, T* y, long long rows, int C, T eps)
{
    for (long long r = blockIdx.x; r < rows; r += gridDim.x)
    {
        const T* xr = x + r * C;
        T* yr = y + r * C;
        T ss = 0;
        for (int j = threadIdx.x; j < C; j += blockDim.x) ss += xr[j] * xr[j];
        ss = sdp_row_sum(ss);
        T rs = (T)1 / sdp_sqrt(ss / (T)C + eps);
        if (threadIdx.x == 0) rstd[r] = rs;
        for (int j = threadIdx.x; j < C; j += blockDim.x) yr[j] = xr[j] * rs * w[j];
    }
}

// rms_norm_backward_dx_<T>(dy, x, weight, rstd, dx, rows, C): the dx half of IBackend.RmsNormBackward.
//   With d = Σ_j w_j·dy_j·x_j and r = rstd: dx_k += r·w_k·dy_k − x_k·(r³·d/C). Row kernel, as the forward.
template <typename T>
__device__ void sdp_rms_norm_backward_dx_body(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                                              const T* __restrict__ rstd, T* dx, long long rows, int C)
{
    T invC = (T)1 / (T)C;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x)
    {
        const T* xr = x + r * C;
        const T* dyr = dy + r * C;
        T* dxr = dx + r * C;
        T d = 0;
        for (int j = threadIdx.x; j < C; j += blockDim.x) d += w[j] * dyr[j] * xr[j];
        d = sdp_row_sum(d);
        T rs = rstd[r];
        T k = rs * rs * rs * d * invC;
        for (int j = threadIdx.x; j < C; j += blockDim.x) dxr[j] += rs * w[j] * dyr[j] - xr[j] * k;
    }
}

// The dweight half, deterministic in two passes with the CPU's partition (CpuBackend.RmsNormBackward):
//   rms_norm_backward_dw_partial_<T>(dy, x, rstd, partials, rows, C, blocks): partials (blocks, C);
//     partials[b, j] = Σ over rows [rows·b/blocks, rows·(b+1)/blocks) in order of dy·x·rstd.
//     Grid (ceil(C / 256), blocks), block 256: thread j of a block row walks its row range (coalesced in j).
//   rms_norm_backward_dw_finish_<T>(partials, blocks, C, dweight): dweight[j] += Σ_b partials[b, j] in block
//     order. 1-D over C.
// blocks = min(64, ceil(rows / 8)), as the CPU, so the sums are the CPU's own.
template <typename T>
__device__ void sdp_rms_norm_backward_dw_partial_body(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ rstd,
                                                      T* partials, long long rows, int C, int blocks)
{
    long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long b = blockIdx.y;
    if (j >= C) return;
    long long r0 = rows * b / blocks, r1 = rows * (b + 1) / blocks;
    T acc = 0;
    for (long long r = r0; r < r1; r++) acc += dy[r * C + j] * x[r * C + j] * rstd[r];
    partials[b * C + j] = acc;
}

template <typename T>
__device__ void sdp_rms_norm_backward_dw_finish_body(const T* __restrict__ partials, int blocks, long long C, T* dweight)
{
    for (long long j = sdp_gtid(); j < C; j += sdp_gstride())
    {
        T acc = 0;
        for (int b = 0; b < blocks; b++) acc += partials[(long long)b * C + j];
        dweight[j] += acc;
    }
}

// rope_<T>(src, cos, sin, positions, pos64, posShared, offset, dst, B, Tn, H, D, S, backward, flag):
// IBackend.Rope (backward 0) and IBackend.RopeBackward (backward 1). src, dst (B, Tn, H, D), cos/sin (S, D).
// Position of row (b, t): positions[posShared ? t : b·Tn + t] (positions (Tn) / (1, Tn), or (B, Tn)), or
// t + offset when positions is null. With half = D/2 and i < half (pair (i, i + half)):
//   forward:  dst[i] = a_i·cos[p,i] − a_{i+h}·sin[p,i];   dst[i+h] = a_{i+h}·cos[p,i+h] + a_i·sin[p,i+h]
//   backward: dst[i] += a_i·cos[p,i] + a_{i+h}·sin[p,i+h]; dst[i+h] += a_{i+h}·cos[p,i+h] − a_i·sin[p,i]
// A position outside [0, S) raises SDP_ERR_ROPE_POSITION {flat index into positions (t when positions is null),
// p, S} and leaves that pair unwritten. Pairs read both inputs before writing, so dst may alias src.
// 1-D launch over B·Tn·H·half.
template <typename T>
__device__ void sdp_rope_body(const T* src, const T* __restrict__ cs, const T* __restrict__ sn, const void* positions,
                              int pos64, int posShared, int offset, T* dst, long long B, long long Tn, long long H, long long D,
                              long long S, int backward, int* flag)
{
    long long half = D / 2, perRow = H * half, total = B * Tn * perRow;
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride())
    {
        long long row = e / perRow, rem = e - row * perRow;
        long long h = rem / half, i = rem - h * half;
        long long t = row % Tn;
        long long at = positions ? (posShared ? t : row) : t;
        long long p = positions ? sdp_index_at(positions, pos64, at) : t + offset;
        if (p < 0 || p >= S)
        {
            if (h == 0 && i == 0) sdp_raise(flag, SDP_ERR_ROPE_POSITION, at, p, S);
            continue;
        }
        const T* c = cs + p * D;
        const T* s = sn + p * D;
        long long base = row * H * D + h * D;
        T a1 = src[base + i], a2 = src[base + i + half];
        if (!backward)
        {
            dst[base + i] = a1 * c[i] - a2 * s[i];
            dst[base + i + half] = a2 * c[i + half] + a1 * s[i + half];
        }
        else
        {
            dst[base + i] += a1 * c[i] + a2 * s[i + half];
            dst[base + i + half] += a2 * c[i + half] - a1 * s[i];
        }
    }
}

// attention_swap_heads_<T>(src, dst, b, p, q, d, accumulate): IBackend.AttentionSwapHeads. src (b, p, q, d) ->
// dst (b, q, p, d): dst = src, or dst += src when accumulate. 1-D launch over b·p·q·d (coalesced writes).
template <typename T>
__device__ void sdp_attention_swap_heads_body(const T* __restrict__ src, T* __restrict__ dst, long long b, long long p,
                                              long long q, long long d, int accumulate)
{
    long long total = b * p * q * d;
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride())
    {
        long long row = e / d, k = e - row * d;
        long long pi = row % p, rest = row / p, qi = rest % q, bi = rest / q;
        T v = src[((bi * p + pi) * q + qi) * d + k];
        dst[e] = accumulate ? dst[e] + v : v;
    }
}

// ---- causal grouped-query attention (IBackend.CausalAttention / CausalAttentionBackward) ----------------------
// q (B, H, Tn, D), k and v (B, KVH, Tn, D), query head h reads kv head h / (H / KVH); scale = 1/√D;
// lse (B, H, Tn). Tiled as FlashAttention: 16 query rows × 16 keys per tile, block 256 = 16 rows × 16 lanes,
// thread (r, c) = (threadIdx.x / 16, threadIdx.x % 16). Scores use the full head dim from shared memory; each
// thread keeps up to 16 output columns d = d0 + c + 16·i in registers, and a block covers one 256-wide chunk
// d0 of the output columns (grid.y = heads · ceil(D / 256); chunks beyond the first recompute the scores and
// write no lse). Row statistics (max, sum, Δ) are kept by one thread per row, summing its 16 keys in order:
// deterministic, no atomics. Dynamic shared memory, row stride D + 1 (conflict-free column reads):
//   forward:  (2·16·(D+1) + 16·17 + 3·16) · sizeof(T)
//   backward: (4·16·(D+1) + 2·16·17 + 3·16) · sizeof(T)   (above 48 KiB the host opts in)
// Results differ from the CPU's two-pass softmax and GEMMs by rounding only (online rescaling, other sum order).
#define SDP_ATT_TILE 16
#define SDP_ATT_REGS 16
#define SDP_ATT_DCHUNK (SDP_ATT_TILE * SDP_ATT_REGS)

// rows [row0, row0 + 16) of a (Tn, D) matrix into shared s (16, D + 1), zero beyond Tn.
template <typename T>
__device__ __forceinline__ void sdp_att_load_tile(T* s, const T* __restrict__ g, int row0, int Tn, int D)
{
    int ld = D + 1;
    for (int e = threadIdx.x; e < SDP_ATT_TILE * D; e += blockDim.x)
    {
        int r = e / D, d = e - r * D;
        s[r * ld + d] = row0 + r < Tn ? g[(long long)(row0 + r) * D + d] : (T)0;
    }
}

template <typename T>
__device__ __forceinline__ T sdp_att_dot(const T* a, const T* b, int D)
{
    T s = 0;
    for (int d = 0; d < D; d++) s += a[d] * b[d];
    return s;
}

// attention_forward_<T>(q, k, v, y, lse, H, KVH, Tn, D, scale): y (B, H, Tn, D) and lse (B, H, Tn).
// Grid (ceil(Tn / 16), H · ceil(D / 256), B), block 256, forward dynamic shared memory.
template <typename T>
__device__ void sdp_attention_forward_body(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                           T* __restrict__ y, T* __restrict__ lse, int H, int KVH, int Tn, int D, T scale)
{
    const int tile = SDP_ATT_TILE, ld = D + 1, pld = SDP_ATT_TILE + 1;
    int chunks = (D + SDP_ATT_DCHUNK - 1) / SDP_ATT_DCHUNK;
    int h = blockIdx.y / chunks, chunk = blockIdx.y - h * chunks, d0 = chunk * SDP_ATT_DCHUNK;
    int b = blockIdx.z, kvh = h / (H / KVH), q0 = blockIdx.x * tile;
    int r = threadIdx.x / tile, c = threadIdx.x % tile, qi = q0 + r;
    bool live = qi < Tn;
    long long qHead = ((long long)b * H + h) * Tn, kvHead = ((long long)b * KVH + kvh) * Tn;

    T* Qs = (T*)dyn_smem;
    T* KVs = Qs + tile * ld;
    T* Ps = KVs + tile * ld;
    T* rowMax = Ps + tile * pld;
    T* rowSum = rowMax + tile;
    T* rowRescale = rowSum + tile;

    sdp_att_load_tile(Qs, q + qHead * D, q0, Tn, D);
    if (threadIdx.x < tile)
    {
        rowMax[threadIdx.x] = -(T)SDP_POS_INF_F;
        rowSum[threadIdx.x] = 0;
    }
    T acc[SDP_ATT_REGS];
    for (int i = 0; i < SDP_ATT_REGS; i++) acc[i] = 0;

    int kEnd = min(q0 + tile, Tn); // keys any row of this tile can see
    for (int k0 = 0; k0 < kEnd; k0 += tile)
    {
        __syncthreads(); // the previous V tile is consumed
        sdp_att_load_tile(KVs, k + kvHead * D, k0, Tn, D);
        __syncthreads();
        int kj = k0 + c;
        Ps[r * pld + c] = live && kj <= qi ? sdp_att_dot(Qs + r * ld, KVs + c * ld, D) * scale : -(T)SDP_POS_INF_F;
        __syncthreads();
        if (c == 0 && live)
        {
            // Online softmax: key k0 <= q0 <= qi is always visible, so the new max is finite.
            T* pr = Ps + r * pld;
            T tileMax = pr[0];
            for (int j = 1; j < tile; j++) tileMax = sdp_max(tileMax, pr[j]);
            T mOld = rowMax[r], mNew = sdp_max(mOld, tileMax);
            T sum = 0;
            for (int j = 0; j < tile; j++)
            {
                T pj = sdp_exp(pr[j] - mNew); // masked: exp(-inf) = 0
                pr[j] = pj;
                sum += pj;
            }
            T rescale = sdp_exp(mOld - mNew); // 0 on the first tile
            rowSum[r] = rowSum[r] * rescale + sum;
            rowMax[r] = mNew;
            rowRescale[r] = rescale;
        }
        __syncthreads();
        sdp_att_load_tile(KVs, v + kvHead * D, k0, Tn, D);
        __syncthreads();
        if (live)
        {
            T rescale = rowRescale[r];
            const T* pr = Ps + r * pld;
            #pragma unroll
            for (int i = 0; i < SDP_ATT_REGS; i++)
            {
                int d = d0 + c + tile * i;
                if (d >= D) continue; // the unrolled loop keeps acc[] in registers
                T o = acc[i] * rescale;
                for (int j = 0; j < tile; j++) o += pr[j] * KVs[j * ld + d];
                acc[i] = o;
            }
        }
    }
    if (live)
    {
        T l = rowSum[r];
        T* yr = y + (qHead + qi) * D;
        #pragma unroll
        for (int i = 0; i < SDP_ATT_REGS; i++)
        {
            int d = d0 + c + tile * i;
            if (d >= D) continue; // the unrolled loop keeps acc[] in registers
            yr[d] = acc[i] / l;
        }
        if (chunk == 0 && c == 0) lse[qHead + qi] = rowMax[r] + sdp_log(l);
    }
}

// attention_backward_dq_<T>(q, k, v, dy, lse, delta, dq, H, KVH, Tn, D, scale): per query tile, with
// P = exp(q·kᵀ·scale − lse) under the causal mask and dP = dy·vᵀ:
//   pass 1: Δ_i = Σ_j P_ij·dP_ij, written to delta (B, H, Tn) (nullable; only chunk 0 writes);
//   pass 2 (dq non-null): dq_i += scale · Σ_j P_ij·(dP_ij − Δ_i)·k_j, keys in order.
// Grid (ceil(Tn / 16), H · ceil(D / 256), B), block 256, backward dynamic shared memory. Launched when dq or dk
// is wanted (dk needs Δ), before attention_backward_dkdv_<T>.
template <typename T>
__device__ void sdp_attention_backward_dq_body(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                               const T* __restrict__ dy, const T* __restrict__ lse, T* __restrict__ delta,
                                               T* dq, int H, int KVH, int Tn, int D, T scale)
{
    const int tile = SDP_ATT_TILE, ld = D + 1, pld = SDP_ATT_TILE + 1;
    int chunks = (D + SDP_ATT_DCHUNK - 1) / SDP_ATT_DCHUNK;
    int h = blockIdx.y / chunks, chunk = blockIdx.y - h * chunks, d0 = chunk * SDP_ATT_DCHUNK;
    int b = blockIdx.z, kvh = h / (H / KVH), q0 = blockIdx.x * tile;
    int r = threadIdx.x / tile, c = threadIdx.x % tile, qi = q0 + r;
    bool live = qi < Tn;
    long long qHead = ((long long)b * H + h) * Tn, kvHead = ((long long)b * KVH + kvh) * Tn;

    T* Qs = (T*)dyn_smem;
    T* DYs = Qs + tile * ld;
    T* Ks = DYs + tile * ld;
    T* Vs = Ks + tile * ld;
    T* Ps = Vs + tile * ld;
    T* Gs = Ps + tile * pld;
    T* rowDelta = Gs + tile * pld;

    sdp_att_load_tile(Qs, q + qHead * D, q0, Tn, D);
    sdp_att_load_tile(DYs, dy + qHead * D, q0, Tn, D);
    T rowLse = live ? lse[qHead + qi] : (T)0;
    int kEnd = min(q0 + tile, Tn);

    // Pass 1: Δ.
    T rowAcc = 0; // used by the c == 0 thread of each row
    for (int k0 = 0; k0 < kEnd; k0 += tile)
    {
        __syncthreads();
        sdp_att_load_tile(Ks, k + kvHead * D, k0, Tn, D);
        sdp_att_load_tile(Vs, v + kvHead * D, k0, Tn, D);
        __syncthreads();
        T pdp = 0;
        if (live && k0 + c <= qi)
        {
            T p = sdp_exp(sdp_att_dot(Qs + r * ld, Ks + c * ld, D) * scale - rowLse);
            pdp = p * sdp_att_dot(DYs + r * ld, Vs + c * ld, D);
        }
        Ps[r * pld + c] = pdp;
        __syncthreads();
        if (c == 0)
            for (int j = 0; j < tile; j++) rowAcc += Ps[r * pld + j];
    }
    if (c == 0)
    {
        rowDelta[r] = rowAcc;
        if (delta && live && chunk == 0) delta[qHead + qi] = rowAcc;
    }
    if (!dq) return; // uniform across the block

    // Pass 2: dq.
    T acc[SDP_ATT_REGS];
    for (int i = 0; i < SDP_ATT_REGS; i++) acc[i] = 0;
    for (int k0 = 0; k0 < kEnd; k0 += tile)
    {
        __syncthreads();
        sdp_att_load_tile(Ks, k + kvHead * D, k0, Tn, D);
        sdp_att_load_tile(Vs, v + kvHead * D, k0, Tn, D);
        __syncthreads();
        T ds = 0;
        if (live && k0 + c <= qi)
        {
            T p = sdp_exp(sdp_att_dot(Qs + r * ld, Ks + c * ld, D) * scale - rowLse);
            T dp = sdp_att_dot(DYs + r * ld, Vs + c * ld, D);
            ds = (dp - rowDelta[r]) * p;
        }
        Gs[r * pld + c] = ds;
        __syncthreads();
        if (live)
        {
            const T* gr = Gs + r * pld;
            #pragma unroll
            for (int i = 0; i < SDP_ATT_REGS; i++)
            {
                int d = d0 + c + tile * i;
                if (d >= D) continue; // the unrolled loop keeps acc[] in registers
                T o = acc[i];
                for (int j = 0; j < tile; j++) o += gr[j] * Ks[j * ld + d];
                acc[i] = o;
            }
        }
    }
    if (live)
    {
        T* dqr = dq + (qHead + qi) * D;
        #pragma unroll
        for (int i = 0; i < SDP_ATT_REGS; i++)
        {
            int d = d0 + c + tile * i;
            if (d >= D) continue; // the unrolled loop keeps acc[] in registers
            dqr[d] += scale * acc[i];
        }
    }
}

// attention_backward_dkdv_<T>(q, k, v, dy, lse, delta, dk, dv, H, KVH, Tn, D, scale): per key tile of a kv
// head, over the G = H / KVH query heads of its group and the query tiles at or after the key tile, in that
// order (the CPU's row order of the (G·Tn, Tn) slice):
//   dv_j += Σ_i P_ij·dy_i;   dk_j += scale · Σ_i P_ij·(dP_ij − Δ_i)·q_i   (dk or dv nullable; dk needs delta).
// Here thread (r, c) is (key row, query column) for the scores and (key row, output lane) for the sums.
// Grid (ceil(Tn / 16), KVH · ceil(D / 256), B), block 256, backward dynamic shared memory. No atomics: each key
// row's gradient is owned by one block.
template <typename T>
__device__ void sdp_attention_backward_dkdv_body(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                                 const T* __restrict__ dy, const T* __restrict__ lse, const T* __restrict__ delta,
                                                 T* dk, T* dv, int H, int KVH, int Tn, int D, T scale)
{
    const int tile = SDP_ATT_TILE, ld = D + 1, pld = SDP_ATT_TILE + 1;
    int chunks = (D + SDP_ATT_DCHUNK - 1) / SDP_ATT_DCHUNK;
    int kvh = blockIdx.y / chunks, chunk = blockIdx.y - kvh * chunks, d0 = chunk * SDP_ATT_DCHUNK;
    int b = blockIdx.z, groups = H / KVH, k0 = blockIdx.x * tile;
    int r = threadIdx.x / tile, c = threadIdx.x % tile, kj = k0 + r;
    bool live = kj < Tn;
    long long kvHead = ((long long)b * KVH + kvh) * Tn;

    T* Ks = (T*)dyn_smem;
    T* Vs = Ks + tile * ld;
    T* Qs = Vs + tile * ld;
    T* DYs = Qs + tile * ld;
    T* Ps = DYs + tile * ld;
    T* Gs = Ps + tile * pld;
    T* colLse = Gs + tile * pld;
    T* colDelta = colLse + tile;

    sdp_att_load_tile(Ks, k + kvHead * D, k0, Tn, D);
    sdp_att_load_tile(Vs, v + kvHead * D, k0, Tn, D);
    T accK[SDP_ATT_REGS], accV[SDP_ATT_REGS];
    for (int i = 0; i < SDP_ATT_REGS; i++) accK[i] = accV[i] = 0;

    for (int g = 0; g < groups; g++)
    {
        long long qHead = ((long long)b * H + kvh * groups + g) * Tn;
        for (int q0 = k0; q0 < Tn; q0 += tile)
        {
            __syncthreads();
            sdp_att_load_tile(Qs, q + qHead * D, q0, Tn, D);
            sdp_att_load_tile(DYs, dy + qHead * D, q0, Tn, D);
            if (threadIdx.x < tile)
            {
                bool in = q0 + (int)threadIdx.x < Tn;
                colLse[threadIdx.x] = in ? lse[qHead + q0 + threadIdx.x] : (T)0;
                colDelta[threadIdx.x] = in && dk ? delta[qHead + q0 + threadIdx.x] : (T)0;
            }
            __syncthreads();
            int qi = q0 + c;
            T p = 0, ds = 0;
            if (live && qi < Tn && qi >= kj)
            {
                p = sdp_exp(sdp_att_dot(Qs + c * ld, Ks + r * ld, D) * scale - colLse[c]);
                if (dk) ds = (sdp_att_dot(DYs + c * ld, Vs + r * ld, D) - colDelta[c]) * p;
            }
            Ps[r * pld + c] = p;
            Gs[r * pld + c] = ds;
            __syncthreads();
            if (live)
            {
                const T* pr = Ps + r * pld;
                const T* gr = Gs + r * pld;
                #pragma unroll
                for (int i = 0; i < SDP_ATT_REGS; i++)
                {
                    int d = d0 + c + tile * i;
                    if (d >= D) continue; // the unrolled loop keeps acc[] in registers
                    T ov = accV[i], ok = accK[i];
                    for (int j = 0; j < tile; j++)
                    {
                        ov += pr[j] * DYs[j * ld + d];
                        ok += gr[j] * Qs[j * ld + d];
                    }
                    accV[i] = ov;
                    accK[i] = ok;
                }
            }
        }
    }
    if (live)
    {
        long long row = (kvHead + kj) * D;
        #pragma unroll
        for (int i = 0; i < SDP_ATT_REGS; i++)
        {
            int d = d0 + c + tile * i;
            if (d >= D) continue; // the unrolled loop keeps acc[] in registers
            if (dv) dv[row + d] += accV[i];
            if (dk) dk[row + d] += scale * accK[i];
        }
    }
}

#define SDP_TRANSFORMER(SFX, T)                                                                                        \
    extern "C" __global__ void embedding_forward_##SFX(const T* weight, const void* ids, int ids64, T* y, long long n, \
                                                      long long C, long long V, int* flag)                            \
    {                                                                                                                  \
        sdp_embedding_forward_body<T>(weight, ids, ids64, y, n, C, V, flag);                                           \
    }                                                                                                                  \
    extern "C" __global__ void embedding_backward_##SFX(const T* dy, const long long* keys, long long n, long long C,  \
                                                       long long V, T* dweight)                                        \
    {                                                                                                                  \
        sdp_embedding_backward_body<T>(dy, keys, n, C, V, dweight);                                                    \
    }                                                                                                                  \
    extern "C" __global__ void rms_norm_forward_##SFX(const T* x, const T* w, T* rstd, T* y, long long rows, int C,    \
                                                     T eps)                                                            \
    {                                                                                                                  \
        sdp_rms_norm_forward_body<T>(x, w, rstd, y, rows, C, eps);                                                     \
    }                                                                                                                  \
    extern "C" __global__ void rms_norm_backward_dx_##SFX(const T* dy, const T* x, const T* w, const T* rstd, T* dx,   \
                                                         long long rows, int C)                                        \
    {                                                                                                                  \
        sdp_rms_norm_backward_dx_body<T>(dy, x, w, rstd, dx, rows, C);                                                 \
    }                                                                                                                  \
    extern "C" __global__ void rms_norm_backward_dw_partial_##SFX(const T* dy, const T* x, const T* rstd, T* partials, \
                                                                 long long rows, int C, int blocks)                    \
    {                                                                                                                  \
        sdp_rms_norm_backward_dw_partial_body<T>(dy, x, rstd, partials, rows, C, blocks);                              \
    }                                                                                                                  \
    extern "C" __global__ void rms_norm_backward_dw_finish_##SFX(const T* partials, int blocks, long long C, T* dweight) \
    {                                                                                                                  \
        sdp_rms_norm_backward_dw_finish_body<T>(partials, blocks, C, dweight);                                         \
    }                                                                                                                  \
    extern "C" __global__ void rope_##SFX(const T* src, const T* cs, const T* sn, const void* positions, int pos64,    \
                                         int posShared, int offset, T* dst, long long B, long long Tn, long long H,    \
                                         long long D, long long S, int backward, int* flag)                            \
    {                                                                                                                  \
        sdp_rope_body<T>(src, cs, sn, positions, pos64, posShared, offset, dst, B, Tn, H, D, S, backward, flag);       \
    }                                                                                                                  \
    extern "C" __global__ void attention_swap_heads_##SFX(const T* src, T* dst, long long b, long long p, long long q,  \
                                                         long long d, int accumulate)                                  \
    {                                                                                                                  \
        sdp_attention_swap_heads_body<T>(src, dst, b, p, q, d, accumulate);                                            \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(256) attention_forward_##SFX(const T* q, const T* k, const T* v, T* y, \
        T* lse, int H, int KVH, int Tn, int D, T scale)                                                                \
    {                                                                                                                  \
        sdp_attention_forward_body<T>(q, k, v, y, lse, H, KVH, Tn, D, scale);                                          \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(256) attention_backward_dq_##SFX(const T* q, const T* k, const T* v,  \
        const T* dy, const T* lse, T* delta, T* dq, int H, int KVH, int Tn, int D, T scale)                            \
    {                                                                                                                  \
        sdp_attention_backward_dq_body<T>(q, k, v, dy, lse, delta, dq, H, KVH, Tn, D, scale);                          \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(256) attention_backward_dkdv_##SFX(const T* q, const T* k,            \
        const T* v, const T* dy, const T* lse, const T* delta, T* dk, T* dv, int H, int KVH, int Tn, int D, T scale)    \
    {                                                                                                                  \
        sdp_attention_backward_dkdv_body<T>(q, k, v, dy, lse, delta, dk, dv, H, KVH, Tn, D, scale);                    \
    }
SDP_TRANSFORMER(f32, float)
SDP_TRANSFORMER(f64, double)

// ============================================================================================================
// 8. Convolution, BatchNorm and pooling (NCHW)
// ============================================================================================================

// Activations are NCHW, contiguous. Every kernel here is deterministic: reductions run in a fixed order (per
// thread in index order, then a fixed shared-memory tree), and no output element is written by two threads.
// Float atomics are never used.

// ---- 8a. Convolution ---------------------------------------------------------------------------------------
//
// IBackend.Conv2d / Conv2dBackward. float32 runs im2col + cuBLAS Sgemm (the GEMM calls are documented in
// docs/kernels.md §8); float64 runs the direct kernels below (no Dgemm in the cuBLAS subset Sdp binds yet).
// Geometry, shared by all: x (N, C, H, W), w (O, C, KH, KW), y (N, O, OH, OW), P = OH·OW, K = C·KH·KW;
// output (oh, ow) reads input (oh·s - p + kh, ow·s - p + kw), zero outside the plane.

// Column matrix of a group of `count` images starting at image n0: cols (K, count·P), row-major,
// image i in columns [i·P, (i + 1)·P) (CpuBackend.Im2ColGroup's layout, so one GEMM covers the group).
// cols[(c·KH + kh)·KW + kw, i·P + oh·OW + ow] = x[n0 + i, c, oh·s - p + kh, ow·s - p + kw], 0 outside.
// Launch: 1-D grid-stride over K·count·P.
template <typename T>
__device__ __forceinline__ void conv2d_im2col_body(const T* __restrict__ x, T* __restrict__ cols, int n0, int count, int C, int H,
                                                   int W, int KH, int KW, int OH, int OW, int stride, int pad)
{
    long long P = (long long)OH * OW, L = (long long)count * P, total = (long long)C * KH * KW * L;
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride())
    {
        long long row = e / L, col = e - row * L;
        int i = (int)(col / P), pix = (int)(col - (long long)i * P);
        int oh = pix / OW, ow = pix - oh * OW;
        int kw = (int)(row % KW), kh = (int)((row / KW) % KH), c = (int)(row / ((long long)KW * KH));
        int ih = oh * stride - pad + kh, iw = ow * stride - pad + kw;
        T v = (T)0;
        if (ih >= 0 && ih < H && iw >= 0 && iw < W) v = x[(((long long)(n0 + i) * C + c) * H + ih) * W + iw];
        cols[e] = v;
    }
}

// The adjoint of conv2d_im2col: dx[n0 + i, c, ih, iw] += Σ over (kh, kw) in row-major order of
// dcols[(c·KH + kh)·KW + kw, i·P + oh·OW + ow] for every (kh, kw) whose output (oh, ow) lands on (ih, iw).
// One thread per dx element gathers its terms (no atomics), in the order CpuBackend.Col2ImChannel adds them.
// Launch: 1-D grid-stride over count·C·H·W.
template <typename T>
__device__ __forceinline__ void conv2d_col2im_body(const T* __restrict__ dcols, T* __restrict__ dx, int n0, int count, int C, int H,
                                                   int W, int KH, int KW, int OH, int OW, int stride, int pad)
{
    long long P = (long long)OH * OW, L = (long long)count * P, plane = (long long)H * W, total = (long long)count * C * plane;
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride())
    {
        long long ic = e / plane;
        int pos = (int)(e - ic * plane), ih = pos / W, iw = pos - ih * W;
        int i = (int)(ic / C), c = (int)(ic - (long long)i * C);
        long long dxi = ((long long)n0 * C) * plane + e;
        T acc = dx[dxi];
        for (int kh = 0; kh < KH; kh++)
        {
            int th = ih + pad - kh; // = oh·s
            if (th < 0 || th % stride != 0) continue;
            int oh = th / stride;
            if (oh >= OH) continue;
            for (int kw = 0; kw < KW; kw++)
            {
                int tw = iw + pad - kw;
                if (tw < 0 || tw % stride != 0) continue;
                int ow = tw / stride;
                if (ow >= OW) continue;
                acc += dcols[((long long)(c * KH + kh) * KW + kw) * L + (long long)i * P + (long long)oh * OW + ow];
            }
        }
        dx[dxi] = acc;
    }
}

// Packs dy of images [n0, n0 + count) into buf (O, count·P), image i in columns [i·P, (i + 1)·P), so the weight
// gradient of the group is one GEMM (CpuBackend.GatherDy). Launch: 1-D grid-stride over O·count·P.
template <typename T>
__device__ __forceinline__ void conv2d_pack_dy_body(const T* __restrict__ dy, T* __restrict__ buf, int n0, int count, int O, long long P)
{
    long long L = (long long)count * P, total = (long long)O * L;
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride())
    {
        long long o = e / L, col = e - o * L, i = col / P, pix = col - i * P;
        buf[e] = dy[((n0 + i) * O + o) * P + pix];
    }
}

// y (N, O, P) += bias (O)[o], after the GEMM wrote y (the CPU's order: the product rounded, then the bias added).
// Launch: 1-D grid-stride over N·O·P.
template <typename T>
__device__ __forceinline__ void conv2d_add_bias_body(T* __restrict__ y, const T* __restrict__ bias, int O, long long P, long long total)
{
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride()) y[e] += bias[(e / P) % O];
}

// Direct convolution, one thread per output element: y[n, o, oh, ow] = Σ_{c, kh, kw} x·w (in that order) + bias[o]
// (bias nullable). Launch: 1-D grid-stride over N·O·OH·OW.
template <typename T>
__device__ __forceinline__ void conv2d_direct_forward_body(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                                                           T* __restrict__ y, int N, int C, int H, int W, int O, int KH, int KW, int OH,
                                                           int OW, int stride, int pad)
{
    long long P = (long long)OH * OW, total = (long long)N * O * P;
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride())
    {
        long long no = e / P;
        int pix = (int)(e - no * P), oh = pix / OW, ow = pix - oh * OW;
        int n = (int)(no / O), o = (int)(no - (long long)n * O);
        T acc = (T)0;
        for (int c = 0; c < C; c++)
        {
            const T* xc = x + ((long long)n * C + c) * H * W;
            const T* wc = w + ((long long)o * C + c) * KH * KW;
            for (int kh = 0; kh < KH; kh++)
            {
                int ih = oh * stride - pad + kh;
                if (ih < 0 || ih >= H) continue;
                for (int kw = 0; kw < KW; kw++)
                {
                    int iw = ow * stride - pad + kw;
                    if (iw < 0 || iw >= W) continue;
                    acc += xc[(long long)ih * W + iw] * wc[kh * KW + kw];
                }
            }
        }
        y[e] = bias ? acc + bias[o] : acc;
    }
}

// Direct input gradient, one thread per dx element: dx[n, c, ih, iw] += Σ_{o, kh, kw} dy[n, o, oh, ow]·w[o, c, kh, kw]
// over the (oh, ow) whose window covers (ih, iw); the sum is formed first, then added to dx once.
// Launch: 1-D grid-stride over N·C·H·W.
template <typename T>
__device__ __forceinline__ void conv2d_direct_backward_input_body(const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx,
                                                                  int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW,
                                                                  int stride, int pad)
{
    long long plane = (long long)H * W, P = (long long)OH * OW, total = (long long)N * C * plane;
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride())
    {
        long long nc = e / plane;
        int pos = (int)(e - nc * plane), ih = pos / W, iw = pos - ih * W;
        int n = (int)(nc / C), c = (int)(nc - (long long)n * C);
        T acc = (T)0;
        for (int o = 0; o < O; o++)
        {
            const T* dyo = dy + ((long long)n * O + o) * P;
            const T* wo = w + ((long long)o * C + c) * KH * KW;
            for (int kh = 0; kh < KH; kh++)
            {
                int th = ih + pad - kh;
                if (th < 0 || th % stride != 0) continue;
                int oh = th / stride;
                if (oh >= OH) continue;
                for (int kw = 0; kw < KW; kw++)
                {
                    int tw = iw + pad - kw;
                    if (tw < 0 || tw % stride != 0) continue;
                    int ow = tw / stride;
                    if (ow >= OW) continue;
                    acc += dyo[(long long)oh * OW + ow] * wo[kh * KW + kw];
                }
            }
        }
        dx[e] += acc;
    }
}

// Direct weight gradient, one block per weight element (grid-stride over blocks): dw[o, c, kh, kw] +=
// Σ_{n, oh, ow} dy[n, o, oh, ow]·x[n, c, oh·s - p + kh, ow·s - p + kw]. Each thread sums its strided share of
// the N·OH·OW terms in float64, then the block sums in a fixed tree. Launch: grid min(O·C·KH·KW, 65535), block 256.
template <typename T>
__device__ __forceinline__ void conv2d_direct_backward_weight_body(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dw,
                                                                   int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW,
                                                                   int stride, int pad)
{
    long long P = (long long)OH * OW, terms = (long long)N * P, weights = (long long)O * C * KH * KW;
    for (long long e = blockIdx.x; e < weights; e += gridDim.x)
    {
        int kw = (int)(e % KW), kh = (int)((e / KW) % KH), c = (int)((e / ((long long)KW * KH)) % C);
        int o = (int)(e / ((long long)KW * KH * C));
        double acc = 0.0;
        for (long long t = threadIdx.x; t < terms; t += blockDim.x)
        {
            int n = (int)(t / P), pix = (int)(t - (long long)n * P), oh = pix / OW, ow = pix - oh * OW;
            int ih = oh * stride - pad + kh, iw = ow * stride - pad + kw;
            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
            acc += (double)dy[((long long)n * O + o) * P + pix] * (double)x[(((long long)n * C + c) * H + ih) * W + iw];
        }
        double s = sdp_block_sum_double(acc);
        if (threadIdx.x == 0) dw[e] += (T)s;
    }
}

// dbias (O) += Σ_{n, p} dy[n, o, p], one block per channel (grid-stride over blocks), float64 sums: each thread
// its strided share in index order, then a fixed tree. Launch: grid min(O, 65535), block 256.
template <typename T>
__device__ __forceinline__ void conv2d_bias_grad_body(const T* __restrict__ dy, T* __restrict__ dbias, int N, int O, long long P)
{
    long long terms = (long long)N * P;
    for (int o = blockIdx.x; o < O; o += gridDim.x)
    {
        double acc = 0.0;
        for (long long t = threadIdx.x; t < terms; t += blockDim.x)
        {
            long long n = t / P;
            acc += (double)dy[(n * O + o) * P + (t - n * P)];
        }
        double s = sdp_block_sum_double(acc);
        if (threadIdx.x == 0) dbias[o] += (T)s;
    }
}

#define SDP_CONV_GEMM_HELPERS(SFX, T)                                                                                  \
    extern "C" __global__ void conv2d_im2col_##SFX(const T* x, T* cols, int n0, int count, int C, int H, int W, int KH, \
                                                   int KW, int OH, int OW, int stride, int pad)                        \
    {                                                                                                                  \
        conv2d_im2col_body<T>(x, cols, n0, count, C, H, W, KH, KW, OH, OW, stride, pad);                               \
    }                                                                                                                  \
    extern "C" __global__ void conv2d_col2im_##SFX(const T* dcols, T* dx, int n0, int count, int C, int H, int W, int KH, \
                                                   int KW, int OH, int OW, int stride, int pad)                        \
    {                                                                                                                  \
        conv2d_col2im_body<T>(dcols, dx, n0, count, C, H, W, KH, KW, OH, OW, stride, pad);                             \
    }                                                                                                                  \
    extern "C" __global__ void conv2d_pack_dy_##SFX(const T* dy, T* buf, int n0, int count, int O, long long P)        \
    {                                                                                                                  \
        conv2d_pack_dy_body<T>(dy, buf, n0, count, O, P);                                                              \
    }                                                                                                                  \
    extern "C" __global__ void conv2d_add_bias_##SFX(T* y, const T* bias, int O, long long P, long long total)         \
    {                                                                                                                  \
        conv2d_add_bias_body<T>(y, bias, O, P, total);                                                                 \
    }
#define SDP_CONV_DIRECT(SFX, T)                                                                                        \
    extern "C" __global__ void conv2d_direct_forward_##SFX(const T* x, const T* w, const T* bias, T* y, int N, int C,   \
                                                           int H, int W, int O, int KH, int KW, int OH, int OW,        \
                                                           int stride, int pad)                                        \
    {                                                                                                                  \
        conv2d_direct_forward_body<T>(x, w, bias, y, N, C, H, W, O, KH, KW, OH, OW, stride, pad);                      \
    }                                                                                                                  \
    extern "C" __global__ void conv2d_direct_backward_input_##SFX(const T* dy, const T* w, T* dx, int N, int C, int H,  \
                                                                  int W, int O, int KH, int KW, int OH, int OW,        \
                                                                  int stride, int pad)                                 \
    {                                                                                                                  \
        conv2d_direct_backward_input_body<T>(dy, w, dx, N, C, H, W, O, KH, KW, OH, OW, stride, pad);                   \
    }                                                                                                                  \
    extern "C" __global__ void conv2d_direct_backward_weight_##SFX(const T* x, const T* dy, T* dw, int N, int C, int H, \
                                                                   int W, int O, int KH, int KW, int OH, int OW,       \
                                                                   int stride, int pad)                                \
    {                                                                                                                  \
        conv2d_direct_backward_weight_body<T>(x, dy, dw, N, C, H, W, O, KH, KW, OH, OW, stride, pad);                 \
    }
// float32 goes through cuBLAS (the GEMM helpers); float64 through the direct kernels.
SDP_CONV_GEMM_HELPERS(f32, float)
SDP_CONV_DIRECT(f64, double)
extern "C" __global__ void conv2d_bias_grad_f32(const float* dy, float* dbias, int N, int O, long long P) { conv2d_bias_grad_body<float>(dy, dbias, N, O, P); }
extern "C" __global__ void conv2d_bias_grad_f64(const double* dy, double* dbias, int N, int O, long long P) { conv2d_bias_grad_body<double>(dy, dbias, N, O, P); }

// ---- 8b. BatchNorm2d ---------------------------------------------------------------------------------------
//
// One block per channel (grid-stride over blocks: grid min(C, 65535)), block 256 (a power of two, for
// sdp_block_sum_double). Per-channel sums are float64: each thread sums its strided share of the M = N·plane
// values in index order, then the block sums in a fixed tree; CpuBackend.BatchNorm sums vectorised blocks in T
// carried in float64, so fp32 results agree to about 1e-6 relative, not bitwise.

// Broadcasts thread 0's value to the whole block (all threads must call).
__device__ __forceinline__ double sdp_block_broadcast_double(double v)
{
    __shared__ double slot;
    if (threadIdx.x == 0) slot = v;
    __syncthreads();
    double r = slot;
    __syncthreads(); // slot may be reused by the next broadcast
    return r;
}

// Element t of channel c's M values, t = i·plane + j: x[(i·C + c)·plane + j].
__device__ __forceinline__ long long sdp_bn_offset(long long t, int C, int c, long long plane)
{
    long long i = t / plane;
    return (i * C + c) * plane + (t - i * plane);
}

// batchnorm2d_forward_<T>(x, weight, bias, runningMean, runningVar, y, mean, rstd, N, C, plane, training, momentum, eps)
// IBackend.BatchNorm2d, formulas and rounding points as CpuBackend.BatchNorm2dCore:
//   training: mu = Σx / M; var = Σ (x - (T)mu)² / M (biased); rstd = 1 / √(var + eps), in float64;
//             running mean/var (C) updated in place: r = (1 - momentum)·r + momentum·stat (unbiased var·M/(M-1));
//   eval:     mu = runningMean[c], rstd = 1 / √(runningVar[c] + eps); running stats untouched.
//   mean[c] = (T)mu, rstd[c] = (T)rstd; y = x·(T)(w·rstd) + (T)(b - mu·w·rstd).
template <typename T>
__device__ __forceinline__ void batchnorm2d_forward_body(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                                                         T* runningMean, T* runningVar, T* __restrict__ y, T* __restrict__ mean,
                                                         T* __restrict__ rstd, int N, int C, long long plane, int training,
                                                         double momentum, double eps)
{
    long long m = (long long)N * plane;
    for (int c = blockIdx.x; c < C; c += gridDim.x)
    {
        double mu, rs;
        if (training)
        {
            double acc = 0.0;
            for (long long t = threadIdx.x; t < m; t += blockDim.x) acc += (double)x[sdp_bn_offset(t, C, c, plane)];
            mu = sdp_block_broadcast_double(sdp_block_sum_double(acc) / (double)m);
            T tmu = (T)mu;
            double sq = 0.0;
            for (long long t = threadIdx.x; t < m; t += blockDim.x)
            {
                T d = x[sdp_bn_offset(t, C, c, plane)] - tmu;
                sq += (double)(d * d);
            }
            double variance = sdp_block_broadcast_double(sdp_block_sum_double(sq) / (double)m);
            rs = 1.0 / sqrt(variance + eps);
            if (threadIdx.x == 0)
            {
                runningMean[c] = (T)((1 - momentum) * (double)runningMean[c] + momentum * mu);
                runningVar[c] = (T)((1 - momentum) * (double)runningVar[c] + momentum * variance * (double)m / (double)(m - 1));
            }
        }
        else
        {
            mu = (double)runningMean[c];
            rs = 1.0 / sqrt((double)runningVar[c] + eps);
        }
        if (threadIdx.x == 0)
        {
            mean[c] = (T)mu;
            rstd[c] = (T)rs;
        }
        double scale = (double)weight[c] * rs;
        T ts = (T)scale, tb = (T)((double)bias[c] - mu * scale);
        for (long long t = threadIdx.x; t < m; t += blockDim.x)
        {
            long long off = sdp_bn_offset(t, C, c, plane);
            y[off] = x[off] * ts + tb;
        }
    }
}

// batchnorm2d_backward_<T>(x, weight, mean, rstd, dy, dx, dweight, dbias, N, C, plane, training)
// IBackend.BatchNorm2dBackward, as CpuBackend.BatchNorm2dBackwardCore: with S1 = Σ dy and S2 = Σ dy·(x - mean) in
// float64 (each product formed in T), dbias += (T)S1, dweight += (T)(S2·rstd); dx += a·dy + b·x + c0 with
// k = w·rstd, a = k, b = -k·rstd²·S2/M, c0 = -k·S1/M - b·mean when training, dx += (T)k·dy in eval.
// dx, dweight, dbias are nullable (skipped); x is read only for dweight or a training dx, weight only for dx.
template <typename T>
__device__ __forceinline__ void batchnorm2d_backward_body(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ mean,
                                                          const T* __restrict__ rstd, const T* __restrict__ dy, T* __restrict__ dx,
                                                          T* __restrict__ dweight, T* __restrict__ dbias, int N, int C, long long plane,
                                                          int training)
{
    long long m = (long long)N * plane;
    bool needDyX = dweight != 0 || (dx != 0 && training);
    bool needDy = dbias != 0 || (dx != 0 && training);
    for (int c = blockIdx.x; c < C; c += gridDim.x)
    {
        T tmu = mean[c];
        double mu = (double)tmu, rs = (double)rstd[c];
        double sumDy = 0.0, sumDyXc = 0.0;
        if (needDy || needDyX)
        {
            double a1 = 0.0, a2 = 0.0;
            for (long long t = threadIdx.x; t < m; t += blockDim.x)
            {
                long long off = sdp_bn_offset(t, C, c, plane);
                T g = dy[off];
                if (needDy) a1 += (double)g;
                if (needDyX) a2 += (double)(g * (x[off] - tmu));
            }
            if (needDy) sumDy = sdp_block_broadcast_double(sdp_block_sum_double(a1));
            if (needDyX) sumDyXc = sdp_block_broadcast_double(sdp_block_sum_double(a2));
        }
        if (threadIdx.x == 0)
        {
            if (dbias) dbias[c] += (T)sumDy;
            if (dweight) dweight[c] += (T)(sumDyXc * rs);
        }
        if (!dx) continue;
        double k = (double)weight[c] * rs;
        if (!training)
        {
            T tk = (T)k;
            for (long long t = threadIdx.x; t < m; t += blockDim.x)
            {
                long long off = sdp_bn_offset(t, C, c, plane);
                dx[off] = dy[off] * tk + dx[off];
            }
            continue;
        }
        double bcoef = -k * rs * rs * sumDyXc / (double)m;
        double c0coef = -k * sumDy / (double)m - bcoef * mu;
        T a = (T)k, b = (T)bcoef, c0 = (T)c0coef;
        for (long long t = threadIdx.x; t < m; t += blockDim.x)
        {
            long long off = sdp_bn_offset(t, C, c, plane);
            dx[off] = dx[off] + a * dy[off] + b * x[off] + c0;
        }
    }
}

#define SDP_BATCHNORM(SFX, T)                                                                                          \
    extern "C" __global__ void batchnorm2d_forward_##SFX(const T* x, const T* weight, const T* bias, T* runningMean,    \
                                                         T* runningVar, T* y, T* mean, T* rstd, int N, int C,          \
                                                         long long plane, int training, double momentum, double eps)   \
    {                                                                                                                  \
        batchnorm2d_forward_body<T>(x, weight, bias, runningMean, runningVar, y, mean, rstd, N, C, plane, training,    \
                                    momentum, eps);                                                                    \
    }                                                                                                                  \
    extern "C" __global__ void batchnorm2d_backward_##SFX(const T* x, const T* weight, const T* mean, const T* rstd,    \
                                                          const T* dy, T* dx, T* dweight, T* dbias, int N, int C,      \
                                                          long long plane, int training)                               \
    {                                                                                                                  \
        batchnorm2d_backward_body<T>(x, weight, mean, rstd, dy, dx, dweight, dbias, N, C, plane, training);            \
    }
SDP_BATCHNORM(f32, float)
SDP_BATCHNORM(f64, double)

// ---- 8c. Pooling -------------------------------------------------------------------------------------------
//
// planes = N·C; a plane is H·W input or OH·OW output values. Argmax tensors are int32 or int64 (argWide = 1),
// passed as void* like the cross-entropy targets.

// maxpool2d_forward_<T>(x, y, argmax, argWide, planes, H, W, OH, OW, kernel, stride, pad): IBackend.MaxPool2d.
// y[pl, i, j] = max of x over rows [i·s - p, +kernel) ∩ [0, H) and columns likewise (padding never wins: it is
// -inf); argmax = the winner's h·W + w, the first maximum in row-major scan; a NaN wins and propagates (as
// CpuBackend: v > best || v is NaN). Launch: 1-D grid-stride over planes·OH·OW.
template <typename T>
__device__ __forceinline__ void maxpool2d_forward_body(const T* __restrict__ x, T* __restrict__ y, void* argmax, int argWide, long long planes,
                                                       int H, int W, int OH, int OW, int kernel, int stride, int pad)
{
    long long outPlane = (long long)OH * OW, total = planes * outPlane;
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride())
    {
        long long pl = e / outPlane;
        int pix = (int)(e - pl * outPlane), i = pix / OW, j = pix - i * OW;
        int hs = i * stride - pad, ws = j * stride - pad;
        int he = min(hs + kernel, H), we = min(ws + kernel, W);
        hs = max(hs, 0);
        ws = max(ws, 0);
        const T* xp = x + pl * H * W;
        T best = -(T)SDP_POS_INF_F;
        int at = hs * W + ws;
        for (int r = hs; r < he; r++)
        {
            for (int q = ws; q < we; q++)
            {
                T v = xp[r * W + q];
                if (v > best || v != v)
                {
                    best = v;
                    at = r * W + q;
                }
            }
        }
        y[e] = best;
        if (argWide) ((long long*)argmax)[e] = at;
        else ((int*)argmax)[e] = at;
    }
}

// maxpool2d_backward_<T>(dy, argmax, argWide, dx, planes, inPlane, outPlane): IBackend.MaxPool2dBackward,
// dx[pl, argmax[pl, o]] += dy[pl, o]. The method is not given the window geometry, so a dx element cannot find
// the outputs that chose it; instead one thread owns a plane and adds its outputs in index order, exactly as
// CpuBackend does (deterministic, no atomics, bitwise equal to the CPU). Launch: 1-D grid-stride over planes.
template <typename T>
__device__ __forceinline__ void maxpool2d_backward_body(const T* __restrict__ dy, const void* argmax, int argWide, T* __restrict__ dx,
                                                        long long planes, long long inPlane, long long outPlane)
{
    for (long long pl = sdp_gtid(); pl < planes; pl += sdp_gstride())
    {
        const T* g = dy + pl * outPlane;
        T* d = dx + pl * inPlane;
        if (argWide)
        {
            const long long* a = (const long long*)argmax + pl * outPlane;
            for (long long o = 0; o < outPlane; o++) d[a[o]] += g[o];
        }
        else
        {
            const int* a = (const int*)argmax + pl * outPlane;
            for (long long o = 0; o < outPlane; o++) d[a[o]] += g[o];
        }
    }
}

// Adaptive pooling bins (CpuBackend.BinStart / BinEnd): cell i of outSize covers [⌊i·in/out⌋, ⌈(i+1)·in/out⌉).
__device__ __forceinline__ int sdp_bin_start(int i, int inSize, int outSize) { return (int)((long long)i * inSize / outSize); }
__device__ __forceinline__ int sdp_bin_end(int i, int inSize, int outSize)
{
    return (int)(((long long)(i + 1) * inSize + outSize - 1) / outSize);
}

// adaptive_avgpool2d_forward_<T>(x, y, planes, H, W, OH, OW): IBackend.AdaptiveAvgPool2d, y[pl, i, j] = the mean of
// x over cell (i, j)'s bin: row sums in T, added row by row, divided by the bin size (the CPU's order).
// Launch: 1-D grid-stride over planes·OH·OW.
template <typename T>
__device__ __forceinline__ void adaptive_avgpool2d_forward_body(const T* __restrict__ x, T* __restrict__ y, long long planes, int H, int W,
                                                                int OH, int OW)
{
    long long outPlane = (long long)OH * OW, total = planes * outPlane;
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride())
    {
        long long pl = e / outPlane;
        int pix = (int)(e - pl * outPlane), i = pix / OW, j = pix - i * OW;
        int hs = sdp_bin_start(i, H, OH), he = sdp_bin_end(i, H, OH), ws = sdp_bin_start(j, W, OW), we = sdp_bin_end(j, W, OW);
        const T* xp = x + pl * H * W;
        T acc = (T)0;
        for (int r = hs; r < he; r++)
        {
            T row = (T)0;
            for (int q = ws; q < we; q++) row += xp[r * W + q];
            acc += row;
        }
        y[e] = acc / (T)((he - hs) * (we - ws));
    }
}

// adaptive_avgpool2d_backward_<T>(dy, dx, planes, H, W, OH, OW): IBackend.AdaptiveAvgPool2dBackward, dx += dy / bin
// size over each bin. One thread per dx element adds the cells whose bins contain it, in row-major cell order
// (the CPU's order, so the result is bitwise equal). Cells containing row r are i in [⌊r·OH/H⌋, ⌊((r+1)·OH - 1)/H⌋],
// checked against the bin bounds. Launch: 1-D grid-stride over planes·H·W.
template <typename T>
__device__ __forceinline__ void adaptive_avgpool2d_backward_body(const T* __restrict__ dy, T* __restrict__ dx, long long planes, int H, int W,
                                                                 int OH, int OW)
{
    long long inPlane = (long long)H * W, outPlane = (long long)OH * OW, total = planes * inPlane;
    for (long long e = sdp_gtid(); e < total; e += sdp_gstride())
    {
        long long pl = e / inPlane;
        int pos = (int)(e - pl * inPlane), r = pos / W, q = pos - r * W;
        int i0 = (int)((long long)r * OH / H), i1 = min(OH - 1, (int)(((long long)(r + 1) * OH - 1) / H));
        int j0 = (int)((long long)q * OW / W), j1 = min(OW - 1, (int)(((long long)(q + 1) * OW - 1) / W));
        const T* g = dy + pl * outPlane;
        T acc = dx[e];
        for (int i = i0; i <= i1; i++)
        {
            int hs = sdp_bin_start(i, H, OH), he = sdp_bin_end(i, H, OH);
            if (r < hs || r >= he) continue;
            for (int j = j0; j <= j1; j++)
            {
                int ws = sdp_bin_start(j, W, OW), we = sdp_bin_end(j, W, OW);
                if (q < ws || q >= we) continue;
                acc += g[(long long)i * OW + j] / (T)((he - hs) * (we - ws));
            }
        }
        dx[e] = acc;
    }
}

#define SDP_POOL(SFX, T)                                                                                               \
    extern "C" __global__ void maxpool2d_forward_##SFX(const T* x, T* y, void* argmax, int argWide, long long planes,   \
                                                       int H, int W, int OH, int OW, int kernel, int stride, int pad)  \
    {                                                                                                                  \
        maxpool2d_forward_body<T>(x, y, argmax, argWide, planes, H, W, OH, OW, kernel, stride, pad);                   \
    }                                                                                                                  \
    extern "C" __global__ void maxpool2d_backward_##SFX(const T* dy, const void* argmax, int argWide, T* dx,            \
                                                        long long planes, long long inPlane, long long outPlane)       \
    {                                                                                                                  \
        maxpool2d_backward_body<T>(dy, argmax, argWide, dx, planes, inPlane, outPlane);                                \
    }                                                                                                                  \
    extern "C" __global__ void adaptive_avgpool2d_forward_##SFX(const T* x, T* y, long long planes, int H, int W,       \
                                                                int OH, int OW)                                        \
    {                                                                                                                  \
        adaptive_avgpool2d_forward_body<T>(x, y, planes, H, W, OH, OW);                                                \
    }                                                                                                                  \
    extern "C" __global__ void adaptive_avgpool2d_backward_##SFX(const T* dy, T* dx, long long planes, int H, int W,    \
                                                                 int OH, int OW)                                       \
    {                                                                                                                  \
        adaptive_avgpool2d_backward_body<T>(dy, dx, planes, H, W, OH, OW);                                             \
    }
SDP_POOL(f32, float)
SDP_POOL(f64, double)

// ============================================================================================================
// 9. Dropout
// ============================================================================================================
// IBackend.Dropout's counter-based mask, bit for bit the CPU's (CpuBackend.DropoutHash / DropoutThreshold):
// h(i) = SplitMix64's (i+1)-th output from state seed, in unsigned 64-bit arithmetic (mod 2^64); element i is
// dropped iff (h >> 11) < threshold = ceil(p · 2^53) (computed on the host). keep = 1/(1-p) (0 when p = 1),
// computed on the host in float64 and rounded to T, as the CPU does.

__device__ __forceinline__ unsigned long long sdp_dropout_hash(unsigned long long seed, unsigned long long i)
{
    unsigned long long z = seed + (i + 1ULL) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// dropout_forward_<T>(x, mask, y, n, seed, threshold, keep): mask[i] = dropped ? 0 : keep; y = x · mask.
//   x, mask, y (n). 1-D launch over n.
// dropout_backward_<T>(dy, mask, dx, n): dx += dy · mask (IBackend.DropoutBackward). 1-D launch over n.
#define SDP_DROPOUT(SFX, T)                                                                                            \
    extern "C" __global__ void dropout_forward_##SFX(const T* x, T* mask, T* y, long long n, unsigned long long seed,  \
                                                    unsigned long long threshold, T keep)                              \
    {                                                                                                                  \
        for (long long e = sdp_gtid(); e < n; e += sdp_gstride())                                                      \
        {                                                                                                              \
            T m = (sdp_dropout_hash(seed, (unsigned long long)e) >> 11) < threshold ? (T)0 : keep;                     \
            mask[e] = m;                                                                                               \
            y[e] = x[e] * m;                                                                                           \
        }                                                                                                              \
    }                                                                                                                  \
    extern "C" __global__ void dropout_backward_##SFX(const T* dy, const T* mask, T* dx, long long n)                  \
    {                                                                                                                  \
        for (long long e = sdp_gtid(); e < n; e += sdp_gstride()) dx[e] += dy[e] * mask[e];                            \
    }
SDP_DROPOUT(f32, float)
SDP_DROPOUT(f64, double)

// ============================================================================================================
// 10. Shape, indexing and axis reductions
// ============================================================================================================

// Every kernel here is written once as a template over the element type T and instantiated for f32, f64, i32 and
// i64 where the CPU runs the op on any dtype (permute, index select/add), for f32 and f64 where it is float only
// (sum-to-shape, axis reductions, max backward). Unless a kernel says otherwise: 1-D grid-stride, block 256,
// grid min(ceil(n / 256), 65535). Index tensors here are int32 (indices64 == 0) or int64, validated on the host
// by the backend before the launch (IndexSelect / IndexAdd throw before writing, as the CPU does).

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
