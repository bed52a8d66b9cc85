"""'Compare with the export' (issue 18): POST /v1/models/{slug}/compare runs the chosen target's
export (fp16 / int8 on onnxruntime) beside the hosted model on the visitor's own input, answers
both answers and their difference, and is metered as a demo call (a signed-in buyer's free trial
call first, then the daily demo quota); bad choices and bad input are refused uncharged."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from export import convert
from export.calibration import choose
from serving import Manifest, prepare
from storefront.demo import digits
from tests.helpers import signup

pytestmark = pytest.mark.integration
URL = "/v1/models/handwritten-digits/compare"


@pytest.fixture
def visitor(client: Any) -> Iterator[Any]:
    """The app's client signed in (session cookie) as a new buyer: its own demo quota."""
    client.cookies.clear()
    addr, _ = signup(client, "buyer")
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get("/login").text)
    assert csrf is not None
    r = client.post("/login", data={"email": addr, "password": "password-123",
                                    "csrf": csrf.group(1), "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    yield client
    client.cookies.clear()


def _image(i: int = 0) -> str:
    manifest = Manifest.model_validate(digits()[1])
    assert manifest.examples
    return "".join(str(manifest.examples[i % len(manifest.examples)]).split())


def test_the_export_runs_beside_the_hosted_model(visitor: Any) -> None:
    body = {"target": "jetson-orin", "precision": "int8", "input": {"image": _image()}}
    r = visitor.post(URL, json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["target"] == "jetson-orin" and got["precision"] == "int8"
    assert got["kind"] == "trial" and got["model"] == "handwritten-digits"
    hosted, exported = got["hosted"]["predictions"], got["export"]["predictions"]
    assert len(hosted) == len(exported) == 1
    # the export's answer is the int8 model's, computed here independently
    data, raw = digits()
    manifest = Manifest.model_validate(raw)
    feeds = prepare(manifest, {"image": _image()})
    int8, _ = convert(data, "jetson-orin", "int8", choose(manifest, []).items)
    probs = dict(zip([o.name for o in ort.InferenceSession(int8).get_outputs()],
                     ort.InferenceSession(int8).run(None, feeds), strict=True))
    label_out = next(t.name for t in manifest.outputs if t.dtype.startswith("int"))
    assert exported[0]["label"] == str(int(np.asarray(probs[label_out]).reshape(-1)[0]))
    diff = got["difference"]
    assert diff["predictions"][0]["same_label"] == (hosted[0]["label"] == exported[0]["label"])
    assert diff["same_answer"] == (got["hosted"] == got["export"])
    assert diff["same_labels"] == diff["predictions"][0]["same_label"]
    assert set(diff["outputs"]) and all(o["max_abs_diff"] >= 0 for o in diff["outputs"].values())
    trial_left = got["trial_remaining"]
    # fp16, the Orin's default precision, is one more metered call
    r = visitor.post(URL, json={"target": "jetson-orin", "input": {"image": _image(1)}})
    assert r.status_code == 200, r.text
    assert r.json()["precision"] == "fp16" and r.json()["trial_remaining"] == trial_left - 1
    assert r.json()["difference"]["predictions"][0]["same_label"] is True


def test_bad_choices_and_input_are_refused_uncharged(visitor: Any) -> None:
    image = {"image": _image()}
    first = visitor.post(URL, json={"target": "onnx-fp16", "input": image})
    assert first.status_code == 200, first.text
    left = first.json()["trial_remaining"]
    cases = [
        ({"target": "tpu", "input": image}, "unknown_target"),
        ({"target": "onnx", "precision": "int8", "input": image}, "precision_unsupported"),
        ({"target": "jetson-orin", "input": {"image": "bm90IGFuIGltYWdl"}}, "invalid_input"),
        ({"target": "jetson-orin"}, "invalid_input"),
    ]
    for body, code in cases:
        r = visitor.post(URL, json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    r = visitor.post(URL, content=b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_json"
    r = visitor.post(URL, content=b"target=onnx", headers={
        "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_json"
    # a tabular model has no int8 form: refused with the reason, before any call is taken
    r = visitor.post("/v1/models/iris-species/compare", json={
        "target": "jetson-orin", "precision": "int8",
        "input": {"rows": [[5.1, 3.5, 1.4, 0.2]]}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "export_unsupported"
    r = visitor.post("/v1/models/no-such-model/compare", json={"target": "onnx", "input": image})
    assert r.status_code == 404 and "error" in r.json()
    again = visitor.post(URL, json={"target": "onnx-fp16", "input": image})
    assert again.status_code == 200 and again.json()["trial_remaining"] == left - 1
