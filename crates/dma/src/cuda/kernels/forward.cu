// Forward: one CTA per (block of DMA_BLOCK_M query rows, query head), one warp per 16 rows.
// The candidate keys of the block's list (from select.cu, as ranks: index and bias in one u64; a
// causal list may serve several blocks, dma_visible_count in common.cu) are gathered BN at a time
// (64, or 32 for D = 256: registers) into shared memory with cp.async only: the ranks of tile
// t + 2, and the K/V rows of tile t + 1 (16-byte chunks, two stages) fly while tile t is
// computed, so the loop has one barrier and no synchronous global load. S = Q K^T and O += P V
// run on the tensor cores (mma.sync m16n8k16, f32 accumulators), and an online softmax applies
// each row's keep test:
// key j is kept by the row at position p iff rank_j >= thr_p (and j <= p when causal).

#define FWD_THREADS (DMA_BLOCK_M * 2)  // one warp per 16 query rows

// Shared memory of the forward with key tiles of BN (cuda/forward.rs: smem_bytes mirrors BYTES).
template <typename T, int D, int BN>
struct FwdSmem {
    static constexpr int STRIDE = D + 8;  // elements per row: 16 bytes of padding against conflicts
    static constexpr int Q = DMA_BLOCK_M * STRIDE;
    static constexpr int KV = BN * STRIDE;
    // Layout: q | k[2] | v[2] (T) | ranks[3] (u64) | bias * log2(e) [2] (f32)
    static constexpr int BYTES = (Q + 4 * KV) * 2 + 3 * BN * 8 + 2 * BN * 4;
    static_assert(BYTES <= 227 * 1024, "forward shared memory above the 227 KiB of a Hopper CTA");
    static_assert(DMA_TILE_N % BN == 0 && BN % 16 == 0, "lists are padded to DMA_TILE_N keys");
    static_assert(D % 16 == 0, "head dim must be a multiple of 16");
};

// BN: keys per tile (a divisor of DMA_TILE_N). Q's fragments stay in registers up to D = 128;
// at D = 256 they would not fit beside the 128 f32 accumulators of O, so each tile reloads them
// from shared memory (ldmatrix) instead.
template <typename T, int D, bool CAUSAL, int BN>
__device__ __forceinline__ void forward_body(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const SeqInfo* __restrict__ seqs,
    const int4* __restrict__ blocks, const u64* __restrict__ cand,
    const u32* __restrict__ cand_count, const u32* __restrict__ block_counts,
    const u64* __restrict__ thr, T* __restrict__ out,
    float* __restrict__ lse, float* __restrict__ part, int q_heads, int kv_heads,
    int bias_heads, int bias_head_stride, int lse_head_stride, int total_q, int cap,
    float scale_log2, const u32* __restrict__ ready, u32 epoch) {
    typedef FwdSmem<T, D, BN> L;
    constexpr bool QREG = D <= 128;  // Q fragments held in registers
    constexpr float LOG2E = 1.4426950408889634f;
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per row

    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* sQ = reinterpret_cast<T*>(smem_raw);
    T* sK = sQ + L::Q;
    T* sV = sK + 2 * L::KV;
    u64* sC = reinterpret_cast<u64*>(sV + 2 * L::KV);  // ranks of 3 tiles, a ring
    float* sB = reinterpret_cast<float*>(sC + 3 * BN);  // their biases (log2 domain), 2 tiles

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int4 B = blocks[blockIdx.x];  // (sequence, first row, end row, list and place)
    const int h = blockIdx.y;
    const int hkv = h / (q_heads / kv_heads);
    const int hb = h / (q_heads / bias_heads);
    const SeqInfo s = seqs[B.x];
    const BlockList bl = dma_block_list(B.w, bias_heads, hb);
    const i64 slot = bl.slot;
    const u64* list = cand + slot * cap;  // cap is a multiple of BN: 16-byte aligned tiles
    const int offset = s.nk - s.nq;
    if (ready) dma_wait_published(ready + slot, epoch);  // an overlapped launch (common.cu)
    // The list's keys this block's rows can see (a block before its list's last stops before
    // the next blocks' own keys).
    const int count =
        dma_visible_count<CAUSAL>(list, (int)cand_count[slot], dma_block_counts(block_counts, bl),
                                  offset + B.z - 1);
    const i64 q_row = (i64)q_heads * D, kv_row = (i64)kv_heads * D;
    const int tiles = (count + BN - 1) / BN;
    // Split-K (gridDim.z > 1, decode): this CTA runs tiles [t0, t1) and writes a partial result.
    const int per = (tiles + gridDim.z - 1) / gridDim.z;
    const int t0 = min((int)blockIdx.z * per, tiles), t1 = min(t0 + per, tiles);

    // Q tile (rows past the block's end are zero).
    for (int c = tid; c < DMA_BLOCK_M * CHUNKS; c += FWD_THREADS) {
        const int r = c / CHUNKS, ch = c % CHUNKS;
        const bool valid = B.y + r < B.z;
        const T* src = valid ? q + (s.q_start + B.y + r) * q_row + h * D + ch * 8 : q;
        cp_async16(sQ + r * L::STRIDE + ch * 8, src, valid);
    }
    // The ranks of tile t into ring slot t % 3, two per 16-byte chunk (select.cu pads each list
    // with DMA_NO_KEY to a whole tile).
    auto load_ranks = [&](int t) {
        if (tid < BN / 2) {
            const int at = t * BN + 2 * tid;
            cp_async16(sC + (t % 3) * BN + 2 * tid, at < count ? list + at : list, at < count);
        }
    };
    // The K/V rows of tile t into stage t & 1, addressed by the ranks already in shared memory.
    auto load_kv = [&](int t) {
        T* dk = sK + (t & 1) * L::KV;
        T* dv = sV + (t & 1) * L::KV;
        const u64* ranks = sC + (t % 3) * BN;
        for (int c = tid; c < BN * CHUNKS; c += FWD_THREADS) {
            const int r = c / CHUNKS, ch = c % CHUNKS;
            const bool valid = t * BN + r < count;
            const i64 row =
                valid ? (i64)(s.k_start + (int)(u32)ranks[r]) * kv_row + hkv * D + ch * 8 : 0;
            cp_async16(dk + r * L::STRIDE + ch * 8, k + row, valid);
            cp_async16(dv + r * L::STRIDE + ch * 8, v + row, valid);
        }
    };
    // Bias of tile t (decoded from its ranks, which have landed) into slot t & 1.
    auto decode_bias = [&](int t) {
        if (tid < BN) sB[(t & 1) * BN + tid] = rank_bias(sC[(t % 3) * BN + tid]) * LOG2E;
    };
    if (t0 < t1) load_ranks(t0);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    if (t0 < t1) decode_bias(t0);
    if (t0 < t1) load_kv(t0);
    if (t0 + 1 < t1) load_ranks(t0 + 1);
    cp_async_commit();

    // Q fragments (A operand) for the warp's 16 rows (QREG; otherwise loaded per tile).
    const T* q_frag = sQ + (warp * 16 + (lane & 15)) * L::STRIDE + (lane >> 4) * 8;
    u32 qf[QREG ? D / 16 : 1][4];
    // (The Q tile landed with the first group, waited for above.)
    if (QREG) {
#pragma unroll
        for (int kk = 0; kk < (QREG ? D / 16 : 0); ++kk) ldmatrix_x4(qf[kk], q_frag + kk * 16);
    }

    // This thread's two rows of the warp's 16 (g = lane / 4 and g + 8), in the m16n8 layout.
    const int tq = lane & 3;
    int row[2], pos[2];
    u64 rthr[2];
    thread_rows(B, warp, lane, offset, thr, hb, total_q, s.q_start, row, pos, rthr);

    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m[2] = {-DMA_INF, -DMA_INF}, l[2] = {0.f, 0.f};

    for (int t = t0; t < t1; ++t) {
        const int stage = t & 1;
        cp_async_wait<0>();  // K/V of tile t and the ranks of tile t + 1 have landed
        __syncthreads();     // ... for every thread, and tile t - 1 is done with its buffers
        if (t + 1 < t1) {
            load_kv(t + 1);
            decode_bias(t + 1);
        }
        if (t + 2 < t1) load_ranks(t + 2);
        cp_async_commit();
        // A warp whose 16 rows all lie past the block's end only helps load (decode: Nq < 16
        // leaves 7 of 8 warps idle, and the tensor cores to the one that computes).
        if (B.y + warp * 16 >= B.z) continue;
        const u64* ranks = sC + (t % 3) * BN;
        const float* biases = sB + (t & 1) * BN;

        const T* tk = sK + stage * L::KV;
        const T* tv = sV + stage * L::KV;
        float sc[BN / 8][4];
#pragma unroll
        for (int i = 0; i < BN / 8; ++i) sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.f;
        // (At D = 256, unrolled by 2 only: a full unroll spills 68 bytes in the causal kernel.)
#pragma unroll QREG ? D / 16 : 2
        for (int kk = 0; kk < D / 16; ++kk) {
            u32 qt[4];
            if (!QREG) ldmatrix_x4(qt, q_frag + kk * 16);
            const u32(&qa)[4] = QREG ? qf[QREG ? kk : 0] : qt;
#pragma unroll
            for (int np = 0; np < BN / 16; ++np) {
                u32 bf[4];
                ldmatrix_x4(bf, tk + (np * 16 + (lane >> 4) * 8 + (lane & 7)) * L::STRIDE + kk * 16 +
                                    ((lane >> 3) & 1) * 8);
                Elem<T>::mma(sc[2 * np], qa, bf[0], bf[1]);
                Elem<T>::mma(sc[2 * np + 1], qa, bf[2], bf[3]);
            }
        }

        // Keep test, scale and bias (log2 domain), and the running max of each row.
        float mx[2] = {-DMA_INF, -DMA_INF}, alpha[2], use[2];
        mask_scores<CAUSAL ? KEEP_BY_RANK_AND_POS : KEEP_BY_RANK, BN>(sc, ranks, biases, rthr, pos,
                                                                    tq, scale_log2, mx);
        update_max(mx, m, use, alpha);
        rescale_rows<D>(o, l, alpha);
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = fast_exp2(sc[nt][e] - use[e >> 1]);
                sc[nt][e] = p;
                l[e >> 1] += p;
            }
        }

        // O += P V: P from the score registers (A operand), V through ldmatrix.trans.
#pragma unroll
        for (int kc = 0; kc < BN / 16; ++kc) {
            u32 pa[4];
            pa[0] = Elem<T>::pack(sc[2 * kc][0], sc[2 * kc][1]);
            pa[1] = Elem<T>::pack(sc[2 * kc][2], sc[2 * kc][3]);
            pa[2] = Elem<T>::pack(sc[2 * kc + 1][0], sc[2 * kc + 1][1]);
            pa[3] = Elem<T>::pack(sc[2 * kc + 1][2], sc[2 * kc + 1][3]);
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                u32 bf[4];
                ldmatrix_x4_trans(bf, tv + (kc * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * L::STRIDE +
                                          dp * 16 + (lane >> 4) * 8);
                Elem<T>::mma(o[2 * dp], pa, bf[0], bf[1]);
                Elem<T>::mma(o[2 * dp + 1], pa, bf[2], bf[3]);
            }
        }
    }

    sum_rows(l);
    if (gridDim.z > 1) {
        // Partial: unnormalised o (f32) at part[z][row][h][D], then (m, l) (log2 domain) at
        // part[splits * total_q * q_heads * D + ((z * total_q + row) * q_heads + h) * 2].
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            if (row[r] >= B.z) continue;
            const i64 qr = (i64)blockIdx.z * total_q + s.q_start + row[r];
            float* dst = part + (qr * q_heads + h) * D + 2 * tq;
#pragma unroll
            for (int i = 0; i < D / 8; ++i)
                *reinterpret_cast<float2*>(dst + i * 8) = make_float2(o[i][2 * r], o[i][2 * r + 1]);
            if (tq == 0) {
                float* ml = part + (i64)gridDim.z * total_q * q_heads * D + (qr * q_heads + h) * 2;
                ml[0] = m[r];
                ml[1] = l[r];
            }
        }
        return;
    }
    write_rows<T, D>(o, l, m, row, B.z, s, h, q_heads, tq, lse_head_stride, out, lse);
}

// `sure` (the Hopper forward's count of keys kept by every row, forward_hopper.cu) is unused here:
// this kernel tests every key.
#define DMA_FORWARD_KERNEL(NAME, T, D, CAUSAL, BN)                                                 \
    extern "C" __global__ void __launch_bounds__(FWD_THREADS)                                      \
        NAME(DMA_FORWARD_PARAMS(T)) {                                                              \
        forward_body<T, D, CAUSAL, BN>(q, k, v, seqs, blocks, cand, cand_count, block_counts, thr, \
                                       out, lse, part, q_heads, kv_heads, bias_heads,              \
                                       bias_head_stride, lse_head_stride, total_q, cap,            \
                                       scale_log2, ready, epoch);                                  \
    }

// Split-K combine: one warp per (query row, query head) of `rows` = total_q * q_heads; out and lse
// from the `splits` partials of forward_body (the same row may hold no keys: out 0, lse -inf).
template <typename T, int D>
__device__ __forceinline__ void combine_body(const float* __restrict__ part,
                                             const SeqInfo* __restrict__ seqs, int num_seqs,
                                             T* __restrict__ out, float* __restrict__ lse,
                                             int q_heads, int lse_head_stride, int total_q,
                                             int splits) {
    constexpr float LN2 = 0.6931471805599453f;
    const int lane = threadIdx.x & 31;
    const i64 item = (i64)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    if (item >= (i64)total_q * q_heads) return;
    const int qrow = (int)(item / q_heads), h = (int)(item % q_heads);
    const float* ml = part + (i64)splits * total_q * q_heads * D;
    float mx = -DMA_INF;
    for (int z = 0; z < splits; ++z) mx = fmaxf(mx, ml[(((i64)z * total_q + qrow) * q_heads + h) * 2]);
    const float use = mx == -DMA_INF ? 0.f : mx;
    float l = 0.f;
    float acc[D / 32];
#pragma unroll
    for (int i = 0; i < D / 32; ++i) acc[i] = 0.f;
    for (int z = 0; z < splits; ++z) {
        const i64 at = ((i64)z * total_q + qrow) * q_heads + h;
        const float w = fast_exp2(ml[at * 2] - use);
        l += ml[at * 2 + 1] * w;
#pragma unroll
        for (int i = 0; i < D / 32; ++i) acc[i] += part[at * D + i * 32 + lane] * w;
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
    T* dst = out + item * D;
#pragma unroll
    for (int i = 0; i < D / 32; ++i) dst[i * 32 + lane] = (T)(acc[i] * inv);
    if (lane == 0) {
        // The lse row of qrow: find its sequence (few sequences in a decode batch).
        int si = 0;
        while (si + 1 < num_seqs && !(qrow >= seqs[si].q_start && qrow < seqs[si].q_start + seqs[si].nq))
            ++si;
        const SeqInfo s = seqs[si];
        lse[s.lse_offset + (i64)h * lse_head_stride + (qrow - s.q_start)] =
            l > 0.f ? (mx + __log2f(l)) * LN2 : -DMA_INF;
    }
}

#define DMA_COMBINE_KERNEL(NAME, T, D)                                                            \
    extern "C" __global__ void NAME(const float* part, const SeqInfo* seqs, int num_seqs, T* out, \
                                    float* lse, int q_heads, int lse_head_stride, int total_q,   \
                                    int splits) {                                                 \
        combine_body<T, D>(part, seqs, num_seqs, out, lse, q_heads, lse_head_stride, total_q,     \
                           splits);                                                               \
    }
