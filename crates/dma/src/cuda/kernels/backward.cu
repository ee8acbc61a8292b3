// Backward, query-major: one CTA per (block of DMA_BLOCK_M query rows, query head), one warp per
// 16 rows, over the same candidate lists and row thresholds as the forward (select.cu; like the
// forward, a block reads the keys of its list its rows can see: dma_visible_count). Per tile of
// BN candidate keys (64; 32 at D = 256, for shared memory), gathered like the forward (ranks two
// tiles ahead, K/V rows one tile ahead, cp.async only):
//   phase A (each warp, its 16 rows): S = Q K^T and dP = dO V^T on the tensor cores; the keep test;
//     P = exp(S - lse), dS = P (dP - Delta); dQ += dS K in registers; P and dS (input type) and
//     dS's column sums go to shared memory;
//   phase B (each warp, 16 keys x DH columns, DH = D / (8 / (BN / 16))): dV_tile = P^T dO and
//     dK_tile = dS^T Q from shared memory, added with f32 atomics into [total_k, Hkv, D] scratch
//     buffers; the column sums of dS over the CTA's rows are added into dbias (f32).
// dq is written once per row at the end (scale applied); dk (scaled) and dv are converted from the
// scratch buffers by dma_convert. Delta_i = <dO_i, out_i> is computed in the prologue.

#define BWD_THREADS (DMA_BLOCK_M * 2)
#define BWD_WARPS (BWD_THREADS / 32)

// Shared memory of the backward with key tiles of BN (cuda/backward.rs: smem_bytes mirrors BYTES).
template <typename T, int D, int BN>
struct BwdSmem {
    static constexpr int STRIDE = D + 8;    // elements per row (16 bytes of padding)
    static constexpr int PSTRIDE = BN + 8;  // P and dS rows
    static constexpr int Q = DMA_BLOCK_M * STRIDE;
    static constexpr int KV = BN * STRIDE;
    static constexpr int P = DMA_BLOCK_M * PSTRIDE;
    // Layout: q | do | k[2] | v[2] | p | ds (T) | ranks[3] (u64) | bias*log2e [2] | dbias
    // partials [warps][BN] | delta [BM] (f32)
    static constexpr int BYTES = (2 * Q + 4 * KV + 2 * P) * 2 + 3 * BN * 8 +
                                 (2 * BN + BWD_WARPS * BN + DMA_BLOCK_M) * 4;
    static_assert(BYTES <= 227 * 1024, "backward shared memory above the 227 KiB of a Hopper CTA");
    static_assert(DMA_TILE_N % BN == 0 && BN % 16 == 0, "lists are padded to DMA_TILE_N keys");
};

template <typename T, int D, bool CAUSAL, int BN>
__device__ __forceinline__ void backward_body(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const T* __restrict__ out, const T* __restrict__ dout, const float* __restrict__ lse,
    const SeqInfo* __restrict__ seqs, const int4* __restrict__ blocks,
    const u64* __restrict__ cand, const u32* __restrict__ cand_count,
    const u32* __restrict__ block_counts,
    const u64* __restrict__ thr, T* __restrict__ dq, float* __restrict__ dk_acc,
    float* __restrict__ dv_acc, float* __restrict__ dbias, int q_heads, int kv_heads,
    int bias_heads, int bias_head_stride, int lse_head_stride, int total_q, int cap,
    float scale, float scale_log2) {
    typedef BwdSmem<T, D, BN> L;
    constexpr float LOG2E = 1.4426950408889634f;
    constexpr int CHUNKS = D / 8;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* sQ = reinterpret_cast<T*>(smem_raw);
    T* sO = sQ + L::Q;  // dO
    T* sK = sO + L::Q;
    T* sV = sK + 2 * L::KV;
    T* sP = sV + 2 * L::KV;
    T* sS = sP + L::P;  // dS
    u64* sC = reinterpret_cast<u64*>(sS + L::P);
    float* sB = reinterpret_cast<float*>(sC + 3 * BN);
    float* sDb = sB + 2 * BN;
    float* sDelta = sDb + BWD_WARPS * BN;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int4 B = blocks[blockIdx.x];
    const int h = blockIdx.y;
    const int hkv = h / (q_heads / kv_heads);
    const int hb = h / (q_heads / bias_heads);
    const SeqInfo s = seqs[B.x];
    const BlockList bl = dma_block_list(B.w, bias_heads, hb);
    const i64 slot = bl.slot;
    const u64* list = cand + slot * cap;
    const int offset = s.nk - s.nq;
    // The list's keys this block's rows can see (a block before its list's last stops before
    // the next blocks' own keys).
    const int count =
        dma_visible_count<CAUSAL>(list, (int)cand_count[slot], dma_block_counts(block_counts, bl),
                                  offset + B.z - 1);
    const i64 q_row = (i64)q_heads * D, kv_row = (i64)kv_heads * D;
    const int tiles = (count + BN - 1) / BN;

    // Q and dO tiles (rows past the block's end are zero).
    for (int c = tid; c < DMA_BLOCK_M * CHUNKS; c += BWD_THREADS) {
        const int r = c / CHUNKS, ch = c % CHUNKS;
        const bool valid = B.y + r < B.z;
        const i64 at = valid ? (s.q_start + B.y + r) * q_row + h * D + ch * 8 : 0;
        cp_async16(sQ + r * L::STRIDE + ch * 8, q + at, valid);
        cp_async16(sO + r * L::STRIDE + ch * 8, dout + at, valid);
    }
    auto load_ranks = [&](int t) {
        if (tid < BN / 2) {
            const int at = t * BN + 2 * tid;
            cp_async16(sC + (t % 3) * BN + 2 * tid, at < count ? list + at : list, at < count);
        }
    };
    auto load_kv = [&](int t) {
        T* dk = sK + (t & 1) * L::KV;
        T* dv = sV + (t & 1) * L::KV;
        const u64* ranks = sC + (t % 3) * BN;
        for (int c = tid; c < BN * CHUNKS; c += BWD_THREADS) {
            const int r = c / CHUNKS, ch = c % CHUNKS;
            const bool valid = t * BN + r < count;
            const i64 row =
                valid ? (i64)(s.k_start + (int)(u32)ranks[r]) * kv_row + hkv * D + ch * 8 : 0;
            cp_async16(dk + r * L::STRIDE + ch * 8, k + row, valid);
            cp_async16(dv + r * L::STRIDE + ch * 8, v + row, valid);
        }
    };
    auto decode_bias = [&](int t) {
        if (tid < BN) sB[(t & 1) * BN + tid] = rank_bias(sC[(t % 3) * BN + tid]) * LOG2E;
    };
    if (tiles > 0) load_ranks(0);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    if (tiles > 0) decode_bias(0);
    if (tiles > 0) load_kv(0);
    if (tiles > 1) load_ranks(1);
    cp_async_commit();

    // Delta = <dO, out> per row: two threads per row, out read from global, dO from shared
    // memory (its cp.async group was waited for above).
    {
        const int r = tid >> 1, half = tid & 1;
        float acc = 0.f;
        if (B.y + r < B.z) {
            const T* src = out + (s.q_start + B.y + r) * q_row + h * D + half * (D / 2);
            const T* dsrc = sO + r * L::STRIDE + half * (D / 2);
#pragma unroll
            for (int c = 0; c < D / 2; c += 8) {
                const uint4 a = *reinterpret_cast<const uint4*>(src + c);
                const uint4 b = *reinterpret_cast<const uint4*>(dsrc + c);
                const T* ea = reinterpret_cast<const T*>(&a);
                const T* eb = reinterpret_cast<const T*>(&b);
#pragma unroll
                for (int e = 0; e < 8; ++e) acc += (float)ea[e] * (float)eb[e];
            }
        }
        acc += __shfl_xor_sync(0xffffffffu, acc, 1);
        if (half == 0) sDelta[r] = acc;
    }
    __syncthreads();

    const int g = lane >> 2, tq = lane & 3;
    int row[2], pos[2];
    u64 rthr[2];
    float rlse[2], rdelta[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        const int r = warp * 16 + g + 8 * e;
        row[e] = B.y + r;
        pos[e] = offset + row[e];
        const bool in = row[e] < B.z;
        rthr[e] = in ? thr[(i64)hb * total_q + s.q_start + row[e]] : DMA_KEEP_NONE;
        const float x = in ? lse[s.lse_offset + (i64)h * lse_head_stride + row[e]] : 0.f;
        rlse[e] = x == -DMA_INF ? 0.f : x * LOG2E;  // such a row keeps nothing
        rdelta[e] = sDelta[r];
    }

    float dqa[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) dqa[i][0] = dqa[i][1] = dqa[i][2] = dqa[i][3] = 0.f;

    // Phase B's part: 16 keys (kg) by DH columns (dh) per warp.
    constexpr int KG = BN / 16;                                   // key groups of 16
    constexpr int KG_SHIFT = KG == 4 ? 2 : (KG == 2 ? 1 : 0);      // log2(KG)
    constexpr int DH = D / (BWD_WARPS / KG);                      // columns per warp
    static_assert(KG == 1 << KG_SHIFT && DH % 16 == 0, "phase B: whole 16 x 16 blocks");
    const int kg = warp & (KG - 1), dh = warp >> KG_SHIFT;

    for (int t = 0; t < tiles; ++t) {
        const int stage = t & 1;
        cp_async_wait<0>();
        __syncthreads();
        if (t + 1 < tiles) {
            load_kv(t + 1);
            decode_bias(t + 1);
        }
        if (t + 2 < tiles) load_ranks(t + 2);
        cp_async_commit();
        const u64* ranks = sC + (t % 3) * BN;
        const float* biases = sB + (t & 1) * BN;
        const T* tk = sK + stage * L::KV;
        const T* tv = sV + stage * L::KV;

        // ---- phase A: S = Q K^T, dP = dO V^T for the warp's 16 rows.
        float sc[BN / 8][4], dp[BN / 8][4];
#pragma unroll
        for (int i = 0; i < BN / 8; ++i) {
            sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.f;
            dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
        }
#pragma unroll 2
        for (int kk = 0; kk < D / 16; ++kk) {
            u32 qa[4], oa[4];
            ldmatrix_x4(qa, sQ + (warp * 16 + (lane & 15)) * L::STRIDE + kk * 16 + (lane >> 4) * 8);
            ldmatrix_x4(oa, sO + (warp * 16 + (lane & 15)) * L::STRIDE + kk * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int np = 0; np < BN / 16; ++np) {
                const int at = (np * 16 + (lane >> 4) * 8 + (lane & 7)) * L::STRIDE + kk * 16 +
                               ((lane >> 3) & 1) * 8;
                u32 bk[4], bv[4];
                ldmatrix_x4(bk, tk + at);
                ldmatrix_x4(bv, tv + at);
                Elem<T>::mma(sc[2 * np], qa, bk[0], bk[1]);
                Elem<T>::mma(sc[2 * np + 1], qa, bk[2], bk[3]);
                Elem<T>::mma(dp[2 * np], oa, bv[0], bv[1]);
                Elem<T>::mma(dp[2 * np + 1], oa, bv[2], bv[3]);
            }
        }
        // P and dS.
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int c = nt * 8 + 2 * tq + (e & 1);
                const int r = e >> 1;
                const u64 rank = ranks[c];
                const float p =
                    dma_keeps<CAUSAL>(rank, rthr[r], pos[r]) ? fast_exp2(sc[nt][e] * scale_log2 + biases[c] - rlse[r]) : 0.f;
                const float ds = p * (dp[nt][e] - rdelta[r]);
                sc[nt][e] = p;
                dp[nt][e] = ds;
            }
        }
        // P and dS to shared memory (phase B reads them transposed).
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int at = (warp * 16 + g + 8 * r) * L::PSTRIDE + nt * 8 + 2 * tq;
                *reinterpret_cast<u32*>(sP + at) = Elem<T>::pack(sc[nt][2 * r], sc[nt][2 * r + 1]);
                *reinterpret_cast<u32*>(sS + at) = Elem<T>::pack(dp[nt][2 * r], dp[nt][2 * r + 1]);
            }
        }
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
            for (int b = 0; b < 2; ++b) {
                float x = dp[nt][b] + dp[nt][2 + b];
                x += __shfl_xor_sync(0xffffffffu, x, 4);
                x += __shfl_xor_sync(0xffffffffu, x, 8);
                x += __shfl_xor_sync(0xffffffffu, x, 16);
                if (g == 0) sDb[warp * BN + nt * 8 + 2 * tq + b] = x;
            }
        }
        // dQ += dS K: dS from registers (A operand), K through ldmatrix.trans.
#pragma unroll
        for (int kc = 0; kc < BN / 16; ++kc) {
            u32 pa[4];
            pa[0] = Elem<T>::pack(dp[2 * kc][0], dp[2 * kc][1]);
            pa[1] = Elem<T>::pack(dp[2 * kc][2], dp[2 * kc][3]);
            pa[2] = Elem<T>::pack(dp[2 * kc + 1][0], dp[2 * kc + 1][1]);
            pa[3] = Elem<T>::pack(dp[2 * kc + 1][2], dp[2 * kc + 1][3]);
#pragma unroll
            for (int dd = 0; dd < D / 16; ++dd) {
                u32 bf[4];
                ldmatrix_x4_trans(bf, tk + (kc * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * L::STRIDE +
                                          dd * 16 + (lane >> 4) * 8);
                Elem<T>::mma(dqa[2 * dd], pa, bf[0], bf[1]);
                Elem<T>::mma(dqa[2 * dd + 1], pa, bf[2], bf[3]);
            }
        }
        __syncthreads();  // P, dS and the dbias partials of every warp are in shared memory

        // ---- phase B: dV = P^T dO, then dK = dS^T Q, for keys kg*16.. and columns dh*DH..
        // (one product at a time: fewer live registers beside dQ's accumulators).
#pragma unroll
        for (int which = 0; which < 2; ++which) {
            const T* sa_src = which == 0 ? sP : sS;
            const T* sb_src = which == 0 ? sO : sQ;
            float* acc = which == 0 ? dv_acc : dk_acc;
            const float mul = which == 0 ? 1.f : scale;
            float a[DH / 8][4];
#pragma unroll
            for (int i = 0; i < DH / 8; ++i) a[i][0] = a[i][1] = a[i][2] = a[i][3] = 0.f;
            const int mi = lane >> 3, r8 = lane & 7;
#pragma unroll 2
            for (int kk = 0; kk < DMA_BLOCK_M / 16; ++kk) {
                // A = P^T or dS^T (keys x rows): ldmatrix.trans of the stored rows x keys.
                u32 pa[4];
                ldmatrix_x4_trans(pa, sa_src + (kk * 16 + (mi >> 1) * 8 + r8) * L::PSTRIDE +
                                          kg * 16 + (mi & 1) * 8);
#pragma unroll
                for (int dd = 0; dd < DH / 16; ++dd) {
                    u32 bo[4];
                    ldmatrix_x4_trans(bo, sb_src + (kk * 16 + ((lane >> 3) & 1) * 8 + r8) * L::STRIDE +
                                              dh * DH + dd * 16 + (lane >> 4) * 8);
                    Elem<T>::mma(a[2 * dd], pa, bo[0], bo[1]);
                    Elem<T>::mma(a[2 * dd + 1], pa, bo[2], bo[3]);
                }
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int c = kg * 16 + g + 8 * r;  // key slot in the tile
                if (t * BN + c >= count) continue;
                float* dst = acc + (i64)(s.k_start + (int)(u32)ranks[c]) * kv_row + hkv * D +
                             dh * DH + 2 * tq;
#pragma unroll
                for (int i = 0; i < DH / 8; ++i)
                    red_add2(dst + i * 8, a[i][2 * r] * mul, a[i][2 * r + 1] * mul);
            }
        }
        if (tid < BN && t * BN + tid < count) {
            float x = 0.f;
#pragma unroll
            for (int w = 0; w < BWD_WARPS; ++w) x += sDb[w * BN + tid];
            atomicAdd(dbias + s.bias_offset + (i64)hb * bias_head_stride + (int)(u32)ranks[tid], x);
        }
    }

    // dq = scale * dS K, written once per row.
    const float mul[2] = {scale, scale};
    store_rows<T, D>(dqa, mul, row, B.z, dq + s.q_start * q_row + h * D, q_row, tq);
}

// `sure` (the lists' sure-key counts) is the Hopper backward's; this kernel tests every key.
#define DMA_BACKWARD_KERNEL(NAME, T, D, CAUSAL, BN)                                                \
    extern "C" __global__ void __launch_bounds__(BWD_THREADS)                                      \
        NAME(DMA_BACKWARD_PARAMS(T)) {                                                             \
        backward_body<T, D, CAUSAL, BN>(q, k, v, out, dout, lse, seqs, blocks, cand, cand_count,   \
                                        block_counts, thr, dq, dk_acc, dv_acc, dbias, q_heads,     \
                                        kv_heads, bias_heads, bias_head_stride, lse_head_stride,   \
                                        total_q, cap, scale, scale_log2);                          \
    }

// dk and dv (T) from their f32 scratch buffers, n elements each, in one launch: four elements
// per thread and step (n is a multiple of 4: every head dim is).
template <typename T>
__device__ __forceinline__ void convert_body(const float* __restrict__ dk_acc,
                                             const float* __restrict__ dv_acc, T* __restrict__ dk,
                                             T* __restrict__ dv, i64 n) {
    const i64 quads = n / 4;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < 2 * quads;
         i += (i64)gridDim.x * blockDim.x) {
        const bool is_v = i >= quads;
        const i64 at = (is_v ? i - quads : i) * 4;
        const float4 x = *reinterpret_cast<const float4*>((is_v ? dv_acc : dk_acc) + at);
        uint2 packed;
        packed.x = Elem<T>::pack(x.x, x.y);
        packed.y = Elem<T>::pack(x.z, x.w);
        *reinterpret_cast<uint2*>((is_v ? dv : dk) + at) = packed;
    }
}

#define DMA_CONVERT_KERNEL(NAME, T)                                                            \
    extern "C" __global__ void NAME(const float* dk_acc, const float* dv_acc, T* dk, T* dv,   \
                                    long long n) {                                             \
        convert_body<T>(dk_acc, dv_acc, dk, dv, n);                                            \
    }
