// Fused cross-entropy: per-row loss, its reduction and the gradient with respect to z in one
// pass over each row. Serves `sigsoftmax_cross_entropy` in all three row regimes of common.cuh.
//
// NOTE: not yet run on a GPU; compiled only. scripts/gpu-check.sh runs the tests on one.
//
// With target t and label smoothing eps, the target distribution over the unmasked entries is
// q_i = (1 - eps) [i = t] + eps / cols, and Q = sum_i q_i = (1 - eps) [z_t > -inf] + eps n / cols
// with n the number of unmasked entries. With l_i = log y_i (see forward.cu):
//   loss = -(1 - eps) l_t - (eps / cols) sum_{unmasked} l_i
//   dz_i = u (1 + s(-z_i)) (Q y_i - q_i),   masked entries: dz_i = 0
// where u is the upstream gradient (divided by the counted rows for the mean). The sum of l_i is
// accumulated as P = sum (g(z_i) - g(m)) and corrected by n log S once per row.
//
// Launch order on the stream: count_rows (counts the rows that are not ignored and finds the
// first out-of-range target), the row kernels, then reduce_losses (fixed-order f64 sum).

#include "common.cuh"

namespace sigsoftmax {
namespace {

// Values a thread may cache (one array, as in forward.cu). The row statistics here need more
// registers than the forward's, so f64 and the 8-wide half packs cache less (ptxas spilled
// with the forward's values).
template <typename A, int VEC> constexpr int ce_warp_elems() {
    if (sizeof(A) == 8) return 2;
    if (VEC == 8) return 16;
    if (VEC == 4) return 24;  // 32 spilled 8 bytes at sm_80 with CUDA 13.0's ptxas
    return 32;
}
template <typename A, int VEC> constexpr int ce_block_elems() {
    if (sizeof(A) == 8) return 2;
    if (VEC == 1) return 4;  // 8 spilled 8 bytes at sm_89 with CUDA 11.8's ptxas
    return 16;
}

// The result struct sits at the start of the workspace, padded so the partials after it stay
// 16-byte aligned.
constexpr size_t kHeaderBytes = 64;
static_assert(sizeof(sigsoftmax_cross_entropy_result) <= kHeaderBytes, "header too small");

// Options as the kernels see them.
struct Params {
    bool has_ignore;
    int64_t ignore_index;
    double eps;
    bool mean;
    sigsoftmax_upstream upstream;
    double upstream_scalar;
    const float *upstream_per_row;
    const sigsoftmax_cross_entropy_result *header;  // `counted`, written by count_rows
};

// A row's target and how it classifies the row.
struct Target {
    int64_t index;
    bool ignored;  // loss 0, gradient 0
    bool invalid;  // out of range: loss and gradient NaN, reported through the header
};

__device__ __forceinline__ Target read_target(const int64_t *targets, int64_t row, int64_t cols,
                                              const Params &p) {
    Target t;
    t.index = targets[row];
    t.ignored = p.has_ignore && t.index == p.ignore_index;
    t.invalid = !t.ignored && (t.index < 0 || t.index >= cols);
    return t;
}

template <typename A> __device__ __forceinline__ A upstream_for(int64_t row, const Params &p) {
    A u = A(1);
    if (p.upstream == SIGSOFTMAX_UPSTREAM_SCALAR) u = A(p.upstream_scalar);
    if (p.upstream == SIGSOFTMAX_UPSTREAM_PER_ROW) u = A(p.upstream_per_row[row]);
    // The mean divides by the counted rows. counted is at least 1 here: this row is counted.
    if (p.mean) u /= A(p.header->counted);
    return u;
}

// Row statistics shared by the cached and split kernels once the reductions are done.
template <typename A> struct RowStats {
    A m;       // row max
    A sum;     // S = sum w
    A p;       // sum over unmasked of g(z_i) - g(m) (only with eps > 0)
    A n;       // unmasked entries (only with eps > 0)
    A z_t;     // the target's logit
};

// The row's loss from its statistics. Ignored rows were handled by the caller.
template <typename A>
__device__ __forceinline__ A row_loss(const RowStats<A> &s, const RowConstants<A> &c, bool bad,
                                      bool sig, A eps, int64_t cols) {
    if (bad) return quiet_nan<A>();
    const A log_sum = log_(s.sum);
    A loss = A(0);
    if (eps < A(1)) {
        // A masked target (z_t = -inf) gives l_t = -inf and an infinite loss.
        A l_t = (s.z_t - s.m) - log_sum;
        if (sig) l_t += log_sigmoid_ratio(s.z_t, s.m, c);
        loss -= (A(1) - eps) * l_t;
    }
    if (eps > A(0)) loss -= eps / A(cols) * (s.p - s.n * log_sum);
    return loss;
}

// One gradient entry. `z` is the logit, `col` its column.
template <typename A>
__device__ __forceinline__ A ce_gradient(A z, int64_t col, const RowStats<A> &s,
                                         const RowConstants<A> &c, const Target &t, bool bad,
                                         bool sig, A eps, A q_uniform, A total_q, A inv_sum,
                                         A u) {
    if (t.ignored) return A(0);
    if (bad) return quiet_nan<A>();
    // Masked entry: exactly 0, where Q y - q would be 0 - eps / cols (bad rows returned above).
    if (z == -infinity<A>()) return A(0);
    const A tz = exp_(z - s.m);
    A factor = A(1), y;
    if (sig) {
        const A d = fmax(c.b + c.a * tz, min_normal<A>());
        y = tz * (tz / d) * inv_sum;
        // 1 + s(-z) = 1 + b / d since b / (b + a t) = 1 / (1 + e^z). Once b is subnormal or 0
        // (m above about 87 in f32) b / d loses its digits, so take the sigmoid directly.
        factor += c.b >= min_normal<A>() ? c.b / d : sigmoid_neg(z);
    } else {
        y = tz * inv_sum;
    }
    const A q = col == t.index ? q_uniform + (A(1) - eps) : q_uniform;
    return u * factor * (total_q * y - q);
}

// Q = (1 - eps) [z_t > -inf] + eps n / cols.
template <typename A>
__device__ __forceinline__ A total_q(const RowStats<A> &s, A eps, A q_uniform) {
    const A target_part = s.z_t == -infinity<A>() ? A(0) : A(1) - eps;
    return eps > A(0) ? target_part + q_uniform * s.n : target_part;
}

// The per-element terms of P and n: g(z) - g(m) over unmasked entries.
template <typename A>
__device__ __forceinline__ void add_smoothing_terms(A z, A m, const RowConstants<A> &c, bool sig,
                                                    A &p, A &n) {
    if (z == -infinity<A>()) return;
    A g = z - m;
    if (sig) g += log_sigmoid_ratio(z, m, c);
    p += g;
    n += A(1);
}

// ---------------------------------------------------------------------------------------------

// One block: counts rows that are not ignored and finds the first out-of-range target. Integer
// sums and minima are exact, so the result is deterministic.
__global__ void __launch_bounds__(1024)
    count_rows(const int64_t *targets, int64_t rows, int64_t cols, bool has_ignore,
               int64_t ignore_index, sigsoftmax_cross_entropy_result *header) {
    __shared__ long long counts[32], firsts[32];
    long long counted = 0, first_invalid = LLONG_MAX;
    for (int64_t row = threadIdx.x; row < rows; row += blockDim.x) {
        const int64_t t = targets[row];
        if (has_ignore && t == ignore_index) continue;
        if (t < 0 || t >= cols) {
            first_invalid = first_invalid < row ? first_invalid : row;
        } else {
            ++counted;
        }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        counted += __shfl_xor_sync(0xffffffffu, counted, offset);
        const long long other = __shfl_xor_sync(0xffffffffu, first_invalid, offset);
        first_invalid = other < first_invalid ? other : first_invalid;
    }
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
    if (threadIdx.x % 32 == 0) {
        counts[warp] = counted;
        firsts[warp] = first_invalid;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < warps; ++w) {
            counted += counts[w];
            first_invalid = firsts[w] < first_invalid ? firsts[w] : first_invalid;
        }
        header->counted = counted;
        header->invalid_row = first_invalid == LLONG_MAX ? -1 : first_invalid;
        header->invalid_target = first_invalid == LLONG_MAX ? 0 : targets[first_invalid];
    }
}

// One block: header->loss = sum of the per-row losses in f64 (divided by counted for the mean),
// in an order fixed by the block size.
template <typename A>
__global__ void __launch_bounds__(1024)
    reduce_losses(const A *losses, int64_t rows, bool mean,
                  sigsoftmax_cross_entropy_result *header) {
    __shared__ ReduceScratch<double> scratch;
    double sum[1] = {0.0};
    for (int64_t row = threadIdx.x; row < rows; row += blockDim.x) sum[0] += double(losses[row]);
    block_sum<1>(sum, scratch);
    // The mean of no rows is 0 / 0 = NaN, as in PyTorch.
    if (threadIdx.x == 0) header->loss = mean ? sum[0] / double(header->counted) : sum[0];
}

// ---------------------------------------------------------------------------------------------

// Cached regimes: a row is loaded once into registers, PACKS packs per thread.
template <typename T, int VEC, int PACKS, bool WARP_PER_ROW>
__global__ void __launch_bounds__(WARP_PER_ROW ? kWarpBlockThreads : kMaxBlockThreads)
    ce_cached(const T *z, const int64_t *targets, Acc<T> *losses, T *grad, int64_t rows,
              int64_t cols, bool sig, Params params) {
    using A = Acc<T>;
    __shared__ ReduceScratch<A> scratch;
    const int lane = WARP_PER_ROW ? threadIdx.x % 32 : threadIdx.x;
    const int threads_per_row = WARP_PER_ROW ? 32 : blockDim.x;
    const int64_t rows_per_block = WARP_PER_ROW ? blockDim.x / 32 : 1;
    const int64_t row_packs = cols / VEC;
    const A eps = A(params.eps);
    const A q_uniform = A(params.eps / double(cols));
    const bool smoothing = params.eps > 0.0;

    for (int64_t row = blockIdx.x * rows_per_block + (WARP_PER_ROW ? threadIdx.x / 32 : 0);
         row < rows; row += int64_t(gridDim.x) * rows_per_block) {
        const int64_t offset = row * cols;
        const Target target = read_target(targets, row, cols, params);

        A x[PACKS][VEC];
        A local_max = -infinity<A>();
#pragma unroll
        for (int k = 0; k < PACKS; ++k) {
            const int64_t pack = lane + int64_t(k) * threads_per_row;
            if (pack < row_packs) {
                load_pack<T, VEC>(z + offset, pack, x[k]);
            } else {
#pragma unroll
                for (int v = 0; v < VEC; ++v) x[k][v] = -infinity<A>();
            }
#pragma unroll
            for (int v = 0; v < VEC; ++v) local_max = fmax(local_max, max_key(x[k][v]));
        }
        RowStats<A> s;
        s.m = row_max<WARP_PER_ROW>(local_max, scratch);
        const bool bad = row_is_bad(s.m) || target.invalid;
        const RowConstants<A> c(bad ? A(0) : s.m);

        // sums = {S, P, n, z_t}. z_t is summed too: only the thread holding the target adds
        // it, every other thread adds 0, and a masked target's -inf survives the sum.
        A sums[4] = {A(0), A(0), A(0), A(0)};
        if (!bad) {
#pragma unroll
            for (int k = 0; k < PACKS; ++k)
#pragma unroll
                for (int v = 0; v < VEC; ++v) {
                    const A zv = x[k][v];
                    sums[0] += weight(exp_(zv - s.m), c, sig);
                    if (smoothing) add_smoothing_terms(zv, s.m, c, sig, sums[1], sums[2]);
                    const int64_t col = (lane + int64_t(k) * threads_per_row) * VEC + v;
                    if (col == target.index) sums[3] = zv;
                }
        }
        row_sum<WARP_PER_ROW, 4>(sums, scratch);
        s.sum = sums[0];
        s.p = sums[1];
        s.n = sums[2];
        s.z_t = sums[3];

        if (lane == 0) losses[row] = target.ignored ? A(0) : row_loss(s, c, bad, sig, eps, cols);
        if (grad == nullptr) continue;

        const A inv_sum = A(1) / s.sum;
        const A q_total = total_q(s, eps, q_uniform);
        const A u = target.ignored || bad ? A(0) : upstream_for<A>(row, params);
#pragma unroll
        for (int k = 0; k < PACKS; ++k) {
            const int64_t pack = lane + int64_t(k) * threads_per_row;
            if (pack >= row_packs) continue;
            A out[VEC];
#pragma unroll
            for (int v = 0; v < VEC; ++v)
                out[v] = ce_gradient(x[k][v], pack * VEC + v, s, c, target, bad, sig, eps,
                                     q_uniform, q_total, inv_sum, u);
            store_pack<T, VEC>(grad + offset, pack, out);
        }
    }
}

// Split pass 1: per chunk {m_c, S_c, P_c, n_c} relative to the chunk max, at
// partials[(row * chunks + chunk) * 4]; the chunk holding the target also stores z_t at
// target_logits[row]. Pass 1 only reads z, so an in-place pass 2 cannot race with it.
template <typename T, int VEC>
__global__ void __launch_bounds__(kSplitThreads)
    ce_partials(const T *z, const int64_t *targets, Acc<T> *partials, Acc<T> *target_logits,
                int64_t rows, int64_t cols, int64_t chunk_packs, bool sig, Params params) {
    using A = Acc<T>;
    __shared__ ReduceScratch<A> scratch;
    const int64_t chunks = gridDim.x, chunk = blockIdx.x;
    const int64_t row_packs = cols / VEC;
    const int64_t begin = chunk * chunk_packs;
    const int64_t end = begin + chunk_packs < row_packs ? begin + chunk_packs : row_packs;
    const bool smoothing = params.eps > 0.0;

    for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
        const int64_t offset = row * cols;
        const Target target = read_target(targets, row, cols, params);
        A local_max = -infinity<A>();
        for (int64_t pack = begin + threadIdx.x; pack < end; pack += blockDim.x) {
            A x[VEC];
            load_pack<T, VEC>(z + offset, pack, x);
#pragma unroll
            for (int v = 0; v < VEC; ++v) local_max = fmax(local_max, max_key(x[v]));
        }
        const A m = block_max(local_max, scratch);

        // A chunk with NaN/+inf poisons the row in pass 2 and an all-masked chunk adds nothing:
        // neither needs sums.
        A sums[3] = {A(0), A(0), A(0)};
        if (!isinf(m)) {
            const RowConstants<A> c(m);
            for (int64_t pack = begin + threadIdx.x; pack < end; pack += blockDim.x) {
                A x[VEC];
                load_pack<T, VEC>(z + offset, pack, x);
#pragma unroll
                for (int v = 0; v < VEC; ++v) {
                    sums[0] += weight(exp_(x[v] - m), c, sig);
                    if (smoothing) add_smoothing_terms(x[v], m, c, sig, sums[1], sums[2]);
                }
            }
        }
        block_sum<3>(sums, scratch);
        if (threadIdx.x == 0) {
            A *out = partials + (row * chunks + chunk) * 4;
            out[0] = m;
            out[1] = sums[0];
            out[2] = sums[1];
            out[3] = sums[2];
            const int64_t target_pack = target.index / VEC;
            if (!target.ignored && !target.invalid && target_pack >= begin && target_pack < end)
                target_logits[row] = widen(z[offset + target.index]);
        }
    }
}

// Split pass 2: combine the row's chunks in a fixed order (every block of the row computes the
// same bits), write the loss from chunk 0 and this chunk's gradient.
template <typename T, int VEC>
__global__ void __launch_bounds__(kSplitThreads)
    ce_apply(const T *z, const int64_t *targets, const Acc<T> *partials,
             const Acc<T> *target_logits, Acc<T> *losses, T *grad, int64_t rows, int64_t cols,
             int64_t chunk_packs, bool sig, Params params) {
    using A = Acc<T>;
    __shared__ ReduceScratch<A> scratch;
    const int64_t chunks = gridDim.x, chunk = blockIdx.x;
    const int64_t row_packs = cols / VEC;
    const int64_t begin = chunk * chunk_packs;
    const int64_t end = begin + chunk_packs < row_packs ? begin + chunk_packs : row_packs;
    const A eps = A(params.eps);
    const A q_uniform = A(params.eps / double(cols));

    for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
        const Target target = read_target(targets, row, cols, params);
        const A *row_partials = partials + row * chunks * 4;

        A local_max = -infinity<A>();
        for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x)
            local_max = fmax(local_max, row_partials[c * 4]);
        RowStats<A> s;
        s.m = block_max(local_max, scratch);
        const bool bad = row_is_bad(s.m) || target.invalid;
        const RowConstants<A> c(bad ? A(0) : s.m);

        // S = sum_c S_c e^{g(m_c) - g(m)}, P = sum_c P_c + n_c (g(m_c) - g(m)), n = sum_c n_c.
        // All-masked chunks (m_c = -inf) hold zeros and are skipped: their exponent would be
        // -inf and n_c * -inf = 0 * -inf is NaN.
        A sums[3] = {A(0), A(0), A(0)};
        if (!bad) {
            for (int64_t chunk_index = threadIdx.x; chunk_index < chunks;
                 chunk_index += blockDim.x) {
                const A *part = row_partials + chunk_index * 4;
                if (part[0] == -infinity<A>()) continue;
                const A exponent = rescale_exponent(part[0], s.m, sig);
                sums[0] += part[1] * exp_(exponent);
                sums[1] += part[2] + part[3] * exponent;
                sums[2] += part[3];
            }
        }
        block_sum<3>(sums, scratch);
        s.sum = sums[0];
        s.p = sums[1];
        s.n = sums[2];
        s.z_t = target.ignored || bad ? A(0) : target_logits[row];

        if (chunk == 0 && threadIdx.x == 0)
            losses[row] = target.ignored ? A(0) : row_loss(s, c, bad, sig, eps, cols);
        if (grad == nullptr) continue;

        const A inv_sum = A(1) / s.sum;
        const A q_total = total_q(s, eps, q_uniform);
        const A u = target.ignored || bad ? A(0) : upstream_for<A>(row, params);
        const int64_t offset = row * cols;
        for (int64_t pack = begin + threadIdx.x; pack < end; pack += blockDim.x) {
            A x[VEC];
            load_pack<T, VEC>(z + offset, pack, x);
#pragma unroll
            for (int v = 0; v < VEC; ++v)
                x[v] = ce_gradient(x[v], pack * VEC + v, s, c, target, bad, sig, eps, q_uniform,
                                   q_total, inv_sum, u);
            store_pack<T, VEC>(grad + offset, pack, x);
        }
    }
}

template <typename T, int VEC>
cudaError_t launch_rows(const T *z, const int64_t *targets, Acc<T> *losses, T *grad,
                        unsigned char *workspace, int64_t rows, int64_t cols, bool sig,
                        const Params &params, cudaStream_t stream) {
    using A = Acc<T>;
    constexpr int WARP_ELEMS = ce_warp_elems<A, VEC>();
    constexpr int BLOCK_ELEMS = ce_block_elems<A, VEC>();
    const Plan plan = make_plan(rows, cols, VEC, WARP_ELEMS, BLOCK_ELEMS);
    switch (plan.regime) {
    case Regime::Warp:
        SIGSOFTMAX_DISPATCH_PACKS(plan.packs, if constexpr (PACKS * VEC <= WARP_ELEMS && PACKS <= 8) {
            const int64_t grid = grid_for_rows(rows, plan.threads / 32);
            ce_cached<T, VEC, PACKS, true><<<unsigned(grid), plan.threads, 0, stream>>>(
                z, targets, losses, grad, rows, cols, sig, params);
        } else { return cudaErrorInvalidValue; })
        break;
    case Regime::Block:
        SIGSOFTMAX_DISPATCH_PACKS(plan.packs, if constexpr (PACKS * VEC == BLOCK_ELEMS) {
            const int64_t grid = grid_for_rows(rows, 1);
            ce_cached<T, VEC, PACKS, false><<<unsigned(grid), plan.threads, 0, stream>>>(
                z, targets, losses, grad, rows, cols, sig, params);
        } else { return cudaErrorInvalidValue; })
        break;
    case Regime::Split: {
        A *partials = reinterpret_cast<A *>(workspace + kHeaderBytes);
        A *target_logits = partials + rows * plan.chunks * 4;
        const dim3 grid(unsigned(plan.chunks), unsigned(rows < kMaxGridY ? rows : kMaxGridY));
        ce_partials<T, VEC><<<grid, kSplitThreads, 0, stream>>>(
            z, targets, partials, target_logits, rows, cols, plan.chunk_packs, sig, params);
        const cudaError_t status = cudaGetLastError();
        if (status != cudaSuccess) return status;
        ce_apply<T, VEC><<<grid, kSplitThreads, 0, stream>>>(z, targets, partials, target_logits,
                                                             losses, grad, rows, cols,
                                                             plan.chunk_packs, sig, params);
        break;
    }
    }
    return cudaGetLastError();
}

template <typename T>
cudaError_t launch_cross_entropy(const T *z, const int64_t *targets,
                                 const sigsoftmax_cross_entropy_options &options, Acc<T> *losses,
                                 T *grad, void *workspace, int64_t rows, int64_t cols, bool sig,
                                 cudaStream_t stream) {
    using A = Acc<T>;
    auto *header = static_cast<sigsoftmax_cross_entropy_result *>(workspace);
    const bool has_ignore = options.has_ignore_index != 0;
    count_rows<<<1, 1024, 0, stream>>>(targets, rows, cols, has_ignore, options.ignore_index,
                                       header);
    cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) return status;

    Params params;
    params.has_ignore = has_ignore;
    params.ignore_index = options.ignore_index;
    params.eps = options.label_smoothing;
    params.mean = options.reduction == SIGSOFTMAX_REDUCTION_MEAN;
    params.upstream = options.upstream;
    params.upstream_scalar = options.upstream_scalar;
    params.upstream_per_row = options.upstream_per_row;
    params.header = header;
    unsigned char *bytes = static_cast<unsigned char *>(workspace);
    if (vector_ok(cols, sizeof(T), {z, grad, workspace}))
        status = launch_rows<T, 16 / sizeof(T)>(z, targets, losses, grad, bytes, rows, cols, sig,
                                                params, stream);
    else
        status = launch_rows<T, 1>(z, targets, losses, grad, bytes, rows, cols, sig, params,
                                   stream);
    if (status != cudaSuccess) return status;

    reduce_losses<A><<<1, 1024, 0, stream>>>(losses, rows, params.mean, header);
    return cudaGetLastError();
}

}  // namespace
}  // namespace sigsoftmax

using namespace sigsoftmax;

extern "C" size_t sigsoftmax_cross_entropy_workspace_size(sigsoftmax_dtype dtype, int64_t rows,
                                                          int64_t cols) {
    if (rows <= 0 || cols <= 0) return kHeaderBytes;
    const bool f64 = dtype == SIGSOFTMAX_F64;
    const int elems = f64 ? ce_block_elems<double, 1>() : ce_block_elems<float, 1>();
    if (!uses_split(rows, cols, elems)) return kHeaderBytes;
    const size_t values = size_t(rows) * (size_t(split_chunks(rows, cols)) * 4 + 1);
    return kHeaderBytes + values * (f64 ? 8 : 4);
}

extern "C" cudaError_t sigsoftmax_cross_entropy(sigsoftmax_dtype dtype,
                                                sigsoftmax_activation activation, const void *z,
                                                const int64_t *targets,
                                                const sigsoftmax_cross_entropy_options *options,
                                                void *losses, void *grad, void *workspace,
                                                int64_t rows, int64_t cols, void *stream) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    if (options == nullptr || workspace == nullptr) return cudaErrorInvalidValue;
    if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0) return cudaErrorInvalidValue;
    if (options->upstream == SIGSOFTMAX_UPSTREAM_PER_ROW &&
        (options->upstream_per_row == nullptr || options->reduction != SIGSOFTMAX_REDUCTION_NONE))
        return cudaErrorInvalidValue;
    const bool sig = activation == SIGSOFTMAX_SIGSOFTMAX;
    SIGSOFTMAX_DISPATCH_DTYPE(dtype, {
        return launch_cross_entropy<T>(static_cast<const T *>(z), targets, *options,
                                       static_cast<Acc<T> *>(losses), static_cast<T *>(grad),
                                       workspace, rows, cols, sig, as_stream(stream));
    })
    return cudaSuccess;
}
