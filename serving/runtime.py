"""onnxruntime sessions and the checks an uploaded model passes before it can be listed."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from .errors import InvalidInput
from .manifest import Manifest
from .sniff import refuse_non_onnx

ONNX_TO_NP: dict[int, str] = {
    TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64", TensorProto.FLOAT16: "float16",
    TensorProto.INT8: "int8", TensorProto.INT16: "int16", TensorProto.INT32: "int32",
    TensorProto.INT64: "int64", TensorProto.UINT8: "uint8", TensorProto.UINT16: "uint16",
    TensorProto.BOOL: "bool",
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


@dataclass(frozen=True)
class ModelReport:
    """What the automated checks found out about an accepted model."""

    opset: int
    latency_us: int  # median of a batch-1 smoke inference
    size_bytes: int


def inspect_model(data: bytes, manifest: Manifest, *, runs: int = 20) -> ModelReport:
    """Check an ONNX file against its manifest and run it once on generated input.

    Raises InvalidInput (code ``invalid_model``) naming what is wrong.
    """
    refuse_non_onnx(data)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise InvalidInput("file is not a valid ONNX model", code="invalid_model") from exc
    if not model.graph.node and not model.graph.output:
        raise InvalidInput("file is not a valid ONNX model (empty graph)", code="invalid_model")
    for init in model.graph.initializer:
        if init.data_location == TensorProto.EXTERNAL:
            raise InvalidInput(
                "models with external data are not accepted; embed the weights",
                code="invalid_model",
            )
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InvalidInput(
            f"opset {opset} is outside the supported range {MIN_OPSET}-{MAX_OPSET}",
            code="invalid_model",
        )
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise InvalidInput(f"ONNX checker refused the model: {exc}", code="invalid_model") from exc
    match_io(model, manifest)
    try:
        sess = new_session(data)
    except Exception as exc:
        raise InvalidInput(
            f"onnxruntime cannot load the model: {exc}", code="invalid_model"
        ) from exc
    feeds = sample_inputs(manifest, batch=1)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        try:
            sess.run(None, feeds)
        except Exception as exc:
            raise InvalidInput(
                f"smoke inference failed on generated input: {exc}", code="invalid_model"
            ) from exc
        times.append(time.perf_counter() - t0)
    return ModelReport(opset, int(statistics.median(times) * 1e6), len(data))


def sample_inputs(manifest: Manifest, *, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Generated inputs that fit the manifest: dynamic dims become ``batch`` then 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in manifest.inputs:
        shape = [batch if i == 0 and d == -1 else (1 if d == -1 else d)
                 for i, d in enumerate(t.shape)]
        kind = np.dtype(t.dtype).kind
        if kind == "f":
            arr = rng.random(shape).astype(t.dtype)
        elif kind == "b":
            arr = rng.random(shape) > 0.5
        else:
            arr = rng.integers(0, 2, size=shape).astype(t.dtype)
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
