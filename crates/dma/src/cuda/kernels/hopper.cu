// The pieces both Hopper kernels (sm_90a: forward_hopper.cu, backward_hopper.cu) share: the
// warpgroup MMAs (wgmma) and their shared-memory descriptors, mbarriers and named barriers, the
// 128-byte swizzle of the shared-memory tiles, and the producer warpgroup that gathers a block's
// key tiles. cuda/forward.rs and cuda/backward.rs compile it after attend.cu.
//
// Shared-memory tiles use the 128-byte swizzle that wgmma reads: a tile of R rows x C columns is
// stored as C/64 column blocks of R rows x 128 bytes, and the 16-byte chunk c of row r sits at
// chunk c ^ (r & 7) of its row. Every tile starts on a 1024-byte boundary (the swizzle repeats
// every 8 rows), so the descriptors' base offset is 0.
//
// Named barriers: 0 is __syncthreads, 1 the producer's, 2 and 3 the forward consumers' turns, 4
// the backward consumers'. (Immediate numbers: with a register one, ptxas reserves all 16.)

#define HOP_THREADS 384  // two consumer warpgroups of 64 query rows, one producer warpgroup
#define HOP_BN 64        // keys per tile (DMA_TILE_N: lists are padded to it)

// wgmma operand lists: 32 or 64 f32 accumulators, held as [N / 8][4] (the m16n8 layout's
// fragments, as attend.cu takes them).
#define DMA_F4(d, j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define DMA_F32(d) \
    DMA_F4(d, 0), DMA_F4(d, 1), DMA_F4(d, 2), DMA_F4(d, 3), DMA_F4(d, 4), DMA_F4(d, 5), \
        DMA_F4(d, 6), DMA_F4(d, 7)
#define DMA_F64(d) \
    DMA_F32(d), DMA_F4(d, 8), DMA_F4(d, 9), DMA_F4(d, 10), DMA_F4(d, 11), DMA_F4(d, 12), \
        DMA_F4(d, 13), DMA_F4(d, 14), DMA_F4(d, 15)
#define DMA_D32                                                                                 \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
    "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define DMA_D64                                                                                 \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
    "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "  \
    "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "  \
    "%56, %57, %58, %59, %60, %61, %62, %63}"

// The warpgroup MMAs of the Hopper kernels, for one 16-bit input type (PTX name TY):
//   ss64: d (+)= A(64x16, smem, K-major) B(16x64, smem, K-major); accumulate = false zeroes d;
//   rs64k: d (+)= A(64x16, registers) B(16x64, smem, K-major);
//   rs64 / rs128: d += A(64x16, registers) B(16x64 / 16x128, smem, MN-major);
//   tt64 / tt128: d (+)= A(64x16, smem, MN-major) B(16x64 / 16x128, smem, MN-major) (the
//     backward's transposed products, dV = P^T dO and dK = dS^T Q).
#define DMA_WGMMA_OPS(T, TY)                                                                     \
    template <>                                                                                  \
    struct Wgmma<T> {                                                                            \
        __device__ __forceinline__ static void ss64(float (&d)[8][4], u64 a, u64 b, bool accumulate) { \
            asm volatile(                                                                        \
                "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                     \
                "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " DMA_D32              \
                ", %32, %33, p, 1, 1, 0, 0;\n}\n"                                                \
                : DMA_F32(d)                                                                     \
                : "l"(a), "l"(b), "r"((int)accumulate));                                         \
        }                                                                                        \
        __device__ __forceinline__ static void rs64k(float (&d)[8][4], const u32 (&a)[4], u64 b,   \
                                                     bool accumulate) {                            \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                          \
                         "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " DMA_D32     \
                         ", {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"                        \
                         : DMA_F32(d)                                                            \
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b),                   \
                           "r"((int)accumulate));                                                \
        }                                                                                        \
        __device__ __forceinline__ static void rs64(float (&d)[8][4], const u32 (&a)[4], u64 b) {  \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                          \
                         "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " DMA_D32     \
                         ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"                        \
                         : DMA_F32(d)                                                            \
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));          \
        }                                                                                        \
        __device__ __forceinline__ static void rs128(float (&d)[16][4], const u32 (&a)[4], u64 b) { \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                          \
                         "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " DMA_D64    \
                         ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                        \
                         : DMA_F64(d)                                                            \
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));          \
        }                                                                                        \
        __device__ __forceinline__ static void tt64(float (&d)[8][4], u64 a, u64 b, bool accumulate) { \
            asm volatile(                                                                        \
                "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                     \
                "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " DMA_D32              \
                ", %32, %33, p, 1, 1, 1, 1;\n}\n"                                                \
                : DMA_F32(d)                                                                     \
                : "l"(a), "l"(b), "r"((int)accumulate));                                         \
        }                                                                                        \
        __device__ __forceinline__ static void tt128(float (&d)[16][4], u64 a, u64 b, bool accumulate) { \
            asm volatile(                                                                        \
                "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                     \
                "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " DMA_D64             \
                ", %64, %65, p, 1, 1, 1, 1;\n}\n"                                                \
                : DMA_F64(d)                                                                     \
                : "l"(a), "l"(b), "r"((int)accumulate));                                         \
        }                                                                                        \
    };

template <typename T>
struct Wgmma;
DMA_WGMMA_OPS(__nv_bfloat16, "bf16")
DMA_WGMMA_OPS(__half, "f16")

__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most N of this warpgroup's committed MMA groups are pending.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// After wgmma_wait: ties every accumulator to this point, so that no read of them is scheduled
// before the wait (the compiler sees the MMA's asm as having written them already).
template <int N>
__device__ __forceinline__ void wgmma_settle(float (&d)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
}
// Orders this thread's generic-proxy shared-memory writes (cp.async's, once waited for) before
// the async proxy's reads (wgmma) that a later synchronisation lets other threads make.
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// mbarriers in shared memory: init (one thread), arrive (release), wait on a phase's parity
// (acquire).
__device__ __forceinline__ void mbar_init(u64* bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count));
}
__device__ __forceinline__ void mbar_arrive(u64* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_wait(u64* bar, u32 parity) {
    asm volatile(
        "{\n.reg .pred done;\nwait_%=:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra wait_%=;\n}\n" ::"r"(smem_addr(bar)),
        "r"(parity)
        : "memory");
}
// The producer warpgroup's own barrier (0 is __syncthreads).
__device__ __forceinline__ void producer_sync() { asm volatile("bar.sync 1, 128;\n" ::: "memory"); }
// The forward consumers' turns at the tensor cores: consumer c waits on barrier 2 + c, which
// completes when the other consumer has arrived on it (256 threads: 128 waiting, 128 arriving).
__device__ __forceinline__ void turn_wait(int c) {
    if (c == 0)
        asm volatile("bar.sync 2, 256;\n" ::: "memory");
    else
        asm volatile("bar.sync 3, 256;\n" ::: "memory");
}
__device__ __forceinline__ void turn_pass(int c) {
    if (c == 0)
        asm volatile("bar.arrive 3, 256;\n" ::: "memory");
    else
        asm volatile("bar.arrive 2, 256;\n" ::: "memory");
}

// Both consumer warpgroups of the Hopper backward at one point (256 threads), after each has
// stored its part of a tile that the other's MMAs read.
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 4, 256;\n" ::: "memory"); }

// A shared-memory matrix descriptor for the 128-byte swizzle: start address, leading and stride
// byte offsets (in 16-byte units), layout type 1 (128B swizzle) in bits 62-63.
__device__ __forceinline__ u64 smem_desc(const void* p, u32 lead_bytes, u32 stride_bytes) {
    return (u64)((smem_addr(p) & 0x3FFFF) >> 4) | ((u64)(lead_bytes >> 4) << 16) |
           ((u64)(stride_bytes >> 4) << 32) | (1ull << 62);
}

// The descriptor of the address `bytes` (a multiple of 16) past the one `desc` describes: the
// address is the low field, in 16-byte units, and shared memory ends below 256 KB, so the add
// never carries into the other fields. (Cheaper in the loops than a new smem_desc.)
__device__ __forceinline__ u64 desc_plus(u64 desc, u32 bytes) { return desc + (bytes >> 4); }

// Element offset of (row, col) in a swizzled tile of `rows` rows (col a multiple of 8: the start
// of a 16-byte chunk).
__device__ __forceinline__ int swz(int rows, int row, int col) {
    return (col >> 6) * rows * 64 + row * 64 + ((((col >> 3) & 7) ^ (row & 7)) << 3);
}

// What a CTA of a Hopper kernel works on: query block blocks[blockIdx.x] (sequence, first row,
// end row, list and place: common.cu's dma_block_list) of query head blockIdx.y, its KV and bias
// heads, and the keys of its list that its rows can see (a block before its list's last stops
// before the next blocks' own keys) less those that none of them keeps: `count` keys, the list's
// first `head`, then those from head + skip on (DMA_BLOCK_COUNTS). Tiles and key indices below
// count these keys (key_at).
struct BlockWork {
    int4 B;
    SeqInfo s;
    int h, hkv, hb, offset, count, tiles, head, skip;
    // Its first tiles made only of keys every live row keeps (select.cu's partition): no keep test.
    int sure_tiles;
    i64 slot;  // the list's index among [lists, Hb]
    const u64* list;
};

template <bool CAUSAL>
__device__ __forceinline__ BlockWork block_work(const int4* __restrict__ blocks,
                                                const SeqInfo* __restrict__ seqs,
                                                const u64* __restrict__ cand,
                                                const u32* __restrict__ cand_count,
                                                const u32* __restrict__ block_counts,
                                                const u32* __restrict__ sure, int q_heads,
                                                int kv_heads, int bias_heads, int cap,
                                                const u32* ready = nullptr, u32 epoch = 0) {
    BlockWork w;
    w.B = blocks[blockIdx.x];
    w.h = blockIdx.y;
    w.hkv = w.h / (q_heads / kv_heads);
    w.hb = w.h / (q_heads / bias_heads);
    w.s = seqs[w.B.x];
    const BlockList bl = dma_block_list(w.B.w, bias_heads, w.hb);
    w.slot = bl.slot;
    w.list = cand + w.slot * cap;
    w.offset = w.s.nk - w.s.nq;
    if (ready) dma_wait_published(ready + w.slot, epoch);  // an overlapped launch (common.cu)
    // Causal: the block's own counts, exact for its rows (a block of these kernels has at most
    // DMA_BLOCK_M rows, decode's too; ranks are fetched one at a time, so unlike
    // dma_visible_count no rounding, and no read of the list's last key in the chain of loads
    // before the first gather). The keys [head, head + skip) precede the list's own keys, which
    // every visible count reaches (a block sees every key before the list's first row).
    const u32* counts = dma_block_counts(block_counts, bl);
    const uint4 c = CAUSAL ? *reinterpret_cast<const uint4*>(counts) : make_uint4(0, 0, 0, 0);
    const int visible = CAUSAL ? (int)c.x : (int)cand_count[w.slot];
    w.head = CAUSAL ? min((int)c.y, visible) : visible;
    w.skip = CAUSAL ? min((int)c.z, visible - w.head) : 0;
    w.count = visible - w.skip;
    w.tiles = (w.count + HOP_BN - 1) / HOP_BN;
    w.sure_tiles = sure ? (int)sure[bl.part] / HOP_BN : 0;
    return w;
}

// Where the i-th of block w's keys is in its list.
__device__ __forceinline__ int key_at(const BlockWork& w, int i) {
    return i < w.head ? i : i + w.skip;
}

// The ranks of tile t in the producer's ring of 2 * STAGES tiles (it fetches ranks STAGES tiles
// ahead of the K/V rows they address, so 2 * STAGES tiles of ranks are alive at once).
template <int STAGES>
__device__ __forceinline__ u64* rank_tile(u64* ring, int t) {
    return ring + (t % (2 * STAGES)) * HOP_BN;
}

// The list's tile that a CTA starting at tile `first` takes t-th (of `tiles`).
__device__ __forceinline__ int tile_at(int t, int first, int tiles) {
    const int kt = t + first;
    return kt < tiles ? kt : kt - tiles;
}

// The producer warpgroup (thread p of 128) of a Hopper kernel, over the keys of block w's list,
// in tiles from tile `first` on, wrapping around (tile_at); t below counts the tiles taken:
// - the ranks of the first STAGES tiles, then load_rows(p)'s copies of the block's query-row
//   tiles (Q; Q and dO), one copy group that completes before tile 0's and is handed over with it
//   (so those loads overlap the first gathers);
// - per tile t: waits until the consumers release stage t % STAGES (mbarrier empty, 256
//   arrivals), gathers the K and V rows its ranks address into that stage, the keys' biases
//   (times log2 e) into sB's stage, and fetches the ranks of tile t + STAGES;
// - hands tile t - LAG over (mbarrier full, 128 arrivals) before it waits for tile t's stage:
//   LAG < STAGES, so that the stage it waits for is released by a tile the consumers already
//   have, and the consumers never wait for this warpgroup to issue a gather (ncu, stop 14: they
//   did, for ~1/4 of their time, when the hand-over came after the next tile's issue).
// Runs on the producer warpgroup (threads 256 .. 383) of block w's CTA; k and v are the tensors.
template <typename T, int D, int STAGES, int LAG, typename LoadRows>
__device__ __forceinline__ void produce_key_tiles(const BlockWork& w, int first,
                                                  const T* __restrict__ k,
                                                  const T* __restrict__ v, i64 kv_row, T* sK,
                                                  T* sV, u64* ring, float* sB, u64* full,
                                                  u64* empty, LoadRows load_rows) {
    // The CTA holds 384 x 168 registers (launch bounds); setmaxnreg only moves them between
    // warpgroups, so producer + 2 consumers must stay within that: 40 + 2 x 232 = 3 x 168.
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    const int p = threadIdx.x - 256, count = w.count;
    const u64* __restrict__ list = w.list;
    const i64 first_key = (i64)w.s.k_start * kv_row + w.hkv * D;
    constexpr int BN = HOP_BN;
    constexpr float LOG2E = 1.4426950408889634f;
    static_assert(LAG >= 1 && LAG < STAGES, "hand a tile over before waiting for a free stage");
    const int tiles = (count + BN - 1) / BN;
    // One rank per thread (8 bytes: the keys skipped may be any number).
    auto load_ranks = [&](int t) {
        if (t < tiles && p < BN) {
            const int at = tile_at(t, first, tiles) * BN + p;
            const bool valid = at < count;
            cp_async8(rank_tile<STAGES>(ring, t) + p, valid ? list + key_at(w, at) : list, valid);
        }
    };
    for (int t = 0; t < STAGES; ++t) load_ranks(t);
    cp_async_commit();
    load_rows(p);
    cp_async_commit();
    // The gather: thread p copies the 16-byte chunk p % 8 of each 64-column block of rows
    // p / 8 + ROW_STEP i of each tile (one row address for D / 64 chunks of K and of V). Its
    // chunks' columns, and so their source offsets within a row and their places in the tile's
    // swizzle, are the same for every row it copies; the column blocks are 128 bytes apart in
    // a row and BN * 64 elements apart in the tile, with the same swizzle.
    constexpr int ROW_STEP = 128 / 8, BLOCKS = D / 64;  // 8 chunks per block, 128 threads
    static_assert(D % 64 == 0, "the gather copies whole 64-column blocks");
    static_assert(ROW_STEP % 8 == 0 && BN % ROW_STEP == 0, "rows ROW_STEP apart must share the swizzle");
    const int gather_row = p / 8, gather_col = (p % 8) * 8;
    const int gather_dst = swz(BN, gather_row, gather_col);
    const T* k_src = k + first_key + gather_col;
    const T* v_src = v + first_key + gather_col;
    cp_async_wait<1>();  // the ranks
    producer_sync();
    for (int t = 0; t < tiles; ++t) {
        const int st = t % STAGES;
        if (t >= LAG) {
            // Tile t - LAG has landed, and with it the ranks of tile t.
            cp_async_wait<LAG - 1>();
            fence_proxy_async();
            mbar_arrive(full + (t - LAG) % STAGES);
        }
        producer_sync();  // the ranks of tile t, copied by other threads
        if (t >= STAGES) mbar_wait(empty + st, ((t / STAGES) + 1) & 1);
        const u64* ranks = rank_tile<STAGES>(ring, t);
        const int keys = count - tile_at(t, first, tiles) * BN;  // from the tile's first on
        T* dk = sK + st * BN * D + gather_dst;
        T* dv = sV + st * BN * D + gather_dst;
#pragma unroll
        for (int i = 0; i < BN / ROW_STEP; ++i) {
            const int r = gather_row + i * ROW_STEP;
            const bool valid = r < keys;
            const i64 at = valid ? (i64)(u32)ranks[r] * kv_row : 0;
            // Rows ROW_STEP (a multiple of 8) apart share the swizzle: a constant offset.
#pragma unroll
            for (int cb = 0; cb < BLOCKS; ++cb) {
                cp_async16(dk + i * ROW_STEP * 64 + cb * BN * 64, k_src + at + cb * 64, valid);
                cp_async16(dv + i * ROW_STEP * 64 + cb * BN * 64, v_src + at + cb * 64, valid);
            }
        }
        if (p < BN) sB[st * BN + p] = rank_bias(ranks[p]) * LOG2E;
        load_ranks(t + STAGES);
        cp_async_commit();
    }
    cp_async_wait<0>();
    fence_proxy_async();
    for (int t = max(tiles - LAG, 0); t < tiles; ++t) mbar_arrive(full + t % STAGES);
}

// Copies the block's rows of one query-row tensor x (Q or dO; rows past the block's end zero)
// into a swizzled tile of DMA_BLOCK_M rows (producer thread p of 128).
template <typename T, int D>
__device__ __forceinline__ void load_block_rows(int p, const T* __restrict__ x, const int4& B,
                                                const SeqInfo& s, i64 q_row, int h, T* dst) {
    constexpr int CHUNKS = D / 8;
    for (int c = p; c < DMA_BLOCK_M * CHUNKS; c += 128) {
        const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        const bool valid = B.y + r < B.z;
        const T* src = valid ? x + (s.q_start + B.y + r) * q_row + h * D + col : x;
        cp_async16(dst + swz(DMA_BLOCK_M, r, col), src, valid);
    }
}

// The CTA's stage mbarriers: full (the producer's 128 threads arrive), empty (the consumers' 256).
template <int STAGES>
__device__ __forceinline__ void init_stage_barriers(u64* full, u64* empty) {
    if (threadIdx.x < STAGES) {
        mbar_init(full + threadIdx.x, 128);
        mbar_init(empty + threadIdx.x, 256);
    }
    __syncthreads();
}

// The byte offset of the 16-column step kk in a K-major swizzled tile of `rows` rows: 32 bytes
// within a 128-byte row, every 4 steps the next column block (rows * 128 bytes).
template <typename T>
__device__ __forceinline__ u32 k_step_bytes(int kk, int rows) {
    return ((kk >> 2) * rows * 64 + (kk & 3) * 16) * sizeof(T);
}

// d = A B^T over D columns, one commit group: A a consumer's 64 rows of a query-row tile (Q or
// dO, DMA_BLOCK_M rows), B a key tile (K or V, HOP_BN rows), both K-major.
template <typename T, int D>
__device__ __forceinline__ void issue_rows_by_keys(float (&d)[8][4], u64 a_desc, u64 b_desc) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
        Wgmma<T>::ss64(d, desc_plus(a_desc, k_step_bytes<T>(kk, DMA_BLOCK_M)),
                       desc_plus(b_desc, k_step_bytes<T>(kk, HOP_BN)), kk > 0);
    wgmma_commit();
}

// d = A B^T over D columns, one commit group, as issue_rows_by_keys but with A in registers: a
// consumer's 64 rows as D / 16 fragments of 16 columns (load_row_fragments). With A in shared
// memory, each m64n64k16 reads as many bytes of A as of B: S's shared-memory reads halve.
template <typename T, int D>
__device__ __forceinline__ void issue_fragments_by_keys(float (&d)[8][4],
                                                        const u32 (&a)[D / 16][4], u64 b_desc) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
        Wgmma<T>::rs64k(d, a[kk], desc_plus(b_desc, k_step_bytes<T>(kk, HOP_BN)), kk > 0);
    wgmma_commit();
}

// This warp's A fragments (the m16n8k16 layout, as ldmatrix gives them) of rows first_row ..
// first_row + 15 of a swizzled tile of DMA_BLOCK_M rows, over D columns: lane l addresses row
// first_row + l % 16, the 8 columns from 16 kk + 8 (l / 16).
template <typename T, int D>
__device__ __forceinline__ void load_row_fragments(const T* tile, int first_row, int lane,
                                                   u32 (&a)[D / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
        ldmatrix_x4(a[kk],
                    tile + swz(DMA_BLOCK_M, first_row + (lane & 15), 16 * kk + (lane >> 4) * 8));
}

// d += A B over a key tile's 64 keys, one commit group: A from registers (a consumer's 64 rows of
// per-key weights, P or dS, as 4 fragments of 16 keys), B the tile (V or K) as the MN-major
// operand (D contiguous; 16 keys are 2 KB, column blocks HOP_BN * 128 bytes apart).
template <typename T, int D>
__device__ __forceinline__ void issue_weights_by_keys(float (&d)[D / 8][4],
                                                      const u32 (&a)[HOP_BN / 16][4], u64 b_desc) {
#pragma unroll
    for (int kc = 0; kc < HOP_BN / 16; ++kc) {
        const u64 b = desc_plus(b_desc, kc * 16 * 64 * sizeof(T));
        if constexpr (D == 128)
            Wgmma<T>::rs128(d, a[kc], b);
        else
            Wgmma<T>::rs64(d, a[kc], b);
    }
    wgmma_commit();
}
