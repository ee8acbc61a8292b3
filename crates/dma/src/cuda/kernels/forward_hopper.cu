// Forward on Hopper (sm_90a): the same result as forward.cu (one CTA per block of DMA_BLOCK_M
// query rows and one query head, the block's candidate list in tiles of 64 keys), with the work
// split by warpgroup:
// - a producer warpgroup gathers each tile's K/V rows (cp.async, addressed by the list's ranks)
//   into a ring of STAGES shared-memory stages and marks a stage full on an mbarrier;
// - two consumer warpgroups, 64 query rows each, run S = Q K^T and O += P V as warpgroup MMAs
//   (wgmma; K and V in shared memory, Q and P in registers), the keep test and the online
//   softmax in registers, and mark a stage empty once its V has been used.
// Each consumer overlaps its own MMAs with its softmax: the products of tile t (S_t = Q K_t and
// O += P_{t-1} V_{t-1}) are issued together, and the softmax of S_t waits only for the first.
// The two consumers take turns issuing their MMAs (FA3's ping-pong), so that one's softmax runs
// while the tensor cores work for the other.
//
// hopper.cu (compiled before this file) has the MMAs, barriers, swizzle and the producer.

#define HOP_STAGES 4  // key tiles in shared memory (5 measured no faster, stop 14)

// Shared memory with STAGES key tiles (cuda/forward.rs: hopper_smem_bytes mirrors BYTES) and
// the producer's ring of 2 * STAGES tiles of ranks.
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
    const u32* __restrict__ block_counts,
    const u32* __restrict__ sure, const u64* __restrict__ thr, T* __restrict__ out,
    float* __restrict__ lse, int q_heads,
    int kv_heads, int bias_heads, int lse_head_stride, int total_q, int cap, float scale_log2,
    const u32* __restrict__ ready, u32 epoch) {
    typedef HopSmem<D, STAGES> L;
    constexpr int BN = HOP_BN;
    // The producer hands tile t - LAG over before it waits for tile t's stage (produce_key_tiles):
    // the consumers' slack is STAGES - LAG tiles (LAG 3 with 4 or 5 stages measured slower).
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
    const BlockWork w =
        block_work<CAUSAL>(blocks, seqs, cand, cand_count, block_counts, sure, q_heads,
                           kv_heads, bias_heads, cap, ready, epoch);
    const int4 B = w.B;
    const int count = w.count, tiles = w.tiles;
    const i64 q_row = (i64)q_heads * D, kv_row = (i64)kv_heads * D;

    init_stage_barriers<STAGES>(full, empty);

    if (wg == 2) {
        produce_key_tiles<T, D, STAGES, LAG>(
            w, 0, k, v, kv_row, sK, sV, sC, sB, full, empty,
            [&](int p) { load_block_rows<T, D>(p, q, B, w.s, q_row, w.h, sQ); });
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
    thread_rows(B, warp, lane, w.offset, thr, w.hb, total_q, w.s.q_start, row, pos, rthr);
    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    // Running max and sum of each row. A row that keeps nothing at all (past the block's end, or
    // before the first key) starts with a max, so that it never takes softmax's slow path.
    float m[2], l[2] = {0.f, 0.f};
#pragma unroll
    for (int r = 0; r < 2; ++r) m[r] = rthr[r] == DMA_KEEP_NONE ? 0.f : -DMA_INF;
    float sc[BN / 8][4];
    u32 pa[BN / 16][4];

    // S_t = Q K_t: Q (A) from registers, this consumer's 64 rows.
    // The descriptors of stage 0's K and V tiles; the others are these plus a byte offset
    // (desc_plus).
    u32 qa[D / 16][4];  // this thread's fragments of Q, loaded once tile 0 (and Q) has landed
    const u64 k_desc = smem_desc(sK, 16, 1024);
    const u64 v_desc = smem_desc(sV, BN * 128, 1024);
    constexpr u32 KV_BYTES = L::KV * sizeof(T);
    auto issue_s = [&](int t) {
        issue_fragments_by_keys<T, D>(sc, qa, desc_plus(k_desc, (t % STAGES) * KV_BYTES));
    };
    // O += P_t V_t (V the MN-major operand).
    auto issue_pv = [&](int t) {
        issue_weights_by_keys<T, D>(o, pa, desc_plus(v_desc, (t % STAGES) * KV_BYTES));
    };
    // Keep test, scale and bias (log2 domain) of S_t. No row max: softmax finds it only when a
    // tile may move it.
    // causal_tile: needs_causal_test, read before the wait for S_t.
    auto causal_test = [&](int t) {
        return needs_causal_test<CAUSAL, BN>(rank_tile<STAGES>(sC, t), count, t, w.offset + B.y);
    };
    auto mask = [&](int t, bool causal_tile) {
        mask_tile<BN>(t < w.sure_tiles, causal_tile, sc, rank_tile<STAGES>(sC, t),
                      sB + (t % STAGES) * BN, rthr, pos, tq, scale_log2);
    };
    // P_t = exp2(S_t - use) into the A fragments (rows g, g + 8; keys 16 kc + 2 tq (+ 8)), and
    // each row's sum over this thread's columns in ts.
    auto exponentiate = [&](const float (&use)[2], float (&ts)[2]) {
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
            float pr[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                pr[e] = fast_exp2(sc[nt][e] - use[e >> 1]);
                ts[e >> 1] += pr[e];
            }
            pa[nt >> 1][(nt & 1) * 2] = Elem<T>::pack(pr[0], pr[1]);
            pa[nt >> 1][(nt & 1) * 2 + 1] = Elem<T>::pack(pr[2], pr[3]);
        }
    };
    // The online softmax of S_t, once O += P_{t-1} V_{t-1} has landed (P_t takes P_{t-1}'s
    // registers). It exponentiates against the running max first: where every row of the warp
    // has a max and no thread's part of a row sums past 2^DMA_MAX_SLACK, no score passed the max
    // by more than DMA_MAX_SLACK, which is when update_max would leave it alone, so the tile is
    // done without the row max (a max and 4 shuffles per score pair saved). Otherwise (the first
    // tiles, a rising max) it takes the max, rescales O and l and exponentiates again: the same
    // numbers as always taking the max.
    auto softmax = [&]() {
        float use[2] = {m[0] == -DMA_INF ? 0.f : m[0], m[1] == -DMA_INF ? 0.f : m[1]};
        float ts[2];
        for (bool fixed = false;; fixed = true) {
            ts[0] = ts[1] = 0.f;
            exponentiate(use, ts);
            constexpr float LIMIT = 1 << (int)DMA_MAX_SLACK;
            const bool settled = ts[0] <= LIMIT && ts[1] <= LIMIT && m[0] != -DMA_INF &&
                                 m[1] != -DMA_INF;
            if (fixed || __all_sync(0xffffffffu, settled)) break;
            float mx[2] = {-DMA_INF, -DMA_INF}, alpha[2];
#pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt) {
                mx[0] = fmaxf(mx[0], fmaxf(sc[nt][0], sc[nt][1]));
                mx[1] = fmaxf(mx[1], fmaxf(sc[nt][2], sc[nt][3]));
            }
            update_max(mx, m, use, alpha);
            rescale_rows<D>(o, l, alpha);
        }
        l[0] += ts[0];
        l[1] += ts[1];
    };
    // The consumers take turns issuing their MMAs (consumer 0 first), so that the tensor cores
    // run one consumer's products while the other does its softmax. Each consumer waits for its
    // turn tiles + 1 times and passes it as often (the first pass is consumer 1's before its
    // loop, so consumer 1 skips its last).
    if (tiles > 0) {
        if (c == 1) turn_pass(c);
        mbar_wait(full, 0);
        load_row_fragments<T, D>(sQ, warp * 16, lane, qa);
        turn_wait(c);
        wgmma_fence();
        issue_s(0);
        turn_pass(c);
        bool causal_tile = causal_test(0);
        wgmma_wait<0>();
        wgmma_settle(sc);
        mask(0, causal_tile);
        softmax();
        for (int t = 1; t < tiles; ++t) {
            mbar_wait(full + t % STAGES, (t / STAGES) & 1);
            turn_wait(c);
            wgmma_fence();
            issue_s(t);
            issue_pv(t - 1);
            turn_pass(c);
            causal_tile = causal_test(t);
            wgmma_wait<1>();  // S_t
            wgmma_settle(sc);
            mask(t, causal_tile);
            wgmma_wait<0>();  // O += P_{t-1} V_{t-1}
            wgmma_settle(o);
            mbar_arrive(empty + (t - 1) % STAGES);
            softmax();
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
    write_rows<T, D>(o, l, m, row, B.z, w.s, w.h, q_heads, tq, lse_head_stride, out, lse);
}

// The parameters of DMA_FORWARD_KERNEL (DMA_FORWARD_PARAMS: cuda/forward.rs launches either); the
// split-K scratch and the bias head stride are unused here (no split-K: decode keeps forward.cu).
// min blocks 1 caps the registers at entry, which setmaxnreg needs.
#define DMA_FORWARD_HOPPER_KERNEL(NAME, T, D, CAUSAL)                                              \
    extern "C" __global__ void __launch_bounds__(HOP_THREADS, 1)                                   \
        NAME(DMA_FORWARD_PARAMS(T)) {                                                              \
        forward_hopper_body<T, D, CAUSAL, HOP_STAGES>(                                             \
            q, k, v, seqs, blocks, cand, cand_count, block_counts, sure, thr, out, lse, q_heads,   \
            kv_heads, bias_heads, lse_head_stride, total_q, cap, scale_log2, ready, epoch);        \
    }
