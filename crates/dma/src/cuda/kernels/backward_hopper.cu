// Backward on Hopper (sm_90a): the same result as backward.cu (one CTA per block of DMA_BLOCK_M
// query rows and one query head, over the forward's lists and row thresholds), with the Hopper
// forward's split of the work by warpgroup:
// - the producer warpgroup (hopper.cu: produce_key_tiles) loads the block's Q and dO tiles and
//   gathers each tile's K/V rows into a ring of STAGES stages;
// - two consumer warpgroups, 64 query rows each, per tile of 64 keys:
//   1. S = Q K^T and dP = dO V^T (wgmma, operands in shared memory); the keep test (none on a
//      list's sure keys, as in the forward),
//      P = exp2(S * scale * log2 e + bias * log2 e - lse * log2 e) and dS = P (dP - Delta) in
//      registers; dS's column sums over the warp's rows (dbias) to shared memory;
//   2. P and dS (input type) to shared memory, then a barrier of both consumers;
//   3. dQ += dS K (dS from registers, K from the stage); consumer 0 computes the tile's
//      dV = P^T dO and consumer 1 its dK = dS^T Q over all 128 rows (both operands transposed
//      from shared memory); 64 threads sum the 8 warps' dS column sums into dbias (f32 atomics);
//   4. the tile's dV or dK is added with f32 reductions into [total_k, Hkv, D] scratch buffers
//      like backward.cu's, each warp's rows through a small staging buffer so that every
//      reduction covers a whole 128-byte line of a row.
// P, dS and the column sums are double-buffered by tile parity: a consumer stores tile t's after
// the barrier of tile t - 1, which the other consumer reaches only once its products of tile
// t - 2 (the last readers of that buffer) are done.
// Delta_i = <dO_i, out_i> comes from global memory in the consumers' prologue. dq is written once
// per row at the end (scaled); dk (scaled in the reduction) and dv are converted from the scratch
// buffers by backward.cu's dma_convert.

// Key-tile stages: 2 at D = 128 (the double-buffered P and dS take the room of a third); 4 at
// D = 64 (cuda/backward.rs: hopper_stages mirrors it).
#define HOPB_STAGES(D) ((D) == 128 ? 2 : 4)

// Shared memory (cuda/backward.rs: hopper_smem_bytes mirrors BYTES).
template <int D, int STAGES>
struct HopBwdSmem {
    static constexpr int Q = DMA_BLOCK_M * D;       // Q and dO, elements
    static constexpr int KV = HOP_BN * D;           // a K or V stage
    static constexpr int P = DMA_BLOCK_M * HOP_BN;  // a P or dS buffer
    static constexpr int WARPS = 8;                 // consumer warps (dbias column sums)
    // A consumer warp's staging buffer for its reductions: 16 rows of 32 f32, padded to 36 so
    // that the accumulator layout's 8-byte stores hit distinct banks.
    static constexpr int RED_ROWS = 16, RED_STRIDE = 36;
    // Layout: q | do | k[STAGES] | v[STAGES] | p[2] | ds[2] (16-bit, each a multiple of 1024
    // bytes) | ranks (u64, 2 * STAGES tiles) | full[STAGES], empty[STAGES] (mbarriers) |
    // bias * log2 e [STAGES] | dS column sums [2][WARPS][HOP_BN] | staging [WARPS] (f32)
    static constexpr int BYTES = (2 * Q + 2 * STAGES * KV + 4 * P) * 2 + 2 * STAGES * HOP_BN * 8 +
                                 2 * STAGES * 8 + STAGES * HOP_BN * 4 + 2 * WARPS * HOP_BN * 4 +
                                 WARPS * RED_ROWS * RED_STRIDE * 4;
    static_assert(D == 64 || D == 128, "the Hopper backward has D = 64 and 128");
    static_assert(BYTES <= 227 * 1024, "shared memory above the 227 KiB of a Hopper CTA");
};

// This thread's part of Delta = <dO, out> of one row: D / 4 columns from `at` (element offset).
template <typename T, int D>
__device__ __forceinline__ float row_dot_quarter(const T* __restrict__ out,
                                                 const T* __restrict__ dout, i64 at) {
    float acc = 0.f;
#pragma unroll
    for (int c = 0; c < D / 4; c += 8) {
        const uint4 a = *reinterpret_cast<const uint4*>(out + at + c);
        const uint4 b = *reinterpret_cast<const uint4*>(dout + at + c);
        const T* ea = reinterpret_cast<const T*>(&a);
        const T* eb = reinterpret_cast<const T*>(&b);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc += (float)ea[e] * (float)eb[e];
    }
    return acc;
}

// One step of sum_columns_over_rows: partners (lane ^ lane_mask) swap halves of v[0 .. 2 HALF),
// each keeping the half `upper` selects, added, in v[0 .. HALF).
template <int HALF>
__device__ __forceinline__ void swap_halves_and_add(float (&v)[16], bool upper, int lane_mask) {
#pragma unroll
    for (int i = 0; i < HALF; ++i) {
        const float give = upper ? v[i] : v[HALF + i];
        const float keep = upper ? v[HALF + i] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, give, lane_mask);
    }
}

// Sums 16 values per lane (v[2 nt + b]: column 8 nt + 2 tq + b of the warp's two 8-row halves)
// over the 8 lanes of equal tq (g = lane / 4), with 8 + 4 + 2 shuffles instead of 16 x 3: at
// each step partners (g ^ 1, g ^ 2, g ^ 4) swap halves, each keeping the half its bit selects.
// v[0], v[1] end with the sums of v[2 nt], v[2 nt + 1], nt = 4 (g & 1) + 2 (g >> 1 & 1) + (g >> 2 & 1).
__device__ __forceinline__ void sum_columns_over_rows(float (&v)[16], int g) {
    swap_halves_and_add<8>(v, g & 1, 4);
    swap_halves_and_add<4>(v, (g >> 1) & 1, 8);
    swap_halves_and_add<2>(v, (g >> 2) & 1, 16);
}

template <typename T, int D, bool CAUSAL, int STAGES>
__device__ __forceinline__ void backward_hopper_body(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const T* __restrict__ out, const T* __restrict__ dout, const float* __restrict__ lse,
    const SeqInfo* __restrict__ seqs, const int4* __restrict__ blocks,
    const u64* __restrict__ cand, const u32* __restrict__ cand_count,
    const u32* __restrict__ block_counts,
    const u32* __restrict__ sure, const u64* __restrict__ thr, T* __restrict__ dq, float* __restrict__ dk_acc,
    float* __restrict__ dv_acc, float* __restrict__ dbias, int q_heads, int kv_heads,
    int bias_heads, int bias_head_stride, int lse_head_stride, int total_q, int cap,
    float scale, float scale_log2) {
    typedef HopBwdSmem<D, STAGES> L;
    constexpr int BN = HOP_BN;
    constexpr float LOG2E = 1.4426950408889634f;
    // The producer hands a tile over one tile late (produce_key_tiles).
    constexpr int LAG = 1;

    extern __shared__ __align__(1024) unsigned char smem_raw[];
    T* sQ = reinterpret_cast<T*>(smem_raw);
    T* sO = sQ + L::Q;  // dO
    T* sK = sO + L::Q;
    T* sV = sK + STAGES * L::KV;
    T* sP = sV + STAGES * L::KV;
    T* sS = sP + 2 * L::P;  // dS
    u64* sC = reinterpret_cast<u64*>(sS + 2 * L::P);  // ranks, the producer's ring
    u64* full = sC + 2 * STAGES * BN;
    u64* empty = full + STAGES;
    float* sB = reinterpret_cast<float*>(empty + STAGES);  // biases * log2 e, per stage
    float* sDb = sB + STAGES * BN;                         // dS column sums, per warp
    float* sRed = sDb + 2 * L::WARPS * BN;                 // reduction staging, per warp

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
    const BlockWork w =
        block_work<CAUSAL>(blocks, seqs, cand, cand_count, block_counts, sure, q_heads,
                           kv_heads, bias_heads, cap);
    const int4 B = w.B;
    const int count = w.count, tiles = w.tiles;
    const i64 q_row = (i64)q_heads * D, kv_row = (i64)kv_heads * D;
    // The CTA's first tile. The blocks of a list, and neighbouring lists, hold mostly the
    // same keys, in the same order; CTAs running side by side that walked them in step would
    // add into the same dk and dv rows at the same time.
    const int first = tiles > 0 ? (int)((blockIdx.x * 5u) % (u32)tiles) : 0;

    init_stage_barriers<STAGES>(full, empty);

    if (wg == 2) {
        produce_key_tiles<T, D, STAGES, LAG>(w, first, k, v, kv_row, sK, sV, sC, sB, full, empty,
                                             [&](int p) {
                                                 load_block_rows<T, D>(p, q, B, w.s, q_row, w.h, sQ);
                                                 load_block_rows<T, D>(p, dout, B, w.s, q_row, w.h, sO);
                                             });
        return;
    }

    // Consumer c: rows 64 c .. 64 c + 63 of the block (the wgmma accumulator layout: see
    // forward_hopper.cu).
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    const int c = wg, g = lane >> 2, tq = lane & 3;
    int row[2], pos[2];
    u64 rthr[2];
    thread_rows(B, warp, lane, w.offset, thr, w.hb, total_q, w.s.q_start, row, pos, rthr);
    float rlse[2], rdelta[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        const bool in = row[e] < B.z;
        const float x = in ? lse[w.s.lse_offset + (i64)w.h * lse_head_stride + row[e]] : 0.f;
        rlse[e] = x == -DMA_INF ? 0.f : x * LOG2E;  // such a row keeps nothing
        const i64 at = (w.s.q_start + row[e]) * q_row + w.h * D + tq * (D / 4);
        rdelta[e] = in ? row_dot_quarter<T, D>(out, dout, at) : 0.f;
        rdelta[e] += __shfl_xor_sync(0xffffffffu, rdelta[e], 1);
        rdelta[e] += __shfl_xor_sync(0xffffffffu, rdelta[e], 2);
    }

    float dqa[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) dqa[i][0] = dqa[i][1] = dqa[i][2] = dqa[i][3] = 0.f;
    float sc[BN / 8][4], dp[BN / 8][4];
    u32 da[BN / 16][4];  // dS as A fragments (rows g, g + 8; keys 16 kc + 2 tq (+ 8))

    // Descriptors (the others are these plus a byte offset, desc_plus):
    // - S = Q K^T, dP = dO V^T: A this consumer's Q or dO rows (K-major), B the stage's K or V
    //   (K-major: D contiguous);
    // - dQ += dS K: B the stage's K, MN-major (16 keys are 2 KB; column blocks BN * 128 bytes apart);
    // - dV = P^T dO (consumer 0), dK = dS^T Q (consumer 1): A the stored P or dS, MN-major (keys
    //   contiguous: the tile's one column block); B dO or Q, MN-major (16 rows are 2 KB, column
    //   blocks DMA_BLOCK_M * 128 bytes apart).
    const u64 q_desc = smem_desc(sQ + c * 64 * 64, 16, 1024);
    const u64 do_desc = smem_desc(sO + c * 64 * 64, 16, 1024);
    const u64 k_desc = smem_desc(sK, 16, 1024);
    const u64 v_desc = smem_desc(sV, 16, 1024);
    const u64 kt_desc = smem_desc(sK, BN * 128, 1024);
    const u64 pt_desc = smem_desc(c == 0 ? sP : sS, DMA_BLOCK_M * 128, 1024);
    const u64 rows_desc = smem_desc(c == 0 ? sO : sQ, DMA_BLOCK_M * 128, 1024);
    constexpr u32 KV_BYTES = L::KV * sizeof(T), P_BYTES = L::P * sizeof(T);
    float* const acc_out = c == 0 ? dv_acc : dk_acc;
    const float acc_mul = c == 0 ? 1.f : scale;

    for (int t = 0; t < tiles; ++t) {
        const int kt = tile_at(t, first, tiles);  // the list's tile
        const int st = t % STAGES, buf = t & 1;
        const u32 stage = st * KV_BYTES;
        const u64* ranks = rank_tile<STAGES>(sC, t);
        const float* biases = sB + st * BN;
        mbar_wait(full + st, (t / STAGES) & 1);

        // 1. S and dP.
        wgmma_fence();
        issue_rows_by_keys<T, D>(sc, q_desc, desc_plus(k_desc, stage));
        issue_rows_by_keys<T, D>(dp, do_desc, desc_plus(v_desc, stage));
        // The keep test: kept scores become scale * s + bias (log2 domain), the others -inf, so P
        // is 0 there.
        const bool causal_tile = needs_causal_test<CAUSAL, BN>(ranks, count, kt, w.offset + B.y);
        wgmma_wait<1>();
        wgmma_settle(sc);
        mask_tile<BN>(kt < w.sure_tiles, causal_tile, sc, ranks, biases, rthr, pos, tq, scale_log2);
        wgmma_wait<0>();
        wgmma_settle(dp);
        T* tp = sP + buf * L::P;
        T* ts = sS + buf * L::P;
        float* db = sDb + buf * L::WARPS * BN + warp * BN;
        float colsum[BN / 4];
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
            float p[4], ds[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                p[e] = fast_exp2(sc[nt][e] - rlse[e >> 1]);
                ds[e] = p[e] * (dp[nt][e] - rdelta[e >> 1]);
            }
            // 2. P and dS to the swizzled [row][key] tiles (row 16 warp + g (+ 8): r & 7 = g).
            const int at = (warp * 16 + g) * 64 + ((nt ^ g) << 3) + 2 * tq;
            const u32 p0 = Elem<T>::pack(p[0], p[1]), p1 = Elem<T>::pack(p[2], p[3]);
            da[nt >> 1][(nt & 1) * 2] = Elem<T>::pack(ds[0], ds[1]);
            da[nt >> 1][(nt & 1) * 2 + 1] = Elem<T>::pack(ds[2], ds[3]);
            *reinterpret_cast<u32*>(tp + at) = p0;
            *reinterpret_cast<u32*>(tp + at + 8 * 64) = p1;
            *reinterpret_cast<u32*>(ts + at) = da[nt >> 1][(nt & 1) * 2];
            *reinterpret_cast<u32*>(ts + at + 8 * 64) = da[nt >> 1][(nt & 1) * 2 + 1];
            // This thread's part of dS's column sums: its two rows, columns 8 nt + 2 tq (+ 1).
            colsum[2 * nt] = ds[0] + ds[2];
            colsum[2 * nt + 1] = ds[1] + ds[3];
        }
        // The column sums over the warp's 16 rows (f32): halving exchanges over g, so that lane
        // (g, tq) ends with the sums of columns 8 nt + 2 tq (+ 1) for nt = g's bits reversed.
        sum_columns_over_rows(colsum, g);
        {
            const int nt = 4 * (g & 1) + 2 * ((g >> 1) & 1) + ((g >> 2) & 1);
            *reinterpret_cast<float2*>(db + nt * 8 + 2 * tq) = make_float2(colsum[0], colsum[1]);
        }
        fence_proxy_async();
        consumers_sync();

        // 3. dQ += dS K, and dV (consumer 0) or dK (consumer 1) of the tile.
        wgmma_fence();
        issue_weights_by_keys<T, D>(dqa, da, desc_plus(kt_desc, stage));
        float acc[D / 8][4];
#pragma unroll
        for (int kk = 0; kk < DMA_BLOCK_M / 16; ++kk) {
            const u32 step = kk * 16 * 64 * sizeof(T);
            const u64 a = desc_plus(pt_desc, buf * P_BYTES + step), b = desc_plus(rows_desc, step);
            if constexpr (D == 128)
                Wgmma<T>::tt128(acc, a, b, kk > 0);
            else
                Wgmma<T>::tt64(acc, a, b, kk > 0);
        }
        wgmma_commit();
        // While they run: the tile's dbias, the 8 warps' column sums (consumer 0's first 64
        // threads).
        if (tid < BN && kt * BN + tid < count) {
            const float* sums = sDb + buf * L::WARPS * BN + tid;
            float x = 0.f;
#pragma unroll
            for (int i = 0; i < L::WARPS; ++i) x += sums[i * BN];
            atomicAdd(dbias + w.s.bias_offset + (i64)w.hb * bias_head_stride + (int)(u32)ranks[tid], x);
        }
        // The keys whose rows this lane adds into (read before the stage, and with it the ranks'
        // slot, is released): rows lane / 8 + 4 j of the warp's 16 (16 (warp % 4) ..).
        int key[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int kr = (warp & 3) * 16 + (lane >> 3) + 4 * j;
            key[j] = kt * BN + kr < count ? (int)(u32)ranks[kr] : -1;
        }
        wgmma_wait<0>();
        wgmma_settle(dqa);
        wgmma_settle(acc);
        mbar_arrive(empty + st);
        // 4. The warp's 16 rows of dV or dK into global memory, 32 columns at a time through its
        // staging buffer, so that each reduction request is a whole 128-byte line (8 lanes of 16
        // bytes per row) rather than a 32-byte sector (4 lanes of 8 bytes, the accumulator's
        // layout): the reductions are bound by the L2's requests, not by instructions.
        float* staged = sRed + warp * L::RED_ROWS * L::RED_STRIDE;
#pragma unroll
        for (int q4 = 0; q4 < D / 32; ++q4) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float(&a)[4] = acc[4 * q4 + j];
                float* at = staged + g * L::RED_STRIDE + 8 * j + 2 * tq;
                *reinterpret_cast<float2*>(at) = make_float2(a[0] * acc_mul, a[1] * acc_mul);
                *reinterpret_cast<float2*>(at + 8 * L::RED_STRIDE) =
                    make_float2(a[2] * acc_mul, a[3] * acc_mul);
            }
            __syncwarp();
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float4 x = *reinterpret_cast<const float4*>(
                    staged + ((lane >> 3) + 4 * j) * L::RED_STRIDE + 4 * (lane & 7));
                if (key[j] >= 0)
                    red_add4(acc_out + (i64)(w.s.k_start + key[j]) * kv_row + w.hkv * D + 32 * q4 +
                                 4 * (lane & 7),
                             x.x, x.y, x.z, x.w);
            }
            __syncwarp();  // read before the next columns overwrite the buffer
        }
    }

    // dq = scale * dS K, written once per row.
    const float mul[2] = {scale, scale};
    store_rows<T, D>(dqa, mul, row, B.z, dq + w.s.q_start * q_row + w.h * D, q_row, tq);
}

// The parameters of DMA_BACKWARD_KERNEL (DMA_BACKWARD_PARAMS: cuda/backward.rs launches either).
// min blocks 1 caps the registers at entry, which setmaxnreg needs.
#define DMA_BACKWARD_HOPPER_KERNEL(NAME, T, D, CAUSAL)                                             \
    extern "C" __global__ void __launch_bounds__(HOP_THREADS, 1)                                   \
        NAME(DMA_BACKWARD_PARAMS(T)) {                                                             \
        backward_hopper_body<T, D, CAUSAL, HOPB_STAGES(D)>(                                        \
            q, k, v, out, dout, lse, seqs, blocks, cand, cand_count, block_counts, sure, thr, dq,  \
            dk_acc, dv_acc, dbias, q_heads, kv_heads, bias_heads, bias_head_stride,                \
            lse_head_stride, total_q, cap, scale, scale_log2);                                     \
    }
