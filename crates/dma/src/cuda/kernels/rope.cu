// Rotary position embedding in the "rotate half" form, on x [rows, heads, 2 * half] whose row t
// sits at position t % n: pair i of a head, (x1, x2) = (x[i], x[i + half]), becomes
// (x1 c - x2 s, x1 s + x2 c) with c = cos[t % n, i] and s = sign * sin[t % n, i]. sign = -1 is
// the inverse rotation, which is also the backward. One thread per pair.
template <typename T>
__device__ void rope(const T* __restrict__ x, const T* __restrict__ cos_table,
                     const T* __restrict__ sin_table, T* __restrict__ y,
                     unsigned long long pairs, unsigned int n, unsigned int heads,
                     unsigned int half, float sign) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long p = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         p < pairs; p += stride) {
        const unsigned int i = p % half;
        const unsigned long long head_row = p / half;
        const unsigned long long t = (head_row / heads) % n;
        const unsigned long long a = head_row * 2 * half + i;
        const float c = cos_table[t * half + i], s = sign * sin_table[t * half + i];
        const float x1 = x[a], x2 = x[a + half];
        y[a] = x1 * c - x2 * s;
        y[a + half] = x1 * s + x2 * c;
    }
}

#define ROPE(NAME, T)                                                                          \
    extern "C" __global__ void NAME(const T* x, const T* cos_table, const T* sin_table, T* y,  \
                                    unsigned long long pairs, unsigned int n,                  \
                                    unsigned int heads, unsigned int half, float sign) {       \
        rope<T>(x, cos_table, sin_table, y, pairs, n, heads, half, sign);                      \
    }
