"""The demo built from a manifest: the right inputs per task, the right payload per call."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import gradio as gr
import pytest
from PIL import Image

from sandbox_ui import DemoSpec, build_demo
from serving import InvalidInput, parse_manifest

TABULAR = """
title: Iris
category: botany
task: tabular-classification
inputs: [{name: X, dtype: float32, shape: [-1, 2]}]
outputs: [{name: label, dtype: int64, shape: [-1]}]
labels: [a, b]
feature_names: [width, height]
pricing: {per_call: "0.001"}
examples: [{width: 1.5, height: 2.5}, [3, 4]]
"""

IMAGE = """
title: Digits
category: vision
task: image-classification
inputs: [{name: X, dtype: float32, shape: [-1, 4]}]
outputs: [{name: label, dtype: int64, shape: [-1]}]
labels: ["0", "1"]
preprocessing: {size: [2, 2], mode: L}
pricing: {per_call: "0.001"}
"""

TENSOR = """
title: Echo
category: misc
task: tensor
inputs: [{name: x, dtype: float32, shape: [1, 2]}]
outputs: [{name: y, dtype: float32, shape: [1, 2]}]
pricing: {per_call: "0.001"}
"""


class Recorder:
    """Stands in for the marketplace's demo path; records what the demo sends it."""

    def __init__(self, answer: dict[str, Any] | Exception) -> None:
        self.answer = answer
        self.sent: list[tuple[str, Any]] = []

    async def __call__(self, slug: str, payload: Any, request: Any) -> dict[str, Any]:
        self.sent.append((slug, payload))
        if isinstance(self.answer, Exception):
            raise self.answer
        return {"remaining_text": "4 free demo calls left today", **self.answer}


def _demo(text: str, call: Recorder) -> gr.Blocks:
    return build_demo(DemoSpec("s", 1, "T", parse_manifest(text)), call)


def _fn(blocks: gr.Blocks, api_name: str) -> Any:
    return next(f.fn for f in blocks.fns.values() if f.api_name == api_name)


def test_tabular_demo_is_a_form_of_the_features_prefilled_from_the_examples() -> None:
    call = Recorder({"predictions": [{"label": "b", "top": [{"label": "b", "score": 0.9},
                                                             {"label": "a", "score": 0.1}]}]})
    blocks = _demo(TABULAR, call)
    numbers = [b for b in blocks.blocks.values() if isinstance(b, gr.Number)]
    assert [(n.label, n.value) for n in numbers] == [("width", 1.5), ("height", 2.5)]
    labels, left = asyncio.run(_fn(blocks, "predict")(None, 1.0, 2.0))
    assert call.sent == [("s", {"rows": [{"width": 1.0, "height": 2.0}]})]
    assert labels == {"b": 0.9, "a": 0.1} and left == "4 free demo calls left today"


def test_image_demo_sends_uploads_and_sketches_flattened_onto_white() -> None:
    call = Recorder({"predictions": [{"label": "1", "top": []}]})
    blocks = _demo(IMAGE, call)
    assert any(isinstance(b, gr.Sketchpad) for b in blocks.blocks.values())
    sketch = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # an untouched, transparent canvas
    sketch.putpixel((1, 1), (0, 0, 0, 255))
    labels, _ = asyncio.run(_fn(blocks, "predict_sketch")({"composite": sketch}, None))
    sent = Image.open(io.BytesIO(base64.b64decode(call.sent[0][1]["image"])))
    assert sent.convert("L").getpixel((0, 0)) == 255 and sent.convert("L").getpixel((1, 1)) == 0
    assert labels == {"1": 1.0}
    with pytest.raises(gr.Error, match="add an image first"):
        asyncio.run(_fn(blocks, "predict")(None, None))


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
           + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return raw


def test_image_demo_leaves_out_examples_it_cannot_decode() -> None:
    buf = io.BytesIO()
    Image.new("L", (2, 2), 0).save(buf, format="PNG")
    good = base64.b64encode(buf.getvalue()).decode()
    bomb = base64.b64encode(_png_header(50_000, 50_000)).decode()
    blocks = _demo(IMAGE + f"examples: ['{good}', '{bomb}', 'not base64!']\n",
                   Recorder({"predictions": []}))
    [dataset] = [b for b in blocks.blocks.values() if isinstance(b, gr.Dataset)]
    assert len(dataset.samples) == 1


def test_tensor_demo_takes_json_and_shows_refusals_as_errors() -> None:
    call = Recorder(InvalidInput("input 'x' has shape [1, 3]"))
    blocks = _demo(TENSOR, call)
    code = next(b for b in blocks.blocks.values() if isinstance(b, gr.Code))
    assert code.value == '{"x": [[0.0, 0.0]]}'
    with pytest.raises(gr.Error, match=r"input 'x' has shape \[1, 3\]"):
        asyncio.run(_fn(blocks, "predict")('{"x": [[1, 2, 3]]}', None, None))
    with pytest.raises(gr.Error, match="not valid JSON"):
        asyncio.run(_fn(blocks, "predict")("{", None, None))


def test_try_apps_serve_each_listing_and_rebuild_for_a_new_version() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from sandbox_ui import TryApps

    live = {"s": DemoSpec("s", 1, "Iris", parse_manifest(TABULAR))}

    async def lookup(slug: str) -> DemoSpec | None:
        return live.get(slug)

    apps = TryApps(lookup, Recorder({}))
    app = FastAPI()
    app.mount("/try", apps)
    with TestClient(app) as c:
        assert "(version 1)" in c.get("/try/s/config").text
        live["s"] = DemoSpec("s", 2, "Iris", parse_manifest(TABULAR))
        assert "(version 2)" in c.get("/try/s/config").text
        r = c.get("/try/other/")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        c.portal.call(apps.close)
