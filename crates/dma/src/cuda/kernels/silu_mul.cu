// The gated MLP's product h = silu(a) * u (Doge's, Llama's), and its backward: with
// s = sigmoid(a), da = g * u * s * (1 + a * (1 - s)) and du = g * a * s. One thread per element.
__device__ __forceinline__ float sigmoid(float a) { return 1.f / (1.f + expf(-a)); }

template <typename T>
__device__ void silu_mul_forward(const T* __restrict__ a, const T* __restrict__ u,
                                 T* __restrict__ h, unsigned long long n) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += stride) {
        const float x = a[e];
        h[e] = x * sigmoid(x) * u[e];
    }
}

// da and du into one buffer: da at [0, n), du at [n, 2n).
template <typename T>
__device__ void silu_mul_backward(const T* __restrict__ a, const T* __restrict__ u,
                                  const T* __restrict__ g, T* __restrict__ da_du,
                                  unsigned long long n) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += stride) {
        const float x = a[e], s = sigmoid(x), ge = g[e];
        da_du[e] = ge * u[e] * s * (1.f + x * (1.f - s));
        da_du[n + e] = ge * x * s;
    }
}

#define SILU_MUL_FORWARD(NAME, T)                                                              \
    extern "C" __global__ void NAME(const T* a, const T* u, T* h, unsigned long long n) {      \
        silu_mul_forward<T>(a, u, h, n);                                                       \
    }

#define SILU_MUL_BACKWARD(NAME, T)                                                             \
    extern "C" __global__ void NAME(const T* a, const T* u, const T* g, T* da_du,              \
                                    unsigned long long n) {                                    \
        silu_mul_backward<T>(a, u, g, da_du, n);                                               \
    }
