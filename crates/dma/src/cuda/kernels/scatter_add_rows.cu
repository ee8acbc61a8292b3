// out[ids[i], c] += src[i, c] for every row i of src [n, width] and column c: one thread per
// element, atomically, since ids repeat (a token's embedding row gets every occurrence's
// gradient). Ids that are not rows of out are skipped; the forward's index_select rejects them
// before a backward can run.
template <typename T>
__device__ void scatter_add_rows(const T* __restrict__ src, const unsigned int* __restrict__ ids,
                                 T* out, unsigned long long n, unsigned long long width,
                                 unsigned long long rows) {
    const unsigned long long total = n * width;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         e < total; e += stride) {
        const unsigned long long row = ids[e / width];
        if (row < rows) atomicAdd(out + row * width + e % width, src[e]);
    }
}

#define SCATTER_ADD_ROWS(NAME, T)                                                              \
    extern "C" __global__ void NAME(const T* src, const unsigned int* ids, T* out,             \
                                    unsigned long long n, unsigned long long width,             \
                                    unsigned long long rows) {                                  \
        scatter_add_rows<T>(src, ids, out, n, width, rows);                                     \
    }
