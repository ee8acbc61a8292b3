// Decode selection (few queries, long cache): the w best keys before the first query of each
// sequence and bias head, found by a radix select spread over many CTAs, so that its cost stays
// nearly flat in the context length.
//
// For each (list, bias head) slot, with P = the number of keys before the sequence's first query
// (every key when not causal): pass by pass (8-bit digits of the rank, most significant first),
//   dma_decode_hist: CTAs over chunks of [0, P) count the keys matching the prefix so far by their
//                    next digit (shared-memory histogram, then global atomics);
//   dma_decode_pick: one warp per slot picks the digit holding the w-th best key, extends the
//                    prefix, and clears the histogram for the next pass;
// after the last pass the prefix is tau, the w-th best rank itself (ranks are distinct). Then
//   dma_decode_gather: CTAs over the chunks write the keys ranked >= tau into the slot's list
//                      (any order; min(P, w) of them).
// Causal: that list is the anchor of the sequence's real list, which select.cu's dependent kernel
// completes (the keys [P, E) and each row's threshold). Not causal: the list is final and every
// row's threshold is tau.

#define DSEL_THREADS 256
#define DSEL_CHUNK 4096  // keys per CTA (cuda/decode.rs: CHUNK)

// Per slot, in a zero-initialised buffer.
struct DecodeState {
    u64 prefix, mask, tau;
    u32 need, done, counter, pad;
};

template <bool CAUSAL>
__device__ __forceinline__ int keys_before(const SeqInfo& s) {
    return CAUSAL ? min(max(s.nk - s.nq, 0), s.nk) : s.nk;
}

template <bool CAUSAL>
__device__ __forceinline__ void decode_hist_body(const float* __restrict__ bias,
                                                 const SeqInfo* __restrict__ seqs,
                                                 const int4* __restrict__ lists,
                                                 const int* __restrict__ ids, int window,
                                                 int bias_heads, int bias_head_stride,
                                                 const DecodeState* __restrict__ state,
                                                 u32* __restrict__ hist, int shift) {
    __shared__ u32 sh[256];
    const int hb = blockIdx.z;
    const SeqInfo s = seqs[lists[ids[blockIdx.y]].x];
    const int P = keys_before<CAUSAL>(s);
    const i64 slot = (i64)blockIdx.y * bias_heads + hb;
    const DecodeState st = state[slot];
    const int start = blockIdx.x * DSEL_CHUNK;
    if (P <= window || st.done || start >= P) return;
    const int end = min(start + DSEL_CHUNK, P);
    const float* b = bias + s.bias_offset + (i64)hb * bias_head_stride;
    for (int i = threadIdx.x; i < 256; i += DSEL_THREADS) sh[i] = 0;
    __syncthreads();
    for (int i = start + threadIdx.x; i < end; i += DSEL_THREADS) {
        const u64 key = dma_rank(b[i], i);
        if ((key & st.mask) == st.prefix) atomicAdd(&sh[(key >> shift) & 255], 1u);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 256; i += DSEL_THREADS)
        if (sh[i]) atomicAdd(&hist[slot * 256 + i], sh[i]);
}

// One warp per slot.
template <bool CAUSAL>
__device__ __forceinline__ void decode_pick_body(const SeqInfo* __restrict__ seqs,
                                                 const int4* __restrict__ lists,
                                                 const int* __restrict__ ids, int window,
                                                 int bias_heads, DecodeState* __restrict__ state,
                                                 u32* __restrict__ hist, int shift, int first,
                                                 int last) {
    const int lane = threadIdx.x;
    const int hb = blockIdx.y;
    const SeqInfo s = seqs[lists[ids[blockIdx.x]].x];
    const int P = keys_before<CAUSAL>(s);
    const i64 slot = (i64)blockIdx.x * bias_heads + hb;
    DecodeState* st = state + slot;
    if (P <= window) {
        if (lane == 0) {
            st->tau = DMA_KEEP_ALL;
            st->done = 1;
        }
        return;
    }
    if (st->done) return;
    const u32 k = first ? (u32)window : st->need;
    u32* h = hist + slot * 256;
    u32 c[8];
    u32 sum = 0;
#pragma unroll
    for (int b = 0; b < 8; ++b) {
        c[b] = h[lane * 8 + b];
        sum += c[b];
    }
    u32 suffix = sum;  // keys in digits >= lane * 8
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u32 v = __shfl_down_sync(0xffffffffu, suffix, o);
        if (lane + o < 32) suffix += v;
    }
    const u32 above = suffix - sum;
    __syncwarp();
#pragma unroll
    for (int b = 0; b < 8; ++b) h[lane * 8 + b] = 0;  // for the next pass
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
                }
                break;
            }
            run += c[b];
        }
    }
}

template <bool CAUSAL>
__device__ __forceinline__ void decode_gather_body(
    const float* __restrict__ bias, const SeqInfo* __restrict__ seqs,
    const int4* __restrict__ lists, const int* __restrict__ ids, int window, int cap,
    int bias_heads, int bias_head_stride, int total_q, DecodeState* __restrict__ state,
    u64* __restrict__ cand, u32* __restrict__ cand_count, u64* __restrict__ thr) {
    const int hb = blockIdx.z;
    const int id = ids[blockIdx.y];
    const SeqInfo s = seqs[lists[id].x];
    const int P = keys_before<CAUSAL>(s);
    DecodeState* st = state + (i64)blockIdx.y * bias_heads + hb;
    const u64 tau = P <= window ? DMA_KEEP_ALL : st->tau;
    const i64 slot = (i64)id * bias_heads + hb;
    u64* list = cand + slot * cap;
    const float* b = bias + s.bias_offset + (i64)hb * bias_head_stride;
    const int start = blockIdx.x * DSEL_CHUNK, end = min(start + DSEL_CHUNK, P);
    const int lane = threadIdx.x & 31;
    // Whole warps iterate together (the ballot), each claiming its slots with one atomic.
    for (int i0 = start + (threadIdx.x & ~31); i0 < end; i0 += DSEL_THREADS) {
        const int i = i0 + lane;
        const u64 key = i < end ? dma_rank(b[i], i) : 0;
        const bool keep = i < end && key >= tau;
        const u32 ballot = __ballot_sync(0xffffffffu, keep);
        u32 base = 0;
        if (lane == 0 && ballot) base = atomicAdd(&st->counter, (u32)__popc(ballot));
        base = __shfl_sync(0xffffffffu, base, 0);
        if (keep) list[base + __popc(ballot & ((1u << lane) - 1u))] = key;
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

#define DMA_DECODE_HIST_KERNEL(NAME, CAUSAL)                                                     \
    extern "C" __global__ void __launch_bounds__(DSEL_THREADS)                                   \
        NAME(const float* bias, const SeqInfo* seqs, const int4* lists, const int* ids,          \
             int window, int bias_heads, int bias_head_stride, const DecodeState* state,         \
             u32* hist, int shift) {                                                             \
        decode_hist_body<CAUSAL>(bias, seqs, lists, ids, window, bias_heads, bias_head_stride,   \
                                 state, hist, shift);                                            \
    }

#define DMA_DECODE_PICK_KERNEL(NAME, CAUSAL)                                                     \
    extern "C" __global__ void __launch_bounds__(32)                                             \
        NAME(const SeqInfo* seqs, const int4* lists, const int* ids, int window, int bias_heads, \
             DecodeState* state, u32* hist, int shift, int first, int last) {                    \
        decode_pick_body<CAUSAL>(seqs, lists, ids, window, bias_heads, state, hist, shift,       \
                                 first, last);                                                   \
    }

#define DMA_DECODE_GATHER_KERNEL(NAME, CAUSAL)                                                   \
    extern "C" __global__ void __launch_bounds__(DSEL_THREADS)                                   \
        NAME(const float* bias, const SeqInfo* seqs, const int4* lists, const int* ids,          \
             int window, int cap, int bias_heads, int bias_head_stride, int total_q,             \
             DecodeState* state, u64* cand, u32* cand_count, u64* thr) {                         \
        decode_gather_body<CAUSAL>(bias, seqs, lists, ids, window, cap, bias_heads,              \
                                   bias_head_stride, total_q, state, cand, cand_count, thr);     \
    }
