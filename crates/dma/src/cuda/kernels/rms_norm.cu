// RMSNorm over rows of width d, as Doge's: y = x * r * w with r = 1 / sqrt(mean(x^2) + eps),
// and its backward. A row kernel (common.cu): one warp per row.

template <typename T>
__device__ void rms_norm_forward(const T* __restrict__ x, const T* __restrict__ w,
                                 T* __restrict__ y, unsigned long long rows, unsigned int d,
                                 float eps) {
    const unsigned int lane = threadIdx.x % 32, warps_per_block = blockDim.x / 32;
    const unsigned long long warps = (unsigned long long)gridDim.x * warps_per_block;
    for (unsigned long long row = (unsigned long long)blockIdx.x * warps_per_block + threadIdx.x / 32;
         row < rows; row += warps) {
        const T* xr = x + row * d;
        float squares = 0.f;
        for (unsigned int c = lane; c < d; c += 32) squares += xr[c] * xr[c];
        const float r = 1.f / sqrtf(warp_sum(squares) / d + eps);
        T* yr = y + row * d;
        for (unsigned int c = lane; c < d; c += 32) yr[c] = xr[c] * r * w[c];
    }
}

// dx = r * (g * w - x * r^2 * mean(x * g * w)) for every row, and dw = sum over rows of g * x * r
// (column sums, common.cu; dw must be zero before).
template <typename T>
__device__ void rms_norm_backward(const T* __restrict__ x, const T* __restrict__ w,
                                  const T* __restrict__ g, T* __restrict__ dx, T* dw,
                                  unsigned long long rows, unsigned int d, float eps) {
    extern __shared__ float dw_block[];
    column_sums_zero(dw_block, d);
    const unsigned int lane = threadIdx.x % 32, warps_per_block = blockDim.x / 32;
    const unsigned long long warps = (unsigned long long)gridDim.x * warps_per_block;
    for (unsigned long long row = (unsigned long long)blockIdx.x * warps_per_block + threadIdx.x / 32;
         row < rows; row += warps) {
        const T* xr = x + row * d;
        const T* gr = g + row * d;
        float squares = 0.f, dot = 0.f;
        for (unsigned int c = lane; c < d; c += 32) {
            squares += xr[c] * xr[c];
            dot += xr[c] * gr[c] * w[c];
        }
        const float r = 1.f / sqrtf(warp_sum(squares) / d + eps);
        const float k = r * r * warp_sum(dot) / d;
        T* dxr = dx + row * d;
        for (unsigned int c = lane; c < d; c += 32) {
            dxr[c] = r * (gr[c] * w[c] - xr[c] * k);
            atomicAdd(dw_block + c, gr[c] * xr[c] * r);
        }
    }
    column_sums_flush(dw_block, dw, d);
}

#define RMS_NORM_FORWARD(NAME, T)                                                              \
    extern "C" __global__ void NAME(const T* x, const T* w, T* y, unsigned long long rows,     \
                                    unsigned int d, float eps) {                               \
        rms_norm_forward<T>(x, w, y, rows, d, eps);                                            \
    }

#define RMS_NORM_BACKWARD(NAME, T)                                                             \
    extern "C" __global__ void NAME(const T* x, const T* w, const T* g, T* dx, T* dw,          \
                                    unsigned long long rows, unsigned int d, float eps) {      \
        rms_norm_backward<T>(x, w, g, dx, dw, rows, d, eps);                                   \
    }
