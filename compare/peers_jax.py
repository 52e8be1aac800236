"""JAX peers under `jax.jit`: softmax, the composed sigsoftmax, its VJP and the cross-entropy
value_and_grad.

JAX must be configured before its first import: `configure` sets the platform and, for one
thread, turns off XLA's multi-threaded Eigen pool. XLA:CPU has no flag for another thread
count, so with more threads it uses its default pool (one thread per core).
"""

import os

import numpy as np

from peer import Peer, PeerUnavailable, Prepared

jax = None
jnp = None


def configure(device, threads):
    """Import JAX for `device` ("cpu" or "cuda") and `threads`; raise PeerUnavailable if it is
    not installed or has no such device."""
    global jax, jnp
    if threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    os.environ.setdefault("JAX_PLATFORMS", device)
    try:
        import jax as jax_module
        import jax.numpy as jnp_module
    except ImportError as error:
        raise PeerUnavailable(f"jax is not installed: {error}") from error
    try:
        jax_module.devices(device)
    except Exception as error:  # noqa: BLE001: JAX raises RuntimeError or AssertionError here.
        reason = str(error) or type(error).__name__
        raise PeerUnavailable(f"jax has no {device} device: {reason}") from error
    jax, jnp = jax_module, jnp_module


def composed_sigsoftmax(z):
    return jax.nn.softmax(z + jax.nn.log_sigmoid(z), axis=-1)


def mean_nll(log_probs, targets):
    picked = jnp.take_along_axis(log_probs, targets[:, None], axis=-1)
    return -jnp.mean(picked)


def composed_cross_entropy(z, targets):
    return mean_nll(jax.nn.log_softmax(z + jax.nn.log_sigmoid(z), axis=-1), targets)


def plain_cross_entropy(z, targets):
    return mean_nll(jax.nn.log_softmax(z, axis=-1), targets)


class JaxPeers:
    """Builds the JAX peers; `configure` must have succeeded first."""

    label = "jax.jit"

    def __init__(self, device):
        self.device = jax.devices(device)[0]
        self.forward = {
            "softmax": jax.jit(lambda z: jax.nn.softmax(z, axis=-1)),
            "forward": jax.jit(composed_sigsoftmax),
        }
        self.backward = jax.jit(lambda vjp, dy: vjp(dy)[0])
        self.cross_entropy = {
            "cross-entropy": jax.jit(jax.value_and_grad(composed_cross_entropy)),
            "softmax-cross-entropy": jax.jit(jax.value_and_grad(plain_cross_entropy)),
        }

    def versions(self):
        import jaxlib

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__}

    def array(self, values, dtype):
        jax_dtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
        return jax.device_put(jnp.asarray(values, dtype=jax_dtype), self.device)

    def peers(self):
        peers = [Peer(self.label, op, self.forward_preparer(op)) for op in self.forward]
        peers.append(Peer(self.label, "backward", self.prepare_backward))
        peers += [Peer(self.label, op, self.cross_entropy_preparer(op)) for op in self.cross_entropy]
        return peers

    def forward_preparer(self, op):
        function = self.forward[op]

        def prepare(inputs):
            z = self.array(inputs.z, inputs.dtype)
            output = {}

            def run():
                output["y"] = function(z).block_until_ready()

            return Prepared(run, lambda: to_numpy(output["y"]))

        return prepare

    def prepare_backward(self, inputs):
        """Times the jitted VJP function alone: its residuals come from one forward here."""
        z = self.array(inputs.z, inputs.dtype)
        dy = self.array(inputs.dy, inputs.dtype)
        _, vjp = jax.vjp(composed_sigsoftmax, z)
        output = {}

        def run():
            output["dz"] = self.backward(vjp, dy).block_until_ready()

        return Prepared(run, lambda: to_numpy(output["dz"]))

    def cross_entropy_preparer(self, op):
        function = self.cross_entropy[op]

        def prepare(inputs):
            z = self.array(inputs.z, inputs.dtype)
            targets = jax.device_put(jnp.asarray(inputs.targets, dtype=jnp.int32), self.device)
            output = {}

            def run():
                output["result"] = jax.block_until_ready(function(z, targets))

            def result():
                loss, dz = output["result"]
                return float(loss), to_numpy(dz)

            return Prepared(run, result)

        return prepare


def to_numpy(array):
    return np.asarray(array.astype(jnp.float32), dtype=np.float64)
