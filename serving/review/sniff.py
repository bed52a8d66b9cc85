"""Recognise model files that are not ONNX by their bytes (never by name), and say how to
convert them. Nothing here deserialises anything."""

from __future__ import annotations

import io
import struct
import zipfile

from ..errors import InvalidInput

_TORCH = "export it with torch.onnx.export(model, example_input, 'model.onnx')"
_SKLEARN = "convert it with skl2onnx (skl2onnx.to_onnx(model, X_sample))"
_KERAS = "convert it with tf2onnx (python -m tf2onnx.convert)"


_CODES = {"pickle": "pickle_refused", "PyTorch": "pytorch_checkpoint_refused",
          "Keras": "keras_refused", "TensorFlow": "tensorflow_refused",
          "safetensors": "safetensors_refused", "GGUF": "gguf_refused"}


def refuse_non_onnx(data: bytes) -> None:
    """Raise InvalidInput when ``data`` is a known non-ONNX format, with a code per format
    (``pickle_refused``, ``pytorch_checkpoint_refused``, ...; ``not_onnx`` otherwise) and, for
    pickles, what picklescan finds in it (it reads opcodes; nothing is unpickled)."""
    found = _identify(data)
    if found is not None:
        what, how = found
        code = next((c for k, c in _CODES.items() if k in what), "not_onnx")
        details: dict[str, object] = {"detected": what}
        if code == "pickle_refused":
            details["scan"] = _scan_pickle(data)
        raise InvalidInput(
            f"the file is {what}, not ONNX. Only ONNX models are accepted: {how}.",
            code=code, details=details,
        )


def _scan_pickle(data: bytes) -> dict[str, object]:
    try:
        from picklescan.scanner import scan_pickle_bytes

        result = scan_pickle_bytes(io.BytesIO(data), "upload")
    except Exception as exc:  # a scanner failure must not hide the refusal
        return {"error": type(exc).__name__}
    return {
        "dangerous_globals": [f"{g.module}.{g.name}" for g in result.globals
                              if "Dangerous" in str(g.safety)],
        "globals": [f"{g.module}.{g.name}" for g in result.globals][:50],
    }


def _identify(data: bytes) -> tuple[str, str] | None:
    head = data[:16]
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle (e.g. joblib / scikit-learn)", _SKLEARN
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_kind(data)  # None: a plain archive, reviewed member by member
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "a Keras / HDF5 file", _KERAS
    if head.startswith(b"GGUF"):
        return "a GGUF (llama.cpp) file", "upload an ONNX export of the model"
    if len(data) >= 10:
        (n,) = struct.unpack("<Q", data[:8])
        if 2 <= n < min(len(data), 100_000_000) and data[8:9] == b"{":
            return "a safetensors file (weights without a graph)", _TORCH
    if data[:1] in (b"(", b"]", b"}") and data[-1:] == b".":
        return "a Python pickle (protocol 0/1)", _SKLEARN
    return None


def _zip_kind(data: bytes) -> tuple[str, str] | None:
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return None  # extraction reports the corrupt archive
    if any(n.endswith("data.pkl") or n.endswith("/version") for n in names):
        return "a PyTorch checkpoint (a zip holding data.pkl)", _TORCH
    if any(n.endswith("saved_model.pb") for n in names):
        return "a TensorFlow SavedModel archive", _KERAS
    if "config.json" in names and any(n.endswith(".weights.h5") for n in names):
        return "a Keras v3 (.keras) file", _KERAS
    return None
