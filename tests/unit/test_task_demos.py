"""The task demos built from real manifests, called through serving's own pipeline and
onnxruntime (the marketplace's demo path minus the metering): what a visitor gets back."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import gradio as gr
import numpy as np
import pytest
import yaml
from PIL import Image

from sandbox_ui import DemoSpec, build_demo
from serving import parse_manifest, postprocess, prepare_call
from serving.runtime import new_session
from serving.tasks.audio import wav_bytes
from tests import task_models as tm


class Pipeline:
    """The demo call as serving runs it: prepare, onnxruntime, postprocess."""

    def __init__(self, data: bytes, manifest: Any) -> None:
        self.sess, self.manifest, self.sent = new_session(data), manifest, []  # type: ignore[var-annotated]

    async def __call__(self, slug: str, payload: Any, request: Any) -> dict[str, Any]:
        self.sent.append(payload)
        tensors, context = prepare_call(self.manifest, payload)
        names = [o.name for o in self.sess.get_outputs()]
        out = dict(zip(names, self.sess.run(None, tensors), strict=True))
        return {**postprocess(self.manifest, out, context), "remaining_text": "9 left"}


def _demo(build: Any, **change: Any) -> tuple[gr.Blocks, Pipeline]:
    data, manifest = build()
    m = parse_manifest(yaml.safe_dump({**manifest, **change}))
    if m.text is not None and m.text.inputs is not None:
        m = m.model_copy(update={"text": m.text.model_copy(
            update={"tokenizer": tm.tokenizer_json()})})
    call = Pipeline(data, m)
    return build_demo(DemoSpec("s", 1, "T", m), call), call


def _fn(blocks: gr.Blocks) -> Any:
    return next(f.fn for f in blocks.fns.values() if f.api_name == "predict")


def test_detection_demo_draws_the_boxes_and_lists_them() -> None:
    blocks, _ = _demo(tm.yolo_like)
    picture = Image.new("RGB", (128, 64), "gray")
    drawn, rows, left = asyncio.run(_fn(blocks)(picture, None))
    assert [r[0] for r in rows] == ["cat", "dog"] and left == "9 left"
    assert rows[0][2] == "0, 0, 80, 58"  # the original image's pixels
    assert drawn.size == (128, 64)
    assert np.asarray(drawn).std() > 0  # boxes were drawn on the plain grey image


def test_segmentation_demo_overlays_the_mask_and_gives_class_shares() -> None:
    blocks, _ = _demo(tm.ppocr_det)
    from tests.integration.test_real_models import _text_image

    picture = Image.open(io.BytesIO(base64.b64decode(_text_image())))
    shown, rows, _ = asyncio.run(_fn(blocks)(picture, None))
    assert shown.size == picture.size
    assert [r[0] for r in rows] == ["background", "text"]
    assert all(r[1].endswith("%") for r in rows)


def test_audio_demo_sends_the_clip_and_shows_labels(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocks, call = _demo(tm.audio_clf)
    t = np.arange(8000) / 16000
    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav_bytes((0.8 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000))
    labels, _ = asyncio.run(_fn(blocks)(str(clip), None))
    assert set(labels) <= {"silence", "speech", "noise"} and len(labels) == 3
    assert base64.b64decode(call.sent[0]["audio"]) == clip.read_bytes()
    with pytest.raises(gr.Error, match="add a clip first"):
        asyncio.run(_fn(blocks)(None, None))


def test_text_demos_classify_and_compare() -> None:
    blocks, _ = _demo(tm.text_clf, examples=["love it, great"])
    text = next(b for b in blocks.blocks.values() if isinstance(b, gr.Textbox))
    assert text.value == "love it, great"
    labels, _ = asyncio.run(_fn(blocks)("awful and bad", None))
    assert max(labels, key=labels.get) == "negative"  # type: ignore[arg-type]

    blocks, _ = _demo(tm.embedder)
    out, _ = asyncio.run(_fn(blocks)("the cat sat", "the cat sat", None))
    assert "Cosine similarity: 1.0000" in out and "8 dimensions, length 1.000" in out


def test_tensor_demo_prefills_a_small_example_and_fills_random_inputs() -> None:
    manifest = yaml.safe_dump({**tm.tensor_manifest(
        "Big", [("images", "float32", [1, 3, 320, 320]), ("k", "int64", [])],
        [("y", "float32", [1, 3, 320, 320])])})
    blocks = build_demo(DemoSpec("s", 1, "T", parse_manifest(manifest)), Pipeline(
        tm.vad_like()[0], None))
    code = next(b for b in blocks.blocks.values() if isinstance(b, gr.Code))
    assert json.loads(code.value) == {"images": "random", "k": 0}  # never 307,200 zeros

    blocks, call = _demo(tm.vad_like)
    code = next(b for b in blocks.blocks.values() if isinstance(b, gr.Code))
    example = json.loads(code.value)
    assert example["sr"] == 16000 and np.asarray(example["state"]).shape == (2, 1, 128)
    outputs, _ = asyncio.run(_fn(blocks)(json.dumps({**example, "input": "random"}), None,
                                         None))
    assert np.asarray(call.sent[0]["inputs"]["input"]).shape == (1, 1)
    assert np.asarray(outputs["output"]).shape == (1, 1)


def test_tensor_demo_takes_npy_uploads_named_after_the_inputs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocks, call = _demo(tm.vad_like)
    code = next(b for b in blocks.blocks.values() if isinstance(b, gr.Code)).value
    wave = np.full((1, 512), 0.5, dtype=np.float32)
    np.save(tmp_path / "input.npy", wave)
    outputs, _ = asyncio.run(_fn(blocks)(code, [str(tmp_path / "input.npy")], None))
    assert call.sent[0]["inputs"]["input"] == wave.tolist()
    assert np.asarray(outputs["output"]).shape == (1, 1)
    np.save(tmp_path / "other.npy", wave)
    with pytest.raises(gr.Error, match="name a .npy file after the input"):
        asyncio.run(_fn(blocks)(code, [str(tmp_path / "other.npy")], None))
    np.save(tmp_path / "state.npy", np.asarray([object()], dtype=object), allow_pickle=True)
    with pytest.raises(gr.Error, match="not a readable .npy array"):
        asyncio.run(_fn(blocks)(code, [str(tmp_path / "state.npy")], None))
