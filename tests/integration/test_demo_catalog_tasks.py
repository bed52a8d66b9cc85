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
