"""Task-level JSON (``/v1/models/{slug}/predict``) <-> model tensors, driven by the manifest."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
from PIL import Image

from .codec import check_tensor
from .errors import InvalidInput
from .manifest import Manifest

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
# Pillow's decompression-bomb guard (it warns above the limit and refuses above twice it, from
# the header, before decoding) at the site's limit rather than its default of ~89 M pixels;
# load_image refuses anything over MAX_IMAGE_PIXELS itself.
if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > MAX_IMAGE_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def prepare(manifest: Manifest, payload: Any) -> dict[str, np.ndarray]:
    """Turn a task-level request body into the model's input tensors."""
    if not isinstance(payload, dict):
        raise InvalidInput("body must be a JSON object")
    spec = manifest.inputs[0]
    if manifest.task == "image-classification":
        images = payload.get("images", [payload["image"]] if "image" in payload else None)
        if not isinstance(images, list) or not images:
            raise InvalidInput("send 'image' (base64 PNG/JPEG) or 'images' (a list of them)")
        if len(images) > manifest.max_batch:
            raise InvalidInput(f"at most {manifest.max_batch} images per call")
        rows = np.stack([_image_to_row(manifest, img) for img in images])
        arr = rows.reshape([len(images)] + [d if d != -1 else -1 for d in spec.shape[1:]])
        return {spec.name: check_tensor(spec, arr.astype(spec.dtype), manifest.max_batch)}
    if manifest.task.startswith("tabular-"):
        rows = payload.get("rows")
        if not isinstance(rows, list) or not rows:
            raise InvalidInput(
                "send 'rows': a list of objects keyed by feature name, or of value lists, "
                f"features {manifest.feature_names}"
            )
        if len(rows) > manifest.max_batch:
            raise InvalidInput(f"at most {manifest.max_batch} rows per call")
        table = [_row_values(manifest, i, row) for i, row in enumerate(rows)]
        try:
            arr = np.asarray(table, dtype=spec.dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInput(f"rows do not fit the model's input type {spec.dtype}") from exc
        return {spec.name: check_tensor(spec, arr, manifest.max_batch)}
    inputs = payload.get("inputs")
    if not isinstance(inputs, dict):
        raise InvalidInput("send 'inputs': an object mapping input names to nested lists")
    out: dict[str, np.ndarray] = {}
    for t in manifest.inputs:
        if t.name not in inputs:
            raise InvalidInput(f"missing input '{t.name}'")
        try:
            arr = np.asarray(inputs[t.name], dtype=t.dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInput(f"input '{t.name}' is not a rectangular numeric array") from exc
        out[t.name] = check_tensor(t, arr, manifest.max_batch)
    return out


def postprocess(manifest: Manifest, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Turn model outputs into task-level predictions."""
    if manifest.task == "tensor":
        return {"outputs": {k: v.tolist() for k, v in outputs.items()}}
    if manifest.task == "tabular-regression":
        values = np.asarray(outputs[manifest.outputs[0].name], dtype=np.float64).reshape(-1)
        return {"predictions": [{"value": float(v)} for v in values]}
    labels = manifest.labels or []
    probs = _probabilities(manifest, outputs, len(labels))
    label_out = next(
        (outputs[t.name] for t in manifest.outputs if np.dtype(t.dtype).kind in "iu"), None
    )
    preds = []
    n = len(probs) if probs is not None else len(label_out)  # type: ignore[arg-type]
    for i in range(n):
        if probs is not None:
            order = np.argsort(-probs[i])[:3]
            top = [{"label": labels[j], "score": round(float(probs[i][j]), 6)} for j in order]
            idx = int(label_out[i]) if label_out is not None else int(order[0])
        else:
            idx, top = int(label_out[i]), []  # type: ignore[index]
        label = labels[idx] if 0 <= idx < len(labels) else str(idx)
        preds.append({"label": label, "score": top[0]["score"] if top else None, "top": top})
    return {"predictions": preds}


def _probabilities(
    manifest: Manifest, outputs: dict[str, np.ndarray], n_labels: int
) -> np.ndarray | None:
    for t in manifest.outputs:
        arr = outputs.get(t.name)
        if arr is not None and arr.dtype.kind == "f" and arr.ndim == 2 and arr.shape[1] == n_labels:
            return arr
    return None


def _row_values(manifest: Manifest, i: int, row: Any) -> list[float]:
    names = manifest.feature_names or []
    if isinstance(row, dict):
        missing = [n for n in names if n not in row]
        if missing:
            raise InvalidInput(f"row {i} is missing features {missing}")
        values = [row[n] for n in names]
    elif isinstance(row, list):
        if len(row) != len(names):
            raise InvalidInput(f"row {i} has {len(row)} values, expected {len(names)}: {names}")
        values = row
    else:
        raise InvalidInput(f"row {i} must be an object or a list")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise InvalidInput(f"row {i} holds a value that is not a number")
    return values


def load_image(data: Any) -> Image.Image:
    """A base64 image (optionally a data: URL) decoded: PNG, JPEG, GIF, BMP or WebP of at
    most MAX_IMAGE_PIXELS. Anything else, a decompression bomb included, is InvalidInput."""
    if not isinstance(data, str):
        raise InvalidInput("an image is a base64 string (optionally a data: URL)")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    if len(data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise InvalidInput("image is larger than 10 MB")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("image is not valid base64") from exc
    try:
        img = Image.open(io.BytesIO(raw))
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise InvalidInput(f"image has too many pixels ({img.width}x{img.height}; at most "
                               f"{MAX_IMAGE_PIXELS:,})")
        img.load()
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"image has too many pixels (at most {MAX_IMAGE_PIXELS:,})") from exc
    except Exception as exc:  # Pillow's decoders fail in many ways on hostile bytes
        raise InvalidInput("image could not be decoded (PNG, JPEG, GIF, BMP, WebP)") from exc
    return img


def _image_to_row(manifest: Manifest, data: Any) -> np.ndarray:
    pre = manifest.preprocessing
    assert pre is not None
    with load_image(data) as img:
        try:
            width, height = pre.size
            small = img.convert(pre.mode).resize((width, height), Image.Resampling.BILINEAR)
        except (ValueError, OSError) as exc:  # a mode Pillow cannot convert
            raise InvalidInput(f"image of mode {img.mode} cannot be converted to "
                               f"{pre.mode}") from exc
        arr = np.asarray(small, dtype=np.float32)
    if pre.invert:
        arr = 255.0 - arr
    arr = arr * pre.scale
    if pre.mode == "RGB" and manifest.inputs[0].shape[1:2] == [3]:
        arr = arr.transpose(2, 0, 1)  # NCHW
    return arr.reshape(-1) if len(manifest.inputs[0].shape) == 2 else arr
