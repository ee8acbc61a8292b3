// Selection (SPEC.md "Which keys a query keeps") on the GPU, one CTA per (list, bias head).
//
// A list is a run of R query rows (causal: R = L.z - L.y <= DMA_LIST_M, the rows of up to
// DMA_LIST_BLOCKS forward blocks; cuda/plan.rs) or a whole sequence (not causal). For a causal
// list whose first row sits at position p0, with P = clamp(p0, 0, Nk) and the list's own keys
// [P, E), E - P <= R:
//   tau   = the w-th best rank among keys [0, P) (radix select; every key when P <= w),
//   thr_p = the w-th best rank among { j <= p } for each row p of the list,
//   list  = { j < P : rank_j >= tau } ++ { j in [P, E) : rank_j >= thr_j }
//           (at most w + R keys; the first part's sure keys first, then its others by descending
//           rank, the second ascending: see the end of select_body), stored as the keys' ranks
//           (index in the low word, order-preserving bias bits above),
// and row p keeps key j iff j <= p and rank_j >= thr_p. Every row's kept set lies in the list
// because the w-th best rank only rises with p. thr_p is found among the (E - P) + 1 smallest
// ranks of { j < P : rank_j >= tau } ++ [P, E) (derived above the row loop below).
//
// Anchors (a list every ANCHOR_ROWS = A rows of a sequence, cuda/plan.rs, which says why 2048)
// radix-select over all P earlier keys: O(N^2 / A) bias reads per head. The lists between anchors
// select over their anchor's list plus the keys since it (at most w + A keys), launched after the
// anchors: O(N * (w + A) / R). Memory is O(N * w / R).
// docs/cuda-notes.md.
//
// Every bias value of a sequence with queries passes once through the compaction below (the keys
// [0, P) of an anchor, [E_a, P) of a dependent list, and the own keys [P, E) of each), which is
// where a non-finite bias is reported (dma_check_bias): one test per key, not one per radix pass.

// The CTA size is the kernels' THREADS (cuda/select.rs: 256 for a dependent list, 1024 for an
// anchor, which selects over many more keys); at most SEL_MAX_WARPS warps.
#define SEL_MAX_WARPS 32

struct SelectShared {
    u32 hist[256];
    u32 warp_counts[SEL_MAX_WARPS];
    u32 digit, need, nz, exact;
    u64 min_key;
    // Per block of the list: t*, the largest threshold of its rows that keep anything (0: none),
    // and the smallest (DMA_KEEP_NONE: none); how many of the keys before P ranked below the
    // list's largest t* are at least the block's t*, and at least its smallest threshold.
    u64 t_star[DMA_LIST_BLOCKS], t_least[DMA_LIST_BLOCKS];
    u32 sure_below[DMA_LIST_BLOCKS], head_below[DMA_LIST_BLOCKS];
    u64 own[DMA_LIST_M];            // the rank of own key P + i
    u32 own_kept[DMA_LIST_M / 32];  // bit i: own key P + i is kept by some row (its own)
    // Z (below): at most DMA_LIST_M + 1 ranks, padded to a power of two for the sort.
    u64 z[2 * DMA_LIST_M];
};

// Sorts z[0, n) ascending in place (bitonic; n a power of two, 32 <= n <= 2 * DMA_LIST_M). Every
// thread of the CTA must call it. Strides of 32 and more exchange through shared memory, one
// barrier each; the strides below 32 of a merge step run in registers, a warp holding 32
// consecutive ranks (one per lane) and exchanging with lane ^ j by shuffles. For n = 256 that is
// 14 barriers instead of 36 (ncu: the loop of its barriers held ~11% of the anchors' stalls).
template <int THREADS>
__device__ __forceinline__ void sort_ascending(u64* z, int n) {
    const int lane = threadIdx.x & 31;
    for (int k = 2; k <= n; k <<= 1) {
        for (int j = k >> 1; j >= 32; j >>= 1) {
            for (int t = threadIdx.x; t < n / 2; t += THREADS) {
                const int i = ((t & ~(j - 1)) << 1) | (t & (j - 1));  // bit log2(j) of i is 0
                const u64 a = z[i], b = z[i + j];
                if ((a > b) == ((i & k) == 0)) {
                    z[i] = b;
                    z[i + j] = a;
                }
            }
            __syncthreads();
        }
        for (int base = threadIdx.x & ~31; base < n; base += THREADS) {
            const int i = base + lane;
            const bool ascending = (i & k) == 0;
            u64 x = z[i];
            for (int j = min(k >> 1, 16); j > 0; j >>= 1) {
                const u64 y = __shfl_xor_sync(0xffffffffu, x, j);
                // The lower index of a pair keeps the smaller in an ascending run.
                const bool keep_smaller = ((lane & j) == 0) == ascending;
                x = (keep_smaller == (y < x)) ? y : x;
            }
            z[i] = x;
        }
        __syncthreads();
    }
}

// Row thresholds from Z, sorted ascending (z[0, n), n a multiple of 32, padded with
// DMA_KEEP_NONE, whose index bits no row reaches): for row r of [r_begin, r_end), at position
// offset + r, m = want(r, t) (0: t already holds its answer) and then write(r, t) with t the
// m-th smallest rank of Z whose key index is at most that position. A warp takes 32 consecutive
// rows, whose positions are q0 + lane, and walks Z 32 ranks at a time: lane l's keys in a chunk
// are those before q0 (one ballot) and those in [q0, q0 + l] (the low l + 1 bits of one OR over
// the lanes).
// That is ~15 instructions per chunk for 32 rows; a scan of Z per row was 30% of the dependent
// lists' kernel.
template <int THREADS, typename Want, typename Write>
__device__ __forceinline__ void thresholds_from_sorted(const u64* z, int n, int r_begin, int r_end,
                                                       int offset, Want want, Write write) {
    const int lane = threadIdx.x & 31;
    for (int r0 = r_begin + (threadIdx.x & ~31); r0 < r_end; r0 += THREADS) {
        const int r = r0 + lane;
        const i64 p = (i64)offset + r, q0 = (i64)offset + r0;
        u64 t = DMA_KEEP_NONE;
        const int m = r < r_end ? want(r, t) : 0;
        int seen = 0, chunk = -1;
        for (int base = 0; base < n && __any_sync(0xffffffffu, m > 0 && chunk < 0); base += 32) {
            const i64 d = (i64)(u32)z[base + lane] - q0;
            const u32 before = __ballot_sync(0xffffffffu, d < 0);
            const u32 near = __reduce_or_sync(0xffffffffu, d >= 0 && d < 32 ? 1u << d : 0u);
            const int c = __popc(before) + __popc(near & ((2u << lane) - 1u));
            if (m > 0 && chunk < 0) {
                if (seen + c >= m) chunk = base;
                else seen += c;
            }
        }
        if (chunk >= 0) {
            int need = m - seen;
            for (int j = chunk; j < chunk + 32; ++j) {
                const u64 rank = z[j];
                if ((i64)(u32)rank <= p && --need == 0) {
                    t = rank;
                    break;
                }
            }
        }
        if (r < r_end) write(r, t);
    }
}

// The k-th largest (1-based, 1 <= k <= n) of the distinct keys get(i), i in [0, n). Only the low
// `index_bits` bits of a key's low word may be non-zero. Every thread of the CTA must call it.
template <typename Get>
__device__ u64 radix_select_largest(int n, u32 k, int index_bits, Get get, SelectShared& sh) {
    u64 prefix = 0, mask = 0;
    const int low_passes = (index_bits + 7) / 8;
    const int passes = 4 + low_passes;
    for (int pass = 0; pass < passes; ++pass) {
        const int shift = pass < 4 ? 56 - 8 * pass : 8 * (low_passes - 1 - (pass - 4));
        for (int i = threadIdx.x; i < 256; i += blockDim.x) sh.hist[i] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const u64 key = get(i);
            if ((key & mask) == prefix) atomicAdd(&sh.hist[(key >> shift) & 255], 1u);
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            const int lane = threadIdx.x;
            u32 c[8];
            u32 s = 0;
#pragma unroll
            for (int b = 0; b < 8; ++b) {
                c[b] = sh.hist[lane * 8 + b];
                s += c[b];
            }
            u32 suffix = s;  // sum over lanes >= lane
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const u32 v = __shfl_down_sync(0xffffffffu, suffix, o);
                if (lane + o < 32) suffix += v;
            }
            const u32 above = suffix - s;
            if (above < k && suffix >= k) {
                u32 run = above;
#pragma unroll
                for (int b = 7; b >= 0; --b) {
                    if (run + c[b] >= k) {
                        sh.digit = lane * 8 + b;
                        sh.need = k - run;
                        sh.exact = c[b] == k - run;
                        break;
                    }
                    run += c[b];
                }
            }
            if (lane == 0) sh.min_key = ~0ull;
        }
        __syncthreads();
        prefix |= (u64)sh.digit << shift;
        mask |= 255ull << shift;
        k = sh.need;
        if (sh.exact && pass + 1 < passes) {
            // Every key of the chosen bucket is among the k largest: the answer is its smallest
            // key, found in one pass instead of the remaining digits (random biases get here
            // after two or three passes).
            u64 m = ~0ull;
            for (int i = threadIdx.x; i < n; i += blockDim.x) {
                const u64 key = get(i);
                if ((key & mask) == prefix && key < m) m = key;
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                const u64 other = __shfl_xor_sync(0xffffffffu, m, o);
                m = other < m ? other : m;
            }
            if ((threadIdx.x & 31) == 0) atomicMin(&sh.min_key, m);
            __syncthreads();
            const u64 result = sh.min_key;
            __syncthreads();  // sh is reused by the caller
            return result;
        }
    }
    return prefix;
}

// Ordered compaction by the whole CTA (THREADS threads, every one must call it): writes the
// values value(i), i in [0, n), that keep() accepts to out[base], out[base + 1], ... in the order
// of i, and returns base plus their number. out may be where value(i) reads (in place): a value is
// written at or before its own index, after every value of its round has been read. Each thread
// takes ITEMS consecutive values per round, so a round is THREADS * ITEMS values and two barriers;
// the offsets come from shuffle scans. (ncu: a 1024-thread anchor spent 29% of its instructions
// summing the warps' counts when every thread summed them all, one value per round. Values read
// from shared memory take ITEMS = 1: 4 consecutive u64 per thread conflict on the banks.
// docs/benchmarks.md, "Stop 19".)
template <int THREADS, int ITEMS, typename Value, typename Keep>
__device__ __forceinline__ int compact_ordered(int n, Value value, Keep keep, u64* out, int base,
                                               u32* warp_counts) {
    constexpr int WARPS = THREADS / 32;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int start = 0; start < n; start += THREADS * ITEMS) {
        const int first = start + threadIdx.x * ITEMS;
        u64 v[ITEMS];
        u32 kept = 0;  // bit u: value first + u is kept
#pragma unroll
        for (int u = 0; u < ITEMS; ++u) {
            v[u] = first + u < n ? value(first + u) : 0;
            if (first + u < n && keep(v[u])) kept |= 1u << u;
        }
        const int mine = __popc(kept);
        int upto = mine;  // inclusive scan over the warp's threads
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int x = __shfl_up_sync(0xffffffffu, upto, o);
            if (lane >= o) upto += x;
        }
        if (lane == 31) warp_counts[warp] = upto;
        __syncthreads();
        const int count = lane < WARPS ? (int)warp_counts[lane] : 0;
        int warps_upto = count;  // inclusive scan over the warps (lane l: warp l)
#pragma unroll
        for (int o = 1; o < WARPS; o <<= 1) {
            const int x = __shfl_up_sync(0xffffffffu, warps_upto, o);
            if (lane >= o) warps_upto += x;
        }
        const int before_warp = __shfl_sync(0xffffffffu, warps_upto - count, warp);
        const int total = __shfl_sync(0xffffffffu, warps_upto, WARPS - 1);
        int at = base + before_warp + upto - mine;
#pragma unroll
        for (int u = 0; u < ITEMS; ++u)
            if (kept >> u & 1u) out[at++] = v[u];
        __syncthreads();
        base += total;
    }
    return base;
}

// The selection of list `id` for bias head `hb`.
template <bool CAUSAL, bool FROM_ANCHOR, int THREADS>
__device__ __forceinline__ void select_body(const float* __restrict__ bias,
                                            const SeqInfo* __restrict__ seqs,
                                            const int4* __restrict__ lists, int id, int hb,
                                            int window, int cap, int bias_heads,
                                            int bias_head_stride, int total_q,
                                            u64* __restrict__ cand, u32* __restrict__ cand_count,
                                            u32* __restrict__ block_counts, u64* __restrict__ thr,
                                            u32* __restrict__ sure, u64* __restrict__ bad_bias) {
    __shared__ SelectShared sh;
    const int4 L = lists[id];  // (sequence, first row, end row, anchor list or -1)
    const SeqInfo s = seqs[L.x];
    const float* b = bias + s.bias_offset + (i64)hb * bias_head_stride;
    const i64 slot = (i64)id * bias_heads + hb;
    u64* list = cand + slot * cap;
    u64* row_thr = thr + (i64)hb * total_q + s.q_start;
    const int offset = s.nk - s.nq;  // position of query row 0
    int P = s.nk, E = s.nk;
    if (CAUSAL) {
        P = min(max(offset + L.y, 0), s.nk);
        E = min(max(offset + L.z, 0), s.nk);
    }
    const int index_bits = 32 - __clz(max(s.nk - 1, 1));
    auto key_rank = [&](int i) { return dma_rank(b[i], i); };

    // The keys that may be among the w best before P: all of [0, P) for an anchor; for a list
    // after its anchor a, the anchor's list (the w best before P_a, and the keys of [P_a, E_a)
    // that some row kept) and the keys [E_a, P), since a key outside the w best of the keys
    // before some position stays outside after it.
    int n = P, from_list = 0, range_start = 0;
    const u64* anchor_list = list;
    if (FROM_ANCHOR) {
        const i64 anchor_slot = (i64)L.w * bias_heads + hb;
        anchor_list = cand + anchor_slot * cap;
        from_list = (int)cand_count[anchor_slot];
        range_start = min(max(offset + lists[L.w].z, 0), s.nk);
        n = from_list + (P - range_start);
    }
    auto source = [&](int i) {
        if (!FROM_ANCHOR) return key_rank(i);  // (the compiler kept both branches otherwise)
        return i < from_list ? anchor_list[i] : key_rank(range_start + (i - from_list));
    };

    u64 tau = DMA_KEEP_ALL;
    if (n > window) tau = radix_select_largest(n, (u32)window, index_bits, source, sh);

    // Ordered compaction of the source keys ranked at least tau (ascending key order).
    auto checked_source = [=](int i) {
        const u64 rank = source(i);
        // Keys read from the bias here (not from the anchor's list, checked by the anchor).
        if (i >= from_list)
            dma_check_bias(rank_bias(rank), bad_bias, L.x, bias_heads, hb, (int)(u32)rank);
        return rank;
    };
    auto at_least_tau = [=](u64 rank) { return rank >= tau; };
    // (Values from global memory, 4 per thread and round: for a dependent list 1.5% faster than
    // 1, docs/benchmarks.md "Stop 25".)
    const int kept_before =  // == min(P, window)
        compact_ordered<THREADS, 4>(n, checked_source, at_least_tau, list, 0, sh.warp_counts);
    for (int i = P + threadIdx.x; i < E; i += THREADS) {
        dma_check_bias(b[i], bad_bias, L.x, bias_heads, hb, i);
        const u64 rank = key_rank(i);
        list[kept_before + i - P] = rank;
        if (CAUSAL && i - P < DMA_LIST_M) sh.own[i - P] = rank;
    }
    const int count = kept_before + (E - P);
    // The list's count, and rank 0 (below every threshold) from its end up to the next whole
    // tile: the forward reads whole tiles.
    auto finish = [&](int n) {
        if (threadIdx.x == 0) cand_count[slot] = (u32)n;
        const int padded = min((n + DMA_TILE_N - 1) / DMA_TILE_N * DMA_TILE_N, cap);
        for (int i = n + threadIdx.x; i < padded; i += THREADS) list[i] = DMA_NO_KEY;
    };
    // Per block of the list ([lists, Hb, DMA_LIST_BLOCKS]): its counts (common.cu's
    // DMA_BLOCK_COUNTS) and its sure keys (below).
    u32* list_counts = block_counts + slot * DMA_LIST_BLOCKS * DMA_BLOCK_COUNTS;
    u32* block_sure = sure + slot * DMA_LIST_BLOCKS;
    auto write_counts = [&](int b, int n_seen, int head, int skip) {
        u32* c = list_counts + b * DMA_BLOCK_COUNTS;
        c[0] = (u32)n_seen;
        c[1] = (u32)head;
        c[2] = (u32)skip;
        c[3] = 0;
    };
    if (!CAUSAL) {  // every block sees every key, and each is sure (no keep test)
        finish(count);
        if (threadIdx.x < DMA_LIST_BLOCKS) {
            write_counts(threadIdx.x, count, count, 0);
            block_sure[threadIdx.x] = count;
        }
        for (int r = threadIdx.x; r < s.nq; r += THREADS) row_thr[r] = tau;
        return;
    }
    __syncthreads();  // the list, written above, is read below by every thread

    // Row p keeps the w best of M_p = { list keys <= p }: the A = kept_before <= w keys before P
    // and the own keys [P, p]. When |M_p| > w, thr_p is the m-th smallest of M_p, with
    // m = |M_p| - w + 1 = A + (p - P + 1) - w + 1. The only keys of the list outside M_p are the
    // E - 1 - p own keys past p, so thr_p is at most the (m + E - 1 - p)-th smallest of the list,
    // and m + E - 1 - p = A - w + (E - P) + 1 <= (E - P) + 1. So Z, the (E - P) + 1 smallest ranks
    // of the list (sorted below), holds every thr_p. (E - P <= the list's rows <= DMA_LIST_M:
    // plan.rs makes no longer lists; the min only guards the shared arrays.)
    const int own = min(E - P, DMA_LIST_M);
    auto list_rank = [&](int i) { return list[i]; };
    u64 sigma = DMA_KEEP_NONE;
    if (count > own + 1)
        sigma = radix_select_largest(count, (u32)(count - own), index_bits, list_rank, sh);
    // Z's largest rank is sigma when it was selected (rank DMA_KEEP_NONE is no key's, so r <
    // sigma collects all of Z otherwise): the others are sorted, a power of two fewer for a full
    // list (512 instead of 1024), and sigma put after them.
    if (threadIdx.x == 0) sh.nz = 0;
    if (threadIdx.x < DMA_LIST_BLOCKS) {
        sh.t_star[threadIdx.x] = 0;
        sh.t_least[threadIdx.x] = DMA_KEEP_NONE;
        sh.sure_below[threadIdx.x] = 0;
        sh.head_below[threadIdx.x] = 0;
    }
    if (threadIdx.x < DMA_LIST_M / 32) sh.own_kept[threadIdx.x] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < count; i += THREADS) {
        const u64 r = list_rank(i);
        if (r < sigma) sh.z[atomicAdd(&sh.nz, 1u)] = r;
    }
    __syncthreads();
    int nz = (int)sh.nz;
    int n2 = 32;
    while (n2 < nz) n2 <<= 1;
    for (int i = nz + threadIdx.x; i < n2; i += THREADS) sh.z[i] = DMA_KEEP_NONE;
    __syncthreads();
    sort_ascending<THREADS>(sh.z, n2);
    if (sigma != DMA_KEEP_NONE) {
        if (threadIdx.x == 0) sh.z[nz] = sigma;  // [nz, n2) held the sort's padding
        nz += 1;
    }
    const int nw = (max(nz, n2) + 31) / 32 * 32;  // what the walk below reads
    for (int i = max(nz, n2) + threadIdx.x; i < nw; i += THREADS) sh.z[i] = DMA_KEEP_NONE;
    __syncthreads();

    // thr_p: the m-th smallest of Z's keys <= p (derived above).
    auto want = [&](int r, u64& t) {
        const int p = offset + r;
        if (p < 0) return 0;  // sees no key: t stays DMA_KEEP_NONE
        const int members = kept_before + (p - P + 1);
        if (members <= window) {
            t = DMA_KEEP_ALL;
            return 0;
        }
        return members - window + 1;
    };
    auto write = [&](int r, u64 t) {
        row_thr[r] = t;
        if (t != DMA_KEEP_NONE) {
            const int b = min((r - L.y) / DMA_BLOCK_M, DMA_LIST_BLOCKS - 1);
            atomicMax(&sh.t_star[b], t);
            atomicMin(&sh.t_least[b], t);
        }
        // The own key at this row's position is kept by some row iff by this one: thresholds
        // only rise with the position, and rows before it do not see it.
        const int i = offset + r - P;
        if (i >= 0 && i < own && sh.own[i] >= t)
            atomicOr(&sh.own_kept[i >> 5], 1u << (i & 31));
    };
    thresholds_from_sorted<THREADS>(sh.z, nw, L.y, L.z, offset, want, write);
    __syncthreads();  // the blocks' t* and the kept own keys

    // The sure keys first. The Hopper forward skips the keep test on a block's "sure" keys, those
    // that every row of the block that keeps anything keeps. A key j < P is visible to every row,
    // so it is sure for block b iff rank_j >= t*_b, the largest threshold of b's rows that keep
    // anything. Let t* be the largest t*_b: the keys ranked at least t* (sure for every block)
    // go first, in place and in order; then the other keys before P by descending rank, so that
    // each block's sure keys, and the keys before P that its rows may keep (head), are prefixes
    // of the list. t* is one of Z's ranks (or DMA_KEEP_ALL, which no key is below), and Z holds
    // the list's smallest ranks, so every key ranked below t* is in sorted Z (nz <= 2 * DMA_LIST_M
    // ranks), where they are read, from the top, after the in-place compaction has overwritten
    // them. The own keys stay last and ascending, which the
    // forward's causal shortcut and dma_visible_count need; the keys before P are a set to every
    // kernel (the keep rule reads them so).
    u64 ts = 0;
#pragma unroll
    for (int b = 0; b < DMA_LIST_BLOCKS; ++b) ts = max(ts, sh.t_star[b]);
    int n_sure = 0;
    if (ts != 0) {
        auto is_sure = [=](u64 rank) { return rank >= ts; };
        n_sure = compact_ordered<THREADS, 1>(kept_before, list_rank, is_sure, list, 0,
                                             sh.warp_counts);
        auto not_sure_before = [=](u64 rank) { return rank < ts && (u32)rank < (u32)P; };
        auto z_down = [&](int i) { return sh.z[nw - 1 - i]; };
        compact_ordered<THREADS, 1>(nw, z_down, not_sure_before, list, n_sure, sh.warp_counts);
        for (int i = threadIdx.x; i < nw; i += THREADS) {
            const u64 rank = sh.z[i];
            if (!not_sure_before(rank)) continue;
#pragma unroll
            for (int b = 0; b < DMA_LIST_BLOCKS; ++b) {
                if (sh.t_star[b] != 0 && rank >= sh.t_star[b]) atomicAdd(&sh.sure_below[b], 1u);
                if (rank >= sh.t_least[b]) atomicAdd(&sh.head_below[b], 1u);
            }
        }
        __syncthreads();
    }
    if (threadIdx.x < DMA_LIST_BLOCKS) {
        const int b = threadIdx.x;
        block_sure[b] = sh.t_star[b] == 0 ? 0u : (u32)n_sure + sh.sure_below[b];
    }
    // Block b's rows, and the rows after them, keep no key before P ranked below b's smallest
    // threshold (thresholds only rise with the row): those come last among the keys before P
    // (descending ranks), so b's useful keys before P are the first `head`.
    auto head_of = [&](int b) {
        return sh.t_least[b] == DMA_KEEP_NONE ? 0 : n_sure + (int)sh.head_below[b];
    };

    // Then the own keys some row keeps, still ascending; the others go. Row p keeps
    // an own key with probability about w / p, so at p = 32K, w = 2048 a 512-row list holds about
    // w + 32 keys instead of w + 512: fewer tiles for the forward and backward.
    auto own_rank = [&](int i) { return sh.own[i]; };
    auto kept_by_a_row = [&](u64 rank) {
        const int i = (int)(u32)rank - P;
        return (sh.own_kept[i >> 5] >> (i & 31) & 1u) != 0;
    };
    const int kept = compact_ordered<THREADS, 1>(own, own_rank, kept_by_a_row, list, kept_before,
                                                 sh.warp_counts);
    // The keys each block of the list sees: those before P, and the own keys some row keeps up
    // to the block's last row's position.
    if (threadIdx.x < DMA_LIST_BLOCKS) {
        const int b = threadIdx.x;
        const int upto = min(max(offset + L.y + (b + 1) * DMA_BLOCK_M - P, 0), own);
        int n = kept_before;
        for (int word = 0; word * 32 < upto; ++word) {
            const int bits = upto - word * 32;
            n += __popc(sh.own_kept[word] & (bits >= 32 ? ~0u : (1u << bits) - 1u));
        }
        const int head = min(head_of(b), kept_before);
        write_counts(b, n, head, kept_before - head);
    }
    finish(kept);
}

// One CTA per (list, bias head), the head varying fastest, so that CTAs start in the order of
// their lists' positions, which is about the order in which their anchors finish (an anchor's
// time grows with its position). With `ready` (an overlapped launch, common.cu), a list after
// its anchor waits for the anchor's list, and every list is published when done.
#define DMA_SELECT_KERNEL(NAME, CAUSAL, FROM_ANCHOR, THREADS)                                    \
    extern "C" __global__ void __launch_bounds__(THREADS)                                        \
        NAME(const float* bias, const SeqInfo* seqs, const int4* lists, const int* ids,          \
             int window, int cap, int bias_heads, int bias_head_stride, int total_q, u64* cand,   \
             u32* cand_count, u32* block_counts, u64* thr, u32* sure, u64* bad_bias, u32* ready,   \
             u32 epoch) {                                                                        \
        dma_allow_next_kernel();                                                                 \
        const int id = ids[blockIdx.x / bias_heads], hb = blockIdx.x % bias_heads;              \
        if (ready && FROM_ANCHOR)                                                                \
            dma_wait_published(ready + (i64)lists[id].w * bias_heads + hb, epoch);               \
        select_body<CAUSAL, FROM_ANCHOR, THREADS>(bias, seqs, lists, id, hb, window, cap,        \
                                                  bias_heads, bias_head_stride, total_q, cand,   \
                                                  cand_count, block_counts, thr, sure, bad_bias);  \
        if (ready) dma_publish(ready + (i64)id * bias_heads + hb, epoch);                        \
    }
