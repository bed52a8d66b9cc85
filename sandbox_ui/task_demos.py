"""Demos of the tasks beyond classification, each built from the manifest and run through the
same metered demo call:

object-detection: an image -> the image with labelled boxes drawn, and a table of them
image-segmentation: an image -> the mask over the image, and each class's share of the pixels
audio-classification: a clip, uploaded or recorded -> the top labels
text-classification: a text -> the top labels
text-embedding: two texts -> their cosine similarity and a summary of each vector
tensor: JSON inputs, prefilled with a small valid example (large inputs as ``"random"``, a
generated tensor of the right shape), or .npy uploads per input -> the outputs, large ones
summarised
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from serving import Manifest, sample_inputs

from .common import DemoCall, DemoSpec, example_clips, example_images, flatten, png_b64, run

INLINE_ELEMENTS = 256  # a generated tensor input up to this size is shown whole
EXAMPLE_CHARS = 20_000  # a seller's example input up to this size (JSON) is shown whole
SUMMARY_ELEMENTS = 1_000  # a tensor output above this size is summarised
RANDOM = "random"
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


def labels(answer: dict[str, Any]) -> dict[str, float]:
    pred = answer["predictions"][0]
    top = pred.get("top") or [{"label": pred["label"], "score": 1.0}]
    return {t["label"]: float(t["score"]) for t in top}


def _image_input(spec: DemoSpec) -> gr.Image:
    image = gr.Image(type="pil", sources=["upload", "clipboard"], label="Image",
                     elem_id="demo-image")
    return image


def _examples(spec: DemoSpec, image: gr.Image) -> None:
    examples = example_images(spec.manifest)
    if examples:
        gr.Examples([[e] for e in examples], inputs=[image], label="Examples")


# -- object detection ---------------------------------------------------------------------------
def draw_boxes(image: Image.Image, detections: list[dict[str, Any]],
               names: list[str]) -> Image.Image:
    """The image with each detection's box and "label score" drawn, one colour per label."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 300))
    for d in detections:
        colour = PALETTE[(names.index(d["label"]) if d["label"] in names else 0) % len(PALETTE)]
        x1, y1, x2, y2 = d["box"]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        caption = f"{d['label']} {d['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), caption)
        lift = min(bottom - top + 4, y1)
        draw.rectangle((x1, y1 - lift, x1 + right - left + 4, y1 - lift + bottom - top + 4),
                       fill=colour)
        draw.text((x1 + 2, y1 - lift + 1), caption, fill=(255, 255, 255))
    return out


def detection_ui(spec: DemoSpec, call: DemoCall) -> None:
    names = spec.manifest.labels or []

    async def detect(image: Any, request: gr.Request) -> tuple[Image.Image, Any, str]:
        picture = flatten(image)
        answer = await run(call, spec.slug, {"image": png_b64(picture)}, request)
        found = answer["predictions"][0]["detections"]
        rows = [[d["label"], d["score"], ", ".join(f"{v:.0f}" for v in d["box"])] for d in found]
        return (draw_boxes(picture, found, names), rows or [["(nothing found)", None, ""]],
                answer["remaining_text"])

    with gr.Row():
        with gr.Column():
            image = _image_input(spec)
            go = gr.Button("Detect", variant="primary", elem_id="demo-run")
            _examples(spec, image)
        with gr.Column():
            drawn = gr.Image(type="pil", label="Detections", interactive=False,
                             elem_id="demo-drawn", format="png")
            table = gr.Dataframe(headers=["label", "score", "box (x1, y1, x2, y2)"],
                                 label="Boxes, in the image's pixels", interactive=False,
                                 elem_id="demo-output")
            left = gr.Markdown(elem_id="demo-remaining")
    go.click(detect, [image], [drawn, table, left], api_name="predict")


# -- image segmentation -------------------------------------------------------------------------
def overlay(image: Image.Image, mask: Image.Image, alpha: float = 0.5) -> Image.Image:
    """The image with each class but the first (background) tinted in its own colour."""
    idx = np.asarray(mask, dtype=np.int64)
    colours = np.asarray([(0, 0, 0)] + PALETTE, dtype=np.float32)
    tint = colours[np.where(idx > 0, (idx - 1) % len(PALETTE) + 1, 0)]
    base = np.asarray(image.convert("RGB").resize(mask.size), dtype=np.float32)
    blend = np.where((idx > 0)[..., None], base * (1 - alpha) + tint * alpha, base)
    return Image.fromarray(blend.clip(0, 255).astype(np.uint8))


def segmentation_ui(spec: DemoSpec, call: DemoCall) -> None:
    async def segment(image: Any, request: gr.Request) -> tuple[Image.Image, Any, str]:
        picture = flatten(image)
        answer = await run(call, spec.slug, {"image": png_b64(picture)}, request)
        pred = answer["predictions"][0]
        mask = Image.open(io.BytesIO(base64.b64decode(pred["mask"])))
        rows = [[c["label"], f"{c['fraction']:.1%}"] for c in pred["classes"]]
        return overlay(picture, mask), rows, answer["remaining_text"]

    with gr.Row():
        with gr.Column():
            image = _image_input(spec)
            go = gr.Button("Segment", variant="primary", elem_id="demo-run")
            _examples(spec, image)
        with gr.Column():
            shown = gr.Image(type="pil", label="Mask over the image", interactive=False,
                             elem_id="demo-drawn", format="png")
            table = gr.Dataframe(headers=["class", "share of the pixels"], label="Classes",
                                 interactive=False, elem_id="demo-output")
            left = gr.Markdown(elem_id="demo-remaining")
    go.click(segment, [image], [shown, table, left], api_name="predict")


# -- audio classification -----------------------------------------------------------------------
def audio_ui(spec: DemoSpec, call: DemoCall) -> None:
    cfg = spec.manifest.audio

    async def classify(clip: str | None, request: gr.Request) -> tuple[dict[str, float], str]:
        if not clip:
            raise gr.Error("add a clip first: upload one or record one")
        data = base64.b64encode(Path(clip).read_bytes()).decode()
        answer = await run(call, spec.slug, {"audio": data}, request)
        return labels(answer), answer["remaining_text"]

    limit = f"at most {cfg.max_seconds:g} s; " if cfg else ""
    with gr.Row():
        with gr.Column():
            clip = gr.Audio(sources=["upload", "microphone"], type="filepath",
                            label=f"A clip (WAV, FLAC or OGG; {limit}record with the microphone)",
                            elem_id="demo-audio")
            clips = example_clips(spec.manifest)
            if clips:
                gr.Examples([[c] for c in clips], inputs=[clip], label="Examples")
            go = gr.Button("Classify", variant="primary", elem_id="demo-run")
        with gr.Column():
            out = gr.Label(num_top_classes=3, label="Top labels", elem_id="demo-output")
            left = gr.Markdown(elem_id="demo-remaining")
    go.click(classify, [clip], [out, left], api_name="predict")


# -- text ---------------------------------------------------------------------------------------
def _text_examples(m: Manifest) -> list[str]:
    return [e for e in m.examples or [] if isinstance(e, str)]


def text_classification_ui(spec: DemoSpec, call: DemoCall) -> None:
    examples = _text_examples(spec.manifest)

    async def classify(text: str, request: gr.Request) -> tuple[dict[str, float], str]:
        if not text.strip():
            raise gr.Error("write some text first")
        answer = await run(call, spec.slug, {"texts": [text]}, request)
        return labels(answer), answer["remaining_text"]

    with gr.Row():
        with gr.Column():
            text = gr.Textbox(label="Text", lines=4, value=examples[0] if examples else "",
                              elem_id="demo-text")
            go = gr.Button("Classify", variant="primary", elem_id="demo-run")
            if len(examples) > 1:
                gr.Examples([[e] for e in examples], inputs=[text], label="Examples")
        with gr.Column():
            out = gr.Label(num_top_classes=3, label="Top labels", elem_id="demo-output")
            left = gr.Markdown(elem_id="demo-remaining")
    go.click(classify, [text], [out, left], api_name="predict")


def summarise_vector(vector: list[float]) -> str:
    v = np.asarray(vector, dtype=np.float64)
    head = ", ".join(f"{x:.3f}" for x in v[:6])
    return (f"{v.size} dimensions, length {np.linalg.norm(v):.3f}: "
            f"[{head}{', ...' if v.size > 6 else ''}]")


def embedding_ui(spec: DemoSpec, call: DemoCall) -> None:
    examples = _text_examples(spec.manifest) + ["", ""]

    async def embed(a: str, b: str, request: gr.Request) -> tuple[str, str]:
        texts = [t for t in (a, b) if t.strip()]
        if not texts:
            raise gr.Error("write some text first")
        answer = await run(call, spec.slug, {"texts": texts}, request)
        vectors = answer["embeddings"]
        lines = [f"**Text {i + 1}**: {summarise_vector(v)}" for i, v in enumerate(vectors)]
        if len(vectors) == 2:
            x, y = (np.asarray(v, dtype=np.float64) for v in vectors)
            cos = float(x @ y) / max(float(np.linalg.norm(x) * np.linalg.norm(y)), 1e-12)
            lines.insert(0, f"**Cosine similarity: {cos:.4f}**")
        return "\n\n".join(lines), answer["remaining_text"]

    with gr.Row():
        with gr.Column():
            a = gr.Textbox(label="Text 1", lines=3, value=examples[0], elem_id="demo-text")
            b = gr.Textbox(label="Text 2", lines=3, value=examples[1], elem_id="demo-text-2")
            go = gr.Button("Embed and compare", variant="primary", elem_id="demo-run")
        with gr.Column():
            out = gr.Markdown(label="Similarity", elem_id="demo-output")
            left = gr.Markdown(elem_id="demo-remaining")
    go.click(embed, [a, b], [out, left], api_name="predict")


# -- tensor -------------------------------------------------------------------------------------
def tensor_example(m: Manifest) -> dict[str, Any]:
    """The JSON editor's first text: the manifest's first example where it is small, else one
    small generated value per input, ``"random"`` for an input too large to show."""
    given = (m.examples or [None])[0]
    if isinstance(given, dict) and len(json.dumps(given)) <= EXAMPLE_CHARS:
        return given
    out: dict[str, Any] = {}
    for t in m.inputs:
        if isinstance(given, dict) and t.name in given and \
                len(json.dumps(given[t.name])) <= EXAMPLE_CHARS:
            out[t.name] = given[t.name]
            continue
        shape = [1 if d == -1 else d for d in t.shape]
        if int(np.prod(shape)) > INLINE_ELEMENTS:
            out[t.name] = RANDOM
        elif t.dtype == "string":
            out[t.name] = np.full(shape, "text", dtype=object).tolist()
        else:
            out[t.name] = np.zeros(shape, dtype=t.dtype).tolist()
    return out


def fill_random(m: Manifest, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with each ``"random"`` replaced by a generated tensor of the right shape."""
    if not any(v == RANDOM for v in inputs.values()):
        return inputs
    generated = sample_inputs(m.model_copy(update={"examples": None}), batch=1, seed=0)
    return {k: generated[k].tolist() if v == RANDOM and k in generated else v
            for k, v in inputs.items()}


def summarise(value: Any) -> Any:
    """An output as it is, or, above SUMMARY_ELEMENTS numbers, its shape and statistics."""
    arr = np.asarray(value)
    if arr.size <= SUMMARY_ELEMENTS or arr.dtype.kind not in "biuf":
        return value
    flat = arr.astype(np.float64).reshape(-1)
    return {"shape": list(arr.shape), "min": float(flat.min()), "max": float(flat.max()),
            "mean": round(float(flat.mean()), 6), "first": flat[:8].tolist()}


def describe_inputs(m: Manifest) -> str:
    parts = []
    for t in m.inputs:
        dims = ", ".join("N" if d == -1 and i == 0 else ("?" if d == -1 else str(d))
                         for i, d in enumerate(t.shape))
        parts.append(f"`{t.name}`: {t.dtype} [{dims}]")
    return ("Inputs: " + "; ".join(parts) + f". `\"{RANDOM}\"` stands for a generated tensor "
            "of the right shape (one item of the batch).")


def npy_inputs(m: Manifest, paths: list[str] | None) -> dict[str, Any]:
    """Uploaded .npy files, each named after the input it fills (``images.npy``)."""
    names = {t.name for t in m.inputs}
    out: dict[str, Any] = {}
    for path in paths or []:
        name = Path(path).name.removesuffix(".npy")
        if name not in names:
            raise gr.Error(f"{Path(path).name}: name a .npy file after the input it fills "
                           f"({', '.join(sorted(names))})")
        try:
            arr = np.load(path, allow_pickle=False)  # never unpickle a visitor's file
        except (ValueError, OSError, EOFError) as exc:
            raise gr.Error(f"{Path(path).name} is not a readable .npy array") from exc
        out[name] = arr.tolist()
    return out


def tensor_ui(spec: DemoSpec, call: DemoCall) -> None:
    m = spec.manifest

    async def predict(text: str, uploads: list[str] | None, request: gr.Request
                      ) -> tuple[Any, str]:
        try:
            inputs = json.loads(text)
        except ValueError as exc:
            raise gr.Error(f"inputs are not valid JSON: {exc}") from exc
        if isinstance(inputs, dict):
            inputs = fill_random(m, {**inputs, **npy_inputs(m, uploads)})
        answer = await run(call, spec.slug, {"inputs": inputs}, request)
        return {k: summarise(v) for k, v in answer["outputs"].items()}, answer["remaining_text"]

    with gr.Row():
        with gr.Column():
            gr.Markdown(describe_inputs(m), elem_id="demo-inputs")
            text = gr.Code(json.dumps(tensor_example(m)), language="json",
                           label="Inputs (JSON: input name -> nested list)",
                           elem_id="demo-input")
            uploads = gr.File(label="Or upload .npy files named after the inputs "
                              "(images.npy): they replace those inputs of the JSON",
                              file_count="multiple", file_types=[".npy"], elem_id="demo-npy")
            run_btn = gr.Button("Run", variant="primary", elem_id="demo-run")
        with gr.Column():
            out = gr.JSON(label="Outputs", elem_id="demo-output")
            left = gr.Markdown(elem_id="demo-remaining")
    run_btn.click(predict, [text, uploads], [out, left], api_name="predict")


UIS: dict[str, Callable[[DemoSpec, DemoCall], None]] = {
    "object-detection": detection_ui, "image-segmentation": segmentation_ui,
    "audio-classification": audio_ui, "text-classification": text_classification_ui,
    "text-embedding": embedding_ui,
}
