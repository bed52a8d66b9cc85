"""What every demo shares: the spec it is built from, the call it makes, image helpers."""

from __future__ import annotations

import base64
import contextlib
import io
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from serving import AimarketError, InvalidInput, Manifest, load_image

# (slug, task-level payload, the HTTP request) -> the demo call's answer
DemoCall = Callable[[str, Any, Any], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class DemoSpec:
    """What a demo is built from: a live listing version."""

    slug: str
    version: int
    title: str
    manifest: Manifest


async def run(call: DemoCall, slug: str, payload: Any, request: gr.Request | None
              ) -> dict[str, Any]:
    """The demo call; the marketplace's refusals become Gradio errors the visitor sees."""
    try:
        return await call(slug, payload, getattr(request, "request", None))
    except AimarketError as exc:
        raise gr.Error(exc.message, title="Demo call refused") from exc


def flatten(image: Any) -> Image.Image:
    """An uploaded or sketched image as RGB (transparent pixels become white paper)."""
    if isinstance(image, dict):  # a sketch: the editor's layers flattened
        image = image.get("composite")
    if image is None:
        raise gr.Error("add an image first: upload one or draw one")
    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba).convert("RGB")
    return image


def png_b64(image: Any) -> str:
    buf = io.BytesIO()
    flatten(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def example_clips(m: Manifest) -> list[str]:
    """The manifest's example clips (base64 WAV / FLAC / OGG) as files for the audio demo's
    examples; one that does not decode as /predict decodes it is left out."""
    from serving.tasks.audio import load_audio

    folder, out = None, []
    for i, ex in enumerate(m.examples or []):
        if not isinstance(ex, str) or m.audio is None:
            continue
        with contextlib.suppress(InvalidInput):
            load_audio(ex, m.audio.sample_rate, m.audio.max_seconds)
            folder = folder or Path(tempfile.mkdtemp(prefix="aimarket-demo-clips-"))
            path = folder / f"example-{i + 1}.wav"
            path.write_bytes(base64.b64decode(ex))
            out.append(str(path))
    return out


def example_images(m: Manifest) -> list[Image.Image]:
    """The manifest's example images, decoded as /predict decodes images; the upload review
    refuses any it cannot decode, and one stored before that check is left out."""
    out = []
    for ex in m.examples or []:
        if isinstance(ex, str):
            with contextlib.suppress(InvalidInput), load_image("".join(ex.split())) as img:
                out.append(img.convert("RGB"))
    return out
