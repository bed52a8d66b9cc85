"""Model fingerprints: an exact one, independent of initializer names and order, and a sketch
that finds near-duplicates (the same weights renamed, reordered, reshaped, re-quantized or
slightly perturbed) by correlating samples of same-sized tensors."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

MIN_ELEMENTS = 64
SAMPLES = 256
MATCH = 0.98  # Pearson correlation of two tensors' samples that counts as "the same weights"
COPY_SCORE = 0.8  # share of parameters matched that flags a possible copy


def _weights(model: onnx.ModelProto) -> list[tuple[str, np.ndarray]]:
    """Every weight the model carries, without names: initializers, Constant tensors, and the
    number lists of ONNX-ML operators (tree ensembles, linear models keep weights there)."""
    out: list[tuple[str, np.ndarray]] = []
    for init in model.graph.initializer:
        with contextlib.suppress(Exception):  # an unusual dtype: not a weight we compare
            out.append(("t", numpy_helper.to_array(init)))
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                with contextlib.suppress(Exception):
                    out.append((f"{node.op_type}.{attr.name}", numpy_helper.to_array(attr.t)))
            elif attr.type == onnx.AttributeProto.FLOATS and len(attr.floats) >= MIN_ELEMENTS:
                out.append((f"{node.op_type}.{attr.name}", np.asarray(attr.floats, np.float32)))
    return out


def _tensors(model: onnx.ModelProto) -> list[np.ndarray]:
    return [a for _, a in _weights(model) if a.dtype.kind in "fiu" and a.size >= MIN_ELEMENTS]


def fingerprint(model: onnx.ModelProto) -> str:
    """SHA-256 over the sorted digests of every weight's kind, dtype, shape and values; empty
    for a model that carries no weights (nothing to protect, nothing to compare)."""
    weights = _weights(model)
    if not weights:
        return ""
    digests = sorted(
        hashlib.sha256(f"{kind}:{a.dtype}:{list(a.shape)}".encode()
                       + np.ascontiguousarray(a).tobytes()).hexdigest()
        for kind, a in weights
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
