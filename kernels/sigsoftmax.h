/*
 * C interface of the sigsoftmax CUDA kernels.
 *
 * Every launcher takes device pointers as `void*`, a `cudaStream_t` as `void*` (NULL is the
 * legacy default stream), 64-bit sizes, and returns the status of its last launch
 * (`cudaGetLastError()`). Launchers never allocate and never synchronize, so they can be captured
 * in CUDA graphs. An empty matrix (rows or cols 0) returns `cudaSuccess` without launching.
 *
 * Matrices are row-major `rows x cols`. `dtype` is one of `sigsoftmax_dtype`. f16 and bf16 are
 * widened to f32, computed in f32 and rounded once on store; f32 computes in f32 and f64 in f64.
 * Where a launcher takes a `workspace`, the caller passes at least the bytes that the matching
 * `*_workspace_size` query returns for the same dtype and shape (NULL when it returns 0), aligned
 * to 16 bytes. The workspace may be reused once the launch has finished on the stream.
 *
 * 16-byte vector loads are used when every pointer is 16-byte aligned and a row is a multiple of
 * 16 bytes; any other pointer aligned to its element size takes the scalar path.
 */
#ifndef SIGSOFTMAX_H
#define SIGSOFTMAX_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Storage type of the matrices. The values match `sigsoftmax::DType`'s order. */
typedef enum sigsoftmax_dtype {
    SIGSOFTMAX_F32 = 0,
    SIGSOFTMAX_F64 = 1,
    SIGSOFTMAX_F16 = 2,
    SIGSOFTMAX_BF16 = 3
} sigsoftmax_dtype;

/* Normalization: sigsoftmax, or plain softmax (the same kernels with the sigmoid factor off). */
typedef enum sigsoftmax_activation {
    SIGSOFTMAX_SIGSOFTMAX = 0,
    SIGSOFTMAX_SOFTMAX = 1
} sigsoftmax_activation;

typedef enum sigsoftmax_reduction {
    SIGSOFTMAX_REDUCTION_NONE = 0,
    SIGSOFTMAX_REDUCTION_SUM = 1,
    SIGSOFTMAX_REDUCTION_MEAN = 2
} sigsoftmax_reduction;

/* Where the upstream gradient of the cross-entropy comes from. */
typedef enum sigsoftmax_upstream {
    SIGSOFTMAX_UPSTREAM_ONE = 0,
    SIGSOFTMAX_UPSTREAM_SCALAR = 1,  /* `upstream_scalar` for every row */
    SIGSOFTMAX_UPSTREAM_PER_ROW = 2  /* `upstream_per_row[row]`, only with REDUCTION_NONE */
} sigsoftmax_upstream;

typedef struct sigsoftmax_cross_entropy_options {
    int has_ignore_index;          /* nonzero: rows whose target equals ignore_index are skipped */
    int64_t ignore_index;
    double label_smoothing;        /* eps in [0, 1] */
    sigsoftmax_reduction reduction;
    sigsoftmax_upstream upstream;
    double upstream_scalar;
    const float *upstream_per_row; /* device pointer, `rows` values, or NULL */
} sigsoftmax_cross_entropy_options;

/*
 * Written by `sigsoftmax_cross_entropy` at the start of its workspace, so a caller can read the
 * reduced loss without another kernel (or keep it on the device).
 */
typedef struct sigsoftmax_cross_entropy_result {
    double loss;             /* sum of the per-row losses (NONE, SUM) or sum / counted (MEAN) */
    int64_t counted;         /* rows whose target is not the ignore index */
    int64_t invalid_row;     /* first row whose target is out of range, or -1 */
    int64_t invalid_target;  /* that row's target, or 0 */
} sigsoftmax_cross_entropy_result;

/* The message of a CUDA status (`cudaGetErrorName: cudaGetErrorString`), static storage. */
const char *sigsoftmax_error_string(cudaError_t status);

/* Bytes of workspace `sigsoftmax_forward` needs for this shape (0: pass NULL). */
size_t sigsoftmax_forward_workspace_size(sigsoftmax_dtype dtype, int64_t rows, int64_t cols);

/*
 * y = sigsoftmax(z) row by row, or l = log sigsoftmax(z) when `log_output` is nonzero.
 * `y` may equal `z` (in place). Entries of z equal to -inf are masked: probability 0
 * (log output -inf). A row with NaN or +inf, or with no finite entry, becomes NaN.
 */
cudaError_t sigsoftmax_forward(sigsoftmax_dtype dtype, sigsoftmax_activation activation,
                               int log_output, const void *z, void *y, void *workspace,
                               int64_t rows, int64_t cols, void *stream);

/* Bytes of workspace `sigsoftmax_backward` needs for this shape (0: pass NULL). */
size_t sigsoftmax_backward_workspace_size(sigsoftmax_dtype dtype, int64_t rows, int64_t cols);

/*
 * Gradient with respect to z.
 * log_output == 0: `out` is y = forward(z), `dout` is dy:
 *     dz_i = (1 + s(-z_i)) * y_i * (dy_i - sum_j dy_j y_j).
 * log_output != 0: `out` is l = log forward(z), `dout` is dl:
 *     dz_i = (1 + s(-z_i)) * (dl_i - exp(l_i) * sum_j dl_j).
 * Softmax drops the factor (1 + s(-z_i)). Where z_i = -inf, dz_i = 0 exactly.
 * `dz` may equal any input.
 */
cudaError_t sigsoftmax_backward(sigsoftmax_dtype dtype, sigsoftmax_activation activation,
                                int log_output, const void *z, const void *out,
                                const void *dout, void *dz, void *workspace, int64_t rows,
                                int64_t cols, void *stream);

/* Bytes of workspace `sigsoftmax_cross_entropy` needs (always at least the result struct). */
size_t sigsoftmax_cross_entropy_workspace_size(sigsoftmax_dtype dtype, int64_t rows,
                                               int64_t cols);

/*
 * Fused cross-entropy with int64 targets. Writes one loss per row into `losses` (f32, or f64 for
 * f64 storage; 0 for ignored rows) and the reduced loss into the `sigsoftmax_cross_entropy_result`
 * at the start of `workspace`. When `grad` is not NULL it receives
 *     dz_i = u * (1 + s(-z_i)) * (Q y_i - q_i),
 * where q = (1 - eps) onehot(t) + eps / cols restricted to unmasked entries, Q = sum of q, and u
 * the upstream gradient (divided by `counted` for the mean). `grad` may equal `z` (in place).
 * Ignored rows get loss 0 and gradient 0. A row whose target is out of range gets NaN loss and
 * gradient and is reported in the result's `invalid_row`. A target whose logit is -inf has an
 * infinite loss.
 */
cudaError_t sigsoftmax_cross_entropy(sigsoftmax_dtype dtype, sigsoftmax_activation activation,
                                     const void *z, const int64_t *targets,
                                     const sigsoftmax_cross_entropy_options *options,
                                     void *losses, void *grad, void *workspace, int64_t rows,
                                     int64_t cols, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* SIGSOFTMAX_H */
