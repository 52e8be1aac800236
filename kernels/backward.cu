// Backward and log backward: the gradient with respect to z, row by row. Serves
// `sigsoftmax_backward` in all three row regimes of common.cuh.
//
// NOTE: not yet run on a GPU; compiled only. scripts/gpu-check.sh runs the tests on one.
//
// Probability output (y, dy):  dz_i = (1 + s(-z_i)) * y_i * (dy_i - sum_j dy_j y_j)
// Log output (l, dl):          dz_i = (1 + s(-z_i)) * (dl_i - exp(l_i) * sum_j dl_j)
// Softmax drops the factor (1 + s(-z_i)). The factor is computed from z_i alone as
// 1 + 1 / (1 + e^z_i) with the overflow-free sigmoid_neg. Where z_i = -inf the entry is masked
// and dz_i is set to exactly 0: the formula would give 0 * (...) there, which is NaN when dy_i or
// dl_i is infinite, and the log formula does not vanish there at all unless dl_i = 0. A NaN row
// (NaN row sum, or a log output that is not -inf at the mask) gives NaN there instead, as on the
// CPU. The log output's row sum leaves out masked entries (recognised by l_i = -inf, since z is
// not read in that phase): a masked l_i is the constant -inf, so its dl_i reaches no logit.
//
// Both cached arrays (y and dy, or l and dl) are loaded in the first phase; z is read only in the
// second, so every input is read from device memory once.

#include "common.cuh"

namespace sigsoftmax {
namespace {

// Values a thread may cache per array (two arrays) in the warp and block regimes; the scalar
// path keeps less for the reason given in forward.cu. The workspace query assumes the scalar
// value.
template <typename A> constexpr int backward_warp_elems() { return sizeof(A) == 8 ? 2 : 16; }
template <typename A, int VEC> constexpr int backward_block_elems() {
    if (sizeof(A) == 8) return 2;
    if (VEC == 1) return 4;
    return 8;
}

// The row sum's term for one element: dy_i y_i, or dl_i for the log output (0 where masked).
template <typename A> __device__ __forceinline__ A dot_term(A out, A dout, bool log_output) {
    if (log_output) return out == -infinity<A>() ? A(0) : dout;
    return dout * out;
}

template <typename A>
__device__ __forceinline__ A gradient(A z, A out, A dout, A dot, bool sig, bool log_output) {
    // Masked entry: exactly 0 whatever dy_i or dl_i holds, unless the row is NaN.
    if (z == -infinity<A>()) {
        const bool row_ok = isfinite(dot) && (!log_output || out == -infinity<A>());
        return row_ok ? A(0) : quiet_nan<A>();
    }
    // exp(l_i) recovers y_i from the log output; l_i = -inf gives 0.
    const A inner = log_output ? dout - exp_(out) * dot : out * (dout - dot);
    return sig ? grad_factor(z) * inner : inner;
}

template <typename T, int VEC, int PACKS, bool WARP_PER_ROW>
__global__ void __launch_bounds__(WARP_PER_ROW ? kWarpBlockThreads : kMaxBlockThreads)
    backward_cached(const T *z, const T *out, const T *dout, T *dz, int64_t rows, int64_t cols,
                    bool sig, bool log_output) {
    using A = Acc<T>;
    __shared__ ReduceScratch<A> scratch;
    const int lane = WARP_PER_ROW ? threadIdx.x % 32 : threadIdx.x;
    const int threads_per_row = WARP_PER_ROW ? 32 : blockDim.x;
    const int64_t rows_per_block = WARP_PER_ROW ? blockDim.x / 32 : 1;
    const int64_t row_packs = cols / VEC;

    for (int64_t row = blockIdx.x * rows_per_block + (WARP_PER_ROW ? threadIdx.x / 32 : 0);
         row < rows; row += int64_t(gridDim.x) * rows_per_block) {
        const int64_t offset = row * cols;

        // Phase 1: cache out and dout, and sum the row's dot terms. Padding adds 0.
        A o[PACKS][VEC], d[PACKS][VEC];
        A dot[1] = {A(0)};
#pragma unroll
        for (int k = 0; k < PACKS; ++k) {
            const int64_t pack = lane + int64_t(k) * threads_per_row;
            if (pack < row_packs) {
                load_pack<T, VEC>(out + offset, pack, o[k]);
                load_pack<T, VEC>(dout + offset, pack, d[k]);
#pragma unroll
                for (int v = 0; v < VEC; ++v) dot[0] += dot_term(o[k][v], d[k][v], log_output);
            }
        }
        row_sum<WARP_PER_ROW, 1>(dot, scratch);

        // Phase 2: read z and write dz.
#pragma unroll
        for (int k = 0; k < PACKS; ++k) {
            const int64_t pack = lane + int64_t(k) * threads_per_row;
            if (pack >= row_packs) continue;
            A x[VEC];
            load_pack<T, VEC>(z + offset, pack, x);
#pragma unroll
            for (int v = 0; v < VEC; ++v)
                x[v] = gradient(x[v], o[k][v], d[k][v], dot[0], sig, log_output);
            store_pack<T, VEC>(dz + offset, pack, x);
        }
    }
}

// Split pass 1: each chunk's sum of dot terms into partials[row * chunks + chunk].
template <typename T, int VEC>
__global__ void __launch_bounds__(kSplitThreads)
    backward_partials(const T *out, const T *dout, Acc<T> *partials, int64_t rows, int64_t cols,
                      int64_t chunk_packs, bool log_output) {
    using A = Acc<T>;
    __shared__ ReduceScratch<A> scratch;
    const int64_t chunks = gridDim.x, chunk = blockIdx.x;
    const int64_t row_packs = cols / VEC;
    const int64_t begin = chunk * chunk_packs;
    const int64_t end = begin + chunk_packs < row_packs ? begin + chunk_packs : row_packs;

    for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
        const int64_t offset = row * cols;
        A dot[1] = {A(0)};
        for (int64_t pack = begin + threadIdx.x; pack < end; pack += blockDim.x) {
            A o[VEC], d[VEC];
            load_pack<T, VEC>(out + offset, pack, o);
            load_pack<T, VEC>(dout + offset, pack, d);
#pragma unroll
            for (int v = 0; v < VEC; ++v) dot[0] += dot_term(o[v], d[v], log_output);
        }
        block_sum<1>(dot, scratch);
        if (threadIdx.x == 0) partials[row * chunks + chunk] = dot[0];
    }
}

// Split pass 2: sum the row's chunk partials in a fixed order, then write this block's chunk.
template <typename T, int VEC>
__global__ void __launch_bounds__(kSplitThreads)
    backward_apply(const T *z, const T *out, const T *dout, T *dz, const Acc<T> *partials,
                   int64_t rows, int64_t cols, int64_t chunk_packs, bool sig, bool log_output) {
    using A = Acc<T>;
    __shared__ ReduceScratch<A> scratch;
    const int64_t chunks = gridDim.x, chunk = blockIdx.x;
    const int64_t row_packs = cols / VEC;
    const int64_t begin = chunk * chunk_packs;
    const int64_t end = begin + chunk_packs < row_packs ? begin + chunk_packs : row_packs;

    for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
        A dot[1] = {A(0)};
        for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) dot[0] += partials[row * chunks + c];
        block_sum<1>(dot, scratch);

        const int64_t offset = row * cols;
        for (int64_t pack = begin + threadIdx.x; pack < end; pack += blockDim.x) {
            A x[VEC], o[VEC], d[VEC];
            load_pack<T, VEC>(z + offset, pack, x);
            load_pack<T, VEC>(out + offset, pack, o);
            load_pack<T, VEC>(dout + offset, pack, d);
#pragma unroll
            for (int v = 0; v < VEC; ++v) x[v] = gradient(x[v], o[v], d[v], dot[0], sig, log_output);
            store_pack<T, VEC>(dz + offset, pack, x);
        }
    }
}

template <typename T, int VEC>
cudaError_t launch_backward(const T *z, const T *out, const T *dout, T *dz, void *workspace,
                            int64_t rows, int64_t cols, bool sig, bool log_output,
                            cudaStream_t stream) {
    using A = Acc<T>;
    constexpr int WARP_ELEMS = backward_warp_elems<A>();
    constexpr int BLOCK_ELEMS = backward_block_elems<A, VEC>();
    const Plan plan = make_plan(rows, cols, VEC, WARP_ELEMS, BLOCK_ELEMS);
    switch (plan.regime) {
    case Regime::Warp:
        SIGSOFTMAX_DISPATCH_PACKS(plan.packs, if constexpr (PACKS * VEC <= WARP_ELEMS && PACKS <= 8) {
            const int64_t grid = grid_for_rows(rows, plan.threads / 32);
            backward_cached<T, VEC, PACKS, true><<<unsigned(grid), plan.threads, 0, stream>>>(
                z, out, dout, dz, rows, cols, sig, log_output);
        } else { return cudaErrorInvalidValue; })
        break;
    case Regime::Block:
        SIGSOFTMAX_DISPATCH_PACKS(plan.packs, if constexpr (PACKS * VEC == BLOCK_ELEMS) {
            const int64_t grid = grid_for_rows(rows, 1);
            backward_cached<T, VEC, PACKS, false><<<unsigned(grid), plan.threads, 0, stream>>>(
                z, out, dout, dz, rows, cols, sig, log_output);
        } else { return cudaErrorInvalidValue; })
        break;
    case Regime::Split: {
        if (workspace == nullptr) return cudaErrorInvalidValue;
        A *partials = static_cast<A *>(workspace);
        const dim3 grid(unsigned(plan.chunks), unsigned(rows < kMaxGridY ? rows : kMaxGridY));
        backward_partials<T, VEC><<<grid, kSplitThreads, 0, stream>>>(
            out, dout, partials, rows, cols, plan.chunk_packs, log_output);
        const cudaError_t status = cudaGetLastError();
        if (status != cudaSuccess) return status;
        backward_apply<T, VEC><<<grid, kSplitThreads, 0, stream>>>(
            z, out, dout, dz, partials, rows, cols, plan.chunk_packs, sig, log_output);
        break;
    }
    }
    return cudaGetLastError();
}

}  // namespace
}  // namespace sigsoftmax

using namespace sigsoftmax;

extern "C" size_t sigsoftmax_backward_workspace_size(sigsoftmax_dtype dtype, int64_t rows,
                                                     int64_t cols) {
    if (rows <= 0 || cols <= 0) return 0;
    const bool f64 = dtype == SIGSOFTMAX_F64;
    const int elems = f64 ? backward_block_elems<double, 1>() : backward_block_elems<float, 1>();
    if (!uses_split(rows, cols, elems)) return 0;
    return size_t(rows) * size_t(split_chunks(rows, cols)) * (f64 ? 8 : 4);
}

extern "C" cudaError_t sigsoftmax_backward(sigsoftmax_dtype dtype,
                                           sigsoftmax_activation activation, int log_output,
                                           const void *z, const void *out, const void *dout,
                                           void *dz, void *workspace, int64_t rows, int64_t cols,
                                           void *stream) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    const bool sig = activation == SIGSOFTMAX_SIGSOFTMAX;
    SIGSOFTMAX_DISPATCH_DTYPE(dtype, {
        const T *zt = static_cast<const T *>(z);
        const T *ot = static_cast<const T *>(out);
        const T *dt = static_cast<const T *>(dout);
        T *gt = static_cast<T *>(dz);
        if (vector_ok(cols, sizeof(T), {z, out, dout, dz, workspace}))
            return launch_backward<T, 16 / sizeof(T)>(zt, ot, dt, gt, workspace, rows, cols, sig,
                                                      log_output != 0, as_stream(stream));
        return launch_backward<T, 1>(zt, ot, dt, gt, workspace, rows, cols, sig, log_output != 0,
                                     as_stream(stream));
    })
    return cudaSuccess;
}
