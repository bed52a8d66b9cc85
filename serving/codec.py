"""Open Inference Protocol v2 (KServe v2) JSON request/response <-> numpy tensors."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidInput
from .manifest import Manifest, TensorSpec

V2_TO_NP: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "INT8": "int8", "INT16": "int16",
    "INT32": "int32", "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
NP_TO_V2: dict[str, str] = {v: k for k, v in V2_TO_NP.items()}


def check_tensor(spec: TensorSpec, arr: np.ndarray, max_batch: int) -> np.ndarray:
    """Check one input against its manifest spec; cast to the declared dtype."""
    if arr.ndim != len(spec.shape):
        raise InvalidInput(
            f"input '{spec.name}' has {arr.ndim} dimensions, expected shape {spec.shape}",
            details={"input": spec.name, "shape": list(arr.shape), "expected": spec.shape},
        )
    for i, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
        if want != -1 and got != want:
            raise InvalidInput(
                f"input '{spec.name}' dimension {i} is {got}, expected {want}",
                details={"input": spec.name, "shape": list(arr.shape), "expected": spec.shape},
            )
    if arr.shape and arr.shape[0] > max_batch:
        raise InvalidInput(f"batch of {arr.shape[0]} exceeds this model's max_batch {max_batch}")
    if arr.shape and arr.shape[0] == 0:
        raise InvalidInput(f"input '{spec.name}' is empty")
    if arr.dtype != spec.dtype:
        if arr.dtype.kind in "fc" and np.dtype(spec.dtype).kind in "iub":
            raise InvalidInput(f"input '{spec.name}' holds floats, expected {spec.dtype}")
        arr = arr.astype(spec.dtype)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidInput(f"input '{spec.name}' holds NaN or infinity")
    return arr


def decode_v2_request(body: Any, manifest: Manifest) -> tuple[dict[str, np.ndarray], list[str]]:
    """Decode a v2 inference request body into named arrays and requested output names."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise InvalidInput("body must be a JSON object with an 'inputs' list")
    arrays: dict[str, np.ndarray] = {}
    for item in body["inputs"]:
        if not isinstance(item, dict):
            raise InvalidInput("each input is an object with name, shape, datatype, data")
        name, shape, datatype = item.get("name"), item.get("shape"), item.get("datatype")
        spec = manifest.input(name) if isinstance(name, str) else None
        if spec is None:
            raise InvalidInput(
                f"unknown input {name!r}; this model takes {[t.name for t in manifest.inputs]}"
            )
        if datatype not in V2_TO_NP:
            raise InvalidInput(f"input '{name}' has unsupported datatype {datatype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InvalidInput(f"input '{name}' needs a shape: a list of non-negative integers")
        if "data" not in item:
            raise InvalidInput(f"input '{name}' has no 'data'")
        try:
            arr = np.asarray(item["data"], dtype=V2_TO_NP[datatype])
            arr = arr.reshape(shape)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInput(f"input '{name}' data does not fit shape {shape}: {exc}") from exc
        arrays[name] = check_tensor(spec, arr, manifest.max_batch)
    missing = [t.name for t in manifest.inputs if t.name not in arrays]
    if missing:
        raise InvalidInput(f"missing inputs {missing}")
    wanted = [t.name for t in manifest.outputs]
    requested = body.get("outputs")
    if requested is not None:
        if not isinstance(requested, list) or not all(
            isinstance(o, dict) and o.get("name") in wanted for o in requested
        ):
            raise InvalidInput(f"'outputs' must name outputs among {wanted}")
        wanted = [o["name"] for o in requested]
    return arrays, wanted


def encode_v2_response(
    model_name: str, version: str, request_id: str, outputs: dict[str, np.ndarray],
    wanted: list[str],
) -> dict[str, Any]:
    """Encode named output arrays as a v2 inference response body."""
    return {
        "model_name": model_name,
        "model_version": version,
        "id": request_id,
        "outputs": [
            {
                "name": name,
                "datatype": NP_TO_V2.get(str(outputs[name].dtype), "BYTES"),
                "shape": list(outputs[name].shape),
                "data": outputs[name].ravel().tolist(),
            }
            for name in wanted
        ],
    }
