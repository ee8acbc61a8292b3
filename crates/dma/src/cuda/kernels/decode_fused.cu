// A decode step in one launch (sm_90): every sequence has at most one query. That query sits at
// position Nk - 1 (SPEC.md), so, causal or not, it sees all P = Nk keys of its sequence and keeps
// the min(P, w) best of them. A cluster of C CTAs per (sequence, bias head) slot selects those
// keys and attends to them; the CTAs trade histograms, counts, kept keys and partial results
// through distributed shared memory, so nothing goes through global memory between the steps:
// 1. Load: CTA r copies the bias of keys [r * chunk, (r + 1) * chunk) into shared memory as the
//    ordered bits of dma_rank (larger bits = better), reporting a non-finite bias.
// 2. Select (P > w): a radix select over those 32 bits, one 8-bit digit per pass. Each CTA counts
//    its keys matching the prefix so far by their next digit, then reads the cluster's histograms
//    and picks the same digit as every other CTA. It stops early when the digit's bucket holds
//    exactly the keys still needed. Result: keep the keys above `thr`, and the `ties` latest keys
//    equal to it (between equal biases the later key wins: SPEC.md).
// 3. Compact: each CTA lists its kept keys (in index order when ties are to be broken).
// 4. Balance: the cluster's kept keys, in order, are split evenly over its CTAs, wherever they
//    lie (a model's best keys may all be in one chunk, e.g. the most recent ones).
// 5. Attend: each warp runs an online softmax over its keys for DEC_HEADS query heads at a time,
//    lanes spanning the head dim; the CTA then merges its warps.
// 6. Combine: CTA r merges the cluster's partials of query heads r, r + C, ... into out and lse.
// Dynamic shared memory (cuda/decode.rs: fused_layout): the chunk's keys, its kept list, the CTA's
// share of the cluster's kept keys, the warps' partials and the CTA's partials. Two CTAs per SM
// (launch bounds): a 16-CTA cluster then fits in 8 SMs; at one CTA per SM not every GPC held a
// cluster, and the clusters ran in two waves.

#define DEC_THREADS 256
#define DEC_WARPS (DEC_THREADS / 32)
#define DEC_BINS 256
static_assert(DEC_THREADS >= DEC_BINS, "one thread per histogram bin");
// Query heads per attention pass (more heads per slot, as with MQA, take several passes).
#define DEC_HEADS 4
// The largest cluster (cuda/decode.rs: CLUSTER).
#define DEC_MAX_CLUSTER 16
// Sequences per launch (cuda/decode.rs: LAUNCH_SEQS): their table is a kernel parameter, so a
// call uploads nothing.
#define DEC_SEQS 32

struct DecodeSeqs {
    SeqInfo s[DEC_SEQS];
};

struct DecodeShared {
    u32 hist[2][DEC_BINS];  // the CTA's radix histograms (read remotely), alternating passes
    u32 warp_hist[DEC_WARPS][DEC_BINS];  // each warp's, so that warps never share a counter
    u32 warp_a[DEC_WARPS], warp_b[DEC_WARPS];
    u32 counts[DEC_MAX_CLUSTER];  // every CTA's kept keys
    u32 kept, equal;              // this CTA's kept keys and keys equal to thr (read remotely)
    u32 digit, need, exact;       // the digit a pass picked
    u64 bad_bias;                 // this CTA's non-finite bias report (dma_check_bias)
};

__device__ __forceinline__ u32 cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}

// Every thread of every CTA of the cluster: shared-memory writes before it are visible to the
// cluster's reads after it.
__device__ __forceinline__ void cluster_sync() {
    asm volatile(
        "barrier.cluster.arrive.release.aligned;\n"
        "barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

// The word at `p` (an address in this CTA's shared memory) in the shared memory of CTA `rank`.
// Volatile, so it stays after the cluster_sync that published the word, but without a memory
// clobber, so that several of them are in flight at once (each takes a round trip to another SM).
__device__ __forceinline__ u32 load_remote(const void* p, u32 rank) {
    u32 addr, v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(addr) : "r"(smem_addr(p)), "r"(rank));
    asm volatile("ld.shared::cluster.u32 %0, [%1];\n" : "=r"(v) : "r"(addr));
    return v;
}

// The word at `p` in every CTA of the cluster, all loads issued before any is used.
template <int C>
__device__ __forceinline__ void load_remote_all(const void* p, u32 (&v)[C]) {
#pragma unroll
    for (int r = 0; r < C; ++r) v[r] = load_remote(p, r);
}

template <int C>
__device__ __forceinline__ u32 sum_remote(const u32* p) {
    u32 v[C], sum = 0;
    load_remote_all<C>(p, v);
#pragma unroll
    for (int r = 0; r < C; ++r) sum += v[r];
    return sum;
}

__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(dst)), "l"(src));
}

__device__ __forceinline__ u32 lanes_below() {
    return (1u << (threadIdx.x & 31)) - 1u;
}

// The digit holding the need-th best key, from the cluster's summed histogram (thread t < 256
// holds bin t's count): into sh.digit, sh.need (what is left to take from that bin) and sh.exact
// (the bin holds exactly that many).
__device__ __forceinline__ void pick_bin(u32 count, u32 need, DecodeShared& sh) {
    constexpr int BIN_WARPS = DEC_BINS / 32;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    u32 suffix = count;  // bins >= this one, within the warp
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u32 x = __shfl_down_sync(0xffffffffu, suffix, o);
        if (lane + o < 32) suffix += x;
    }
    if (lane == 0 && warp < BIN_WARPS) sh.warp_a[warp] = suffix;
    __syncthreads();
    if (warp < BIN_WARPS) {
        for (int w = warp + 1; w < BIN_WARPS; ++w) suffix += sh.warp_a[w];
        const u32 above = suffix - count;
        if (above < need && suffix >= need) {
            sh.digit = threadIdx.x;
            sh.need = need - above;
            sh.exact = count == need - above;
        }
    }
    __syncthreads();
}

// The keep rule a selection ends with: keys whose bits are above `thr`, and the `ties` latest keys
// whose bits equal it (ties == 0: none of those).
struct KeepRule {
    u32 thr, ties;
    bool all;  // P <= w: every key
    __device__ __forceinline__ bool above(u32 x) const { return all || x > thr; }
    __device__ __forceinline__ bool tie(u32 x) const { return ties > 0 && x == thr; }
};

// Step 2 over the cluster: every CTA ends with the same rule. `keys` holds this CTA's n keys.
template <int C>
__device__ __forceinline__ KeepRule select_keys(const u32* keys, int n, int P, int window,
                                                DecodeShared& sh) {
    KeepRule rule{0u, 0u, P <= window};
    if (rule.all) return rule;
    u32 prefix = 0, mask = 0, need = (u32)window;
    bool exact = false;
    for (int pass = 0; pass < 4 && !exact; ++pass) {
        const int shift = 24 - 8 * pass;
        u32* hist = sh.hist[pass & 1];
        // Plain atomics, no warp-wide votes: the loop stays free to overlap its loads.
        u32* own = sh.warp_hist[threadIdx.x >> 5];
        for (int i = threadIdx.x; i < n; i += DEC_THREADS) {
            const u32 x = keys[i];
            if ((x & mask) == prefix) atomicAdd(&own[(x >> shift) & 255u], 1u);
        }
        __syncthreads();
        // The CTA's histogram, clearing the warps' for the next pass. The buffer written here was
        // last read remotely two passes ago, before the previous pass's cluster_sync.
        if (threadIdx.x < DEC_BINS) {
            u32 c = 0;
            for (int w = 0; w < DEC_WARPS; ++w) {
                c += sh.warp_hist[w][threadIdx.x];
                sh.warp_hist[w][threadIdx.x] = 0;
            }
            hist[threadIdx.x] = c;
        }
        cluster_sync();
        const u32 count = threadIdx.x < DEC_BINS ? sum_remote<C>(hist + threadIdx.x) : 0u;
        pick_bin(count, need, sh);
        prefix |= sh.digit << shift;
        mask |= 255u << shift;
        need = sh.need;
        exact = sh.exact != 0;
    }
    // Exact: every key with bits >= prefix, i.e. above prefix - 1 (prefix > 0: not every key).
    if (exact) return KeepRule{prefix - 1, 0u, false};
    return KeepRule{prefix, need, false};
}

// This thread's offset in an exclusive scan of `x` over the CTA, and the CTA's total.
__device__ __forceinline__ u32 block_offset(u32 x, u32& total, DecodeShared& sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    u32 incl = x;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u32 y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
    }
    if (lane == 31) sh.warp_a[warp] = incl;
    __syncthreads();
    u32 before = 0;
    total = 0;
    for (int w = 0; w < DEC_WARPS; ++w) {
        if (w < warp) before += sh.warp_a[w];
        total += sh.warp_a[w];
    }
    __syncthreads();  // warp_a is reused
    return before + incl - x;
}

// Step 3 without ties (every key above thr is kept, the usual case): each thread lists its own
// keys (strided, so the loops are free of warp-wide votes), at its offset in the CTA's list.
// The list is not in index order: nothing after depends on it.
__device__ __forceinline__ u32 compact_above(const u32* keys, int n, KeepRule rule, u32* kept,
                                             DecodeShared& sh) {
    u32 count = 0;
    for (int i = threadIdx.x; i < n; i += DEC_THREADS) count += rule.above(keys[i]) ? 1u : 0u;
    u32 total;
    u32 at = block_offset(count, total, sh);
    for (int i = threadIdx.x; i < n; i += DEC_THREADS)
        if (rule.above(keys[i])) kept[at++] = (u32)i;
    return total;
}

// Step 3: this CTA's kept keys (offsets into its chunk) into `kept`; returns how many. With ties,
// in index order: each warp scans one contiguous segment of the chunk, twice (counting, then
// writing), so that the latest of the keys equal to thr are the ones kept.
template <int C>
__device__ __forceinline__ u32 compact_kept(const u32* keys, int n, u32 rank, KeepRule rule,
                                            u32* kept, DecodeShared& sh) {
    if (rule.ties == 0) return compact_above(keys, n, rule, kept, sh);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int seg = ((n + DEC_WARPS - 1) / DEC_WARPS + 31) / 32 * 32;
    const int s0 = min(n, warp * seg), s1 = min(n, s0 + seg);
    u32 n_above = 0, n_tie = 0;
    for (int i0 = s0; i0 < s1; i0 += 32) {
        const int i = i0 + lane;
        const u32 x = i < s1 ? keys[i] : 0u;
        n_above += __popc(__ballot_sync(0xffffffffu, i < s1 && rule.above(x)));
        n_tie += __popc(__ballot_sync(0xffffffffu, i < s1 && rule.tie(x)));
    }
    if (lane == 0) {
        sh.warp_a[warp] = n_above;
        sh.warp_b[warp] = n_tie;
    }
    __syncthreads();
    // The slot's keys equal to thr, in index order, are kept from position tie_from on.
    if (threadIdx.x == 0) {
        u32 t = 0;
        for (int w = 0; w < DEC_WARPS; ++w) t += sh.warp_b[w];
        sh.equal = t;
    }
    cluster_sync();
    u32 equal[C], total = 0, ties_before = 0;
    load_remote_all<C>(&sh.equal, equal);
#pragma unroll
    for (int r = 0; r < C; ++r) {
        total += equal[r];
        if ((u32)r < rank) ties_before += equal[r];
    }
    const u32 tie_from = total - rule.ties;
    // Where this warp's kept keys and ties start, and the CTA's kept count.
    u32 kept_at = 0, tie_at = 0, cta_kept = 0, t = ties_before;
    for (int w = 0; w < DEC_WARPS; ++w) {
        const u32 kept_ties = (u32)max(0, (int)(t + sh.warp_b[w]) - max((int)t, (int)tie_from));
        if (w == warp) tie_at = t;
        if (w < warp) kept_at += sh.warp_a[w] + kept_ties;
        cta_kept += sh.warp_a[w] + kept_ties;
        t += sh.warp_b[w];
    }
    for (int i0 = s0; i0 < s1; i0 += 32) {
        const int i = i0 + lane;
        const u32 x = i < s1 ? keys[i] : 0u;
        const bool is_tie = i < s1 && rule.tie(x);
        const u32 tie_mask = __ballot_sync(0xffffffffu, is_tie);
        const bool keep =
            i < s1 && (rule.above(x) || (is_tie && tie_at + __popc(tie_mask & lanes_below()) >= tie_from));
        const u32 keep_mask = __ballot_sync(0xffffffffu, keep);
        if (keep) kept[kept_at + __popc(keep_mask & lanes_below())] = (u32)i;
        kept_at += __popc(keep_mask);
        tie_at += __popc(tie_mask);
    }
    return cta_kept;
}

// Step 4: this CTA's even share of the cluster's kept keys (key indices of the sequence) into
// `mine`; returns how many. The kept lists and counts are published (cluster_sync) before.
template <int C>
__device__ __forceinline__ int take_share(const u32* kept, u32 rank, int chunk, u32* mine,
                                          DecodeShared& sh) {
    if (threadIdx.x < C) sh.counts[threadIdx.x] = load_remote(&sh.kept, threadIdx.x);
    __syncthreads();
    u32 total = 0;
#pragma unroll
    for (int r = 0; r < C; ++r) total += sh.counts[r];
    const u32 from = (u32)((u64)rank * total / C), to = (u32)((u64)(rank + 1) * total / C);
    for (u32 p = from + threadIdx.x; p < to; p += DEC_THREADS) {
        u32 r = 0, before = 0;
        while (before + sh.counts[r] <= p) before += sh.counts[r++];
        mine[p - from] = r * (u32)chunk + load_remote(kept + (p - before), r);
    }
    __syncthreads();
    return (int)(to - from);
}

// The f32 value of a 16-bit element from its bits.
template <typename T>
__device__ __forceinline__ float bits_to_f32(u32 bits);
template <>
__device__ __forceinline__ float bits_to_f32<__nv_bfloat16>(u32 bits) {
    return __uint_as_float(bits << 16);
}
template <>
__device__ __forceinline__ float bits_to_f32<__half>(u32 bits) {
    return __half2float(__ushort_as_half((unsigned short)bits));
}

// A lane's E = D / 32 consecutive elements of a row, as loaded: two to a word when E is even
// (one vector load), else one to a word. Kept packed until used, so a warp has more rows in
// flight for its registers.
template <typename T, int E>
struct LaneRow {
    static constexpr int WORDS = E % 2 == 0 ? E / 2 : E;
    u32 w[WORDS];

    __device__ __forceinline__ void load(const T* p) {
        if constexpr (E == 8) {
            const uint4 u = *reinterpret_cast<const uint4*>(p);
            w[0] = u.x, w[1] = u.y, w[2] = u.z, w[3] = u.w;
        } else if constexpr (E == 4) {
            const uint2 u = *reinterpret_cast<const uint2*>(p);
            w[0] = u.x, w[1] = u.y;
        } else if constexpr (E == 2) {
            w[0] = *reinterpret_cast<const u32*>(p);
        } else {
            const unsigned short* h = reinterpret_cast<const unsigned short*>(p);
#pragma unroll
            for (int i = 0; i < E; ++i) w[i] = h[i];
        }
    }

    __device__ __forceinline__ float operator[](int i) const {
        if constexpr (E % 2 == 0) return bits_to_f32<T>(i % 2 == 0 ? w[i / 2] & 0xffffu : w[i / 2] >> 16);
        return bits_to_f32<T>(w[i]);
    }
};

// Step 5 for query heads [g0, g0 + gn) of the slot: this CTA's partial (max and sum in the log2
// domain, unnormalised output) of each into part[g] = {o[0..D), m, l}.
template <typename T, int D>
__device__ __forceinline__ void attend_share(const T* q, const T* k, const T* v, const float* b,
                                             const u32* mine, int m, int g0, int gn,
                                             i64 kv_stride, float scale_log2, float* stage,
                                             float* part) {
    constexpr int E = D / 32;
    using Row = LaneRow<T, E>;
    constexpr int KB = Row::WORDS >= 4 ? 4 : 16 / Row::WORDS;  // keys a warp has in flight
    constexpr int HG = 32 / KB < DEC_HEADS ? 32 / KB : DEC_HEADS;  // heads per warp_sum_each
    static_assert(HG >= 1 && DEC_HEADS % HG == 0, "whole groups of heads");
    constexpr float LOG2E = 1.4426950408889634f;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float qr[DEC_HEADS][E], o[DEC_HEADS][E], mx[DEC_HEADS], l[DEC_HEADS];
#pragma unroll
    for (int g = 0; g < DEC_HEADS; ++g) {
        Row row;
        if (g < gn) row.load(q + (i64)(g0 + g) * D + lane * E);
#pragma unroll
        for (int e = 0; e < E; ++e) {
            qr[g][e] = g < gn ? row[e] * scale_log2 : 0.f;
            o[g][e] = 0.f;
        }
        mx[g] = -DMA_INF;
        l[g] = 0.f;
    }
    for (int t0 = warp; t0 < m; t0 += DEC_WARPS * KB) {
        Row kr[KB], vr[KB];
        // The biases as loaded: scaled only where the scores are formed, so that nothing waits
        // for them before the K and V loads are issued (a multiply here stalled the warp on
        // each bias load first: two memory round trips per iteration instead of one).
        float bias[KB];
#pragma unroll
        for (int u = 0; u < KB; ++u) {
            const int t = t0 + u * DEC_WARPS;
            const u32 j = t < m ? mine[t] : 0u;
            kr[u].load(k + j * kv_stride + lane * E);
            vr[u].load(v + j * kv_stride + lane * E);
            bias[u] = t < m ? b[j] : -DMA_INF;
        }
        // The dot products, HG heads at a time: this lane's parts, then the sums (warp_sum_each,
        // at most 32 at once: more spill). Heads past gn have q 0.
#pragma unroll
        for (int ga = 0; ga < DEC_HEADS; ga += HG) {
            if (ga >= gn) break;
            float dots[HG * KB];
#pragma unroll
            for (int i = 0; i < HG * KB; ++i) {
                dots[i] = 0.f;
#pragma unroll
                for (int e = 0; e < E; ++e) dots[i] += qr[ga + i / KB][e] * kr[i % KB][e];
            }
            warp_sum_each(dots);
#pragma unroll
            for (int g = ga; g < ga + HG; ++g) {
                if (g >= gn) break;
                float s[KB], best = -DMA_INF;
#pragma unroll
                for (int u = 0; u < KB; ++u) {
                    s[u] = fmaf(bias[u], LOG2E, dots[(g - ga) * KB + u]);
                    best = fmaxf(best, s[u]);
                }
                const float nm = fmaxf(mx[g], best);
                if (nm == -DMA_INF) continue;  // no key yet (warp-uniform)
                const float corr = fast_exp2(mx[g] - nm);
                l[g] *= corr;
#pragma unroll
                for (int e = 0; e < E; ++e) o[g][e] *= corr;
#pragma unroll
                for (int u = 0; u < KB; ++u) {
                    const float p = fast_exp2(s[u] - nm);
                    l[g] += p;
#pragma unroll
                    for (int e = 0; e < E; ++e) o[g][e] += p * vr[u][e];
                }
                mx[g] = nm;
            }
        }
    }
    // Merge the warps: stage[warp][g] = {o, m, l}, then one thread per (head, dim).
    constexpr int ROW = D + 2;
#pragma unroll
    for (int g = 0; g < DEC_HEADS; ++g) {
        if (g >= gn) break;
        float* st = stage + (warp * DEC_HEADS + g) * ROW;
#pragma unroll
        for (int e = 0; e < E; ++e) st[lane * E + e] = o[g][e];
        if (lane == 0) {
            st[D] = mx[g];
            st[D + 1] = l[g];
        }
    }
    __syncthreads();
    for (int x = threadIdx.x; x < gn * D; x += DEC_THREADS) {
        const int g = x / D, d = x % D;
        float best = -DMA_INF;
        for (int w = 0; w < DEC_WARPS; ++w) best = fmaxf(best, stage[(w * DEC_HEADS + g) * ROW + D]);
        const float use = best == -DMA_INF ? 0.f : best;
        float acc = 0.f, sum = 0.f;
        for (int w = 0; w < DEC_WARPS; ++w) {
            const float* st = stage + (w * DEC_HEADS + g) * ROW;
            const float scale = fast_exp2(st[D] - use);
            acc += st[d] * scale;
            sum += st[D + 1] * scale;
        }
        float* dst = part + (g0 + g) * ROW;
        dst[d] = acc;
        if (d == 0) {
            dst[D] = best;
            dst[D + 1] = sum;
        }
    }
    __syncthreads();  // stage is reused by the next heads
}

// This CTA's partials of every query head of slot (s, hb) over its m keys `mine` (key indices of
// sequence s) into part[g] = {o[0..D), m, l}, DEC_HEADS query heads at a time.
template <typename T, int D>
__device__ __forceinline__ void attend_slot(const T* q, const T* k, const T* v, const float* b,
                                            const SeqInfo& s, int hb, const u32* mine, int m,
                                            int q_heads, int kv_heads, int bias_heads,
                                            float scale_log2, float* stage, float* part) {
    const int group = q_heads / bias_heads;  // query heads per bias head
    const int h0 = hb * group;
    const int kvh = h0 / (q_heads / kv_heads);
    const i64 kv_stride = (i64)kv_heads * D;
    const T* qs = q + ((i64)s.q_start * q_heads + h0) * D;
    const T* ks = k + ((i64)s.k_start * kv_heads + kvh) * D;
    const T* vs = v + ((i64)s.k_start * kv_heads + kvh) * D;
    for (int g0 = 0; g0 < group; g0 += DEC_HEADS)
        attend_share<T, D>(qs, ks, vs, b, mine, m, g0, min(DEC_HEADS, group - g0), kv_stride,
                           scale_log2, stage, part);
}

// Steps 5 and 6 of a slot: this CTA attends to its m keys `mine` (key indices of sequence s),
// then CTA r merges the cluster's partials of the slot's query heads r, r + C, ... into out and
// lse. Ends with the cluster's partials published and read (a later cluster_sync frees them).
template <typename T, int D, int C>
__device__ __forceinline__ void attend_and_combine(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const float* __restrict__ b, const SeqInfo& s, int hb, const u32* mine, int m, u32 rank,
    T* __restrict__ out, float* __restrict__ lse, int q_heads, int kv_heads, int bias_heads,
    int lse_head_stride, float scale_log2, float* stage, float* part) {
    constexpr int ROW = D + 2;
    constexpr float LN2 = 0.6931471805599453f;
    // 5. Attend.
    attend_slot<T, D>(q, k, v, b, s, hb, mine, m, q_heads, kv_heads, bias_heads, scale_log2,
                      stage, part);
    const int group = q_heads / bias_heads;  // query heads per bias head
    const int h0 = hb * group;
    cluster_sync();

    // 6. Combine the cluster's partials of heads rank, rank + C, ...
    for (int g = rank; g < group; g += C) {
        const float* src = part + g * ROW;
        u32 mx[C], sums[C];
        load_remote_all<C>(src + D, mx);
        load_remote_all<C>(src + D + 1, sums);
        float best = -DMA_INF;
#pragma unroll
        for (int r = 0; r < C; ++r) best = fmaxf(best, __uint_as_float(mx[r]));
        const float use = best == -DMA_INF ? 0.f : best;
        for (int d = threadIdx.x; d < D; d += DEC_THREADS) {
            u32 o[C];
            load_remote_all<C>(src + d, o);
            float acc = 0.f, sum = 0.f;
#pragma unroll
            for (int r = 0; r < C; ++r) {
                const float scale = fast_exp2(__uint_as_float(mx[r]) - use);
                acc += __uint_as_float(o[r]) * scale;
                sum += __uint_as_float(sums[r]) * scale;
            }
            out[((i64)s.q_start * q_heads + h0 + g) * D + d] = (T)(sum > 0.f ? acc / sum : 0.f);
            if (d == 0)
                lse[s.lse_offset + (i64)(h0 + g) * lse_head_stride] =
                    sum > 0.f ? (best + __log2f(sum)) * LN2 : -DMA_INF;
        }
    }
}

// bad_bias: one word per CTA of the launch, in mapped host memory, written once at the end: this
// CTA's dma_check_bias report (0: none), the sequence numbered from seq_base.
template <typename T, int D, int C>
__device__ __forceinline__ void decode_fused_body(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const float* __restrict__ bias, const DecodeSeqs& seqs, int seq_base, T* __restrict__ out,
    float* __restrict__ lse, u64* __restrict__ bad_bias, int q_heads, int kv_heads,
    int bias_heads, int bias_head_stride, int lse_head_stride, int window, int chunk,
    int kept_cap, int share_cap, float scale_log2) {
    constexpr int ROW = D + 2;
    __shared__ DecodeShared sh;
    extern __shared__ __align__(16) unsigned char dyn[];
    const u32 rank = cluster_rank();
    const int slot = blockIdx.x / C;
    const int seq = slot / bias_heads, hb = slot % bias_heads;
    const SeqInfo s = seqs.s[seq];
    if (s.nq == 0) {  // the whole cluster: nothing to compute
        if (threadIdx.x == 0) bad_bias[blockIdx.x] = 0;
        return;
    }
    const int P = s.nk;
    const int lo = min(P, (int)rank * chunk), n = min(P, lo + chunk) - lo;
    u32* keys = reinterpret_cast<u32*>(dyn);
    u32* kept = keys + chunk;
    u32* mine = kept + kept_cap;
    float* stage = reinterpret_cast<float*>(mine + share_cap);
    float* part = stage + DEC_WARPS * DEC_HEADS * ROW;
    const float* b = bias + s.bias_offset + (i64)hb * bias_head_stride;

    // 1. Load: every copy in flight at once, then the ordered bits in place.
    for (int i = threadIdx.x; i < n; i += DEC_THREADS) cp_async4(keys + i, b + lo + i);
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    for (int i = threadIdx.x; i < DEC_WARPS * DEC_BINS; i += DEC_THREADS) (&sh.warp_hist[0][0])[i] = 0;
    if (threadIdx.x == 0) sh.bad_bias = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += DEC_THREADS) {
        const float x = __uint_as_float(keys[i]);
        dma_check_bias(x, &sh.bad_bias, seq_base + seq, bias_heads, hb, lo + i);
        keys[i] = (u32)(dma_rank(x, 0) >> 32);
    }
    __syncthreads();

    // 2-4. Select, compact, balance.
    const KeepRule rule = select_keys<C>(keys, n, P, window, sh);
    const u32 cta_kept = compact_kept<C>(keys, n, rank, rule, kept, sh);
    if (threadIdx.x == 0) sh.kept = cta_kept;
    cluster_sync();
    const int m = take_share<C>(kept, rank, chunk, mine, sh);

    // 5-6. Attend and combine.
    attend_and_combine<T, D, C>(q, k, v, b, s, hb, mine, m, rank, out, lse, q_heads, kv_heads,
                                bias_heads, lse_head_stride, scale_log2, stage, part);
    if (threadIdx.x == 0) bad_bias[blockIdx.x] = sh.bad_bias;
    cluster_sync();  // no CTA leaves while another reads its shared memory
}

#define DMA_DECODE_FUSED_KERNEL(NAME, T, D, C)                                                    \
    extern "C" __global__ void __cluster_dims__(C, 1, 1) __launch_bounds__(DEC_THREADS, 2)       \
        NAME(const T* q, const T* k, const T* v, const float* bias,                               \
             const __grid_constant__ DecodeSeqs seqs, int seq_base, T* out, float* lse,          \
             u64* bad_bias, int q_heads, int kv_heads, int bias_heads, int bias_head_stride,     \
             int lse_head_stride, int window, int chunk, int kept_cap, int share_cap,            \
             float scale_log2) {                                                                  \
        decode_fused_body<T, D, C>(q, k, v, bias, seqs, seq_base, out, lse, bad_bias, q_heads,   \
                                   kv_heads, bias_heads, bias_head_stride, lse_head_stride,      \
                                   window, chunk, kept_cap, share_cap, scale_log2);               \
    }

// A decode step over a running kept set (cuda/decode_state.rs; SPEC.md allows it: a key that
// drops out of a query's top w never comes back). Per (sequence, bias head) slot the state holds
// the ranks (dma_rank) of the w best keys of the first `from` cached keys, in no order, and
// their count. The step inserts the keys [from, Nk): while the set is short of w a key is added,
// after that it replaces the worst kept rank when it ranks above it (a new key has the largest
// index, so it wins a tie of biases). S CTAs per slot, no cluster: each does the same insertions
// on its own copy of the set, so they agree without talking, attends to its share of the set
// (attend_share) and writes its partials to global memory; the last CTA of the slot to finish
// (a counter) merges them into out and lse and writes the set back (every CTA has read it then).

// The most new keys a step inserts (cuda/decode_state.rs: STEP_MAX_NEW).
#define DEC_STEP_MAX_NEW 64

struct StepSeqs {
    SeqInfo s[DEC_SEQS];
    int from[DEC_SEQS];  // the first key the state has not seen
};

// The smallest of list[0, n) over the CTA (red: DEC_WARPS words of scratch).
__device__ __forceinline__ u64 cta_min(const u64* list, int n, u64* red) {
    u64 x = ~0ull;
    for (int i = threadIdx.x; i < n; i += DEC_THREADS) x = min(x, list[i]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = min(x, __shfl_xor_sync(0xffffffffu, x, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = x;
    __syncthreads();
    x = red[0];
#pragma unroll
    for (int w = 1; w < DEC_WARPS; ++w) x = min(x, red[w]);
    __syncthreads();  // red is reused
    return x;
}

// parts: per slot, S x group partials of D + 2 floats (the CTAs', in order); arrivals: per slot
// a counter, zero between steps (the last CTA resets it).
template <typename T, int D, int S>
__device__ __forceinline__ void decode_step_body(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const float* __restrict__ bias, const StepSeqs& seqs, int seq_base,
    u64* __restrict__ state_ranks, u32* __restrict__ state_count, float* __restrict__ parts,
    u32* __restrict__ arrivals, T* __restrict__ out, float* __restrict__ lse,
    u64* __restrict__ bad_bias, int q_heads, int kv_heads, int bias_heads, int bias_head_stride,
    int lse_head_stride, int window, int cap, int share_cap, float scale_log2) {
    constexpr int ROW = D + 2;
    constexpr float LN2 = 0.6931471805599453f;
    __shared__ u64 bad;  // this CTA's dma_check_bias report
    __shared__ bool last;  // this CTA is the last of its slot to finish
    extern __shared__ __align__(16) unsigned char dyn[];
    const int rank = blockIdx.x % S;
    const int slot = blockIdx.x / S;
    const int seq = slot / bias_heads, hb = slot % bias_heads;
    const SeqInfo s = seqs.s[seq];
    u64* list = reinterpret_cast<u64*>(dyn);
    u64* red = list + (window + 1) / 2 * 2;  // the list is copied two ranks at a time
    float* fresh = reinterpret_cast<float*>(red + DEC_WARPS);
    u32* mine = reinterpret_cast<u32*>(fresh + DEC_STEP_MAX_NEW);
    float* stage = reinterpret_cast<float*>(mine + share_cap);
    float* part = stage + DEC_WARPS * DEC_HEADS * ROW;
    const float* b = bias + s.bias_offset + (i64)hb * bias_head_stride;
    const i64 gslot = (i64)(seq_base + seq) * bias_heads + hb;
    const int from = seqs.from[seq];

    // 1. The set (cap is even, so the last pair stays in the slot), and the new keys' biases,
    // every copy in flight at once.
    int n = (int)state_count[gslot];
    for (int i = 2 * threadIdx.x; i < n; i += 2 * DEC_THREADS)
        cp_async16(list + i, state_ranks + gslot * cap + i, true);
    for (int j = from + threadIdx.x; j < s.nk; j += DEC_THREADS) cp_async4(fresh + j - from, b + j);
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    if (threadIdx.x == 0) bad = 0;
    __syncthreads();
    for (int j = from; j < s.nk; ++j) {
        const float x = fresh[j - from];
        if (threadIdx.x == 0) dma_check_bias(x, &bad, seq_base + seq, bias_heads, hb, j);
        const u64 r = dma_rank(x, j);
        if (n < window) {
            if (threadIdx.x == 0) list[n] = r;
            ++n;
        } else {
            const u64 worst = cta_min(list, n, red);
            if (r > worst)
                for (int i = threadIdx.x; i < n; i += DEC_THREADS)
                    if (list[i] == worst) list[i] = r;  // ranks are distinct: one slot
        }
        __syncthreads();
    }

    // 2. This CTA's even share of the set.
    const int first = (int)((i64)rank * n / S), m = (int)((i64)(rank + 1) * n / S) - first;
    for (int i = threadIdx.x; i < m; i += DEC_THREADS) mine[i] = (u32)list[first + i];
    __syncthreads();

    // 3. Attend; the partials to global memory.
    attend_slot<T, D>(q, k, v, b, s, hb, mine, m, q_heads, kv_heads, bias_heads, scale_log2,
                      stage, part);
    const int group = q_heads / bias_heads;  // query heads per bias head
    const int h0 = hb * group;
    float* slot_parts = parts + (i64)(seq_base + seq) * bias_heads * S * group * ROW +
                        (i64)hb * S * group * ROW;
    for (int i = threadIdx.x; i < group * ROW; i += DEC_THREADS)
        slot_parts[(i64)rank * group * ROW + i] = part[i];
    if (threadIdx.x == 0) bad_bias[blockIdx.x] = bad;

    // 4. The last CTA of the slot merges the partials and writes the set back.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(arrivals + gslot, 1u) == S - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int x = threadIdx.x; x < group * D; x += DEC_THREADS) {
        const int g = x / D, d = x % D;
        const float* src = slot_parts + g * ROW;
        float best = -DMA_INF;
#pragma unroll
        for (int r = 0; r < S; ++r) best = fmaxf(best, __ldcg(src + (i64)r * group * ROW + D));
        const float use = best == -DMA_INF ? 0.f : best;
        float acc = 0.f, sum = 0.f;
#pragma unroll
        for (int r = 0; r < S; ++r) {
            const float* p = src + (i64)r * group * ROW;
            const float scale = fast_exp2(__ldcg(p + D) - use);
            acc += __ldcg(p + d) * scale;
            sum += __ldcg(p + D + 1) * scale;
        }
        out[((i64)s.q_start * q_heads + h0 + g) * D + d] = (T)(sum > 0.f ? acc / sum : 0.f);
        if (d == 0)
            lse[s.lse_offset + (i64)(h0 + g) * lse_head_stride] =
                sum > 0.f ? (best + __log2f(sum)) * LN2 : -DMA_INF;
    }
    for (int i = threadIdx.x; i < n; i += DEC_THREADS) state_ranks[gslot * cap + i] = list[i];
    if (threadIdx.x == 0) {
        state_count[gslot] = (u32)n;
        arrivals[gslot] = 0;
    }
}

#define DMA_DECODE_STEP_KERNEL(NAME, T, D, S)                                                     \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS, 2)                                 \
        NAME(const T* q, const T* k, const T* v, const float* bias,                               \
             const __grid_constant__ StepSeqs seqs, int seq_base, u64* state_ranks,              \
             u32* state_count, float* parts, u32* arrivals, T* out, float* lse, u64* bad_bias,   \
             int q_heads, int kv_heads, int bias_heads, int bias_head_stride,                    \
             int lse_head_stride, int window, int cap, int share_cap, float scale_log2) {        \
        decode_step_body<T, D, S>(q, k, v, bias, seqs, seq_base, state_ranks, state_count,       \
                                  parts, arrivals, out, lse, bad_bias, q_heads, kv_heads,        \
                                  bias_heads, bias_head_stride, lse_head_stride, window, cap,     \
                                  share_cap, scale_log2);                                         \
    }
