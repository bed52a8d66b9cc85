"""onnxruntime sessions and the checks an uploaded model passes before it can be listed."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from .errors import InvalidInput
from .manifest import Manifest

ONNX_TO_NP: dict[int, str] = {
    TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64", TensorProto.FLOAT16: "float16",
    TensorProto.INT8: "int8", TensorProto.INT16: "int16", TensorProto.INT32: "int32",
    TensorProto.INT64: "int64", TensorProto.UINT8: "uint8", TensorProto.UINT16: "uint16",
    TensorProto.BOOL: "bool", TensorProto.STRING: "string",
}
MIN_OPSET, MAX_OPSET = 7, 23


def providers() -> list[str]:
    """CUDA first where this onnxruntime build and machine have it; CPU always."""
    available = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in wanted if p in available] or ["CPUExecutionProvider"]


def new_session(model: bytes | str, *, threads: int = 1) -> ort.InferenceSession:
    """An inference session tuned for small per-call batches: one intra-op thread."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=providers())


def sample_inputs(manifest: Manifest, *, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Generated inputs that fit the manifest: dynamic dims become ``batch`` then 1. An input
    the manifest's first example gives (a tensor model's scalar sample rate, say) takes the
    example's value: a generated one may be no valid value for it."""
    rng = np.random.default_rng(seed)
    example = (manifest.examples or [None])[0] if manifest.task == "tensor" else None
    feeds = {}
    for t in manifest.inputs:
        shape = [batch if i == 0 and d == -1 else (1 if d == -1 else d)
                 for i, d in enumerate(t.shape)]
        if isinstance(example, dict) and t.name in example:
            try:
                given = np.asarray(example[t.name], dtype=object if t.dtype == "string"
                                   else t.dtype)
            except (ValueError, TypeError, OverflowError):
                given = None
            if given is not None and given.ndim == len(shape):
                feeds[t.name] = given
                continue
        if t.dtype == "string":
            arr = np.full(shape, "sample text", dtype=object)
        elif np.dtype(t.dtype).kind == "f":
            arr = np.asarray(rng.random(shape), dtype=t.dtype)
        elif np.dtype(t.dtype).kind == "b":
            arr = np.asarray(rng.random(shape) > 0.5)
        else:
            arr = np.asarray(rng.integers(0, 2, size=shape), dtype=t.dtype)
        feeds[t.name] = arr
    return feeds


def match_io(model: onnx.ModelProto, manifest: Manifest) -> None:
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
    graph_outputs = {o.name: o for o in model.graph.output}
    for side, specs, graph in (
        ("input", manifest.inputs, graph_inputs), ("output", manifest.outputs, graph_outputs),
    ):
        names = {s.name for s in specs}
        if side == "input" and names != set(graph):
            raise InvalidInput(
                f"manifest inputs {sorted(names)} do not match the model's {sorted(graph)}",
                code="manifest_mismatch",
            )
        for spec in specs:
            vi = graph.get(spec.name)
            if vi is None:
                raise InvalidInput(
                    f"manifest {side} '{spec.name}' is not in the model; it has {sorted(graph)}",
                    code="manifest_mismatch",
                )
            tt = vi.type.tensor_type
            dtype = ONNX_TO_NP.get(tt.elem_type)
            if dtype != spec.dtype:
                raise InvalidInput(
                    f"{side} '{spec.name}' is {dtype or 'an unsupported type'} in the model, "
                    f"{spec.dtype} in the manifest",
                    code="manifest_mismatch",
                )
            if tt.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
                if len(dims) != len(spec.shape) or any(
                    g != -1 and m != -1 and g != m for g, m in zip(dims, spec.shape, strict=True)
                ):
                    raise InvalidInput(
                        f"{side} '{spec.name}' has shape {dims} in the model, "
                        f"{spec.shape} in the manifest",
                        code="manifest_mismatch",
                    )
