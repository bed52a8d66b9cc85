"""Model fingerprints: an exact one, independent of initializer names and order, and a sketch
that finds near-duplicates (the same weights renamed, reordered, reshaped, re-quantized or
slightly perturbed) by correlating samples of same-sized tensors."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

MIN_ELEMENTS = 64
SAMPLES = 256
MATCH = 0.98  # Pearson correlation of two tensors' samples that counts as "the same weights"
COPY_SCORE = 0.8  # share of parameters matched that flags a possible copy


def _tensors(model: onnx.ModelProto) -> list[np.ndarray]:
    out = []
    for init in model.graph.initializer:
        try:
            arr = numpy_helper.to_array(init)
        except Exception:  # an unusual dtype: not a weight we can compare
            continue
        if arr.dtype.kind in "fiu" and arr.size >= MIN_ELEMENTS:
            out.append(arr)
    return out


def fingerprint(model: onnx.ModelProto) -> str:
    """SHA-256 over the sorted digests of every initializer's dtype, shape and bytes."""
    digests = sorted(
        hashlib.sha256(f"{t.data_type}:{list(t.dims)}".encode() + t.raw_data
                       + numpy_helper.to_array(t).tobytes()).hexdigest()
        for t in model.graph.initializer
    )
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def sketch(model: onnx.ModelProto) -> dict[str, Any]:
    """Per weight tensor: its size and SAMPLES evenly spaced values (a few kB per model)."""
    items = []
    for arr in _tensors(model):
        flat = arr.astype(np.float64).ravel()
        idx = np.linspace(0, flat.size - 1, num=min(SAMPLES, flat.size)).astype(np.int64)
        items.append({"n": int(flat.size), "s": np.round(flat[idx], 6).tolist()})
    return {"tensors": items}


def similarity(new: dict[str, Any], old: dict[str, Any]) -> tuple[float, int]:
    """(share of ``new``'s parameters found in ``old``, tensors matched)."""
    by_size: dict[int, list[np.ndarray]] = {}
    for t in old.get("tensors", []):
        by_size.setdefault(t["n"], []).append(np.asarray(t["s"], dtype=np.float64))
    total = matched = count = 0
    for t in new.get("tensors", []):
        total += t["n"]
        mine = np.asarray(t["s"], dtype=np.float64)
        if any(_correlated(mine, other) for other in by_size.get(t["n"], [])):
            matched += t["n"]
            count += 1
    return (matched / total if total else 0.0), count


def _correlated(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    if denom == 0:
        return bool(np.allclose(a, b))
    return float(a @ b) / denom >= MATCH
