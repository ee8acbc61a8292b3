// Decode selection (few queries, long cache): the w best keys before the first query of each
// sequence and bias head, found by a radix select spread over many CTAs, so that its cost stays
// nearly flat in the context length.
//
// For each (sequence, bias head) slot, with P = the number of keys before the sequence's first
// query (every key when not causal), one launch per 8-bit digit of the rank, most significant
// first:
//   dma_decode_pass: CTAs over chunks of [0, P) count the keys matching the prefix so far by their
//                    next digit (shared-memory histogram, then global atomics); the last CTA of
//                    the slot to finish picks the digit holding the w-th best key, extends the
//                    prefix and clears the histogram;
// after the last pass the prefix is tau, the w-th best rank itself (ranks are distinct). When a
// pass finds the digit's bucket holds exactly the keys still needed, the next pass takes their
// minimum as tau and the later passes return at once (random biases: about 3 passes + 1). Then
//   dma_decode_gather: CTAs over the chunks write the keys ranked >= tau into the slot's list
//                      (in key order; min(P, w) of them), and report a non-finite bias of [0, P)
//                      (dma_check_bias; select.cu's dependent kernel checks the keys [P, Nk)).
// Causal: that list is the anchor of the sequence's real list, which select.cu's dependent kernel
// completes (the keys [P, E) and each row's threshold). Not causal: the list is final and every
// row's threshold is tau.

#define DSEL_THREADS 256
#define DSEL_CHUNK 4096  // keys per CTA (cuda/decode.rs: CHUNK)
#define DSEL_PER (DSEL_CHUNK / DSEL_THREADS)  // keys per thread

// Per slot, in a zero-initialised buffer.
struct DecodeState {
    u64 prefix, mask, tau;
    // exact: every key matching the prefix is kept, so tau is their smallest, found by the next
    // pass (atomicMin into tau) instead of the remaining digits; done: tau is final.
    u32 need, done, exact;
};

template <bool CAUSAL>
__device__ __forceinline__ int keys_before(const SeqInfo& s) {
    return CAUSAL ? min(max(s.nk - s.nq, 0), s.nk) : s.nk;
}

// The workspace of a call (one zero-initialised buffer): per slot a DecodeState, then per slot a
// 256-bin histogram, then per slot the count of CTAs that finished the current pass, then per
// slot and chunk (gridDim.x of them) the gather's kept keys of the chunk plus one (0: not yet
// published).
struct Workspace {
    DecodeState* state;
    u32* hist;
    u32* arrivals;
    u32* chunk_kept;
    __device__ Workspace(u64* ws, int slots)
        : state(reinterpret_cast<DecodeState*>(ws)),
          hist(reinterpret_cast<u32*>(ws + (i64)slots * (sizeof(DecodeState) / 8))),
          arrivals(hist + (i64)slots * 256),
          chunk_kept(arrivals + slots) {}
};

// The list a sequence's decode selection fills: causal, its anchor (lists 2i, 2i + 1 per
// sequence); not causal, its only list (cuda/decode.rs).
template <bool CAUSAL>
__device__ __forceinline__ int target_list(int seq) {
    return CAUSAL ? 2 * seq : seq;
}

// Warp 0 of the last CTA of a pass: the digit holding the k-th best key (k = w on the first
// pass, what is still needed after), extends the prefix, clears the histogram for the next pass.
__device__ __forceinline__ void pick_digit(DecodeState* st, u32* h, u32 k, int shift, bool last) {
    const int lane = threadIdx.x;
    u32 c[8];
    u32 sum = 0;
#pragma unroll
    for (int b = 0; b < 8; ++b) {
        c[b] = __ldcg(h + lane * 8 + b);  // the other CTAs' atomics, at L2
        sum += c[b];
    }
    u32 suffix = sum;  // keys in digits >= lane * 8
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u32 v = __shfl_down_sync(0xffffffffu, suffix, o);
        if (lane + o < 32) suffix += v;
    }
    const u32 above = suffix - sum;
#pragma unroll
    for (int b = 0; b < 8; ++b) h[lane * 8 + b] = 0;
    if (above < k && suffix >= k) {
        u32 run = above;
#pragma unroll
        for (int b = 7; b >= 0; --b) {
            if (run + c[b] >= k) {
                const u64 prefix = st->prefix | ((u64)(lane * 8 + b) << shift);
                st->prefix = prefix;
                st->mask |= 255ull << shift;
                st->need = k - run;
                if (last) {
                    st->tau = prefix;
                    st->done = 1;
                } else if (c[b] == k - run) {
                    st->tau = ~0ull;
                    st->exact = 1;
                }
                break;
            }
            run += c[b];
        }
    }
}

// One pass: CTAs over chunks of [0, P) histogram the next digit of the keys matching the prefix;
// the last CTA of each slot to finish picks the digit.
template <bool CAUSAL>
__device__ __forceinline__ void decode_pass_body(const float* __restrict__ bias,
                                                 const SeqInfo* __restrict__ seqs, int window,
                                                 int bias_heads, int bias_head_stride, u64* ws_raw,
                                                 int shift, int first, int last) {
    __shared__ u32 sh[256];
    __shared__ bool is_last;
    const int hb = blockIdx.z;
    const SeqInfo s = seqs[blockIdx.y];
    const int P = keys_before<CAUSAL>(s);
    const int slots = gridDim.y * bias_heads;
    Workspace ws(ws_raw, slots);
    const i64 slot = (i64)blockIdx.y * bias_heads + hb;
    DecodeState* st = ws.state + slot;
    const int start = blockIdx.x * DSEL_CHUNK;
    if (P <= window || start >= P || st->done) return;
    const u64 prefix = st->prefix, mask = st->mask;
    const bool exact = st->exact != 0;
    const int end = min(start + DSEL_CHUNK, P);
    const float* b = bias + s.bias_offset + (i64)hb * bias_head_stride;
    for (int i = threadIdx.x; i < 256; i += DSEL_THREADS) sh[i] = 0;
    __syncthreads();
    // Every load of the chunk in flight at once (the loop was latency-bound one load at a time).
    float vals[DSEL_PER];
#pragma unroll
    for (int u = 0; u < DSEL_PER; ++u) {
        const int i = start + u * DSEL_THREADS + threadIdx.x;
        vals[u] = i < end ? b[i] : 0.f;
    }
    u32* h = ws.hist + slot * 256;
    if (exact) {
        // The smallest key matching the prefix is tau.
        u64 m = ~0ull;
#pragma unroll
        for (int u = 0; u < DSEL_PER; ++u) {
            const int i = start + u * DSEL_THREADS + threadIdx.x;
            const u64 key = dma_rank(vals[u], i);
            if (i < end && (key & mask) == prefix && key < m) m = key;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const u64 other = __shfl_xor_sync(0xffffffffu, m, o);
            m = other < m ? other : m;
        }
        if ((threadIdx.x & 31) == 0 && m != ~0ull) atomicMin(&st->tau, m);
    } else {
#pragma unroll
        for (int u = 0; u < DSEL_PER; ++u) {
            const int i = start + u * DSEL_THREADS + threadIdx.x;
            const u64 key = dma_rank(vals[u], i);
            if (i < end && (key & mask) == prefix) atomicAdd(&sh[(key >> shift) & 255], 1u);
        }
        __syncthreads();
        for (int i = threadIdx.x; i < 256; i += DSEL_THREADS)
            if (sh[i]) atomicAdd(&h[i], sh[i]);
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const u32 ctas = (u32)((P + DSEL_CHUNK - 1) / DSEL_CHUNK);
        is_last = atomicAdd(&ws.arrivals[slot], 1u) == ctas - 1;
        if (is_last) ws.arrivals[slot] = 0;  // for the next pass (a later launch)
    }
    __syncthreads();
    if (!is_last || threadIdx.x >= 32) return;
    __threadfence();
    if (exact) {
        if (threadIdx.x == 0) st->done = 1;  // tau is the minimum gathered above
        return;
    }
    pick_digit(st, h, first ? (u32)window : st->need, shift, last != 0);
}

template <bool CAUSAL>
__device__ __forceinline__ void decode_gather_body(
    const float* __restrict__ bias, const SeqInfo* __restrict__ seqs, int window, int cap,
    int bias_heads, int bias_head_stride, int total_q, u64* ws_raw, u64* __restrict__ cand,
    u32* __restrict__ cand_count, u64* __restrict__ thr, u64* __restrict__ bad_bias) {
    const int hb = blockIdx.z;
    const int id = target_list<CAUSAL>(blockIdx.y);
    const SeqInfo s = seqs[blockIdx.y];
    const int P = keys_before<CAUSAL>(s);
    Workspace ws(ws_raw, gridDim.y * bias_heads);
    DecodeState* st = ws.state + (i64)blockIdx.y * bias_heads + hb;
    const u64 tau = P <= window ? DMA_KEEP_ALL : st->tau;
    const i64 slot = (i64)id * bias_heads + hb;
    u64* list = cand + slot * cap;
    const float* b = bias + s.bias_offset + (i64)hb * bias_head_stride;
    const int start = blockIdx.x * DSEL_CHUNK, end = min(start + DSEL_CHUNK, P);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // Every load of the chunk in flight at once.
    float vals[DSEL_PER];
#pragma unroll
    for (int u = 0; u < DSEL_PER; ++u) {
        const int i = start + u * DSEL_THREADS + threadIdx.x;
        vals[u] = i < end ? b[i] : 0.f;
    }
    // The list is in key order, so that a call's result does not depend on which CTA came
    // first: each warp's kept keys per round u (keys u * DSEL_THREADS + [0, DSEL_THREADS) of the
    // chunk), the chunk's offsets in key order, the chunk's count published, then the counts of
    // the chunks before it (each published before its CTA waits on any other: no chain).
    __shared__ u32 kept_at[DSEL_PER][DSEL_THREADS / 32];
    __shared__ u32 base;
    u32 ballots[DSEL_PER];
#pragma unroll
    for (int u = 0; u < DSEL_PER; ++u) {
        const int i = start + u * DSEL_THREADS + threadIdx.x;
        if (i < end) dma_check_bias(vals[u], bad_bias, blockIdx.y, bias_heads, hb, i);
        ballots[u] = __ballot_sync(0xffffffffu, i < end && dma_rank(vals[u], i) >= tau);
        if (lane == 0) kept_at[u][warp] = __popc(ballots[u]);
    }
    __syncthreads();
    u32* published = ws.chunk_kept + ((i64)blockIdx.y * bias_heads + hb) * gridDim.x;
    if (threadIdx.x == 0) {
        u32 run = 0;  // exclusive offsets in key order
        for (int u = 0; u < DSEL_PER; ++u)
            for (int w = 0; w < DSEL_THREADS / 32; ++w) {
                const u32 c = kept_at[u][w];
                kept_at[u][w] = run;
                run += c;
            }
        asm volatile("st.release.gpu.u32 [%0], %1;\n" ::"l"(published + blockIdx.x), "r"(run + 1u)
                     : "memory");
        base = 0;
    }
    __syncthreads();
    u32 before = 0;
    for (int c = threadIdx.x; c < (int)blockIdx.x; c += DSEL_THREADS) {
        u32 v;
        do {
            asm volatile("ld.acquire.gpu.u32 %0, [%1];\n" : "=r"(v) : "l"(published + c) : "memory");
        } while (v == 0);
        before += v - 1;
    }
    if (before) atomicAdd(&base, before);
    __syncthreads();
#pragma unroll
    for (int u = 0; u < DSEL_PER; ++u) {
        const int i = start + u * DSEL_THREADS + threadIdx.x;
        if ((ballots[u] >> lane) & 1u)
            list[base + kept_at[u][warp] + __popc(ballots[u] & ((1u << lane) - 1u))] =
                dma_rank(vals[u], i);
    }
    if (blockIdx.x != 0) return;
    const int count = min(P, window);
    if (threadIdx.x == 0) cand_count[slot] = (u32)count;
    if (!CAUSAL) {
        // The list is final: pad it to a whole tile, and every row keeps the keys ranked >= tau.
        const int padded = min((count + DMA_TILE_N - 1) / DMA_TILE_N * DMA_TILE_N, cap);
        for (int i = count + threadIdx.x; i < padded; i += DSEL_THREADS) list[i] = DMA_NO_KEY;
        u64* row_thr = thr + (i64)hb * total_q + s.q_start;
        for (int r = threadIdx.x; r < s.nq; r += DSEL_THREADS) row_thr[r] = tau;
    }
}

#define DMA_DECODE_PASS_KERNEL(NAME, CAUSAL)                                                     \
    extern "C" __global__ void __launch_bounds__(DSEL_THREADS)                                   \
        NAME(const float* bias, const SeqInfo* seqs, int window, int bias_heads,                 \
             int bias_head_stride, u64* ws, int shift, int first, int last) {                    \
        decode_pass_body<CAUSAL>(bias, seqs, window, bias_heads, bias_head_stride, ws, shift,    \
                                 first, last);                                                   \
    }

#define DMA_DECODE_GATHER_KERNEL(NAME, CAUSAL)                                                   \
    extern "C" __global__ void __launch_bounds__(DSEL_THREADS)                                   \
        NAME(const float* bias, const SeqInfo* seqs, int window, int cap, int bias_heads,        \
             int bias_head_stride, int total_q, u64* ws, u64* cand, u32* cand_count, u64* thr,    \
             u64* bad_bias) {                                                                    \
        decode_gather_body<CAUSAL>(bias, seqs, window, cap, bias_heads, bias_head_stride,        \
                                   total_q, ws, cand, cand_count, thr, bad_bias);                \
    }
