// Device code shared by every sigsoftmax kernel: storage types and their compute types, packed
// loads and stores, the numerically stable sigmoid pieces, warp and block reductions, and the
// choice of row regime that each launcher makes on the host.
//
// NOTE: not yet run on a GPU. This code has only been compiled (nvcc 13.0 and 11.8); the tests
// in scripts/gpu-check.sh are what will exercise it.
//
// Terms used in every kernel file:
//   z      logits of one row, m = max_j z_j over the row (raw z: g(z) = z + log s(z) is
//          increasing, so max g = g(m) and the max pass needs no exp).
//   t_i    exp(z_i - m), in [0, 1], exactly 1 at the max, exactly 0 at a masked -inf.
//   a, b   s(m) and s(-m), each computed directly (never b = 1 - a, which is 0 in f32 once m
//          passes about 17).
//   w_i    exp(g(z_i) - g(m)) = t_i^2 / (b + a t_i); in [0, 1], so sum w never overflows.
//   pack   VEC consecutive elements loaded with one 16-byte access (VEC = 1 on the scalar path).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "sigsoftmax.h"

namespace sigsoftmax {

// ---------------------------------------------------------------------------------------------
// Storage and compute types.

// The type a storage type is computed and accumulated in: f64 for f64, f32 for the rest.
template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using Acc = typename AccOf<T>::type;

// Widening a half or bfloat16 value to f32 is exact.
__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ double widen(double x) { return x; }
__device__ __forceinline__ float widen(__half x) { return __half2float(x); }
__device__ __forceinline__ float widen(__nv_bfloat16 x) { return __bfloat162float(x); }

// The single rounding on store (round to nearest even).
template <typename T> __device__ __forceinline__ T narrow(Acc<T> x);
template <> __device__ __forceinline__ float narrow<float>(float x) { return x; }
template <> __device__ __forceinline__ double narrow<double>(double x) { return x; }
template <> __device__ __forceinline__ __half narrow<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// Smallest positive normal value of the compute type: the floor of b + a t_i, so that
// w_i = t_i * (t_i / d_i) is 0 * (0 / floor) = 0 instead of 0 / 0 when t_i and b both underflow.
template <typename A> __device__ __forceinline__ A min_normal();
template <> __device__ __forceinline__ float min_normal<float>() { return FLT_MIN; }
template <> __device__ __forceinline__ double min_normal<double>() { return DBL_MIN; }

template <typename A> __device__ __forceinline__ A infinity() { return A(INFINITY); }
template <typename A> __device__ __forceinline__ A quiet_nan() { return A(NAN); }

// Accurate (not --use_fast_math) libm calls for both compute types.
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }
__device__ __forceinline__ float log1p_(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_(double x) { return log1p(x); }

// ---------------------------------------------------------------------------------------------
// Stable sigmoid pieces.

// s(-x) = 1 / (1 + e^x), written with e = exp(-|x|) so that nothing overflows:
// x >= 0: e / (1 + e); x < 0: 1 / (1 + e). -inf gives 1, +inf gives 0.
template <typename A> __device__ __forceinline__ A sigmoid_neg(A x) {
    const A e = exp_(-fabs(x));
    return (x < A(0) ? A(1) : e) / (A(1) + e);
}

// Row constants a = s(m), b = s(-m) and log1p(exp(-|m|)), computed once per row in f64 and
// rounded, so the f32 path starts from correctly rounded constants. Each of a and b is computed
// directly.
template <typename A> struct RowConstants {
    A a, b;
    A log1p_m;  // log1p(exp(-|m|)), the second part of log s(m) = min(m, 0) - log1p_m

    __device__ __forceinline__ explicit RowConstants(A m) {
        const double md = double(m);
        const double e = exp(-fabs(md));  // exp(-|m|) in (0, 1]: no overflow.
        const double big = 1.0 / (1.0 + e);
        const double small = e / (1.0 + e);
        a = A(md >= 0.0 ? big : small);
        b = A(md >= 0.0 ? small : big);
        log1p_m = A(log1p(e));
    }
};

// log s(z) - log s(m) without cancellation. With log s(x) = min(x, 0) - log1p(exp(-|x|)), the
// two min terms are paired (their difference is exact when z and m are close) and the log1p
// terms, which are below ln 2, are kept apart. Subtracting the two log sigmoids instead loses
// three digits in f32 at z = m = -1e4. z = -inf gives -inf.
template <typename A>
__device__ __forceinline__ A log_sigmoid_ratio(A z, A m, const RowConstants<A> &c) {
    return (fmin(z, A(0)) - fmin(m, A(0))) - log1p_(exp_(-fabs(z))) + c.log1p_m;
}

// w_i = t_i^2 / (b + a t_i), written t * (t / d) so that w stays accurate when b << a t (there
// t / d is close to 1 and rounds well, where t^2 / d would lose the small t^2 to underflow
// first). d is floored at the smallest normal: see min_normal(). Softmax: w = t.
template <typename A> __device__ __forceinline__ A weight(A t, const RowConstants<A> &c, bool sig) {
    if (!sig) return t;
    const A d = fmax(c.b + c.a * t, min_normal<A>());
    return t * (t / d);
}

// The gradient factor 1 + s(-z_i) of sigsoftmax.
template <typename A> __device__ __forceinline__ A grad_factor(A z) {
    return A(1) + sigmoid_neg(z);
}

// NaN or +inf anywhere makes the row NaN. Both are mapped to +inf before the max, so one max
// reduction finds them: the row is bad exactly when the max is +inf (NaN or +inf present) or
// -inf (no finite entry). fmax alone would drop NaN.
template <typename A> __device__ __forceinline__ A max_key(A z) {
    return isnan(z) ? infinity<A>() : z;
}
template <typename A> __device__ __forceinline__ bool row_is_bad(A m) { return isinf(m); }

// g(m_c) - g(m) for combining partial sums computed against a chunk max m_c, in f64:
// (m_c - m) + log s(m_c) - log s(m). Softmax: m_c - m.
template <typename A> __device__ __forceinline__ A rescale_exponent(A m_chunk, A m, bool sig) {
    double d = double(m_chunk) - double(m);
    if (sig) {
        const double lc = fmin(double(m_chunk), 0.0) - log1p(exp(-fabs(double(m_chunk))));
        const double lm = fmin(double(m), 0.0) - log1p(exp(-fabs(double(m))));
        d += lc - lm;
    }
    return A(d);
}

// ---------------------------------------------------------------------------------------------
// Packed loads and stores.

template <typename T, int VEC> struct alignas(sizeof(T) * VEC) Pack {
    T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_pack(const T *row, int64_t pack, Acc<T> (&out)[VEC]) {
    const Pack<T, VEC> p = reinterpret_cast<const Pack<T, VEC> *>(row)[pack];
#pragma unroll
    for (int v = 0; v < VEC; ++v) out[v] = widen(p.v[v]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_pack(T *row, int64_t pack, const Acc<T> (&in)[VEC]) {
    Pack<T, VEC> p;
#pragma unroll
    for (int v = 0; v < VEC; ++v) p.v[v] = narrow<T>(in[v]);
    reinterpret_cast<Pack<T, VEC> *>(row)[pack] = p;
}

// ---------------------------------------------------------------------------------------------
// Reductions. Every lane of a warp (or thread of a block) receives the same bits: the xor
// butterfly adds the same two operands on both lanes of a pair (addition is commutative), and
// the block step sums the per-warp values in warp order in every thread. The order is fixed by
// the launch configuration, so results are bit-identical from run to run.

template <typename A> __device__ __forceinline__ A warp_max(A v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
        v = fmax(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Scratch for one block reduction of up to kMaxReduce values per thread.
constexpr int kMaxReduce = 4;
template <typename A> struct ReduceScratch {
    A values[kMaxReduce][32];
};

// Block-wide max; blockDim.x is a multiple of 32. Ends with a barrier so `scratch` can be reused.
template <typename A> __device__ __forceinline__ A block_max(A v, ReduceScratch<A> &scratch) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    v = warp_max(v);
    if (lane == 0) scratch.values[0][warp] = v;
    __syncthreads();
    A result = scratch.values[0][0];
    for (int w = 1; w < warps; ++w) result = fmax(result, scratch.values[0][w]);
    __syncthreads();
    return result;
}

// Block-wide sums of K values at once (one barrier pair for all of them).
template <int K, typename A>
__device__ __forceinline__ void block_sum(A (&v)[K], ReduceScratch<A> &scratch) {
    static_assert(K <= kMaxReduce, "raise kMaxReduce");
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
#pragma unroll
    for (int k = 0; k < K; ++k) {
        v[k] = warp_sum(v[k]);
        if (lane == 0) scratch.values[k][warp] = v[k];
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < K; ++k) {
        A sum = scratch.values[k][0];
        for (int w = 1; w < warps; ++w) sum += scratch.values[k][w];
        v[k] = sum;
    }
    __syncthreads();
}

// Row reductions for the cached kernels: a warp per row, or the whole block per row.
template <bool WARP_PER_ROW, typename A>
__device__ __forceinline__ A row_max(A v, ReduceScratch<A> &scratch) {
    if constexpr (WARP_PER_ROW) {
        return warp_max(v);
    } else {
        return block_max(v, scratch);
    }
}

template <bool WARP_PER_ROW, int K, typename A>
__device__ __forceinline__ void row_sum(A (&v)[K], ReduceScratch<A> &scratch) {
    if constexpr (WARP_PER_ROW) {
#pragma unroll
        for (int k = 0; k < K; ++k) v[k] = warp_sum(v[k]);
    } else {
        block_sum<K>(v, scratch);
    }
}

// ---------------------------------------------------------------------------------------------
// Row regimes, chosen on the host from the shape alone (and the pointer alignment for VEC).
//
// Cached: each row is read from device memory once and held in registers, so a row costs one
// read and one write. How many values a thread may cache is bounded by registers, and ptxas
// confirms the bounds below without spills at sm_80 to sm_90:
//   - warp per row (128-thread blocks, 4 rows each, up to 255 registers per thread): up to 32
//     cached f32 values per lane for one cached array (1024 columns with 16-byte loads, 256 on
//     the scalar path), fewer for f64 and for two arrays; no barriers at all;
//   - block per row (up to 1024 threads, so at most 64 registers per thread): 16 f32 values per
//     thread for one array with 16-byte loads (16384 columns), fewer on the scalar path, for
//     f64 and for two arrays. Each kernel file states its values.
// Split: a row is cut into chunks, one block each. Pass 1 writes per-chunk statistics into the
// caller's workspace, pass 2 combines them in chunk order (deterministic) and writes the chunk.
// z is read twice (the second read often from L2). It serves rows longer than the cached limit
// and few long rows, where one block per row would leave most SMs idle.
// TODO: a Hopper cluster path that keeps a 128k-256k row in distributed shared memory would read
// it once; it needs CUDA 12, sm_90 and cudaLaunchKernelEx, and a GPU to tune it on.

// Rows below this with at least kSplitMinCols columns take the split path: an H100 or H200 has
// 132 SMs, so fewer than about 100 block-per-row rows leave SMs idle. An estimate, not measured.
constexpr int64_t kFewRows = 96;
constexpr int64_t kSplitMinCols = 16384;
// Split chunk sizes, in elements: at most 16384 (64 per thread of a 256-thread block keep
// enough loads in flight), at least 2048, and enough chunks for about 512 blocks (4 per SM).
constexpr int64_t kMaxChunk = 16384;
constexpr int64_t kMinChunk = 2048;
constexpr int64_t kTargetBlocks = 512;
constexpr int kSplitThreads = 256;
constexpr int kWarpBlockThreads = 128;
constexpr int kMaxBlockThreads = 1024;
// Grid-stride loops cover any number of rows; the grid itself stays below these.
constexpr int64_t kMaxBlocks = 1 << 20;
constexpr int64_t kMaxGridY = 65535;

enum class Regime { Warp, Block, Split };

struct Plan {
    Regime regime;
    int vec;             // elements per pack: 16 / sizeof(T), or 1 on the scalar path
    int packs;           // packs per thread (cached regimes)
    int threads;         // threads per block
    int64_t chunks;      // chunks per row (split)
    int64_t chunk_packs; // packs per chunk (split)
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int64_t pow2_at_least(int64_t x) {
    int64_t p = 1;
    while (p < x) p <<= 1;
    return p;
}

// Whether a shape takes the split path; independent of alignment, so that the workspace query
// (which sees no pointers) agrees with the launcher.
inline bool uses_split(int64_t rows, int64_t cols, int block_elems) {
    if (cols > 1024 * int64_t(block_elems)) return true;
    return rows < kFewRows && cols >= kSplitMinCols;
}

inline int64_t split_chunks(int64_t rows, int64_t cols) {
    const int64_t for_size = ceil_div(cols, kMaxChunk);
    const int64_t for_occupancy = ceil_div(kTargetBlocks, rows);
    const int64_t most = ceil_div(cols, kMinChunk);
    int64_t chunks = for_occupancy < most ? for_occupancy : most;
    if (chunks < for_size) chunks = for_size;
    return chunks < 1 ? 1 : chunks;
}

// `warp_elems` and `block_elems` are the values a thread may cache in each cached regime.
inline Plan make_plan(int64_t rows, int64_t cols, int vec, int warp_elems, int block_elems) {
    Plan plan{};
    plan.vec = vec;
    const int64_t row_packs = cols / vec;
    const int warp_packs = warp_elems / vec < 8 ? warp_elems / vec : 8;
    const int block_packs = block_elems / vec;
    if (uses_split(rows, cols, block_elems)) {
        plan.regime = Regime::Split;
        plan.threads = kSplitThreads;
        plan.chunks = split_chunks(rows, cols);
        plan.chunk_packs = ceil_div(row_packs, plan.chunks);
    } else if (row_packs <= 32 * int64_t(warp_packs)) {
        plan.regime = Regime::Warp;
        plan.threads = kWarpBlockThreads;
        plan.packs = int(pow2_at_least(ceil_div(row_packs, 32)));
    } else {
        plan.regime = Regime::Block;
        plan.packs = block_packs;
        int64_t threads = pow2_at_least(ceil_div(row_packs, block_packs));
        plan.threads = int(threads < 64 ? 64 : threads);
    }
    return plan;
}

// 16-byte packs need every pointer 16-byte aligned and a row length of whole packs.
inline bool vector_ok(int64_t cols, size_t elem_size, std::initializer_list<const void *> ptrs) {
    if ((cols * int64_t(elem_size)) % 16 != 0) return false;
    for (const void *p : ptrs)
        if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
    return true;
}

inline int64_t grid_for_rows(int64_t rows, int64_t rows_per_block) {
    const int64_t blocks = ceil_div(rows, rows_per_block);
    return blocks < kMaxBlocks ? blocks : kMaxBlocks;
}

inline cudaStream_t as_stream(void *stream) { return static_cast<cudaStream_t>(stream); }

}  // namespace sigsoftmax

// Calls BODY with `T` bound to the storage type of `dtype`; unknown values return
// cudaErrorInvalidValue.
#define SIGSOFTMAX_DISPATCH_DTYPE(dtype, ...)                                  \
    switch (dtype) {                                                           \
    case SIGSOFTMAX_F32: { using T = float; __VA_ARGS__ } break;               \
    case SIGSOFTMAX_F64: { using T = double; __VA_ARGS__ } break;              \
    case SIGSOFTMAX_F16: { using T = __half; __VA_ARGS__ } break;              \
    case SIGSOFTMAX_BF16: { using T = __nv_bfloat16; __VA_ARGS__ } break;      \
    default: return cudaErrorInvalidValue;                                     \
    }

// Calls BODY with the compile-time `PACKS` equal to `packs` (a power of two up to 32).
#define SIGSOFTMAX_DISPATCH_PACKS(packs, ...)                                  \
    switch (packs) {                                                           \
    case 1: { constexpr int PACKS = 1; __VA_ARGS__ } break;                    \
    case 2: { constexpr int PACKS = 2; __VA_ARGS__ } break;                    \
    case 4: { constexpr int PACKS = 4; __VA_ARGS__ } break;                    \
    case 8: { constexpr int PACKS = 8; __VA_ARGS__ } break;                    \
    case 16: { constexpr int PACKS = 16; __VA_ARGS__ } break;                  \
    case 32: { constexpr int PACKS = 32; __VA_ARGS__ } break;                  \
    default: return cudaErrorInvalidValue;                                     \
    }
