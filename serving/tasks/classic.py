"""The first tasks: image and tabular classification, tabular regression, raw tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..codec import check_tensor
from ..errors import InvalidInput
from ..manifest import Manifest
from .common import load_image, media_list


def prepare(manifest: Manifest, payload: dict[str, Any]) -> dict[str, np.ndarray]:
    """Turn a task-level request body into the model's input tensors."""
    spec = manifest.inputs[0]
    if manifest.task == "image-classification":
        images = media_list(payload, "image", "images", "base64 PNG/JPEG", manifest.max_batch)
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
            arr = np.asarray(inputs[t.name], dtype=object if t.dtype == "string" else t.dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInput(f"input '{t.name}' is not a rectangular numeric array") from exc
        out[t.name] = check_tensor(t, arr, manifest.max_batch)
    return out


def postprocess(manifest: Manifest, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Turn model outputs into task-level predictions."""
    if manifest.task == "tensor":
        return {"outputs": {k: _plain(v) for k, v in outputs.items()}}
    if manifest.task == "tabular-regression":
        values = np.asarray(outputs[manifest.outputs[0].name], dtype=np.float64).reshape(-1)
        return {"predictions": [{"value": float(v)} for v in values]}
    return classify(manifest, outputs)


def _plain(v: np.ndarray) -> Any:
    out = v.tolist()
    if v.dtype == object:
        out = np.vectorize(lambda x: x.decode("utf-8", "replace") if isinstance(x, bytes)
                           else x, otypes=[object])(v).tolist() if v.size else out
    return out


def classify(manifest: Manifest, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Labels and scores from a classifier's outputs (a probability matrix, a label output)."""
    labels = manifest.labels or []
    probs = _probabilities(manifest, outputs, len(labels))
    label_out = next(
        (outputs[t.name] for t in manifest.outputs
         if t.dtype != "string" and np.dtype(t.dtype).kind in "iu"), None
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
        if arr is None or arr.dtype.kind != "f":
            continue
        if arr.ndim == 3 and arr.shape[1] == 1:  # [N, 1, C]
            arr = arr[:, 0]
        if arr.ndim == 2 and arr.shape[1] == n_labels:
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
