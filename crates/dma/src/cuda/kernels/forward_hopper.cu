// Forward on Hopper (sm_90a): the same result as forward.cu (one CTA per block of DMA_BLOCK_M
// query rows and one query head, the block's candidate list in tiles of 64 keys), with the work
// split by warpgroup:
// - a producer warpgroup gathers each tile's K/V rows (cp.async, addressed by the list's ranks)
//   into a ring of STAGES shared-memory stages and marks a stage full on an mbarrier;
// - two consumer warpgroups, 64 query rows each, run S = Q K^T and O += P V as warpgroup MMAs
//   (wgmma; Q, K, V in shared memory, P from registers), the keep test and the online softmax in
//   registers, and mark a stage empty once its V has been used.
// Each consumer overlaps its own MMAs with its softmax: the products of tile t (S_t = Q K_t and
// O += P_{t-1} V_{t-1}) are issued together, and the softmax of S_t waits only for the first.
// The two consumers take turns issuing their MMAs (FA3's ping-pong), so that one's softmax runs
// while the tensor cores work for the other.
//
// Shared-memory tiles use the 128-byte swizzle that wgmma reads: a tile of R rows x D columns is
// stored as D/64 column blocks of R rows x 128 bytes, and the 16-byte chunk c of row r sits at
// chunk c ^ (r & 7) of its row. Every tile starts on a 1024-byte boundary (the swizzle repeats
// every 8 rows), so the descriptors' base offset is 0.

#define HOP_THREADS 384  // two consumer warpgroups of 64 query rows, one producer warpgroup
#define HOP_BN 64        // keys per tile (DMA_TILE_N: lists are padded to it)
#define HOP_STAGES 4     // key tiles in shared memory (5 measured no faster, stop 14)

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

// The three warpgroup MMAs the kernel uses, for one 16-bit input type (PTX name TY):
//   ss64: d (+)= A(64x16, smem, K-major) B(16x64, smem, K-major); accumulate = false zeroes d;
//   rs64 / rs128: d += A(64x16, registers) B(16x64 / 16x128, smem, MN-major).
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
// The consumers' turns at the tensor cores: consumer c waits on barrier 2 + c, which completes
// when the other consumer has arrived on it (256 threads: 128 waiting, 128 arriving).
// (Immediate barrier numbers: with a register one, ptxas reserves all 16.)
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

// Shared memory with STAGES key tiles (cuda/forward.rs: hopper_smem_bytes mirrors BYTES). The
// producer fetches ranks STAGES tiles ahead of the K/V rows they address, so 2 * STAGES tiles of
// ranks are alive at once.
template <int D, int STAGES>
struct HopSmem {
    static constexpr int Q = DMA_BLOCK_M * D;  // elements
    static constexpr int KV = HOP_BN * D;
    static constexpr int RANK_SLOTS = 2 * STAGES;
    // Layout: q | k[STAGES] | v[STAGES] (16-bit, each a multiple of 1024 bytes) | ranks (u64) |
    // full[STAGES], empty[STAGES] (mbarriers) | bias * log2 e [STAGES] (f32)
    static constexpr int BYTES = (Q + 2 * STAGES * KV) * 2 + RANK_SLOTS * HOP_BN * 8 +
                                 2 * STAGES * 8 + STAGES * HOP_BN * 4;
    static_assert(D == 64 || D == 128, "the Hopper forward has D = 64 and 128");
    static_assert(STAGES >= 3, "the producer keeps 2 tiles in flight and hands over a third");
    static_assert(BYTES <= 227 * 1024, "shared memory above the 227 KiB of a Hopper CTA");
};

template <typename T, int D, bool CAUSAL, int STAGES>
__device__ __forceinline__ void forward_hopper_body(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const SeqInfo* __restrict__ seqs, const int4* __restrict__ blocks,
    const u64* __restrict__ cand, const u32* __restrict__ cand_count,
    const u32* __restrict__ sure, const u64* __restrict__ thr, T* __restrict__ out,
    float* __restrict__ lse, int q_heads,
    int kv_heads, int bias_heads, int lse_head_stride, int total_q, int cap, float scale_log2) {
    typedef HopSmem<D, STAGES> L;
    constexpr int BN = HOP_BN;
    constexpr float LOG2E = 1.4426950408889634f;
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
    // The producer hands tile t - LAG over before it waits for tile t's stage: LAG < STAGES, so
    // that the stage it waits for is released by a tile the consumers already have. The
    // consumers' slack is STAGES - LAG tiles (LAG 3 with 4 or 5 stages measured slower).
    constexpr int LAG = 2;

    extern __shared__ __align__(1024) unsigned char smem_raw[];
    T* sQ = reinterpret_cast<T*>(smem_raw);
    T* sK = sQ + L::Q;
    T* sV = sK + STAGES * L::KV;
    u64* sC = reinterpret_cast<u64*>(sV + STAGES * L::KV);  // ranks, a ring of RANK_SLOTS tiles
    u64* full = sC + L::RANK_SLOTS * BN;
    u64* empty = full + STAGES;
    float* sB = reinterpret_cast<float*>(empty + STAGES);  // biases * log2 e, per stage

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
    const int4 B = blocks[blockIdx.x];  // (sequence, first row, end row, list)
    const int h = blockIdx.y;
    const int hkv = h / (q_heads / kv_heads);
    const int hb = h / (q_heads / bias_heads);
    const SeqInfo s = seqs[B.x];
    const i64 slot = (i64)B.w * bias_heads + hb;
    const u64* list = cand + slot * cap;
    const int offset = s.nk - s.nq;
    // The list's keys this block's rows can see (the first block of a two-block list stops
    // before the second block's own keys).
    const int count = dma_visible_count<CAUSAL>(list, (int)cand_count[slot], offset + B.z - 1);
    const i64 q_row = (i64)q_heads * D, kv_row = (i64)kv_heads * D;
    const int tiles = (count + BN - 1) / BN;
    // Tiles made only of keys every live row keeps (select.cu's partition): no keep test.
    const int sure_tiles = sure ? (int)sure[slot] / BN : 0;
    auto ranks_of = [&](int t) { return sC + (t % L::RANK_SLOTS) * BN; };

    if (tid < STAGES) {
        mbar_init(full + tid, 128);   // the producer's threads
        mbar_init(empty + tid, 256);  // the consumers' threads
    }
    __syncthreads();

    if (wg == 2) {
        // Producer.
        // The CTA holds 384 x 168 registers (launch bounds); setmaxnreg only moves them between
        // warpgroups, so producer + 2 consumers must stay within that: 40 + 2 x 232 = 3 x 168.
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        const int p = tid - 256;
        auto load_ranks = [&](int t) {
            if (t < tiles && p < BN / 2) {
                const int at = t * BN + 2 * p;
                cp_async16(ranks_of(t) + 2 * p, at < count ? list + at : list, at < count);
            }
        };
        // The ranks of tiles 0 .. STAGES - 1 (waited for below: they address the first rows),
        // then Q, whose copy group completes before tile 0's and is handed over with it (by the
        // first hand-over's cp_async_wait): Q's load overlaps the first gathers.
        for (int t = 0; t < STAGES; ++t) load_ranks(t);
        cp_async_commit();
        for (int c = p; c < DMA_BLOCK_M * CHUNKS; c += 128) {
            const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
            const bool valid = B.y + r < B.z;
            const T* src = valid ? q + (s.q_start + B.y + r) * q_row + h * D + col : q;
            cp_async16(sQ + swz(DMA_BLOCK_M, r, col), src, valid);
        }
        cp_async_commit();
        // The gather: thread p copies the 16-byte chunk p % CHUNKS of rows p / CHUNKS + ROW_STEP i
        // of each tile. Its chunk's column, and so its source offset within a row and its place
        // in the tile's swizzle, are the same for every row it copies.
        constexpr int ROW_STEP = 128 / CHUNKS;
        static_assert(ROW_STEP % 8 == 0 && BN % ROW_STEP == 0, "rows ROW_STEP apart must share the swizzle");
        const int gather_row = p / CHUNKS, gather_col = (p % CHUNKS) * 8;
        const int gather_dst = swz(BN, gather_row, gather_col);
        const T* k_src = k + (i64)s.k_start * kv_row + hkv * D + gather_col;
        const T* v_src = v + (i64)s.k_start * kv_row + hkv * D + gather_col;
        cp_async_wait<1>();  // the ranks
        producer_sync();
        for (int t = 0; t < tiles; ++t) {
            const int st = t % STAGES;
            if (t >= LAG) {
                // Tile t - LAG has landed, and with it the ranks of tile t (fetched STAGES tiles
                // ahead): hand it over before waiting for a free stage, so that the consumers
                // never wait for this warpgroup to issue a gather (ncu: they did, for ~1/4 of
                // their time, when the hand-over came after the next tile's issue).
                cp_async_wait<LAG - 1>();
                fence_proxy_async();
                mbar_arrive(full + (t - LAG) % STAGES);
            }
            producer_sync();  // the ranks of tile t, copied by other threads
            if (t >= STAGES) mbar_wait(empty + st, ((t / STAGES) + 1) & 1);
            const u64* ranks = ranks_of(t);
            T* dk = sK + st * L::KV + gather_dst;
            T* dv = sV + st * L::KV + gather_dst;
#pragma unroll
            for (int i = 0; i < BN / ROW_STEP; ++i) {
                const int r = gather_row + i * ROW_STEP;
                const bool valid = t * BN + r < count;
                const i64 at = valid ? (i64)(u32)ranks[r] * kv_row : 0;
                // Rows ROW_STEP (a multiple of 8) apart share the swizzle: a constant offset.
                cp_async16(dk + i * ROW_STEP * 64, k_src + at, valid);
                cp_async16(dv + i * ROW_STEP * 64, v_src + at, valid);
            }
            if (p < BN) sB[st * BN + p] = rank_bias(ranks[p]) * LOG2E;
            load_ranks(t + STAGES);
            cp_async_commit();
        }
        cp_async_wait<0>();
        fence_proxy_async();
        for (int t = max(tiles - LAG, 0); t < tiles; ++t) mbar_arrive(full + t % STAGES);
        return;
    }

    // Consumer c: rows 64 c .. 64 c + 63 of the block.
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    const int c = wg;
    const int tq = lane & 3;
    // The wgmma accumulator layout is mma.sync's m16n8 layout repeated over N, warp w of a
    // warpgroup holding its rows 16w .. 16w + 15.
    int row[2], pos[2];
    u64 rthr[2];
    thread_rows(B, warp, lane, offset, thr, hb, total_q, s.q_start, row, pos, rthr);
    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m[2] = {-DMA_INF, -DMA_INF}, l[2] = {0.f, 0.f};
    float sc[BN / 8][4];
    u32 pa[BN / 16][4];

    // S_t = Q K_t: Q (A, K-major) is this consumer's 64 rows, a step of 16 columns 32 bytes
    // inside a 128-byte row, a step of 64 columns the next column block.
    // The descriptors of this consumer's Q rows and of stage 0's K and V tiles; the others are
    // these plus a byte offset (desc_plus).
    const u64 q_desc = smem_desc(sQ + c * 64 * 64, 16, 1024);
    const u64 k_desc = smem_desc(sK, 16, 1024);
    const u64 v_desc = smem_desc(sV, BN * 128, 1024);
    constexpr u32 KV_BYTES = L::KV * sizeof(T);
    auto issue_s = [&](int t) {
        const u32 stage = (t % STAGES) * KV_BYTES;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            const int cb = kk >> 2, in = (kk & 3) * 16;
            const u64 da = desc_plus(q_desc, (cb * DMA_BLOCK_M * 64 + in) * sizeof(T));
            const u64 db = desc_plus(k_desc, stage + (cb * BN * 64 + in) * sizeof(T));
            Wgmma<T>::ss64(sc, da, db, kk > 0);
        }
        wgmma_commit();
    };
    // O += P_t V_t: V is the B operand MN-major (D contiguous); 16 keys are 2 KB, the column
    // blocks of 64 lie BN * 128 bytes apart.
    auto issue_pv = [&](int t) {
        const u32 stage = (t % STAGES) * KV_BYTES;
#pragma unroll
        for (int kc = 0; kc < BN / 16; ++kc) {
            const u64 db = desc_plus(v_desc, stage + kc * 16 * 64 * sizeof(T));
            if constexpr (D == 128)
                Wgmma<T>::rs128(o, pa[kc], db);
            else
                Wgmma<T>::rs64(o, pa[kc], db);
        }
        wgmma_commit();
    };
    // Keep test, scale and bias (log2 domain) of S_t, and the new running max; alpha takes O and
    // l from the old max to the new one.
    auto mask_and_max = [&](int t, float (&alpha)[2], float (&use)[2]) {
        const u64* ranks = ranks_of(t);
        const float* biases = sB + (t % STAGES) * BN;
        float mx[2] = {-DMA_INF, -DMA_INF};
        // The block's own keys come last, ascending, after the keys before it (ascending, or
        // sure ones first: select.cu's partition), so a tile whose last key precedes the
        // block's first row is visible to every row: no causal test there (only the last tiles
        // need one).
        const int last = min(count - t * BN, BN) - 1;
        if (t < sure_tiles)
            mask_scores<KEEP_LIVE_ROWS, BN>(sc, ranks, biases, rthr, pos, tq, scale_log2, mx);
        else if (CAUSAL && (int)(u32)ranks[last] > offset + B.y)
            mask_scores<KEEP_BY_RANK_AND_POS, BN>(sc, ranks, biases, rthr, pos, tq, scale_log2, mx);
        else
            mask_scores<KEEP_BY_RANK, BN>(sc, ranks, biases, rthr, pos, tq, scale_log2, mx);
        update_max(mx, m, use, alpha);
    };
    // P_t = exp2(S_t - max) into the A fragments (rows g, g + 8; keys 16 kc + 2 tq (+ 8)).
    auto exponentiate = [&](const float (&use)[2]) {
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
            float pr[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                pr[e] = fast_exp2(sc[nt][e] - use[e >> 1]);
                l[e >> 1] += pr[e];
            }
            pa[nt >> 1][(nt & 1) * 2] = Elem<T>::pack(pr[0], pr[1]);
            pa[nt >> 1][(nt & 1) * 2 + 1] = Elem<T>::pack(pr[2], pr[3]);
        }
    };
    // The consumers take turns issuing their MMAs (consumer 0 first), so that the tensor cores
    // run one consumer's products while the other does its softmax. Each consumer waits for its
    // turn tiles + 1 times and passes it as often (the first pass is consumer 1's before its
    // loop, so consumer 1 skips its last).
    if (tiles > 0) {
        float alpha[2], use[2];
        if (c == 1) turn_pass(c);
        mbar_wait(full, 0);
        turn_wait(c);
        wgmma_fence();
        issue_s(0);
        turn_pass(c);
        wgmma_wait<0>();
        wgmma_settle(sc);
        mask_and_max(0, alpha, use);
        exponentiate(use);
        for (int t = 1; t < tiles; ++t) {
            mbar_wait(full + t % STAGES, (t / STAGES) & 1);
            turn_wait(c);
            wgmma_fence();
            issue_s(t);
            issue_pv(t - 1);
            turn_pass(c);
            wgmma_wait<1>();  // S_t
            wgmma_settle(sc);
            mask_and_max(t, alpha, use);
            wgmma_wait<0>();  // O += P_{t-1} V_{t-1}
            wgmma_settle(o);
            mbar_arrive(empty + (t - 1) % STAGES);
            rescale_rows<D>(o, l, alpha);
            exponentiate(use);
        }
        turn_wait(c);
        wgmma_fence();
        issue_pv(tiles - 1);
        if (c == 0) turn_pass(c);
        wgmma_wait<0>();
        wgmma_settle(o);
        mbar_arrive(empty + (tiles - 1) % STAGES);
    }

    sum_rows(l);
    write_rows<T, D>(o, l, m, row, B.z, s, h, q_heads, tq, lse_head_stride, out, lse);
}

// The same signature as DMA_FORWARD_KERNEL (cuda/forward.rs launches either); the split-K
// scratch and the bias head stride are unused here (no split-K: decode keeps forward.cu).
// min blocks 1 caps the registers at entry, which setmaxnreg needs.
#define DMA_FORWARD_HOPPER_KERNEL(NAME, T, D, CAUSAL)                                     \
    extern "C" __global__ void __launch_bounds__(HOP_THREADS, 1)                                  \
        NAME(const T* q, const T* k, const T* v, const SeqInfo* seqs,                             \
             const int4* blocks, const u64* cand, const u32* cand_count, const u32* sure,         \
             const u64* thr, T* out, float* lse, float* part, int q_heads, int kv_heads,          \
             int bias_heads, int bias_head_stride, int lse_head_stride, int total_q, int cap,     \
             float scale_log2) {                                                                  \
        forward_hopper_body<T, D, CAUSAL, HOP_STAGES>(q, k, v, seqs, blocks, cand, cand_count, sure, thr, \
                                                  out, lse, q_heads, kv_heads, bias_heads,       \
                                                  lse_head_stride, total_q, cap, scale_log2);    \
    }
