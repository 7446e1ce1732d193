using Sdp.Engine.Memory;
using Sdp.Kernels.Cuda;

namespace Sdp.Engine.Backends.Cuda;

/// <summary>
/// 2-D convolution (kernels.cu §8a). float32 is im2col + cuBLAS Sgemm, like the CPU backend: a group of G
/// images is unfolded into cols (K = C·KH·KW, G·P), P = OH·OW, image i in columns [i·P, (i+1)·P), and
/// - forward: y_i (O, P) = W (O, K) · cols_i, one strided-batched GEMM per group writing y in place;
/// - dx: dcols_i (K, P) = Wᵀ · dy_i, one strided-batched GEMM per group, then col2im adds into dx;
/// - dW: dW (O, K) += dy_g (O, G·P) · cols_gᵀ, one GEMM per group, groups in order (deterministic);
/// 1x1 stride-1 unpadded convolutions skip im2col for the forward and dx GEMMs (cols_i is x_i itself).
/// float64 runs direct kernels (one thread per output or dx element, one block per weight element), since the
/// cuBLAS subset bound here has no Dgemm. dbias is a per-channel fixed-order float64 sum. Nothing reads back to
/// the host; workspace tensors are disposed right after their kernels are queued (the allocator reuses blocks
/// in stream order).
/// </summary>
public sealed unsafe partial class CudaBackend
{
    /// <summary>Upper bound, in elements, on one conv workspace buffer (the column matrix or the packed dy of a
    /// group); the group size G follows from it. 2^24 float32 = 64 MiB. Tuning and test hook (small values force
    /// many groups).</summary>
    internal static long ConvWorkspaceElements { get; set; } = 1L << 24;

    private readonly record struct ConvGeometry(int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW, int Stride, int Pad)
    {
        /// <summary>Output pixels per image.</summary>
        public int P => OH * OW;

        /// <summary>Rows of the column matrix.</summary>
        public int K => C * KH * KW;

        /// <summary>1x1, stride 1, no padding: an image's column matrix is the image itself.</summary>
        public bool Direct => KH == 1 && KW == 1 && Stride == 1 && Pad == 0;

        /// <summary>Images per group, so that the column matrix and the packed dy stay within the workspace bound.</summary>
        public int GroupSize() => (int)Math.Clamp(ConvWorkspaceElements / Math.Max(1L, (long)Math.Max(K, O) * P), 1, Math.Max(1, N));

        /// <summary>The (…, n0, count, C, H, W, KH, KW, OH, OW, stride, pad) tail of the im2col / col2im kernels.</summary>
        public KernelArgs AddTo(KernelArgs args, int n0, int count) =>
            args.Add(n0).Add(count).Add(C).Add(H).Add(W).Add(KH).Add(KW).Add(OH).Add(OW).Add(Stride).Add(Pad);

        /// <summary>The (…, N, C, H, W, O, KH, KW, OH, OW, stride, pad) tail of the direct kernels.</summary>
        public KernelArgs AddDirectTo(KernelArgs args) =>
            args.Add(N).Add(C).Add(H).Add(W).Add(O).Add(KH).Add(KW).Add(OH).Add(OW).Add(Stride).Add(Pad);
    }

    public void Conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor y, int stride, int padding)
    {
        var g = new ConvGeometry(x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3], weight.Shape[0], weight.Shape[2], weight.Shape[3], y.Shape[2], y.Shape[3], stride, padding);
        if (y.Numel == 0) return;
        if (x.DType == DType.Float64)
        {
            Launch1D("conv2d_direct_forward_f64", y.Numel, g.AddDirectTo(new KernelArgs().Add(Ptr(x)).Add(Ptr(weight)).Add(PtrOrNull(bias)).Add(Ptr(y))));
            return;
        }

        int P = g.P, K = g.K, O = g.O;
        if (g.Direct)
        {
            // y_n (O, P) = W (O, C) · x_n (C, P) for every image in one batched GEMM.
            Blas.SgemmStridedBatched(CublasOperation.N, CublasOperation.N, P, O, K, 1f, Ptr(x), P, (long)K * P, Ptr(weight), K, 0,
                0f, Ptr(y), P, (long)O * P, g.N);
        }
        else
        {
            int G = g.GroupSize();
            using var cols = ConvWorkspace((long)K * G * P, DType.Float32);
            for (int n0 = 0; n0 < g.N; n0 += G)
            {
                int count = Math.Min(G, g.N - n0), ld = count * P;
                Launch1D("conv2d_im2col_f32", (long)K * ld, g.AddTo(new KernelArgs().Add(Ptr(x)).Add(Ptr(cols)), n0, count));
                // Column-major view: y_iᵀ (P, O) = cols_iᵀ (P, K; ld = count·P) · Wᵀ (K, O; ld K), image i at column offset i·P.
                Blas.SgemmStridedBatched(CublasOperation.N, CublasOperation.N, P, O, K, 1f, Ptr(cols), ld, P, Ptr(weight), K, 0,
                    0f, Ptr(y) + (long)n0 * O * P * sizeof(float), P, (long)O * P, count);
            }
        }
        if (bias is not null)
            Launch1D("conv2d_add_bias_f32", y.Numel, new KernelArgs().Add(Ptr(y)).Add(Ptr(bias)).Add(O).Add((long)P).Add(y.Numel));
    }

    /// <summary>The backward kernels accumulate, so an overwrite of gradient outputs is a zero fill first (a device memset,
    /// cheap next to them).</summary>
    private void ZeroForOverwrite(params ReadOnlySpan<Tensor?> grads)
    {
        foreach (var grad in grads)
        {
            if (grad is not null) Fill(grad, 0);
        }
    }

    public void Conv2dBackward(Tensor? x, Tensor? weight, Tensor dy, Tensor? dx, Tensor? dweight, Tensor? dbias, int stride, int padding, bool overwrite = false)
    {
        if (overwrite) ZeroForOverwrite(dx, dweight, dbias);
        string sfx = Sfx(dy.DType);
        int n = dy.Shape[0], o = dy.Shape[1];
        long plane = dy.Shape.Product(2, 4);
        if (dbias is not null && o > 0)
            Launch($"conv2d_bias_grad_{sfx}", new Dim3((uint)Math.Min(o, 65535)), new Dim3(Threads1D),
                new KernelArgs().Add(Ptr(dy)).Add(Ptr(dbias)).Add(n).Add(o).Add(plane));
        if (dx is null && dweight is null) return;
        var xs = (x ?? dx)!.Shape;
        var ks = (weight ?? dweight)!.Shape;
        var g = new ConvGeometry(xs[0], xs[1], xs[2], xs[3], ks[0], ks[2], ks[3], dy.Shape[2], dy.Shape[3], stride, padding);
        if (g.N == 0 || g.P == 0) return;
        if (dy.DType == DType.Float64)
        {
            if (dweight is not null)
            {
                long weights = dweight.Numel;
                Launch("conv2d_direct_backward_weight_f64", new Dim3((uint)Math.Min(weights, 65535)), new Dim3(Threads1D),
                    g.AddDirectTo(new KernelArgs().Add(Ptr(x!)).Add(Ptr(dy)).Add(Ptr(dweight))));
            }
            if (dx is not null)
                Launch1D("conv2d_direct_backward_input_f64", dx.Numel, g.AddDirectTo(new KernelArgs().Add(Ptr(dy)).Add(Ptr(weight!)).Add(Ptr(dx))));
            return;
        }
        if (dweight is not null) Conv2dWeightGradF32(g, x!, dy, dweight);
        if (dx is not null) Conv2dInputGradF32(g, weight!, dy, dx);
    }

    /// <summary>dW (O, K) += Σ_groups dy_g (O, G·P) · cols_gᵀ, groups in order.</summary>
    private void Conv2dWeightGradF32(ConvGeometry g, Tensor x, Tensor dy, Tensor dw)
    {
        int P = g.P, K = g.K, O = g.O, G = g.GroupSize();
        bool needCols = !(g.Direct && G == 1);
        using var cols = needCols ? ConvWorkspace((long)K * G * P, DType.Float32) : null;
        using var dyBuf = G > 1 ? ConvWorkspace((long)O * G * P, DType.Float32) : null;
        for (int n0 = 0; n0 < g.N; n0 += G)
        {
            int count = Math.Min(G, g.N - n0), ld = count * P;
            CUdeviceptr a = Ptr(dy) + (long)n0 * O * P * sizeof(float);
            if (count > 1)
            {
                Launch1D("conv2d_pack_dy_f32", (long)O * ld, new KernelArgs().Add(Ptr(dy)).Add(Ptr(dyBuf!)).Add(n0).Add(count).Add(O).Add((long)P));
                a = Ptr(dyBuf!);
            }
            CUdeviceptr b = Ptr(x) + (long)n0 * K * P * sizeof(float); // a 1x1 stride-1 image is its own column matrix
            if (needCols)
            {
                Launch1D("conv2d_im2col_f32", (long)K * ld, g.AddTo(new KernelArgs().Add(Ptr(x)).Add(Ptr(cols!)), n0, count));
                b = Ptr(cols!);
            }
            // Column-major view: dWᵀ (K, O; ld K) += cols_g (K × ld, stored as its transpose, ld = count·P) · dy_gᵀ (ld, O).
            Blas.Sgemm(CublasOperation.T, CublasOperation.N, K, O, ld, 1f, b, ld, a, ld, 1f, Ptr(dw), K);
        }
    }

    /// <summary>dx += col2im(Wᵀ · dy_i) per image; 1x1 stride-1 unpadded convolutions accumulate straight into dx.</summary>
    private void Conv2dInputGradF32(ConvGeometry g, Tensor w, Tensor dy, Tensor dx)
    {
        int P = g.P, K = g.K, O = g.O;
        if (g.Direct)
        {
            // dx_nᵀ (P, C) += dy_nᵀ (P, O) · W (O, C) for every image in one batched GEMM.
            Blas.SgemmStridedBatched(CublasOperation.N, CublasOperation.T, P, K, O, 1f, Ptr(dy), P, (long)O * P, Ptr(w), K, 0,
                1f, Ptr(dx), P, (long)K * P, g.N);
            return;
        }
        int G = g.GroupSize();
        using var dcols = ConvWorkspace((long)K * G * P, DType.Float32);
        for (int n0 = 0; n0 < g.N; n0 += G)
        {
            int count = Math.Min(G, g.N - n0), ld = count * P;
            // Column-major view: dcols_iᵀ (P, K; ld = count·P, column offset i·P) = dy_iᵀ (P, O; ld P) · W (O, K).
            Blas.SgemmStridedBatched(CublasOperation.N, CublasOperation.T, P, K, O, 1f, Ptr(dy) + (long)n0 * O * P * sizeof(float), P,
                (long)O * P, Ptr(w), K, 0, 0f, Ptr(dcols), ld, P, count);
            Launch1D("conv2d_col2im_f32", (long)count * g.C * g.H * g.W, g.AddTo(new KernelArgs().Add(Ptr(dcols)).Add(Ptr(dx)), n0, count));
        }
    }

    /// <summary>A float or double scratch tensor on this device, charged as workspace; the caller disposes it once its kernels are queued.</summary>
    private Tensor ConvWorkspace(long elements, DType dtype) =>
        Tensor.Allocate(new Shape(checked((int)Math.Max(1, elements))), dtype, this, MemoryCategory.Workspace, registerInScope: false);
}
