"""Task-level JSON (``/v1/models/{slug}/predict``) <-> model tensors, driven by the manifest.

One module per task family; this one dispatches. ``prepare_call`` returns the tensors and what
the post-processing needs to answer in the caller's terms (where each image lay in the model's
input, the tokens' attention mask); ``postprocess`` takes it back.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InvalidInput
from ..manifest import IMAGE_TASKS, TEXT_TASKS, Manifest
from . import audio, classic, text, vision
from .common import (
    MAX_AUDIO_BYTES,
    MAX_CALL_PIXELS,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_TEXT_CHARS,
    load_image,
)

INLINE_BODY_BYTES = 64 * 1024  # bodies up to this size are decoded on the event loop


def prepare_call(manifest: Manifest, payload: Any) -> tuple[dict[str, np.ndarray], Any]:
    """A task-level request body -> (the model's input tensors, context for postprocess)."""
    if not isinstance(payload, dict):
        raise InvalidInput("body must be a JSON object")
    task = manifest.task
    if task in ("object-detection", "image-segmentation"):
        return vision.prepare(manifest, payload)
    if task == "audio-classification":
        return audio.prepare(manifest, payload), None
    if task in TEXT_TASKS:
        return text.prepare(manifest, payload)
    return classic.prepare(manifest, payload), None


def prepare(manifest: Manifest, payload: Any) -> dict[str, np.ndarray]:
    """A task-level request body -> the model's input tensors."""
    return prepare_call(manifest, payload)[0]


def postprocess(manifest: Manifest, outputs: dict[str, np.ndarray],
                context: Any = None) -> dict[str, Any]:
    """Model outputs -> task-level predictions (``context`` from ``prepare_call``)."""
    task = manifest.task
    if task in ("object-detection", "image-segmentation"):
        if context is None:  # the tensors were sent as such: the model's input is the image
            pre = manifest.preprocessing
            assert pre is not None
            n = len(next(iter(outputs.values())))
            context = [vision.Placement(pre.size[0], pre.size[1], 1, 1, 0, 0)] * n
        if task == "object-detection":
            return vision.detections(manifest, outputs, context)
        return vision.masks(manifest, outputs, context)
    if task == "text-embedding":
        return text.embeddings(manifest, outputs, context)
    if task in ("audio-classification", "text-classification"):
        return classic.classify(manifest, outputs)
    return classic.postprocess(manifest, outputs)


def sample_payload(manifest: Manifest, seed: int = 0) -> dict[str, Any] | None:
    """A generated task-level request for the review's smoke run of the whole pipeline; None
    for tasks whose request is the tensors themselves."""
    rng = np.random.default_rng(seed)
    task = manifest.task
    if task in IMAGE_TASKS:
        pre = manifest.preprocessing
        assert pre is not None
        w, h = pre.size
        pixels = rng.integers(0, 256, size=(h + h // 3, w + w // 5, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        return {"image": base64.b64encode(buf.getvalue()).decode("ascii")}
    if task == "audio-classification":
        cfg = manifest.audio
        assert cfg is not None
        rate = 44_100 if cfg.sample_rate != 44_100 else 22_050  # resampling is exercised too
        seconds = min(1.0, cfg.max_seconds)
        clip = (0.1 * rng.standard_normal(int(rate * seconds))).astype(np.float32)
        return {"audio": base64.b64encode(audio.wav_bytes(clip, rate)).decode("ascii")}
    if task in TEXT_TASKS:
        return {"texts": ["a generated sentence for the review", "another one"]
                [:manifest.max_batch]}
    return None


__all__ = [
    "INLINE_BODY_BYTES", "MAX_AUDIO_BYTES", "MAX_CALL_PIXELS", "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS", "MAX_TEXT_CHARS", "load_image", "postprocess", "prepare", "prepare_call",
    "sample_payload",
]
