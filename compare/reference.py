"""Inputs shared by every implementation, the float64 reference results, and the error metric.

The reference computes in float64 from the exact stored inputs (for bf16, the logits rounded
to bf16 first), with `g(z) = z + log sigmoid(z) = z - softplus(-z)` and `softplus` through
`np.logaddexp`, so no intermediate overflows or cancels.
"""

from dataclasses import dataclass

import numpy as np

# Standard deviation of the random logits, in the range of a trained language model's output.
LOGIT_STD = 3.0

# The ops compared. `softmax-cross-entropy` is plain softmax cross-entropy, the baseline for
# `cross-entropy` (sigsoftmax cross-entropy).
OPS = ("softmax", "forward", "backward", "cross-entropy", "softmax-cross-entropy")

# Matrices read and written per run, as the crate's benchmark counts them. Forward reads z and
# writes y, backward reads z, y and dy and writes dz, and cross-entropy reads z and writes dz.
MATRICES_MOVED = {
    "softmax": 2,
    "forward": 2,
    "backward": 4,
    "cross-entropy": 2,
    "softmax-cross-entropy": 2,
}

# Per-row bytes of cross-entropy besides the matrices: an int64 target and an f32 loss.
CROSS_ENTROPY_ROW_BYTES = 8 + 4

ELEMENT_BYTES = {"f32": 4, "bf16": 2}


def bytes_moved(op, rows, cols, dtype):
    """Return the bytes `op` reads and writes on a `rows` x `cols` matrix of `dtype`."""
    matrix = rows * cols * ELEMENT_BYTES[dtype]
    total = MATRICES_MOVED[op] * matrix
    if op.endswith("cross-entropy"):
        total += rows * CROSS_ENTROPY_ROW_BYTES
    return total


def round_to_bf16(values):
    """Round float32 values to the nearest bfloat16 (ties to even), returned as float32."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))
    rounded = ((bits + rounding) & np.uint32(0xFFFF0000)).astype(np.uint32)
    return rounded.view(np.float32)


@dataclass
class Inputs:
    """The inputs of one case. Arrays are float32, holding bf16-representable values for bf16."""

    rows: int
    cols: int
    dtype: str
    z: np.ndarray
    dy: np.ndarray
    targets: np.ndarray

    def nbytes(self, op):
        return bytes_moved(op, self.rows, self.cols, self.dtype)


def make_inputs(rows, cols, dtype, seed=0):
    """Draw normal logits (std 3), a normal upstream gradient and uniform targets, seeded by the
    shape so every run and every implementation gets the same values."""
    rng = np.random.default_rng([seed, rows, cols])
    z = (rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(LOGIT_STD))
    dy = rng.standard_normal((rows, cols), dtype=np.float32)
    targets = rng.integers(0, cols, size=rows, dtype=np.int64)
    if dtype == "bf16":
        z = round_to_bf16(z)
        dy = round_to_bf16(dy)
    return Inputs(rows, cols, dtype, z, dy, targets)


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _softmax(scores):
    shifted = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


def _log_softmax(scores):
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def reference(op, inputs):
    """Compute `op` in float64. Returns y for the forward ops, dz for backward, and
    (mean loss, dz of the mean loss) for the cross-entropy ops."""
    z = inputs.z.astype(np.float64)
    rows = np.arange(inputs.rows)
    if op == "softmax":
        return _softmax(z)
    if op == "forward":
        return _softmax(z + _log_sigmoid(z))
    if op == "backward":
        y = _softmax(z + _log_sigmoid(z))
        dy = inputs.dy.astype(np.float64)
        # d g / d z = 1 + sigmoid(-z), with sigmoid(-z) = exp(log sigmoid(-z)).
        slope = 1.0 + np.exp(_log_sigmoid(-z))
        return slope * y * (dy - (dy * y).sum(axis=-1, keepdims=True))
    if op in ("cross-entropy", "softmax-cross-entropy"):
        sig = op == "cross-entropy"
        scores = z + _log_sigmoid(z) if sig else z
        log_y = _log_softmax(scores)
        loss = -log_y[rows, inputs.targets].mean()
        residual = np.exp(log_y)
        residual[rows, inputs.targets] -= 1.0
        slope = 1.0 + np.exp(_log_sigmoid(-z)) if sig else 1.0
        return loss, slope * residual / inputs.rows
    raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")


def relative_error(result, expected):
    """Return the max over rows of max |result - expected| / max |expected| within the row.

    For the cross-entropy ops `result` and `expected` are (loss, dz); the error is that of dz,
    and the loss's relative error is returned beside it."""
    loss_error = None
    if isinstance(expected, tuple):
        loss, expected = expected
        result_loss, result = result
        loss_error = abs(float(result_loss) - loss) / abs(loss)
    result = np.asarray(result, dtype=np.float64).reshape(expected.shape)
    scale = np.abs(expected).max(axis=-1)
    error = np.abs(result - expected).max(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_row = np.where(scale > 0, error / scale, error)
    # max propagates NaN, so an implementation that returns NaN reports NaN.
    return float(per_row.max()), loss_error
