// Forward and log forward: y = sigsoftmax(z) or l = log sigsoftmax(z), row by row (softmax with
// the sigmoid factor off). Serves `sigsoftmax_forward` in all three row regimes of common.cuh.
//
// NOTE: not yet run on a GPU; compiled only. scripts/gpu-check.sh runs the tests on one.
//
// Per row: m = max z (pass over raw z), t_i = exp(z_i - m), w_i = t_i^2 / (b + a t_i),
// S = sum w, then y_i = w_i / S, or for the log output
//   l_i = (z_i - m) + log s(z_i) - log s(m) - log S,
// which is log w_i - log S with log w_i expanded so that nothing cancels or overflows.
// Softmax: w_i = t_i and l_i = (z_i - m) - log S.

#include "common.cuh"

namespace sigsoftmax {
namespace {

// Values a thread may cache in the warp and block regimes (see the notes in common.cuh).
// The scalar path caches less in a block: each scalar load keeps its own address and bounds
// check live, and 16 f32 values spill there. The workspace query assumes the scalar value, the
// smaller one, so it covers both paths.
template <typename A> constexpr int forward_warp_elems() { return sizeof(A) == 8 ? 8 : 32; }
template <typename A, int VEC> constexpr int forward_block_elems() {
    return sizeof(A) == 8 || VEC == 1 ? 8 : 16;
}

// Writes one output element from z_i (log output) or from w_i (probability).
template <typename A>
__device__ __forceinline__ A forward_value(A z, A w, A m, A inv_sum, A log_sum,
                                           const RowConstants<A> &c, bool sig, bool log_output) {
    if (!log_output) return w * inv_sum;
    // A masked z_i = -inf gives -inf here: (z - m) is -inf and log s(-inf) is -inf.
    A l = (z - m) - log_sum;
    if (sig) l += log_sigmoid_ratio(z, m, c);
    return l;
}

// Cached regimes: a row is loaded once into registers, PACKS packs per thread.
template <typename T, int VEC, int PACKS, bool WARP_PER_ROW>
__global__ void __launch_bounds__(WARP_PER_ROW ? kWarpBlockThreads : kMaxBlockThreads)
    forward_cached(const T *z, T *y, int64_t rows, int64_t cols, bool sig, bool log_output) {
    using A = Acc<T>;
    __shared__ ReduceScratch<A> scratch;
    const int lane = WARP_PER_ROW ? threadIdx.x % 32 : threadIdx.x;
    const int threads_per_row = WARP_PER_ROW ? 32 : blockDim.x;
    const int64_t rows_per_block = WARP_PER_ROW ? blockDim.x / 32 : 1;
    const int64_t row_packs = cols / VEC;

    for (int64_t row = blockIdx.x * rows_per_block + (WARP_PER_ROW ? threadIdx.x / 32 : 0);
         row < rows; row += int64_t(gridDim.x) * rows_per_block) {
        const T *z_row = z + row * cols;
        T *y_row = y + row * cols;

        // Load the row; packs past the end read as masked (-inf) and are never stored.
        A x[PACKS][VEC];
        A local_max = -infinity<A>();
#pragma unroll
        for (int k = 0; k < PACKS; ++k) {
            const int64_t pack = lane + int64_t(k) * threads_per_row;
            if (pack < row_packs) {
                load_pack<T, VEC>(z_row, pack, x[k]);
            } else {
#pragma unroll
                for (int v = 0; v < VEC; ++v) x[k][v] = -infinity<A>();
            }
#pragma unroll
            for (int v = 0; v < VEC; ++v) local_max = fmax(local_max, max_key(x[k][v]));
        }
        const A m = row_max<WARP_PER_ROW>(local_max, scratch);
        const bool bad = row_is_bad(m);

        // Sum of w. The probability output keeps w_i in place of z_i; the log output needs z_i
        // again and keeps it. exp(-inf - m) = 0 exactly, so masked entries add nothing.
        const RowConstants<A> c(bad ? A(0) : m);
        A sum[1] = {A(0)};
        if (!bad) {
#pragma unroll
            for (int k = 0; k < PACKS; ++k)
#pragma unroll
                for (int v = 0; v < VEC; ++v) {
                    const A w = weight(exp_(x[k][v] - m), c, sig);
                    sum[0] += w;
                    if (!log_output) x[k][v] = w;
                }
        }
        row_sum<WARP_PER_ROW, 1>(sum, scratch);
        const A inv_sum = A(1) / sum[0];
        const A log_sum = log_(sum[0]);

#pragma unroll
        for (int k = 0; k < PACKS; ++k) {
            const int64_t pack = lane + int64_t(k) * threads_per_row;
            if (pack >= row_packs) continue;
            A out[VEC];
#pragma unroll
            for (int v = 0; v < VEC; ++v)
                out[v] = bad ? quiet_nan<A>()
                             : forward_value(x[k][v], x[k][v], m, inv_sum, log_sum, c, sig,
                                             log_output);
            store_pack<T, VEC>(y_row, pack, out);
        }
    }
}

// Split pass 1: per chunk, its max m_c and S_c = sum_i exp(g(z_i) - g(m_c)), stored as
// partials[(row * chunks + chunk) * 2 + {0, 1}]. The chunk is read twice; the second read comes
// from L1/L2 since a chunk is at most 64 KiB.
template <typename T, int VEC>
__global__ void __launch_bounds__(kSplitThreads)
    forward_partials(const T *z, Acc<T> *partials, int64_t rows, int64_t cols,
                     int64_t chunk_packs, bool sig) {
    using A = Acc<T>;
    __shared__ ReduceScratch<A> scratch;
    const int64_t chunks = gridDim.x, chunk = blockIdx.x;
    const int64_t row_packs = cols / VEC;
    const int64_t begin = chunk * chunk_packs;
    const int64_t end = begin + chunk_packs < row_packs ? begin + chunk_packs : row_packs;

    for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
        const T *z_row = z + row * cols;
        A local_max = -infinity<A>();
        for (int64_t pack = begin + threadIdx.x; pack < end; pack += blockDim.x) {
            A x[VEC];
            load_pack<T, VEC>(z_row, pack, x);
#pragma unroll
            for (int v = 0; v < VEC; ++v) local_max = fmax(local_max, max_key(x[v]));
        }
        const A m = block_max(local_max, scratch);

        // A chunk with NaN/+inf (m = +inf) poisons the row in pass 2; an all-masked chunk
        // (m = -inf) contributes S = 0. Neither needs a sum.
        A sum[1] = {A(0)};
        if (!isinf(m)) {
            const RowConstants<A> c(m);
            for (int64_t pack = begin + threadIdx.x; pack < end; pack += blockDim.x) {
                A x[VEC];
                load_pack<T, VEC>(z_row, pack, x);
#pragma unroll
                for (int v = 0; v < VEC; ++v) sum[0] += weight(exp_(x[v] - m), c, sig);
            }
        }
        block_sum<1>(sum, scratch);
        if (threadIdx.x == 0) {
            partials[(row * chunks + chunk) * 2 + 0] = m;
            partials[(row * chunks + chunk) * 2 + 1] = sum[0];
        }
    }
}

// Combines a row's chunk partials into the row max m and the row sum S, identically in every
// block of the row: S = sum_c S_c exp(g(m_c) - g(m)), summed in a fixed order.
template <typename A>
__device__ __forceinline__ void combine_forward_partials(const A *row_partials, int64_t chunks,
                                                         bool sig, ReduceScratch<A> &scratch,
                                                         A &m, A &sum) {
    A local_max = -infinity<A>();
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x)
        local_max = fmax(local_max, row_partials[c * 2]);
    m = block_max(local_max, scratch);
    A total[1] = {A(0)};
    if (!isinf(m)) {
        for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
            const A m_c = row_partials[c * 2];
            // An all-masked chunk has m_c = -inf and S_c = 0: skip it, since its rescale
            // exponent would be -inf - m and 0 * exp(-inf) is fine but -inf - (-inf) is not.
            if (m_c == -infinity<A>()) continue;
            total[0] += row_partials[c * 2 + 1] * exp_(rescale_exponent(m_c, m, sig));
        }
    }
    block_sum<1>(total, scratch);
    sum = total[0];
}

// Split pass 2: combine the row's partials, then write this block's chunk.
template <typename T, int VEC>
__global__ void __launch_bounds__(kSplitThreads)
    forward_apply(const T *z, T *y, const Acc<T> *partials, int64_t rows, int64_t cols,
                  int64_t chunk_packs, bool sig, bool log_output) {
    using A = Acc<T>;
    __shared__ ReduceScratch<A> scratch;
    const int64_t chunks = gridDim.x, chunk = blockIdx.x;
    const int64_t row_packs = cols / VEC;
    const int64_t begin = chunk * chunk_packs;
    const int64_t end = begin + chunk_packs < row_packs ? begin + chunk_packs : row_packs;

    for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
        A m, sum;
        combine_forward_partials(partials + row * chunks * 2, chunks, sig, scratch, m, sum);
        const bool bad = row_is_bad(m);
        const RowConstants<A> c(bad ? A(0) : m);
        const A inv_sum = A(1) / sum;
        const A log_sum = log_(sum);
        const T *z_row = z + row * cols;
        T *y_row = y + row * cols;
        for (int64_t pack = begin + threadIdx.x; pack < end; pack += blockDim.x) {
            A x[VEC];
            load_pack<T, VEC>(z_row, pack, x);
#pragma unroll
            for (int v = 0; v < VEC; ++v) {
                if (bad) {
                    x[v] = quiet_nan<A>();
                } else {
                    const A w = log_output ? A(0) : weight(exp_(x[v] - m), c, sig);
                    x[v] = forward_value(x[v], w, m, inv_sum, log_sum, c, sig, log_output);
                }
            }
            store_pack<T, VEC>(y_row, pack, x);
        }
    }
}

template <typename T, int VEC>
cudaError_t launch_forward(const T *z, T *y, void *workspace, int64_t rows, int64_t cols,
                           bool sig, bool log_output, cudaStream_t stream) {
    using A = Acc<T>;
    constexpr int WARP_ELEMS = forward_warp_elems<A>();
    constexpr int BLOCK_ELEMS = forward_block_elems<A, VEC>();
    const Plan plan = make_plan(rows, cols, VEC, WARP_ELEMS, BLOCK_ELEMS);
    switch (plan.regime) {
    case Regime::Warp:
        SIGSOFTMAX_DISPATCH_PACKS(plan.packs, if constexpr (PACKS * VEC <= WARP_ELEMS && PACKS <= 8) {
            const int64_t grid = grid_for_rows(rows, plan.threads / 32);
            forward_cached<T, VEC, PACKS, true>
                <<<unsigned(grid), plan.threads, 0, stream>>>(z, y, rows, cols, sig, log_output);
        } else { return cudaErrorInvalidValue; })
        break;
    case Regime::Block:
        SIGSOFTMAX_DISPATCH_PACKS(plan.packs, if constexpr (PACKS * VEC == BLOCK_ELEMS) {
            const int64_t grid = grid_for_rows(rows, 1);
            forward_cached<T, VEC, PACKS, false>
                <<<unsigned(grid), plan.threads, 0, stream>>>(z, y, rows, cols, sig, log_output);
        } else { return cudaErrorInvalidValue; })
        break;
    case Regime::Split: {
        if (workspace == nullptr) return cudaErrorInvalidValue;
        A *partials = static_cast<A *>(workspace);
        const dim3 grid(unsigned(plan.chunks), unsigned(rows < kMaxGridY ? rows : kMaxGridY));
        forward_partials<T, VEC>
            <<<grid, kSplitThreads, 0, stream>>>(z, partials, rows, cols, plan.chunk_packs, sig);
        const cudaError_t status = cudaGetLastError();
        if (status != cudaSuccess) return status;
        forward_apply<T, VEC><<<grid, kSplitThreads, 0, stream>>>(
            z, y, partials, rows, cols, plan.chunk_packs, sig, log_output);
        break;
    }
    }
    return cudaGetLastError();
}

}  // namespace
}  // namespace sigsoftmax

using namespace sigsoftmax;

extern "C" size_t sigsoftmax_forward_workspace_size(sigsoftmax_dtype dtype, int64_t rows,
                                                    int64_t cols) {
    if (rows <= 0 || cols <= 0) return 0;
    const bool f64 = dtype == SIGSOFTMAX_F64;
    const int elems = f64 ? forward_block_elems<double, 1>() : forward_block_elems<float, 1>();
    if (!uses_split(rows, cols, elems)) return 0;
    return size_t(rows) * size_t(split_chunks(rows, cols)) * 2 * (f64 ? 8 : 4);
}

extern "C" cudaError_t sigsoftmax_forward(sigsoftmax_dtype dtype,
                                          sigsoftmax_activation activation, int log_output,
                                          const void *z, void *y, void *workspace, int64_t rows,
                                          int64_t cols, void *stream) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    const bool sig = activation == SIGSOFTMAX_SIGSOFTMAX;
    SIGSOFTMAX_DISPATCH_DTYPE(dtype, {
        const T *zt = static_cast<const T *>(z);
        T *yt = static_cast<T *>(y);
        if (vector_ok(cols, sizeof(T), {z, y, workspace}))
            return launch_forward<T, 16 / sizeof(T)>(zt, yt, workspace, rows, cols, sig,
                                                     log_output != 0, as_stream(stream));
        return launch_forward<T, 1>(zt, yt, workspace, rows, cols, sig, log_output != 0,
                                    as_stream(stream));
    })
    return cudaSuccess;
}
