// A residual with a learned per-column scale (Doge's): y = x * s + r over rows of width d, s
// [d], and its backward: dx = g * s and ds = the sum over rows of g * x (dr is g itself).

template <typename T>
__device__ void scale_add_forward(const T* __restrict__ x, const T* __restrict__ s,
                                  const T* __restrict__ r, T* __restrict__ y,
                                  unsigned long long n, unsigned int d) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += stride)
        y[e] = x[e] * s[e % d] + r[e];
}

// A row kernel (common.cu): one warp per row; ds by column sums (ds must be zero before).
template <typename T>
__device__ void scale_add_backward(const T* __restrict__ x, const T* __restrict__ s,
                                   const T* __restrict__ g, T* __restrict__ dx, T* ds,
                                   unsigned long long rows, unsigned int d) {
    extern __shared__ float ds_block[];
    column_sums_zero(ds_block, d);
    const unsigned int lane = threadIdx.x % 32, warps_per_block = blockDim.x / 32;
    const unsigned long long warps = (unsigned long long)gridDim.x * warps_per_block;
    for (unsigned long long row = (unsigned long long)blockIdx.x * warps_per_block + threadIdx.x / 32;
         row < rows; row += warps) {
        const unsigned long long at = row * d;
        for (unsigned int c = lane; c < d; c += 32) {
            const float ge = g[at + c];
            dx[at + c] = ge * s[c];
            atomicAdd(ds_block + c, ge * x[at + c]);
        }
    }
    column_sums_flush(ds_block, ds, d);
}

#define SCALE_ADD_FORWARD(NAME, T)                                                             \
    extern "C" __global__ void NAME(const T* x, const T* s, const T* r, T* y,                  \
                                    unsigned long long n, unsigned int d) {                    \
        scale_add_forward<T>(x, s, r, y, n, d);                                                \
    }

#define SCALE_ADD_BACKWARD(NAME, T)                                                            \
    extern "C" __global__ void NAME(const T* x, const T* s, const T* g, T* dx, T* ds,          \
                                    unsigned long long rows, unsigned int d) {                 \
        scale_add_backward<T>(x, s, g, dx, ds, rows, d);                                       \
    }
