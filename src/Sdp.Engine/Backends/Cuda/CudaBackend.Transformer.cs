using Sdp.Engine.Memory;
using Sdp.Kernels.Cuda;

namespace Sdp.Engine.Backends.Cuda;

/// <summary>
/// LLaMA building blocks (kernels.cu §7), float32 and float64, ids and positions int32 or int64. Ids and positions
/// are bounds-checked on the device: a bad one raises the device error flag, which the next host read turns into
/// <see cref="ArgumentOutOfRangeException"/> (IBackend.Transformer's contract), with no host read in the op.
/// Every reduction (embedding and RMSNorm weight gradients, attention's dk/dv over a query-head group) runs in a
/// fixed order without float atomics, so results are deterministic.
/// </summary>
public sealed partial class CudaBackend
{
    /// <summary>Threads per block of the attention kernels (16 query rows or keys × 16 lanes).</summary>
    private const int AttentionThreads = 256;

    /// <summary>Rows (queries or keys) per attention tile, and output columns per block (16 lanes × 16 registers).</summary>
    private const int AttentionTile = 16, AttentionColumnsPerBlock = 256;

    /// <summary>Dynamic shared memory each kernel may use (48 KiB until raised per function, see <see cref="RequestSharedMemory"/>).</summary>
    private readonly Dictionary<string, int> _sharedMemoryLimits = [];

    private const int DefaultSharedMemoryLimit = 48 * 1024;

    /// <summary>Row blocks whose partial dweight rows RMSNorm backward sums (the CPU backend's partition).</summary>
    private static int RmsNormBlocks(long rows) => (int)Math.Min(64, (rows + 7) / 8);

    private Tensor Workspace(long elements, DType dtype)
        => Tensor.Allocate(new Shape(checked((int)elements)), dtype, this, MemoryCategory.Workspace, registerInScope: false);

    private static int Index64(Tensor indices) => indices.DType == DType.Int64 ? 1 : 0;

    // ---- embedding --------------------------------------------------------------------------------

    public void Embedding(Tensor weight, Tensor ids, Tensor y)
    {
        long n = ids.Numel, c = weight.Shape[1], v = weight.Shape[0];
        Launch1D($"embedding_forward_{Sfx(weight.DType)}", n * c,
            new KernelArgs().Add(Ptr(weight)).Add(Ptr(ids)).Add(Index64(ids)).Add(Ptr(y)).Add(n).Add(c).Add(v).Add(ErrorFlag()));
    }

    public void EmbeddingBackward(Tensor dy, Tensor ids, Tensor dweight)
    {
        long n = ids.Numel, c = dweight.Shape[1], v = dweight.Shape[0];
        if (n == 0 || c == 0) return;
        if (n > uint.MaxValue) throw new NotSupportedException($"embedding backward on {this}: {n} ids exceed the 2^32 the sort keys hold");
        // Stable sort of (id, position) keys, then each id's run is summed in increasing position.
        using var keys = Workspace(n, DType.Int64);
        using var spare = Workspace(n, DType.Int64);
        Launch1D("embedding_sort_keys", n, new KernelArgs().Add(Ptr(ids)).Add(Index64(ids)).Add(n).Add(v).Add(Ptr(keys)).Add(ErrorFlag()));
        Tensor sorted = keys, other = spare;
        for (long width = 1; width < n; width *= 2)
        {
            Launch1D("embedding_merge_pass", n, new KernelArgs().Add(Ptr(sorted)).Add(Ptr(other)).Add(n).Add(width));
            (sorted, other) = (other, sorted);
        }
        Launch1D($"embedding_backward_{Sfx(dweight.DType)}", n * c,
            new KernelArgs().Add(Ptr(dy)).Add(Ptr(sorted)).Add(n).Add(c).Add(v).Add(Ptr(dweight)));
    }

    // ---- RMSNorm --------------------------------------------------------------------------------------

    public void RmsNorm(Tensor x, Tensor weight, Tensor rstd, Tensor y, double eps)
    {
        int c = weight.Shape[0];
        if (c == 0) return;
        long rows = x.Numel / c;
        var args = new KernelArgs().Add(Ptr(x)).Add(Ptr(weight)).Add(Ptr(rstd)).Add(Ptr(y)).Add(rows).Add(c);
        if (x.DType == DType.Float32) args.Add((float)eps); else args.Add(eps);
        LaunchRows($"rms_norm_forward_{Sfx(x.DType)}", rows, c, args);
    }

    public void RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd, Tensor? dx, Tensor? dweight)
    {
        int c = weight.Shape[0];
        long rows = c == 0 ? 0 : x.Numel / c;
        if (rows == 0 || (dx is null && dweight is null)) return;
        string sfx = Sfx(x.DType);
        if (dx is not null)
        {
            LaunchRows($"rms_norm_backward_dx_{sfx}", rows, c,
                new KernelArgs().Add(Ptr(dy)).Add(Ptr(x)).Add(Ptr(weight)).Add(Ptr(rstd)).Add(Ptr(dx)).Add(rows).Add(c));
        }
        if (dweight is null) return;
        int blocks = RmsNormBlocks(rows);
        using var partials = Workspace((long)blocks * c, x.DType);
        Launch($"rms_norm_backward_dw_partial_{sfx}", new Dim3((uint)((c + Threads1D - 1) / Threads1D), (uint)blocks), new Dim3(Threads1D),
            new KernelArgs().Add(Ptr(dy)).Add(Ptr(x)).Add(Ptr(rstd)).Add(Ptr(partials)).Add(rows).Add(c).Add(blocks));
        Launch1D($"rms_norm_backward_dw_finish_{sfx}", c,
            new KernelArgs().Add(Ptr(partials)).Add(blocks).Add((long)c).Add(Ptr(dweight)));
    }

    // ---- rotary embedding -------------------------------------------------------------------------

    public void Rope(Tensor x, Tensor cos, Tensor sin, Tensor? positions, int offset, Tensor y) => RopeLaunch(x, cos, sin, positions, offset, y, backward: false);

    public void RopeBackward(Tensor dy, Tensor cos, Tensor sin, Tensor? positions, int offset, Tensor dx) => RopeLaunch(dy, cos, sin, positions, offset, dx, backward: true);

    private void RopeLaunch(Tensor src, Tensor cos, Tensor sin, Tensor? positions, int offset, Tensor dst, bool backward)
    {
        long b = src.Shape[0], t = src.Shape[1], h = src.Shape[2], d = src.Shape[3];
        bool shared = positions is not null && positions.Numel == t;
        Launch1D($"rope_{Sfx(src.DType)}", b * t * h * (d / 2),
            new KernelArgs().Add(Ptr(src)).Add(Ptr(cos)).Add(Ptr(sin)).Add(PtrOrNull(positions)).Add(positions is null ? 0 : Index64(positions))
                .Add(shared ? 1 : 0).Add(offset).Add(Ptr(dst)).Add(b).Add(t).Add(h).Add(d).Add((long)cos.Shape[0])
                .Add(backward ? 1 : 0).Add(ErrorFlag()));
    }

    // ---- head layout ----------------------------------------------------------------------------------

    public void AttentionSwapHeads(Tensor src, Tensor dst, int b, int p, int q, int d, bool accumulate)
    {
        Launch1D($"attention_swap_heads_{Sfx(src.DType)}", (long)b * p * q * d,
            new KernelArgs().Add(Ptr(src)).Add(Ptr(dst)).Add((long)b).Add((long)p).Add((long)q).Add((long)d).Add(accumulate ? 1 : 0));
    }

    // ---- causal grouped-query attention ---------------------------------------------------------------

    /// <summary>Launch geometry of the attention kernels for q (B, H, T, D) and k (B, KVH, T, D).</summary>
    private readonly record struct AttentionShape(int B, int H, int Kvh, int T, int D)
    {
        public static AttentionShape Of(Tensor q, Tensor k) => new(q.Shape[0], q.Shape[1], k.Shape[1], q.Shape[2], q.Shape[3]);

        public uint Tiles => (uint)((T + AttentionTile - 1) / AttentionTile);

        public uint ColumnChunks => (uint)((D + AttentionColumnsPerBlock - 1) / AttentionColumnsPerBlock);

        /// <summary>Dynamic shared memory: <paramref name="matrices"/> (16, D + 1) tiles, <paramref name="scoreTiles"/>
        /// (16, 17) score tiles and 3 rows of 16 statistics (kernels.cu §7).</summary>
        public uint SharedBytes(int matrices, int scoreTiles, DType dtype)
            => (uint)(((long)matrices * AttentionTile * (D + 1) + (long)scoreTiles * AttentionTile * (AttentionTile + 1) + 3 * AttentionTile) * dtype.ElementSize());
    }

    /// <summary>Raises <paramref name="kernel"/>'s dynamic shared memory limit when a launch needs more than 48 KiB
    /// (a large head dim); the device refuses what it cannot give, naming the kernel and the size.</summary>
    private void RequestSharedMemory(string kernel, uint bytes)
    {
        int limit = _sharedMemoryLimits.GetValueOrDefault(kernel, DefaultSharedMemoryLimit);
        if (bytes <= limit) return;
        Kernel(kernel).SetMaxDynamicSharedMemory((int)bytes);
        _sharedMemoryLimits[kernel] = (int)bytes;
    }

    private void LaunchAttention(string kernel, Dim3 grid, uint sharedBytes, KernelArgs args)
    {
        RequestSharedMemory(kernel, sharedBytes);
        Launch(kernel, grid, new Dim3(AttentionThreads), args, sharedBytes);
    }

    private KernelArgs AddScale(KernelArgs args, AttentionShape s, DType dtype)
    {
        double scale = 1.0 / Math.Sqrt(s.D);
        return dtype == DType.Float32 ? args.Add((float)scale) : args.Add(scale);
    }

    public void CausalAttention(Tensor q, Tensor k, Tensor v, Tensor y, Tensor lse)
    {
        var s = AttentionShape.Of(q, k);
        if (y.Numel == 0) return;
        string kernel = $"attention_forward_{Sfx(q.DType)}";
        var args = new KernelArgs().Add(Ptr(q)).Add(Ptr(k)).Add(Ptr(v)).Add(Ptr(y)).Add(Ptr(lse)).Add(s.H).Add(s.Kvh).Add(s.T).Add(s.D);
        LaunchAttention(kernel, new Dim3(s.Tiles, checked((uint)s.H * s.ColumnChunks), (uint)s.B), s.SharedBytes(2, 1, q.DType), AddScale(args, s, q.DType));
    }

    public void CausalAttentionBackward(Tensor q, Tensor k, Tensor v, Tensor lse, Tensor dy, Tensor? dq, Tensor? dk, Tensor? dv)
    {
        if (dq is null && dk is null && dv is null) return;
        var s = AttentionShape.Of(q, k);
        if (dy.Numel == 0) return;
        string sfx = Sfx(q.DType);
        uint sharedBytes = s.SharedBytes(4, 2, q.DType);
        // Δ_i = Σ_j P_ij·dP_ij, needed by dk, comes out of the dq kernel's first pass.
        using var delta = dk is null ? null : Workspace(lse.Numel, q.DType);
        if (dq is not null || dk is not null)
        {
            var args = new KernelArgs().Add(Ptr(q)).Add(Ptr(k)).Add(Ptr(v)).Add(Ptr(dy)).Add(Ptr(lse)).Add(PtrOrNull(delta)).Add(PtrOrNull(dq))
                .Add(s.H).Add(s.Kvh).Add(s.T).Add(s.D);
            LaunchAttention($"attention_backward_dq_{sfx}", new Dim3(s.Tiles, checked((uint)s.H * s.ColumnChunks), (uint)s.B), sharedBytes, AddScale(args, s, q.DType));
        }
        if (dk is not null || dv is not null)
        {
            var args = new KernelArgs().Add(Ptr(q)).Add(Ptr(k)).Add(Ptr(v)).Add(Ptr(dy)).Add(Ptr(lse)).Add(PtrOrNull(delta)).Add(PtrOrNull(dk)).Add(PtrOrNull(dv))
                .Add(s.H).Add(s.Kvh).Add(s.T).Add(s.D);
            LaunchAttention($"attention_backward_dkdv_{sfx}", new Dim3(s.Tiles, checked((uint)s.Kvh * s.ColumnChunks), (uint)s.B), sharedBytes, AddScale(args, s, q.DType));
        }
    }
}
