"""The Open Inference Protocol v2 routes beside the paid call (local backend; the tritonclient
proof on Ray is in test_ray.py): health and server metadata are public, model metadata and
readiness need an API key, the binary tensor extension is a paid call like JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import DIGIT_ZERO, bearer, grant, new_key, signup

pytestmark = pytest.mark.integration
SLUG = "handwritten-digits"


def test_server_health_and_metadata_are_public(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]


def test_model_metadata_and_readiness_need_a_key(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get(f"/v2/models/{SLUG}")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_key"
    _, token = signup(client, "buyer")
    key = bearer(new_key(client, token))
    meta = client.get(f"/v2/models/{SLUG}", headers=key).json()
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    version = meta["versions"][0]
    assert client.get(f"/v2/models/{SLUG}/versions/{version}", headers=key).status_code == 200
    assert client.get(f"/v2/models/{SLUG}/ready", headers=key).status_code == 200
    assert client.get(f"/v2/models/{SLUG}/versions/{version}/ready",
                      headers=key).status_code == 200
    r = client.get("/v2/models/no-such-model/ready", headers=key)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_binary_tensors_are_a_paid_call_like_json(client) -> None:  # type: ignore[no-untyped-def]
    addr, token = signup(client, "buyer")
    key = bearer(new_key(client, token))
    grant(client, addr, "1.00")
    raw = np.asarray([DIGIT_ZERO], dtype=np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    binary = {**key, "Inference-Header-Content-Length": str(len(header))}
    costs = []
    for _ in range(6):  # the listing's 5 free trial calls, then a paid one
        r = client.post(f"/v2/models/{SLUG}/infer", content=header + raw, headers=binary)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [0]
        costs.append(r.headers["X-Cost"])
    assert costs == ["0.00"] * 5 + ["0.002"]  # the listing's price
    assert r.headers["X-Credits-Remaining"] == "0.998"
    r = client.post(f"/v2/models/{SLUG}/infer", content=header + raw[:-4], headers=binary)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"  # not charged
    client.app.state.services.flusher.drain()
    usage = client.get("/v1/usage", headers=bearer(token)).json()
    assert usage["total"] == {"calls": 6, "trial_calls": 5, "paid_calls": 1, "spend": "0.002"}
    assert (usage["credits"], usage["ledger_balance"]) == ("0.998", "0.998")


def test_the_unmetered_benchmark_route_is_off_by_default(client) -> None:  # type: ignore[no-untyped-def]
    body = {"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32",
                        "data": [float(v) for v in DIGIT_ZERO]}]}
    r = client.post(f"/internal/unmetered/v2/models/{SLUG}/infer", json=body)
    assert r.status_code == 404 and "error" in r.json()
