"""The demo catalog lists real published models of the newer tasks when their packages are
installed (the test extra installs them): listed, demoed and called like the scikit-learn ones."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from storefront.demo_tasks import TASK_DEMOS, package_file
from tests.helpers import bearer, new_key, signup

pytestmark = pytest.mark.integration


def test_each_installed_task_demo_is_listed(client) -> None:  # type: ignore[no-untyped-def]
    available = [slug for slug, build in TASK_DEMOS.items() if build() is not None]
    assert available == list(TASK_DEMOS)  # the test extra ships every one of them
    listed = {m["slug"]: m for m in client.get("/v1/models", params={"page_size": 100})
              .json()["items"]}
    assert listed["ocr-text-regions"]["task"] == "image-segmentation"
    assert listed["magika-content-types"]["task"] == "tensor"
    assert {listed[s]["task"] for s in ("digit-finder", "phone-keypad-tones",
                                        "python-question-router", "python-doc-embeddings")} == {
        "object-detection", "audio-classification", "text-classification", "text-embedding"}
    for slug in ("digit-finder", "phone-keypad-tones", "python-question-router",
                 "python-doc-embeddings"):
        assert client.get(f"/try/{slug}/config").status_code == 200, slug
    config = client.get("/try/ocr-text-regions/config")
    assert config.status_code == 200 and "Segment" in config.text


def test_the_ocr_listing_finds_the_text_of_its_own_example(client) -> None:  # type: ignore[no-untyped-def]
    _, buyer = signup(client, "buyer")
    key = bearer(new_key(client, buyer))
    example = client.get("/v1/models/ocr-text-regions").json()
    build = TASK_DEMOS["ocr-text-regions"]()
    assert build is not None and example["slug"] == "ocr-text-regions"
    picture = build[1]["examples"][0]
    r = client.post("/v1/models/ocr-text-regions/predict", headers=key,
                    json={"image": picture})
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(pred["mask"]))))
    assert mask.shape == (200, 480)  # the example's own size
    shares = {c["label"]: c["fraction"] for c in pred["classes"]}
    assert 0.02 < shares["text"] < 0.5
    assert mask[24:60, 24:200].mean() > 0.2 and mask[150:].max() == 0  # the first line, only


def test_magika_names_python_source_from_its_example(client) -> None:  # type: ignore[no-untyped-def]
    _, buyer = signup(client, "buyer")
    key = bearer(new_key(client, buyer))
    build = TASK_DEMOS["magika-content-types"]()
    assert build is not None
    config = package_file("magika", "models/standard_v3_3/config.min.json")
    assert config is not None
    labels = json.loads(config.read_text())["target_labels_space"]
    r = client.post("/v1/models/magika-content-types/predict", headers=key,
                    json={"inputs": build[1]["examples"][0]})
    assert r.status_code == 200, r.text
    probs = np.asarray(r.json()["outputs"]["target_label"])
    assert labels[int(probs[0].argmax())] == "python"


def _predict(client, slug: str, body: dict) -> dict:  # type: ignore[no-untyped-def,type-arg]
    _, buyer = signup(client, "buyer")
    r = client.post(f"/v1/models/{slug}/predict", headers=bearer(new_key(client, buyer)),
                    json=body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_the_digit_finder_reads_the_digits_of_its_own_example_page(client) -> None:  # type: ignore[no-untyped-def]
    from sklearn.datasets import load_digits

    from storefront.demo_built import digit_page

    digits = load_digits()
    _, truth = digit_page(np.random.default_rng(7), digits.images / 16.0, digits.target)
    build = TASK_DEMOS["digit-finder"]()
    assert build is not None
    found = _predict(client, "digit-finder",
                     {"image": build[1]["examples"][0]})["predictions"][0]["detections"]
    # the example is the page drawn 6 times larger: boxes come back in its own pixels
    read = {(d["label"], round(d["box"][0] / 6), round(d["box"][1] / 6)) for d in found}
    hits = sum(any(label == str(digit) and abs(x - dx) <= 1 and abs(y - dy) <= 1
                   for label, dx, dy in read) for digit, x, y in truth)
    assert len(truth) >= 9
    assert hits >= 0.85 * len(truth), (sorted(read), truth)
    assert len(found) <= len(truth) + 2  # hardly a box where no digit is
    assert all(d["box"][2] - d["box"][0] == 48 for d in found)  # 8 model pixels, 6 times


def test_the_keypad_decoder_names_the_key_dialled(client) -> None:  # type: ignore[no-untyped-def]
    from serving.tasks.audio import wav_bytes
    from storefront.demo_built import keypad_tone

    clips = [keypad_tone("7", 0.2, 44_100), keypad_tone("#", 0.5, 8000),
             (0.2 * np.random.default_rng(0).standard_normal(16_000)).astype(np.float32)]
    answers = [_predict(client, "phone-keypad-tones",
                        {"audio": base64.b64encode(wav_bytes(c, rate)).decode()}
                        )["predictions"][0]["label"]
               for c, rate in zip(clips, (44_100, 8000, 16_000), strict=True)]
    assert answers == ["7", "#", "none"]


def test_the_question_router_and_the_embeddings_read_python_questions(client) -> None:  # type: ignore[no-untyped-def]
    routed = _predict(client, "python-question-router", {"texts": [
        "How do I catch an exception and print its message?",
        "what does super() do in a subclass's __init__ method",
        "set a breakpoint and step through my code"]})["predictions"]
    assert [p["label"] for p in routed] == [
        "errors and exceptions", "classes and objects", "debugging"]
    vectors = np.asarray(_predict(client, "python-doc-embeddings", {"texts": [
        "catch an exception", "handle an error raised in a try block",
        "format a string with padding"]})["embeddings"])
    assert vectors.shape == (3, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.2, (similar, unrelated)
