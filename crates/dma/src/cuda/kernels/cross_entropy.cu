// Softmax cross-entropy of rows of logits x against target classes t, and its backward. With
// lse = log(sum_c exp(x_c)): loss = lse - x[t], and dx_c = g * (exp(x_c - lse) - [c == t]).
// The backward takes lse back from the forward's loss (loss + x[t]), so it reads the logits once.
// One warp per row, the grid's warps striding over rows. A target outside [0, classes) gives a
// NaN loss and a NaN gradient row (no error can reach the host without a read-back).

// The running (max, sum of exp(x - max)) of a lane's part of a row, then of the whole warp.
__device__ __forceinline__ void online_add(float& m, float& s, float x) {
    if (x > m) {
        s = s * expf(m - x) + 1.f;
        m = x;
    } else if (x != -DMA_INF) {
        s += expf(x - m);
    }
}

__device__ __forceinline__ float warp_log_sum_exp(float m, float s) {
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        const float top = fmaxf(m, m2);
        // A lane that saw no element (or only -inf) holds m = -inf and s = 0: it adds nothing.
        s = (m == -DMA_INF ? 0.f : s * expf(m - top)) +
            (m2 == -DMA_INF ? 0.f : s2 * expf(m2 - top));
        m = top;
    }
    return m + logf(s);
}

template <typename T>
__device__ void cross_entropy_forward(const T* __restrict__ x, const unsigned int* __restrict__ t,
                                      T* __restrict__ loss, unsigned long long rows,
                                      unsigned int classes) {
    const unsigned int lane = threadIdx.x % 32, warps_per_block = blockDim.x / 32;
    const unsigned long long warps = (unsigned long long)gridDim.x * warps_per_block;
    for (unsigned long long row = (unsigned long long)blockIdx.x * warps_per_block + threadIdx.x / 32;
         row < rows; row += warps) {
        const T* xr = x + row * classes;
        float m = -DMA_INF, s = 0.f;
        for (unsigned int c = lane; c < classes; c += 32) online_add(m, s, xr[c]);
        const float lse = warp_log_sum_exp(m, s);
        if (lane == 0)
            loss[row] = t[row] < classes ? lse - (float)xr[t[row]] : DMA_NAN;
    }
}

template <typename T>
__device__ void cross_entropy_backward(const T* __restrict__ x, const unsigned int* __restrict__ t,
                                       const T* __restrict__ loss, const T* __restrict__ g,
                                       T* __restrict__ dx, unsigned long long rows,
                                       unsigned int classes) {
    const unsigned int lane = threadIdx.x % 32, warps_per_block = blockDim.x / 32;
    const unsigned long long warps = (unsigned long long)gridDim.x * warps_per_block;
    for (unsigned long long row = (unsigned long long)blockIdx.x * warps_per_block + threadIdx.x / 32;
         row < rows; row += warps) {
        const T* xr = x + row * classes;
        const float lse = t[row] < classes ? loss[row] + (float)xr[t[row]] : DMA_NAN;
        const float gr = g[row];
        T* dxr = dx + row * classes;
        for (unsigned int c = lane; c < classes; c += 32)
            dxr[c] = gr * (expf(xr[c] - lse) - (c == t[row] ? 1.f : 0.f));
    }
}

#define CROSS_ENTROPY_FORWARD(NAME, T)                                                         \
    extern "C" __global__ void NAME(const T* x, const unsigned int* t, T* loss,                \
                                    unsigned long long rows, unsigned int classes) {           \
        cross_entropy_forward<T>(x, t, loss, rows, classes);                                   \
    }

#define CROSS_ENTROPY_BACKWARD(NAME, T)                                                        \
    extern "C" __global__ void NAME(const T* x, const unsigned int* t, const T* loss,          \
                                    const T* g, T* dx, unsigned long long rows,                \
                                    unsigned int classes) {                                    \
        cross_entropy_backward<T>(x, t, loss, g, dx, rows, classes);                           \
    }
