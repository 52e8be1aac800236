"""PyTorch peers: eager and `torch.compile`, written as a user would write sigsoftmax with
framework ops, `softmax(z + logsigmoid(z))`, plus plain softmax and a copy pass (the limit)."""

import numpy as np

from peer import Peer, PeerUnavailable, Prepared

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


def composed_sigsoftmax(z):
    return torch.softmax(z + F.logsigmoid(z), dim=-1)


def plain_softmax(z):
    return torch.softmax(z, dim=-1)


def composed_cross_entropy(z, targets):
    return F.cross_entropy(z + F.logsigmoid(z), targets)


def plain_cross_entropy(z, targets):
    return F.cross_entropy(z, targets)


class TorchPeers:
    """Builds the PyTorch peers for one device and thread count."""

    def __init__(self, device, threads, compile_dynamic):
        if torch is None:
            raise PeerUnavailable("torch is not installed")
        if device == "cuda" and not torch.cuda.is_available():
            raise PeerUnavailable("torch finds no usable CUDA device")
        self.device = device
        torch.set_num_threads(threads)
        # One compiled function per op serves every shape and dtype, recompiled for each
        # (static shapes unless compile_dynamic), so the limit on recompiles must cover them.
        torch._dynamo.config.recompile_limit = 256
        torch._dynamo.config.cache_size_limit = 256
        dynamic = None if compile_dynamic else False
        self.compiled = {
            function.__name__: torch.compile(function, dynamic=dynamic)
            for function in (
                composed_sigsoftmax,
                plain_softmax,
                composed_cross_entropy,
                plain_cross_entropy,
            )
        }

    def versions(self):
        return {"torch": torch.__version__}

    def synchronize(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def tensor(self, array, dtype, requires_grad=False):
        torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        tensor = torch.from_numpy(array).to(device=self.device, dtype=torch_dtype)
        return tensor.requires_grad_(requires_grad)

    def peers(self):
        """Return the Peer list: eager and compiled versions of every op, and the copy."""
        peers = [Peer("copy", "copy", self.prepare_copy)]
        for label, compiled in (("torch", False), ("torch.compile", True)):
            for op in ("softmax", "forward"):
                peers.append(Peer(label, op, self.forward_preparer(op, compiled)))
            peers.append(Peer(label, "backward", self.backward_preparer(compiled)))
            for op in ("cross-entropy", "softmax-cross-entropy"):
                peers.append(Peer(label, op, self.cross_entropy_preparer(op, compiled)))
        return peers

    def function(self, function, compiled):
        return self.compiled[function.__name__] if compiled else function

    def prepare_copy(self, inputs):
        z = self.tensor(inputs.z, inputs.dtype)
        out = torch.empty_like(z)

        def run():
            out.copy_(z)
            self.synchronize()

        return Prepared(run, lambda: to_numpy(out))

    def forward_preparer(self, op, compiled):
        base = plain_softmax if op == "softmax" else composed_sigsoftmax
        function = self.function(base, compiled)

        def prepare(inputs):
            z = self.tensor(inputs.z, inputs.dtype)
            output = {}

            def run():
                with torch.no_grad():
                    output["y"] = function(z)
                self.synchronize()

            return Prepared(run, lambda: to_numpy(output["y"]))

        return prepare

    def backward_preparer(self, compiled):
        """Prepare the backward of the composed sigsoftmax through autograd, given dy. The
        forward runs once here, and each run repeats only the backward (retain_graph)."""
        function = self.function(composed_sigsoftmax, compiled)

        def prepare(inputs):
            z = self.tensor(inputs.z, inputs.dtype, requires_grad=True)
            dy = self.tensor(inputs.dy, inputs.dtype)
            y = function(z)
            output = {}

            def run():
                (output["dz"],) = torch.autograd.grad(y, z, dy, retain_graph=True)
                self.synchronize()

            return Prepared(run, lambda: to_numpy(output["dz"]))

        return prepare

    def cross_entropy_preparer(self, op, compiled):
        """Cross-entropy forward and backward as a training step runs them: the mean loss and
        its gradient with respect to the logits."""
        base = composed_cross_entropy if op == "cross-entropy" else plain_cross_entropy
        function = self.function(base, compiled)

        def prepare(inputs):
            z = self.tensor(inputs.z, inputs.dtype, requires_grad=True)
            targets = torch.from_numpy(inputs.targets).to(self.device)
            output = {}

            def run():
                loss = function(z, targets)
                (dz,) = torch.autograd.grad(loss, z)
                self.synchronize()
                output["loss"], output["dz"] = loss, dz

            def result():
                return float(output["loss"]), to_numpy(output["dz"])

            return Prepared(run, result)

        return prepare


def to_numpy(tensor):
    return tensor.detach().to("cpu", torch.float32).numpy().astype(np.float64)
