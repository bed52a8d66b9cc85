"""Object detection and image segmentation: images in (resize or letterbox, mean / std, NCHW or
NHWC), boxes or masks out, in the pixels of the images that were sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..codec import check_tensor
from ..errors import InvalidInput
from ..manifest import Manifest, Preprocessing
from .common import MAX_CALL_PIXELS, load_image, media_list, png_b64

PAD = 114  # the grey of a letterbox, as the YOLO family trains with


@dataclass(frozen=True)
class Placement:
    """Where an original image lies in the model's input: x_in = x * rx + dx."""

    width: int
    height: int
    rx: float
    ry: float
    dx: float
    dy: float

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        out = boxes.astype(np.float64, copy=True)
        out[:, [0, 2]] = ((out[:, [0, 2]] - self.dx) / self.rx).clip(0, self.width)
        out[:, [1, 3]] = ((out[:, [1, 3]] - self.dy) / self.ry).clip(0, self.height)
        return out


def layout(manifest: Manifest) -> str:
    pre = manifest.preprocessing
    if pre is not None and pre.layout is not None:
        return pre.layout
    shape = manifest.inputs[0].shape
    channels = 3 if pre is not None and pre.mode == "RGB" else 1
    if len(shape) == 4 and shape[-1] == channels and shape[1] != channels:
        return "NHWC"
    return "NCHW"


def image_tensor(pre: Preprocessing, img: Image.Image, nhwc: bool) -> tuple[np.ndarray, Placement]:
    """One image as the model's [C, H, W] (or [H, W, C]) float32 input and its placement."""
    width, height = pre.size
    try:
        img = img.convert(pre.mode)
    except (ValueError, OSError) as exc:
        raise InvalidInput(f"image of mode {img.mode} cannot be converted to {pre.mode}") from exc
    w0, h0 = img.size
    if pre.letterbox:
        r = min(width / w0, height / h0)
        nw, nh = max(1, round(w0 * r)), max(1, round(h0 * r))
        dx, dy = (width - nw) // 2, (height - nh) // 2
        canvas = Image.new(pre.mode, (width, height), (PAD,) * len(pre.mode))
        canvas.paste(img.resize((nw, nh), Image.Resampling.BILINEAR), (dx, dy))
        place = Placement(w0, h0, nw / w0, nh / h0, dx, dy)
        img = canvas
    else:
        img = img.resize((width, height), Image.Resampling.BILINEAR)
        place = Placement(w0, h0, width / w0, height / h0, 0, 0)
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if pre.invert:
        arr = 255.0 - arr
    arr = arr * np.float32(pre.scale)
    if pre.mean is not None:
        arr = arr - np.asarray(pre.mean, dtype=np.float32)
    if pre.std is not None:
        arr = arr / np.asarray(pre.std, dtype=np.float32)
    return (arr if nhwc else arr.transpose(2, 0, 1)), place


def prepare(manifest: Manifest, payload: dict[str, Any]) -> tuple[dict[str, np.ndarray], Any]:
    pre, spec = manifest.preprocessing, manifest.inputs[0]
    assert pre is not None
    images = media_list(payload, "image", "images", "base64 PNG/JPEG", manifest.max_batch)
    nhwc = layout(manifest) == "NHWC"
    rows, places, pixels = [], [], 0
    for data in images:
        with load_image(data) as img:
            pixels += img.width * img.height
            if pixels > MAX_CALL_PIXELS:
                raise InvalidInput(f"the images of one call hold more than {MAX_CALL_PIXELS:,} "
                                   "pixels in all (MAX_CALL_PIXELS)")
            arr, place = image_tensor(pre, img, nhwc)
        rows.append(arr)
        places.append(place)
    batch = np.stack(rows).astype(spec.dtype)
    return {spec.name: check_tensor(spec, batch, manifest.max_batch)}, places


# -- detection ----------------------------------------------------------------------------------
def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (boxes xyxy), best first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        overlap = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def nms_per_class(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float,
                  limit: int) -> np.ndarray:
    keep = [idx[nms(boxes[idx], scores[idx], iou)]
            for c in np.unique(classes) for idx in [np.flatnonzero(classes == c)]]
    if not keep:
        return np.zeros(0, dtype=np.int64)
    kept = np.concatenate(keep)
    return kept[np.argsort(-scores[kept], kind="stable")][:limit]


def _candidates(manifest: Manifest, outputs: dict[str, np.ndarray], i: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``i``'s boxes (xyxy, input pixels), scores and classes before NMS."""
    det = manifest.detection
    pre = manifest.preprocessing
    assert det is not None and pre is not None
    width, height = pre.size
    if det.format == "yolov8":
        out = outputs[manifest.outputs[0].name]
        p = np.asarray(out[i], dtype=np.float64).T  # [A, 4 + C]
        cls = p[:, 4:].argmax(axis=1) if p.shape[1] > 4 else np.zeros(len(p), dtype=np.int64)
        score = p[:, 4:].max(axis=1) if p.shape[1] > 4 else np.zeros(len(p))
        cx, cy, w, h = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    else:
        names = det.outputs
        assert names is not None
        boxes = np.asarray(outputs[names.boxes][i], dtype=np.float64).reshape(-1, 4)
        score = np.asarray(outputs[names.scores][i], dtype=np.float64).reshape(-1)
        cls = (np.asarray(outputs[names.classes][i]).reshape(-1).astype(np.int64)
               if names.classes else np.zeros(len(score), dtype=np.int64))
    if det.normalized:
        boxes = boxes * np.asarray([width, height, width, height], dtype=np.float64)
    return boxes, score, cls


def detections(manifest: Manifest, outputs: dict[str, np.ndarray], places: list[Placement]
               ) -> dict[str, Any]:
    det = manifest.detection
    assert det is not None
    labels = manifest.labels or []
    preds = []
    for i, place in enumerate(places):
        boxes, score, cls = _candidates(manifest, outputs, i)
        sel = score >= det.score_threshold
        boxes, score, cls = boxes[sel], score[sel], cls[sel]
        keep = nms_per_class(boxes, score, cls, det.iou_threshold, det.max_detections)
        orig = place.to_original(boxes[keep]) if keep.size else np.zeros((0, 4))
        preds.append({"detections": [
            {"label": labels[c] if 0 <= c < len(labels) else str(c),
             "score": round(float(s), 6), "box": [round(float(v), 2) for v in b]}
            for b, s, c in zip(orig, score[keep], cls[keep].tolist(), strict=True)]})
    return {"predictions": preds}


# -- segmentation -------------------------------------------------------------------------------
def class_names(manifest: Manifest, channels: int) -> list[str]:
    labels = manifest.labels or []
    if channels == 1:  # one class's probability map: background and that class
        return labels[:2] if len(labels) >= 2 else ["background", *(labels or ["foreground"])]
    return [labels[c] if c < len(labels) else str(c) for c in range(channels)]


def class_map(manifest: Manifest, scores: np.ndarray) -> np.ndarray:
    """[C, H, W] scores -> [H, W] uint8 class indices."""
    if scores.shape[0] == 1:
        threshold = manifest.segmentation.threshold if manifest.segmentation else 0.5
        return (scores[0] > threshold).astype(np.uint8)
    return scores.argmax(axis=0).astype(np.uint8)


def masks(manifest: Manifest, outputs: dict[str, np.ndarray], places: list[Placement]
          ) -> dict[str, Any]:
    pre = manifest.preprocessing
    assert pre is not None
    out = np.asarray(outputs[manifest.outputs[0].name])
    if out.ndim != 4:
        raise InvalidInput(f"the model's output has shape {list(out.shape)}, not [N, C, H, W]")
    names = class_names(manifest, out.shape[1])
    preds = []
    for i, place in enumerate(places):
        idx = class_map(manifest, out[i])
        mh, mw = idx.shape
        sx, sy = mw / pre.size[0], mh / pre.size[1]  # the output may be smaller than the input
        box = (round(place.dx * sx), round(place.dy * sy),
               round((place.dx + place.width * place.rx) * sx),
               round((place.dy + place.height * place.ry) * sy))
        mask = Image.fromarray(idx).crop(box).resize(
            (place.width, place.height), Image.Resampling.NEAREST)
        counts = np.bincount(np.asarray(mask).reshape(-1), minlength=len(names))
        total = max(int(counts.sum()), 1)
        preds.append({"mask": png_b64(mask), "classes": [
            {"label": names[c] if c < len(names) else str(c),
             "fraction": round(int(n) / total, 6)}
            for c, n in enumerate(counts) if n]})
    return {"predictions": preds}
