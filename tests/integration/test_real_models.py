"""Detectors, segmenters, audio, text and multi-input tensor models as first-class listings:
each is uploaded, reviewed (its whole task pipeline smoke-run), approved, and called through
``/v1/models/{slug}/predict`` (trial, then paid) and ``/v2/models/{slug}/infer``; answers equal
onnxruntime run directly on the same tensors. Real published models come from PyPI packages of
the test extra (magika: Apache-2.0; rapidocr-onnxruntime's PP-OCRv4 detector: Apache-2.0);
where no package ships one for a family, the graph is built in tests/task_models.py."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw, ImageFont

from serving import parse_manifest, postprocess, prepare_call
from serving.runtime import new_session
from serving.tasks.audio import wav_bytes
from storefront.demo_built import archive
from tests import task_models as tm
from tests.helpers import admin_token, bearer, grant, new_key, signup

pytestmark = pytest.mark.integration


def _png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _text_image() -> str:
    img = Image.new("RGB", (320, 160), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=32)
    draw.text((20, 30), "Hello world", fill="black", font=font)
    draw.text((20, 90), "OCR 2026", fill="black", font=font)
    return _png(img)


def _clip(seconds: float, rate: int, loud: float) -> str:
    t = np.arange(int(seconds * rate)) / rate
    return base64.b64encode(wav_bytes((loud * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
                                      rate)).decode()


CASES: dict[str, Any] = {
    "vad": (tm.vad_like, {"inputs": {"input": [[0.1] * 512, [0.5] * 512],
                                     "state": np.zeros((2, 2, 128)).tolist(), "sr": 16000}}),
    "magika": (tm.magika, {"inputs": {"bytes": np.random.default_rng(1).integers(
        0, 257, size=(2, 2048)).tolist()}}),
    "detector": (tm.yolo_like, {"images": [_png(Image.new("RGB", (128, 96), "gray")),
                                           _png(Image.new("RGB", (40, 80), "red"))]}),
    "segmenter": (tm.ppocr_det, {"image": _text_image()}),
    "audio": (tm.audio_clf, {"audios": [_clip(0.5, 44_100, 0.8), _clip(1.0, 16_000, 0.0)]}),
    "text": (tm.text_clf, {"texts": ["love it, great", "awful and bad"]}),
    "embedding": (tm.embedder, {"texts": ["the cat sat", "dogs in the park today"]}),
}


@pytest.fixture(scope="module")
def people(client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    _, seller = signup(client, "seller")
    addr, buyer = signup(client, "buyer")
    grant(client, addr, "1.00")
    return {"seller": seller, "key": bearer(new_key(client, buyer)),
            "admin": bearer(admin_token(client))}


def _upload(client, people, data: bytes, manifest: dict[str, Any], name: str) -> str:  # type: ignore[no-untyped-def]
    manifest = {**manifest, "title": f"{manifest['title']} {name}"}
    if manifest["task"] == "text-embedding":  # the tokenizer travels beside the model
        files = {"model": ("bundle.zip", archive({
            "model.onnx": data, "tokenizer.json": tm.tokenizer_json(),
            "manifest.yaml": yaml.safe_dump(manifest)}), "application/zip")}
    else:
        files = {"model": ("m.onnx", data, "application/octet-stream"),
                 "manifest": ("manifest.yaml", yaml.safe_dump(manifest).encode(),
                              "application/yaml")}
    r = client.post("/v1/models", headers=bearer(people["seller"]), files=files,
                    data={"attest_rights": "true"})
    assert r.status_code == 201, r.text
    slug = r.json()["slug"]
    r = client.post(f"/v1/admin/models/{slug}/approve", headers=people["admin"])
    assert r.status_code == 200, r.text
    return str(slug)


def _direct(data: bytes, manifest_text: str, payload: Any
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], Any]:
    manifest = parse_manifest(manifest_text)
    if manifest.text is not None and manifest.text.inputs is not None:
        manifest = manifest.model_copy(update={"text": manifest.text.model_copy(
            update={"tokenizer": tm.tokenizer_json()})})
    tensors, context = prepare_call(manifest, payload)
    sess = new_session(data)
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, tensors), strict=True))
    return tensors, out, postprocess(manifest, out, context)


def _v2(tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    v2 = {"float32": "FP32", "int64": "INT64", "int32": "INT32", "object": "BYTES"}
    return {"inputs": [{"name": k, "shape": list(v.shape), "datatype": v2[str(v.dtype)],
                        "data": v.ravel().tolist()} for k, v in tensors.items()]}


@pytest.mark.parametrize("case", list(CASES))
def test_task_upload_and_paid_calls_equal_onnxruntime(client, people, case: str) -> None:  # type: ignore[no-untyped-def]
    build, payload = CASES[case]
    data, manifest = build()
    slug = _upload(client, people, data, manifest, case)
    tensors, raw, expected = _direct(data, yaml.safe_dump(manifest), payload)

    costs = []
    for _ in range(2):  # the listing's one free trial call, then a paid one
        r = client.post(f"/v1/models/{slug}/predict", json=payload, headers=people["key"])
        assert r.status_code == 200, r.text
        body = r.json()
        for k in ("model", "version", "id"):
            body.pop(k)
        assert body == json.loads(json.dumps(expected)), case
        costs.append(r.headers["X-Cost"])
    assert costs == ["0.00", "0.001"]

    r = client.post(f"/v2/models/{slug}/infer", json=_v2(tensors), headers=people["key"])
    assert r.status_code == 200, r.text
    assert r.headers["X-Cost"] == "0.001"
    for out in r.json()["outputs"]:
        want = raw[out["name"]]
        got = np.asarray(out["data"]).reshape(out["shape"])
        assert got.shape == want.shape
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-6)


def test_task_answers_are_in_the_callers_terms(client, people) -> None:  # type: ignore[no-untyped-def]
    """Boxes in the original image's pixels, masks at its size, embeddings of unit length."""
    slug = _upload(client, people, *tm.yolo_like(), "terms")
    wide = _png(Image.new("RGB", (128, 64), "gray"))  # letterboxed: scale 0.5, pad 16 above
    r = client.post(f"/v1/models/{slug}/predict", json={"image": wide}, headers=people["key"])
    dets = r.json()["predictions"][0]["detections"]
    assert [d["label"] for d in dets] == ["cat", "dog"]  # the cat's twin suppressed (NMS)
    # the cat is cx 20, cy 20, w 40, h 50 in the 64x64 input: x1 y1 x2 y2 = 0 -5 40 45 there;
    # undoing the letterbox ((y - 16) / 0.5, clipped to the image) gives 0 0 80 58
    assert dets[0]["box"] == pytest.approx([0, 0, 80, 58], abs=0.1)
    assert dets[0]["score"] == pytest.approx(0.9, abs=0.01)

    slug = _upload(client, people, *tm.ppocr_det(), "terms")
    r = client.post(f"/v1/models/{slug}/predict", json={"image": _text_image()},
                    headers=people["key"])
    pred = r.json()["predictions"][0]
    mask = Image.open(io.BytesIO(base64.b64decode(pred["mask"])))
    assert mask.size == (320, 160)  # the original image's size
    assert {c["label"] for c in pred["classes"]} == {"background", "text"}
    arr = np.asarray(mask)
    assert arr[30:62, 20:200].mean() > 0.2  # the text regions: on the first line
    assert arr[0:20].max() == 0 and arr[130:].max() == 0  # and not above or below the text


@pytest.mark.parametrize(("case", "payload", "bound"), [
    ("audio", {"audio": _clip(6.0, 8000, 0.5)}, "max_seconds"),
    ("text", {"texts": ["x" * 20_001]}, "MAX_TEXT_CHARS"),
    ("detector", {"images": ["aGVsbG8="] * 65}, "max_batch"),
])
def test_decoding_bounds_are_4xx_and_reserve_nothing(client, people, case, payload, bound) -> None:  # type: ignore[no-untyped-def]
    build, _ = CASES[case]
    slug = _upload(client, people, *build(), f"bound {case}")
    r = client.post(f"/v1/models/{slug}/predict", json=payload, headers=people["key"])
    assert r.status_code == 422 and bound in r.json()["error"]["message"], r.text
    ok = CASES[case][1]
    r = client.post(f"/v1/models/{slug}/predict", json=ok, headers=people["key"])
    assert r.headers["X-Cost"] == "0.00"  # the trial call is still there: nothing was taken


@pytest.mark.parametrize(("case", "change", "reason"), [
    ("detector", {"labels": ["cat", "dog", "bird"]}, "dimension 1 must be 7"),
    ("detector", {"task": "image-segmentation"}, "as [N, C, H, W] scores"),
    ("embedding", {"text": {"inputs": {"input_ids": "input_ids"}}}, "text.inputs feeds"),
])
def test_a_manifest_that_does_not_fit_the_graph_is_refused(client, people, case, change,  # type: ignore[no-untyped-def]
                                                           reason) -> None:
    build, _ = CASES[case]
    data, manifest = build()
    manifest = {**manifest, **change}
    r = client.post("/v1/models", headers=bearer(people["seller"]), files={
        "model": ("m.onnx", data), "manifest": ("m.yaml", yaml.safe_dump(manifest).encode())},
        data={"attest_rights": "true"})
    assert r.status_code == 422, r.text
    assert reason in r.json()["error"]["message"], r.json()
