// The per-row softmax pieces both forward kernels share (forward.cu with mma.sync,
// forward_hopper.cu with wgmma), on one thread's part of a 16-row slice in the m16n8
// accumulator layout: rows g and g + 8 (g = lane / 4), columns 8 j + 2 tq (+1) of every 8-column
// block j (tq = lane % 4). cuda/forward.rs and cuda/backward.rs compile this file in front of
// each of their kernels.

// The parameters of both forward kernels (forward.cu, forward_hopper.cu) and of both backward
// kernels (backward.cu, backward_hopper.cu): cuda/forward.rs and cuda/backward.rs launch either
// kernel of a pair with the same arguments, so each pair's list is written once, here.
#define DMA_FORWARD_PARAMS(T)                                                                      \
    const T* q, const T* k, const T* v, const SeqInfo* seqs, const int4* blocks, const u64* cand,  \
        const u32* cand_count, const u32* block_counts, const u32* sure, const u64* thr, T* out,   \
        float* lse, float* part, int q_heads, int kv_heads, int bias_heads, int bias_head_stride,  \
        int lse_head_stride, int total_q, int cap, float scale_log2, const u32* ready, u32 epoch
#define DMA_BACKWARD_PARAMS(T)                                                                     \
    const T* q, const T* k, const T* v, const T* out, const T* dout, const float* lse,             \
        const SeqInfo* seqs, const int4* blocks, const u64* cand, const u32* cand_count,           \
        const u32* block_counts, const u32* sure, const u64* thr, T* dq, float* dk_acc,            \
        float* dv_acc, float* dbias, int q_heads, int kv_heads, int bias_heads,                    \
        int bias_head_stride, int lse_head_stride, int total_q, int cap, float scale,              \
        float scale_log2

// This thread's rows of warp `warp`'s 16 in query block B (sequence, first row, end row, list):
// their index in the sequence, their position among the keys (offset = Nk - Nq) and their
// threshold (DMA_KEEP_NONE past the block's end, so such rows keep nothing).
__device__ __forceinline__ void thread_rows(const int4& B, int warp, int lane, int offset,
                                            const u64* thr, int hb, int total_q, int q_start,
                                            int (&row)[2], int (&pos)[2], u64 (&rthr)[2]) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        row[e] = B.y + warp * 16 + (lane >> 2) + 8 * e;
        pos[e] = offset + row[e];
        rthr[e] = row[e] < B.z ? thr[(i64)hb * total_q + q_start + row[e]] : DMA_KEEP_NONE;
    }
}

// What the keep test of a tile checks (SPEC.md: key j is kept by the row at position p iff
// rank_j >= thr_p, and j <= p when causal): the rank; the rank and the position (only tiles that
// reach the block's own keys need the causal test); or, for a tile of sure keys (kept by every
// row that keeps anything: select.cu's partition), only whether the row keeps anything at all,
// or nothing when every row of the warp keeps something (no select per score).
#define KEEP_BY_RANK 0
#define KEEP_BY_RANK_AND_POS 1
#define KEEP_LIVE_ROWS 2
#define KEEP_ALL 3

// The keep test of one tile of BN scores: kept scores become scale * s + bias (log2 domain), the
// others -inf; mx gets each row's max. A thread's columns come in adjacent pairs (2 tq, 2 tq + 1),
// so each pair's biases and ranks are one vector load from shared memory (ranks and biases
// 16- and 8-byte aligned), shared by both rows; the score is computed unconditionally and then
// replaced, so the compiler does not move the loads under the keep test.
template <int TEST, int BN>
__device__ __forceinline__ void mask_scores(float (&sc)[BN / 8][4], const u64* ranks,
                                            const float* biases, const u64 (&rthr)[2],
                                            const int (&pos)[2], int tq, float scale_log2,
                                            float (&mx)[2]) {
    const bool live[2] = {rthr[0] != DMA_KEEP_NONE, rthr[1] != DMA_KEEP_NONE};
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
        const int c = nt * 8 + 2 * tq;
        const float2 b = *reinterpret_cast<const float2*>(biases + c);
        // ranks: DMA_NO_KEY past the list's end (never in a tile of sure keys)
        ulonglong2 rk = make_ulonglong2(0, 0);
        if (TEST < KEEP_LIVE_ROWS) rk = *reinterpret_cast<const ulonglong2*>(ranks + c);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = e >> 1;
            const bool keep =
                TEST == KEEP_ALL         ? true
                : TEST == KEEP_LIVE_ROWS ? live[r]
                                         : dma_keeps<TEST == KEEP_BY_RANK_AND_POS>(
                                               (e & 1) ? rk.y : rk.x, rthr[r], pos[r]);
            const float x = fmaf(sc[nt][e], scale_log2, (e & 1) ? b.y : b.x);
            sc[nt][e] = keep ? x : -DMA_INF;
            mx[r] = fmaxf(mx[r], sc[nt][e]);
        }
    }
}

// Whether tile t of the list's first `count` keys (BN ranks at `ranks`) needs the causal test. A
// causal list's own keys come last, ascending, after the keys before its block (ascending, or
// sure ones first: select.cu's partition), so a tile whose last key precedes the block's first
// row (position first_pos) is visible to every row; only the last tiles need the test. The
// Hopper kernels read this before they wait for the tile's scores: the wait is a memory barrier
// to the compiler, so a shared-memory load placed after it would only start then.
template <bool CAUSAL, int BN>
__device__ __forceinline__ bool needs_causal_test(const u64* ranks, int count, int t,
                                                  int first_pos) {
    if (!CAUSAL) return false;
    const int last = min(count - t * BN, BN) - 1;
    return (int)(u32)ranks[last] > first_pos;
}

// The keep test of one tile (mask_scores): only whether a row keeps anything on a tile of sure
// keys (no test when every row of the warp does: a warp-uniform branch), the rank and the
// position where the tile needs the causal test (needs_causal_test), the rank alone otherwise.
// Its callers (the Hopper kernels) take no row max from it: the compiler drops mask_scores's.
template <int BN>
__device__ __forceinline__ void mask_tile(bool sure_tile, bool causal_tile,
                                          float (&sc)[BN / 8][4], const u64* ranks,
                                          const float* biases, const u64 (&rthr)[2],
                                          const int (&pos)[2], int tq, float scale_log2) {
    float mx[2] = {-DMA_INF, -DMA_INF};
    const bool warp_live =
        __all_sync(0xffffffffu, rthr[0] != DMA_KEEP_NONE && rthr[1] != DMA_KEEP_NONE);
    if (sure_tile && warp_live)
        mask_scores<KEEP_ALL, BN>(sc, ranks, biases, rthr, pos, tq, scale_log2, mx);
    else if (sure_tile)
        mask_scores<KEEP_LIVE_ROWS, BN>(sc, ranks, biases, rthr, pos, tq, scale_log2, mx);
    else if (causal_tile)
        mask_scores<KEEP_BY_RANK_AND_POS, BN>(sc, ranks, biases, rthr, pos, tq, scale_log2, mx);
    else
        mask_scores<KEEP_BY_RANK, BN>(sc, ranks, biases, rthr, pos, tq, scale_log2, mx);
}

// How far (log2 domain) a row's max may pass its running max before the running max moves.
// Until then the exponentials are at most 2^8 (exact enough in f32 and in the 16-bit P), and O
// and l need no rescaling: most tiles after the first few leave every row's running max alone.
#define DMA_MAX_SLACK 8.f

// The online softmax's max step: mx (this thread's) becomes the row's max over its 4 threads,
// m the new running max (it moves only past DMA_MAX_SLACK), use the offset the exponentials take
// (0 while a row has kept nothing) and alpha the factor that takes O and l from the old max to
// the new one (1 when it did not move).
__device__ __forceinline__ void update_max(float (&mx)[2], float (&m)[2], float (&use)[2],
                                           float (&alpha)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float mn = mx[r] > m[r] + DMA_MAX_SLACK ? mx[r] : m[r];
        use[r] = mn == -DMA_INF ? 0.f : mn;
        alpha[r] = mn == m[r] ? 1.f : fast_exp2(m[r] - use[r]);
        m[r] = mn;
    }
}

// O and l of this thread's rows from the old running max to the new one (update_max's alpha).
// Most tiles move no row's running max (DMA_MAX_SLACK): a warp where none moved skips the work.
template <int D>
__device__ __forceinline__ void rescale_rows(float (&o)[D / 8][4], float (&l)[2],
                                             const float (&alpha)[2]) {
    if (!__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) return;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
        o[i][0] *= alpha[0];
        o[i][1] *= alpha[0];
        o[i][2] *= alpha[1];
        o[i][3] *= alpha[1];
    }
    l[0] *= alpha[0];
    l[1] *= alpha[1];
}

// Each row's sum l over its 4 threads.
__device__ __forceinline__ void sum_rows(float (&l)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
}

// Stores this thread's part (columns 8 i + 2 tq (+ 1)) of rows row[0], row[1] (those before
// `end`) of an accumulator in the m16n8 layout, times mul[r], in the input type: row r at
// dst + row[r] * row_stride (out and dq: the sequence's first row, this head).
template <typename T, int D>
__device__ __forceinline__ void store_rows(const float (&a)[D / 8][4], const float (&mul)[2],
                                           const int (&row)[2], int end, T* dst, i64 row_stride,
                                           int tq) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (row[r] >= end) continue;
        T* at = dst + row[r] * row_stride + 2 * tq;
#pragma unroll
        for (int i = 0; i < D / 8; ++i)
            *reinterpret_cast<u32*>(at + i * 8) =
                Elem<T>::pack(a[i][2 * r] * mul[r], a[i][2 * r + 1] * mul[r]);
    }
}

// Normalises and writes this thread's part of rows row[0], row[1] (those before `end`) of
// sequence s, query head h: out (the input type) and lse (natural log, f32; -inf and out 0 for
// a row that kept nothing). l must be the rows' full sums (sum_rows).
template <typename T, int D>
__device__ __forceinline__ void write_rows(const float (&o)[D / 8][4], const float (&l)[2],
                                           const float (&m)[2], const int (&row)[2], int end,
                                           const SeqInfo& s, int h, int q_heads, int tq,
                                           int lse_head_stride, T* out, float* lse) {
    constexpr float LN2 = 0.6931471805599453f;
    const float inv[2] = {l[0] > 0.f ? 1.f / l[0] : 0.f, l[1] > 0.f ? 1.f / l[1] : 0.f};
    const i64 row_stride = (i64)q_heads * D;
    store_rows<T, D>(o, inv, row, end, out + s.q_start * row_stride + h * D, row_stride, tq);
#pragma unroll
    for (int r = 0; r < 2; ++r)
        if (row[r] < end && tq == 0)
            lse[s.lse_offset + (i64)h * lse_head_stride + row[r]] =
                l[r] > 0.f ? (m[r] + __log2f(l[r])) * LN2 : -DMA_INF;
}
