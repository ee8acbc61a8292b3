// Shared pieces of the DMA kernels: the key ranking, the per-sequence table, and thin wrappers
// around the PTX instructions (cp.async, ldmatrix, mma.sync) the kernels use. Compiled by NVRTC
// in front of each kernel file (see crates/dma/src/cuda/compile.rs).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

// Query rows per block, the rows of one CTA of the forward and backward (cuda/plan.rs: BLOCK_M).
#define DMA_BLOCK_M 128
// The most query rows of a causal selection list (cuda/plan.rs: LIST_M; up to four blocks share
// one). It sizes shared arrays and the per-block counts of a list: the kernels take a list's rows
// from the lists table, which may give fewer (DMA_CUDA_LIST_ROWS, a sequence's last list, decode).
#define DMA_LIST_M 512
// The most blocks of one list. A block's entry in the blocks table names its list and its place in
// it as list * DMA_LIST_BLOCKS + place (cuda/plan.rs); a list's per-block counts are at
// [list, bias head, place]: its sure keys, and DMA_BLOCK_COUNTS u32 (select.cu writes them):
//   seen: how many of the list's keys the block's rows can see (dma_visible_count);
//   head, skip: the list's keys [head, head + skip) are keys before the list's first row that no
//   row of the block, or of a later block of the list, keeps (the Hopper kernels skip them).
#define DMA_LIST_BLOCKS (DMA_LIST_M / DMA_BLOCK_M)
#define DMA_BLOCK_COUNTS 4
// Keys per forward tile; candidate lists are padded with DMA_NO_KEY to whole tiles (plan.rs: BLOCK_N).
#define DMA_TILE_N 64

// One sequence of the batch, as offsets (mirrors dma::Sequence; written by cuda/plan.rs).
struct SeqInfo {
    int q_start, nq, k_start, nk, bias_offset, lse_offset, pad0, pad1;
};

// +infinity and a quiet NaN (NVRTC has no math.h).
#define DMA_INF __int_as_float(0x7f800000)
#define DMA_NAN __int_as_float(0x7fc00000)

// A threshold that keeps every visible key (every real rank is >= 2^55), and one that keeps none.
#define DMA_KEEP_ALL 1ull
#define DMA_KEEP_NONE 0xffffffffffffffffull
// The rank given to an empty slot of a key tile: below every threshold.
#define DMA_NO_KEY 0ull

// Total order of keys (SPEC.md): bias first, then index; -0.0 and +0.0 are the same bias.
// Equal to dma::selection::rank.
__device__ __forceinline__ u64 dma_rank(float bias, int j) {
    u32 bits = __float_as_uint(bias);
    if (bits == 0x80000000u) bits = 0u;
    u32 ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
    return ((u64)ordered << 32) | (u32)j;
}

// SPEC.md's keep rule on the GPU: the row at position `pos` with threshold `thr` keeps the key of
// rank `rank` iff rank >= thr, and (causal) the key's index <= pos.
template <bool CAUSAL>
__device__ __forceinline__ bool dma_keeps(u64 rank, u64 thr, int pos) {
    return rank >= thr && (!CAUSAL || (int)(u32)rank <= pos);
}

// A block's list as an index among [lists, Hb] (slot: its keys, count and ready flag) and its
// place among [lists, Hb, DMA_LIST_BLOCKS] (its own counts: DMA_BLOCK_COUNTS, sure keys), from
// the last field of its blocks-table entry.
struct BlockList {
    i64 slot, part;
};
__device__ __forceinline__ BlockList dma_block_list(int code, int bias_heads, int hb) {
    BlockList b;
    b.slot = (i64)(code / DMA_LIST_BLOCKS) * bias_heads + hb;
    b.part = b.slot * DMA_LIST_BLOCKS + code % DMA_LIST_BLOCKS;
    return b;
}

// The block's counts (see DMA_BLOCK_COUNTS) among a selection's.
__device__ __forceinline__ const u32* dma_block_counts(const u32* counts, const BlockList& b) {
    return counts + b.part * DMA_BLOCK_COUNTS;
}

// How many leading keys of a list a CTA of forward.cu or backward.cu must read, its last row at
// position last_pos: `count` keys in all, of which `seen` (the first of the block's counts,
// DMA_BLOCK_COUNTS) are at most the last position of the CTA's block (select.cu writes both). A
// causal list ends with those of its rows' own keys [P, E) that some row keeps, ascending, and its
// other keys precede P, the position of its first row (clamped to [0, Nk]): so a block sees every
// key when it sees the last one, and otherwise exactly `seen` (its rows fail the causal test on
// the rest, so skipping them saves work and changes no result; a decode list, whose `seen` is
// unwritten, always sees its last key). Ranks are loaded in 16-byte pairs, so the count is
// rounded up to even (at most `count`): then no pair brings in an uncounted real key, and a
// counted key past last_pos is the last counted one, so the tile holding it reaches past the
// block's first row and takes the causal test. Not causal: `count`. (The Hopper kernels read
// `seen` directly: hopper.cu's block_work.)
template <bool CAUSAL>
__device__ __forceinline__ int dma_visible_count(const u64* list, int count, const u32* counts,
                                                 int last_pos) {
    if (!CAUSAL || count == 0) return count;
    const int visible = (int)(u32)list[count - 1] <= last_pos ? count : (int)counts[0];
    return min((visible + 1) & ~1, count);
}

// Overlapped launches (programmatic dependent launch, sm_90; cuda/launch.rs): a kernel launched
// with the programmatic-serialization attribute may start once every CTA of the kernel before it
// in the stream has run dma_allow_next_kernel (or exited), instead of after that kernel ends. The
// selection kernels allow it as they start, so the next ones (the dependent lists, the
// attention) take SMs as soon as selection CTAs leave them. What such a kernel reads from the
// kernel before it is handed over per list instead: the writer publishes the call's epoch in the
// list's ready flag after all its writes, the reader waits until the flag holds that epoch or a
// later one (a later call's selection starts only after this call's has ended: its first kernel
// is not overlapped). On GPUs before sm_90 no launch overlaps and no kernel waits (the flags are
// null).
__device__ __forceinline__ void dma_allow_next_kernel() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Every thread of the CTA calls it after its last write of the published data.
__device__ __forceinline__ void dma_publish(u32* flag, u32 epoch) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(flag), "r"(epoch) : "memory");
    }
}

// Every thread of the CTA calls it before its first read of the published data.
__device__ __forceinline__ void dma_wait_published(const u32* flag, u32 epoch) {
    if (threadIdx.x == 0) {
        u32 seen;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(seen) : "l"(flag) : "memory");
        } while ((int)(seen - epoch) < 0);
    }
    __syncthreads();
}

// The bias a rank was made from (-0.0 comes back as +0.0, the same bias).
__device__ __forceinline__ float rank_bias(u64 rank) {
    const u32 ordered = (u32)(rank >> 32);
    return __uint_as_float((ordered & 0x80000000u) ? (ordered & 0x7fffffffu) : ~ordered);
}

// The selection kernels report a non-finite bias (NaN or an infinity; SPEC.md: an error, not a
// rank) of key j of sequence `seq`, bias head `hb`, in one zero-initialised u64: it ends up holding
// the complement of the smallest ((seq * bias_heads + hb) << 32 | j) seen, i.e. the first bad
// value in the CPU backend's order (sequence, head, key); 0 means none (cuda/select.rs decodes it).
__device__ __forceinline__ void dma_check_bias(float b, u64* bad, int seq, int bias_heads, int hb,
                                               int j) {
    if ((__float_as_uint(b) & 0x7f800000u) == 0x7f800000u)
        atomicMax(bad, ~((((u64)seq * bias_heads + hb) << 32) | (u32)j));
}

__device__ __forceinline__ u32 smem_addr(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}

// 16-byte global -> shared copy; `valid == false` fills the 16 bytes with zeros instead.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
}
// An 8-byte cp.async (through L1; .cg takes only 16 bytes).
__device__ __forceinline__ void cp_async8(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 8 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// dst[0] += x, dst[1] += y (f32, global memory; dst 8-byte aligned), one vector reduction on sm_90.
__device__ __forceinline__ void red_add2(float* dst, float x, float y) {
#if __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(dst), "f"(x), "f"(y) : "memory");
#else
    atomicAdd(dst, x);
    atomicAdd(dst + 1, y);
#endif
}

// dst[0..4] += (x, y, z, u) (f32, global memory; dst 16-byte aligned), one vector reduction on
// sm_90.
__device__ __forceinline__ void red_add4(float* dst, float x, float y, float z, float u) {
#if __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "f"(x), "f"(y),
                 "f"(z), "f"(u)
                 : "memory");
#else
    red_add2(dst, x, y);
    red_add2(dst + 2, z, u);
#endif
}

__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// The 16-bit element types: packing two f32 into one register, and the m16n8k16 MMA.
template <typename T>
struct Elem;

template <>
struct Elem<__nv_bfloat16> {
    __device__ __forceinline__ static u32 pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<u32*>(&v);
    }
    // d += a * b, a 16x16 (row), b 16x8 (col), f32 accumulators.
    __device__ __forceinline__ static void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

template <>
struct Elem<__half> {
    __device__ __forceinline__ static u32 pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<u32*>(&v);
    }
    __device__ __forceinline__ static void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

// Row kernels of layers.rs (RMSNorm, scale-add): one warp per row of width d, the grid's warps
// striding over the rows; a backward sums a per-column gradient over its block's rows in shared
// memory (d floats), then adds the block's sums to the result with one atomic per column.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// One exchange of warp_sum_each per lane bit OFF, 16 down to 1: a lane holding N > 1 values
// keeps half of them (the upper half where its bit OFF is set) plus the other lane's same half;
// with one value left, the two lanes just add.
template <int N, int OFF, int C>
__device__ __forceinline__ void exchange_halves(float (&a)[C], int lane) {
    if constexpr (OFF > 0) {
        if constexpr (N > 1) {
            const bool upper = lane & OFF;
#pragma unroll
            for (int j = 0; j < N / 2; ++j) {
                const float lo = a[j], hi = a[j + N / 2];
                a[j] = (upper ? hi : lo) + __shfl_xor_sync(0xffffffffu, upper ? lo : hi, OFF);
            }
        } else {
            a[0] += __shfl_xor_sync(0xffffffffu, a[0], OFF);
        }
        exchange_halves<(N > 1 ? N / 2 : 1), OFF / 2>(a, lane);
    }
}

// warp_sum of each of N values, every lane getting every sum, in about 2 shuffles a value
// instead of 5. Per chunk of C values (C the power of two >= N, at most 32; missing values 0):
// five exchanges (exchange_halves) leave lane l with the sum of value l >> (5 - log2 C) of the
// chunk, then every lane reads each sum from its lane.
__host__ __device__ constexpr int log2_chunk(int n) {  // log2 of the power of two >= n, <= 5
    int s = 0;
    while ((1 << s) < n && s < 5) ++s;
    return s;
}
template <int N>
__device__ __forceinline__ void warp_sum_each(float (&v)[N]) {
    constexpr int C = 1 << log2_chunk(N), SHIFT = 5 - log2_chunk(N);
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int c0 = 0; c0 < N; c0 += C) {
        float a[C];
#pragma unroll
        for (int i = 0; i < C; ++i) a[i] = c0 + i < N ? v[c0 + i] : 0.f;
        exchange_halves<C, 16>(a, lane);
#pragma unroll
        for (int i = 0; i < C; ++i)
            if (c0 + i < N) v[c0 + i] = __shfl_sync(0xffffffffu, a[0], i << SHIFT);
    }
}

__device__ __forceinline__ void column_sums_zero(float* sums, unsigned int d) {
    for (unsigned int c = threadIdx.x; c < d; c += blockDim.x) sums[c] = 0.f;
    __syncthreads();
}

template <typename T>
__device__ __forceinline__ void column_sums_flush(const float* sums, T* out, unsigned int d) {
    __syncthreads();
    for (unsigned int c = threadIdx.x; c < d; c += blockDim.x) atomicAdd(out + c, sums[c]);
}
