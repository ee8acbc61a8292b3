// AdamW in place, one thread per element: a moment x <- a * x + b * (s * g)^p (p = 1 for the
// first moment, 2 for the second), and the update
// theta <- theta * keep - lr * (m / c1) / (sqrt(v / c2) + eps).

template <typename T>
__device__ void adamw_moment(T* __restrict__ x, const T* __restrict__ g, unsigned long long n,
                             float a, float b, float s, int square) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += stride) {
        const float ge = s * g[e];
        x[e] = a * x[e] + b * (square ? ge * ge : ge);
    }
}

template <typename T>
__device__ void adamw_update(T* __restrict__ theta, const T* __restrict__ m,
                             const T* __restrict__ v, unsigned long long n, float keep, float lr,
                             float c1, float c2, float eps) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += stride)
        theta[e] = theta[e] * keep - lr * ((m[e] / c1) / (sqrtf(v[e] / c2) + eps));
}

#define ADAMW_MOMENT(NAME, T)                                                                  \
    extern "C" __global__ void NAME(T* x, const T* g, unsigned long long n, float a, float b,  \
                                    float s, int square) {                                     \
        adamw_moment<T>(x, g, n, a, b, s, square);                                             \
    }

#define ADAMW_UPDATE(NAME, T)                                                                  \
    extern "C" __global__ void NAME(T* theta, const T* m, const T* v, unsigned long long n,    \
                                    float keep, float lr, float c1, float c2, float eps) {     \
        adamw_update<T>(theta, m, v, n, keep, lr, c1, c2, eps);                                \
    }
