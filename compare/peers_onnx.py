"""onnxruntime peers: the Softmax op, and sigsoftmax composed from ONNX ops.

ONNX has no LogSigmoid op, so the composed graph computes `g(z) = z - Softplus(-z)` (equal to
`z + log sigmoid(z)`) and then `Softmax(g)`. `Log(Sigmoid(z))` would give -inf once sigmoid
underflows to 0 (z below about -104 in f32). Inputs and outputs are bound once to preallocated
buffers (I/O binding), so each run times only the graph.
"""

import numpy as np

from peer import Peer, PeerUnavailable, Prepared

try:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
except ImportError:
    ort = None

# Softmax-13 normalizes along one axis, here the last. Earlier versions flatten the trailing
# axes, which gives the same result for a matrix.
OPSET = 13


def build_model(op, rows, cols, dtype):
    element = TensorProto.BFLOAT16 if dtype == "bf16" else TensorProto.FLOAT
    z = helper.make_tensor_value_info("z", element, [rows, cols])
    y = helper.make_tensor_value_info("y", element, [rows, cols])
    if op == "softmax":
        nodes = [helper.make_node("Softmax", ["z"], ["y"], axis=-1)]
    else:
        nodes = [
            helper.make_node("Neg", ["z"], ["minus_z"]),
            helper.make_node("Softplus", ["minus_z"], ["softplus"]),
            helper.make_node("Sub", ["z", "softplus"], ["g"]),
            helper.make_node("Softmax", ["g"], ["y"], axis=-1),
        ]
    graph = helper.make_graph(nodes, f"{op}_{rows}x{cols}", [z], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model


class OnnxPeers:
    """Builds the onnxruntime peers for one device and intra-op thread count."""

    label = "onnxruntime"

    def __init__(self, device, threads):
        if ort is None:
            raise PeerUnavailable("onnxruntime or onnx is not installed")
        provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise PeerUnavailable(f"this onnxruntime build has no {provider}")
        self.provider = provider
        self.binding_device = "cuda" if device == "cuda" else "cpu"
        self.threads = threads

    def versions(self):
        return {"onnxruntime": ort.__version__, "onnx": onnx.__version__}

    def peers(self):
        return [Peer(self.label, op, self.preparer(op)) for op in ("softmax", "forward")]

    def preparer(self, op):
        def prepare(inputs):
            model = build_model(op, inputs.rows, inputs.cols, inputs.dtype)
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            try:
                session = ort.InferenceSession(
                    model.SerializeToString(), options, providers=[self.provider]
                )
            except Exception as error:
                # onnxruntime raises its own exception types. With bf16 on the CPU provider
                # (1.32) loading fails: no bf16 ReduceMax kernel, and Softplus rejects bf16.
                raise PeerUnavailable(first_line(error)) from error

            array = inputs.z
            element = np.float32
            if inputs.dtype == "bf16":
                import ml_dtypes

                element = ml_dtypes.bfloat16
                array = inputs.z.astype(element)
            try:
                z = ort.OrtValue.ortvalue_from_numpy(array, self.binding_device, 0)
                y = ort.OrtValue.ortvalue_from_shape_and_type(
                    [inputs.rows, inputs.cols], element, self.binding_device, 0
                )
            except Exception as error:
                raise PeerUnavailable(first_line(error)) from error
            binding = session.io_binding()
            binding.bind_ortvalue_input("z", z)
            binding.bind_ortvalue_output("y", y)

            def run():
                session.run_with_iobinding(binding)
                binding.synchronize_outputs()

            return Prepared(run, lambda: y.numpy().astype(np.float64))

        return prepare


def first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
