"""A per-licence watermark in the weights, and its detection.

The mark is keyed spread spectrum: every weight ``w`` of the model's large float initializers
(its "carriers") moves by ``strength * |w| * p`` where ``p`` is +1 or -1, drawn from a
generator seeded with HMAC(key, license id). The change is far below the model's own precision
(0.4% of each weight by default) and survives what a licensee does to a file: metadata and
``license.json`` stripped, names and node order changed, re-saved, converted to float16 (the
rounding error of float16 is ten times smaller than the mark and does not correlate with it),
even quantized to int8 (rounding is dithered by the weights themselves, so the mark survives on
average).

Detection is informed: the marketplace holds the listed (unmarked) model. A suspect model's
tensors are aligned to the original's carriers by shape and value (never by name or order),
the difference ``d`` is taken, and for each licence of that listing the self-normalised
correlation ``z = sum(d * p) / sqrt(sum(d * d))`` is computed. Without the mark ``z`` behaves
like a standard normal variable (the difference is rounding noise that knows nothing of the
key); with it ``z`` grows like the square root of the number of weights. A licence is reported
only when ``z`` clears ``THRESHOLD`` (8 standard deviations: a false match is less likely than
1e-14 per licence tried).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

STRENGTH = 2.0 ** -8  # relative change of each weight
MIN_TENSOR = 16  # smaller float tensors (biases, scales, constants) are never touched
MIN_WEIGHTS = 1024  # fewer carrier weights than this cannot carry a reliable mark
THRESHOLD = 8.0  # z-score a licence must clear to be named
# Keyed patterns per licence: when the strongest mark of one pattern changes too many answers,
# the export is re-keyed with the licence's next pattern; detection tries each of them.
VARIANTS = 4
MAX_ALIGN_ERROR = 0.1  # a suspect tensor aligns with a carrier within 10% relative error


@dataclass(frozen=True)
class Detection:
    license_id: str
    z: float


def carriers(model: onnx.ModelProto) -> list[np.ndarray]:
    """The weights that carry the mark: float32 tensors of rank >= 2 with at least
    ``MIN_TENSOR`` values, initializers first, then Constant nodes (some exporters keep every
    weight in one), in the model's own order."""
    return [numpy_helper.to_array(t) for t in _carrier_protos(model)]


def _carrier_protos(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    found = [t for t in model.graph.initializer if _is_carrier(t)]
    for node in model.graph.node:
        if node.op_type == "Constant":
            found += [a.t for a in node.attribute if a.name == "value" and _is_carrier(a.t)]
    return found


def _is_carrier(t: onnx.TensorProto) -> bool:
    return (t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2
            and math.prod(t.dims) >= MIN_TENSOR)


def capacity(model: onnx.ModelProto) -> int:
    """How many weights would carry the mark."""
    return sum(math.prod(t.dims) for t in _carrier_protos(model))


def pattern(key: bytes, license_id: str, n: int, variant: int = 0) -> np.ndarray:
    """The licence's keyed +-1 pattern over ``n`` weights (its ``variant``-th re-keying)."""
    message = b"aimarket watermark\0" + license_id.encode()
    if variant:
        message += b"\0" + str(variant).encode()
    seed = hmac.new(key, message, hashlib.sha256).digest()
    rng = np.random.default_rng(int.from_bytes(seed[:16], "big"))
    return rng.integers(0, 2, size=n, dtype=np.int8) * 2 - 1


def embed(model_bytes: bytes, key: bytes, license_id: str, strength: float = STRENGTH,
          variant: int = 0) -> bytes | None:
    """The model with the licence's mark in its weights; None when it has too few weights."""
    model = onnx.load_model_from_string(model_bytes)
    n = capacity(model)
    if n < MIN_WEIGHTS:
        return None
    p = pattern(key, license_id, n, variant).astype(np.float64)
    offset = 0
    for t in _carrier_protos(model):
        w = numpy_helper.to_array(t).astype(np.float64)
        step = strength * np.abs(w) * p[offset:offset + w.size].reshape(w.shape)
        offset += w.size
        t.CopyFrom(numpy_helper.from_array((w + step).astype(np.float32), t.name))
    return model.SerializeToString()


def fp16_score(original_bytes: bytes, marked_bytes: bytes, key: bytes, license_id: str,
               variant: int = 0) -> float:
    """The z-score the mark would still have once the model is converted to float16 (the
    lossiest conversion a licensee is expected to make): whether the mark is reliable."""
    original = carriers(onnx.load_model_from_string(original_bytes))
    marked = carriers(onnx.load_model_from_string(marked_bytes))
    diff = np.concatenate([(m.astype(np.float16).astype(np.float64) - o.astype(np.float64))
                           .reshape(-1) for o, m in zip(original, marked, strict=True)])
    return score(diff, np.arange(diff.size), key, license_id, diff.size, variant)


def export_score(original_bytes: bytes, exported_bytes: bytes, key: bytes, license_id: str,
                 variant: int = 0) -> float:
    """The z-score of the licence's mark in an export as built (after its fp16 or int8
    conversion); 0 when the export's weights do not align with the original's."""
    original = onnx.load_model_from_string(original_bytes)
    found = differences(original, onnx.load_model_from_string(exported_bytes))
    if found is None:
        return 0.0
    return score(*found, key, license_id, capacity(original), variant)


def tensors(model: onnx.ModelProto) -> list[np.ndarray]:
    """Every float tensor a model holds, as float64: initializers (float32, float16, float64),
    Constant nodes, and int8 weights seen through their DequantizeLinear (QDQ models)."""
    inits = {t.name: t for t in model.graph.initializer}
    out: list[np.ndarray] = []
    used: set[str] = set()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            deq = _dequantize(node, inits)
            if deq is not None:
                out.append(deq)
                used.add(node.input[0])
        elif node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in _FLOATS:
                    out.append(numpy_helper.to_array(a.t).astype(np.float64))
    for name, t in inits.items():
        if name not in used and t.data_type in _FLOATS and math.prod(t.dims) >= MIN_TENSOR:
            out.append(numpy_helper.to_array(t).astype(np.float64))
    return out


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def _dequantize(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
    if len(node.input) < 2 or node.input[1] not in inits:
        return None
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    zero = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
            if len(node.input) > 2 and node.input[2] in inits else np.zeros_like(scale))
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and scale.size > 1 and q.ndim > 0:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero) * scale


def align(originals: list[np.ndarray], suspects: list[np.ndarray]) -> list[np.ndarray | None]:
    """For each original carrier, the suspect tensor holding (a copy of) it, or None."""
    free = list(range(len(suspects)))
    found: list[np.ndarray | None] = []
    for w in originals:
        w64 = w.astype(np.float64)
        norm = float(np.linalg.norm(w64)) or 1.0
        best, best_err = -1, MAX_ALIGN_ERROR
        for j in free:
            s = suspects[j]
            if s.shape != w.shape:
                continue
            err = float(np.linalg.norm(s - w64)) / norm
            if err < best_err:
                best, best_err = j, err
        if best >= 0:
            free.remove(best)
            found.append(suspects[best])
        else:
            found.append(None)
    return found


def differences(original: onnx.ModelProto, suspect: onnx.ModelProto
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """(suspect - original over the aligned carrier weights, their positions in the pattern);
    None when the suspect is not a copy of the original (less than half its weights align)."""
    originals = carriers(original)
    total = sum(w.size for w in originals)
    if total < MIN_WEIGHTS:
        return None
    matched = align(originals, tensors(suspect))
    diffs: list[np.ndarray] = []
    where: list[np.ndarray] = []
    offset = 0
    for w, s in zip(originals, matched, strict=True):
        if s is not None:
            diffs.append((s - w.astype(np.float64)).reshape(-1))
            where.append(np.arange(offset, offset + w.size))
        offset += w.size
    if not diffs or sum(d.size for d in diffs) * 2 < total:
        return None
    return np.concatenate(diffs), np.concatenate(where)


def score(diff: np.ndarray, where: np.ndarray, key: bytes, license_id: str,
          total: int, variant: int = 0) -> float:
    """The z-score of one licence's pattern in the differences."""
    energy = float(np.sqrt(np.sum(diff * diff)))
    if energy == 0.0:
        return 0.0
    p = pattern(key, license_id, total, variant)[where].astype(np.float64)
    return float(np.sum(diff * p)) / energy


def detect(original_bytes: bytes, suspect_bytes: bytes, key: bytes,
           license_ids: list[str]) -> Detection | None:
    """The licence whose mark (any of its ``VARIANTS`` patterns) the suspect carries (highest z
    over ``THRESHOLD``), or None."""
    original = onnx.load_model_from_string(original_bytes)
    suspect = onnx.load_model_from_string(suspect_bytes)
    found = differences(original, suspect)
    if found is None:
        return None
    diff, where = found
    total = capacity(original)
    best: Detection | None = None
    for lid in license_ids:
        for variant in range(VARIANTS):
            z = score(diff, where, key, lid, total, variant)
            if z >= THRESHOLD and (best is None or z > best.z):
                best = Detection(lid, z)
    return best


def confidence(z: float, candidates: int) -> float:
    """1 - the chance that an unmarked model scores ``z`` against any of ``candidates``
    licence patterns (a Gaussian tail, Bonferroni over the candidates; each licence has
    ``VARIANTS`` patterns)."""
    tail = 0.5 * math.erfc(z / math.sqrt(2.0))
    return max(0.0, 1.0 - max(candidates, 1) * tail)
