"""This crate, driven through its `sigsoftmax` program: `bench --json` for times, so the crate is
timed by its own loop and by nothing else, and `run` on .npy files for correctness."""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BINARY = REPO / "target" / "release" / "sigsoftmax"

# The crate's name for each op of the comparison, with the activation it runs under.
CRATE_OPS = {
    "softmax": ("softmax", "sigsoftmax"),
    "forward": ("forward", "sigsoftmax"),
    "backward": ("backward", "sigsoftmax"),
    "cross-entropy": ("cross-entropy", "sigsoftmax"),
    "softmax-cross-entropy": ("cross-entropy", "softmax"),
}


class Unavailable(Exception):
    """The binary is missing and cannot be built here, or it rejected the request."""


def find_binary(path, device):
    """Return the path of the `sigsoftmax` binary, building it with cargo when it is missing.

    On a GPU (`device` cuda) the build enables the crate's `cuda` feature. Raises Unavailable
    with the reason when the binary is missing and cargo is not installed or the build fails.
    """
    binary = Path(path) if path else DEFAULT_BINARY
    if binary.exists():
        return binary
    if path:
        raise Unavailable(f"binary not found: {binary}")
    cargo = shutil.which("cargo")
    if cargo is None:
        raise Unavailable(f"{binary} is missing and cargo is not installed to build it")
    command = [cargo, "build", "--release"]
    if device == "cuda":
        command += ["--features", "cuda"]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if completed.returncode != 0 or not binary.exists():
        last = completed.stderr.strip().splitlines()[-1:] or ["no output"]
        raise Unavailable(f"`{' '.join(command)}` failed: {last[0]}")
    return binary


def _check(completed, command):
    if completed.returncode != 0:
        message = completed.stderr.strip().splitlines()[-1:] or ["no output"]
        raise Unavailable(f"`{' '.join(map(str, command))}` failed: {message[0]}")


def bench(binary, ops, activation, dtype, rows, cols, threads, device, timing):
    """Time `ops` once through `sigsoftmax bench --json` and return its JSON objects by op.

    `timing` contains the bench's warmup, iters and min_time. The crate draws its own normal
    logits with the same standard deviation (3), not the comparison's array."""
    command = [
        binary,
        "bench",
        "--json",
        "--op", ",".join(ops),
        "--activation", activation,
        "--dtype", dtype,
        "--shape", f"{rows}x{cols}",
        "--threads", str(threads),
        "--device", device,
        "--warmup", str(timing["warmup"]),
        "--iters", str(timing["iters"]),
        "--min-time", str(timing["min_time"]),
    ]
    completed = subprocess.run(command, capture_output=True, text=True)
    _check(completed, command)
    results = {}
    for line in completed.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            results[record["op"]] = record
    return results


def run_all(binary, ops, inputs, device):
    """Apply each op of `ops` to `inputs` through `sigsoftmax run` and return the results by op
    (the output array, or (mean loss, dz) for the cross-entropy ops). An op whose run fails
    maps to the Unavailable error instead."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="sigsoftmax-compare-") as folder:
        folder = Path(folder)
        logits = folder / "z.npy"
        np.save(logits, inputs.z)
        common = ["--logits", logits, "--dtype", inputs.dtype, "--device", device]

        def run(op, activation, extra, out):
            # `run softmax` rejects --activation: that op always uses softmax.
            flags = [] if op == "softmax" else ["--activation", activation]
            command = [binary, "run", op, *flags, *common, *extra]
            command += ["--out", out]
            completed = subprocess.run(command, capture_output=True, text=True)
            _check(completed, command)

        for op in ops:
            crate_op, activation = CRATE_OPS[op]
            try:
                if op == "backward":
                    # A training step feeds backward the forward output the crate computed.
                    probs = folder / "y.npy"
                    run("forward", activation, [], probs)
                    grad = folder / "dy.npy"
                    np.save(grad, inputs.dy)
                    out = folder / "dz.npy"
                    run("backward", activation, ["--probs", probs, "--grad", grad], out)
                    results[op] = np.load(out)
                elif crate_op == "cross-entropy":
                    targets = folder / "t.npy"
                    np.save(targets, inputs.targets)
                    loss, dz = folder / "loss.npy", folder / "dz.npy"
                    extra = ["--targets", targets, "--reduction", "mean", "--grad-out", dz]
                    run("cross-entropy", activation, extra, loss)
                    results[op] = (float(np.load(loss)), np.load(dz))
                else:
                    out = folder / "y.npy"
                    run(crate_op, activation, [], out)
                    results[op] = np.load(out)
            except Unavailable as error:
                results[op] = error
    return results
