"""Open Inference Protocol v2 (KServe v2) JSON request/response <-> numpy tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from .errors import InvalidInput
from .manifest import Manifest, TensorSpec

V2_TO_NP: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "INT8": "int8", "INT16": "int16",
    "INT32": "int32", "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
NP_TO_V2: dict[str, str] = {v: k for k, v in V2_TO_NP.items()}
NP_TO_V2["string"] = "BYTES"  # a string tensor: numpy object array of str
MAX_STRING_BYTES = 1 << 20  # one element of a string tensor
MAX_LENGTH_DIGITS = 18  # an Inference-Header-Content-Length longer than this is no length


def _integral(name: str, arr: np.ndarray, dtype: str) -> np.ndarray:
    """``arr`` as the integer (or bool) ``dtype``, refusing what the cast would change: values
    that are not integers, or that lie outside the dtype's range (numpy would truncate 0.5
    and wrap 1000 into an INT8 without a word)."""
    target = np.dtype(dtype)
    if arr.dtype == target:
        return arr
    if arr.dtype.kind not in "iubf":
        raise InvalidInput(f"input '{name}' holds values that are not integers")
    if arr.size:
        if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.trunc(arr)).all()):
            raise InvalidInput(f"input '{name}' holds values that are not integers")
        lo, hi = (0, 1) if target.kind == "b" else (np.iinfo(target).min, np.iinfo(target).max)
        if arr.min().item() < lo or arr.max().item() > hi:  # Python compares int/float exactly
            raise InvalidInput(f"input '{name}' holds values out of the range of {dtype} "
                               f"({lo} to {hi})")
    return arr.astype(target)


def _strings(name: str, arr: np.ndarray) -> np.ndarray:
    """``arr`` as an object array of str (what onnxruntime takes for a string tensor)."""
    if arr.dtype.kind == "U":
        arr = arr.astype(object)
    if arr.dtype.kind == "S":
        arr = np.vectorize(_utf8, otypes=[object])(arr) if arr.size else arr.astype(object)
    if arr.dtype != object:
        raise InvalidInput(f"input '{name}' holds {arr.dtype} values, expected strings")
    flat = arr.reshape(-1)
    for i, v in enumerate(flat):
        if isinstance(v, bytes):
            flat[i] = v = _utf8(v)
        if not isinstance(v, str):
            raise InvalidInput(f"input '{name}' holds a value that is not a string")
        if len(v) > MAX_STRING_BYTES:
            raise InvalidInput(f"input '{name}' holds a string longer than "
                               f"{MAX_STRING_BYTES:,} characters")
    return arr


def _utf8(b: bytes) -> str:
    try:
        return bytes(b).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput("a BYTES element is not UTF-8 text") from exc


def check_tensor(spec: TensorSpec, arr: np.ndarray, max_batch: int) -> np.ndarray:
    """Check one input against its manifest spec; cast to the declared dtype."""
    if spec.dtype == "string":
        arr = _strings(spec.name, arr)
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
    if spec.dtype == "string":
        return arr
    if arr.dtype != spec.dtype:
        if arr.dtype.kind in "fc" and np.dtype(spec.dtype).kind in "iub":
            raise InvalidInput(f"input '{spec.name}' holds floats, expected {spec.dtype}")
        arr = _integral(spec.name, arr, spec.dtype) if np.dtype(spec.dtype).kind in "iub" \
            else arr.astype(spec.dtype)
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
        if spec is None or not isinstance(name, str):
            raise InvalidInput(
                f"unknown input {name!r}; this model takes {[t.name for t in manifest.inputs]}"
            )
        if not isinstance(datatype, str) or datatype not in (*V2_TO_NP, "BYTES"):
            raise InvalidInput(f"input '{name}' has unsupported datatype {datatype!r}")
        if (datatype == "BYTES") != (spec.dtype == "string"):
            raise InvalidInput(f"input '{name}' is {NP_TO_V2[spec.dtype]}, not {datatype}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InvalidInput(f"input '{name}' needs a shape: a list of non-negative integers")
        if "data" not in item:
            raise InvalidInput(f"input '{name}' has no 'data'")
        dtype = V2_TO_NP.get(datatype, "string")
        try:
            if dtype == "string":
                data = item["data"]
                arr = data if isinstance(data, np.ndarray) else np.asarray(
                    _flat_strings(name, data), dtype=object)
            elif np.dtype(dtype).kind in "iub":
                arr = _integral(name, np.asarray(item["data"]), dtype)
            else:
                arr = np.asarray(item["data"], dtype=dtype)
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


def _flat_strings(name: str, data: Any) -> list[Any]:
    """A BYTES input's JSON data, flattened (nested lists are allowed as for numbers)."""
    out: list[Any] = []
    stack = [data] if not isinstance(data, list) else list(reversed(data))
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(reversed(v))
        elif isinstance(v, str):
            out.append(v)
        else:
            raise InvalidInput(f"input '{name}' is BYTES: its data are strings")
    return out


def _bytes_elements(name: str, raw: bytes, offset: int, size: int) -> np.ndarray:
    """The binary extension's BYTES layout: each element a 4-byte little-endian length, then
    that many bytes."""
    out: list[str] = []
    pos, end = offset, offset + size
    while pos < end:
        if pos + 4 > end:
            raise InvalidInput(f"input {name!r}: BYTES data ends inside a length prefix")
        n = int.from_bytes(raw[pos:pos + 4], "little")
        pos += 4
        if pos + n > end:
            raise InvalidInput(f"input {name!r}: a BYTES element runs past binary_data_size")
        out.append(_utf8(raw[pos:pos + n]))
        pos += n
    return np.asarray(out, dtype=object)


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
                "data": _plain(outputs[name].ravel().tolist()),
            }
            for name in wanted
        ],
    }


def _plain(values: list[Any]) -> list[Any]:
    """BYTES outputs as text (JSON has no bytes)."""
    if values and isinstance(values[0], bytes):
        return [v.decode("utf-8", "replace") for v in values]
    return values


def parse_v2_body(raw: bytes, header_length: str | None) -> Any:
    """The JSON of a v2 request; with the binary tensor extension (``Inference-Header-Content-
    Length``, what tritonclient sends by default) the inputs' raw bytes follow the JSON and
    become each input's ``data``."""
    if header_length is None:
        return orjson_loads(raw)
    if not (header_length.isascii() and header_length.isdigit()
            and len(header_length) <= MAX_LENGTH_DIGITS and int(header_length) <= len(raw)):
        raise InvalidInput("Inference-Header-Content-Length must be a length within the body")
    cut = int(header_length)
    body = orjson_loads(raw[:cut])
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise InvalidInput("body must be a JSON object with an 'inputs' list")
    offset = cut
    for item in body["inputs"]:
        params = item.get("parameters") if isinstance(item, dict) else None
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None:
            continue
        dtype = V2_TO_NP.get(str(item.get("datatype")))
        if not isinstance(size, int) or size < 0 or offset + size > len(raw) or (
                dtype is None and item.get("datatype") != "BYTES"):
            raise InvalidInput(f"input {item.get('name')!r}: binary_data_size does not fit "
                               "the body, or its datatype is unsupported")
        if dtype is None:  # BYTES
            item["data"] = _bytes_elements(str(item.get("name")), raw, offset, size)
            offset += size
            continue
        if size % np.dtype(dtype).itemsize:
            raise InvalidInput(f"input {item.get('name')!r}: {size} bytes is not a whole "
                               f"number of {item.get('datatype')} values")
        item["data"] = np.frombuffer(raw, dtype=dtype, count=size // np.dtype(dtype).itemsize,
                                     offset=offset)
        offset += size
    if offset != len(raw):
        raise InvalidInput("the body holds bytes that no input's binary_data_size accounts for")
    return body


def orjson_loads(raw: bytes) -> Any:
    """JSON from a request body; 422 ``invalid_json`` when it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}", code="invalid_json") from exc


def v2_model_metadata(name: str, versions: list[str], manifest: Manifest) -> dict[str, Any]:
    """The v2 model metadata response (what tritonclient's get_model_metadata reads)."""
    return {
        "name": name, "versions": versions, "platform": "onnxruntime_onnx",
        "inputs": [{"name": t.name, "datatype": NP_TO_V2[t.dtype], "shape": t.shape}
                   for t in manifest.inputs],
        "outputs": [{"name": t.name, "datatype": NP_TO_V2[t.dtype], "shape": t.shape}
                    for t in manifest.outputs],
    }
