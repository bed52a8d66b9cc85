"""The marketplace API on real servers (SQLite + embedded Valkey; PostgreSQL + Redis)."""

from __future__ import annotations

import base64
import io
import pickle
from datetime import UTC, datetime

import numpy as np
import pytest
import yaml
from onnx import TensorProto, helper
from PIL import Image

from tests.helpers import (
    DIGIT_ZERO,
    admin_token,
    bearer,
    grant,
    new_key,
    signup,
    v2_body,
)


def error_of(r) -> dict:
    body = r.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    return body["error"]


@pytest.fixture(scope="module")
def digits_model() -> tuple[bytes, dict]:
    from storefront.demo import digits

    return digits()


def upload(client, token, data: bytes, manifest: dict | str, *, as_text=False, slug=None):
    text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
    files = {"model": ("m.onnx", data, "application/octet-stream")}
    form = {"attest_rights": "true", "license": "MIT", **({"slug": slug} if slug else {})}
    if as_text:
        form["manifest"] = text
    else:
        files["manifest"] = ("manifest.yaml", text.encode(), "application/yaml")
    return client.post("/v1/models", headers=bearer(token), files=files, data=form)


def flush(client) -> None:
    client.app.state.services.flusher.drain()


def test_the_whole_journey(client, digits_model):
    data, manifest = digits_model
    manifest = {**manifest, "title": "Journey digits",
                "pricing": {"per_call": "0.0025", "trial_calls": 2, "export_price": "9.00"}}
    seller_email, seller = signup(client, "seller")
    r = upload(client, seller, data, manifest)
    assert r.status_code == 201, r.text
    slug = r.json()["slug"]
    assert r.json()["status"] == "pending_review" and r.json()["version"] == 1
    assert client.get(f"/v1/models/{slug}").status_code == 404  # not listed before review

    buyer_email, buyer = signup(client, "buyer")
    key = new_key(client, buyer)
    assert client.post(f"/v2/models/{slug}/infer", json=v2_body(),
                       headers=bearer(key)).status_code == 404

    admin = admin_token(client)
    r = client.post(f"/v1/admin/models/{slug}/approve", headers=bearer(admin))
    assert r.status_code == 200 and r.json()["status"] == "live"
    detail = client.get(f"/v1/models/{slug}").json()
    assert detail["pricing"] == {"per_call": "0.0025", "trial_calls": 2, "export_price": "9.00",
                                 "currency": "USD"}
    assert detail["inputs"][0]["name"] == "X" and detail["versions"][0]["version"] == 1

    for left in (1, 0):  # the free trial
        r = client.post(f"/v2/models/{slug}/infer", json=v2_body(), headers=bearer(key))
        assert r.status_code == 200, r.text
        assert r.headers["X-Cost"] == "0.00" and r.headers["X-Trial-Remaining"] == str(left)
        assert r.json()["outputs"][0]["data"] == [0]
    r = client.post(f"/v2/models/{slug}/infer", json=v2_body(), headers=bearer(key))
    assert r.status_code == 402 and error_of(r)["code"] == "insufficient_credits"

    assert grant(client, buyer_email, "0.01")["credits"] == "0.01"
    for left in ("0.0075", "0.005", "0.0025", "0.00"):
        r = client.post(f"/v2/models/{slug}/infer", json=v2_body(), headers=bearer(key))
        assert r.status_code == 200
        assert (r.headers["X-Cost"], r.headers["X-Credits-Remaining"]) == ("0.0025", left)
        assert len(r.headers["X-Request-Id"]) == 32
    assert client.post(f"/v2/models/{slug}/infer", json=v2_body(),
                       headers=bearer(key)).status_code == 402

    flush(client)
    usage = client.get("/v1/usage", headers=bearer(buyer)).json()
    assert usage["total"] == {"calls": 6, "trial_calls": 2, "paid_calls": 4, "spend": "0.01"}
    assert usage["credits"] == usage["ledger_balance"] == "0.00"
    today = datetime.now(UTC).date().isoformat()
    assert usage["days"] == [{"date": today, "slug": slug, "calls": 6, "trial_calls": 2,
                              "paid_calls": 4, "spend": "0.01"}]
    earn = client.get("/v1/seller/earnings", headers=bearer(seller)).json()["total"]
    assert earn == {"calls": 6, "trial_calls": 2, "paid_calls": 4, "revenue": "0.01",
                    "seller_share": "0.008", "platform_fee": "0.002", "exports_sold": 0,
                    "demo_calls": 0}
    listed = client.get("/v1/models", params={"q": "Journey"}).json()
    assert [i["slug"] for i in listed["items"]] == [slug]
    assert listed["items"][0]["calls_served"] == 6


def test_failed_and_invalid_calls_are_never_charged(client):
    email, buyer = signup(client, "buyer")
    key = new_key(client, buyer)
    grant(client, email, "1.00")
    slug = "handwritten-digits"
    for _ in range(5):  # use up the trial
        assert client.post(f"/v2/models/{slug}/infer", json=v2_body(),
                           headers=bearer(key)).status_code == 200
    bad = [
        (b"{not json", "invalid_json"),
        (b'{"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1,2,3]}]}',
         "invalid_input"),
        (b'{"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1]}]}',
         "invalid_input"),
        (b'[]', "invalid_input"),
    ]
    for raw, code in bad:
        r = client.post(f"/v2/models/{slug}/infer", content=raw, headers=bearer(key))
        assert r.status_code == 422 and error_of(r)["code"] == code
        assert "X-Request-Id" in r.headers
    me = client.get("/v1/account", headers=bearer(buyer)).json()
    assert me["credits"] == "1.00"
    flush(client)
    assert client.get("/v1/usage", headers=bearer(buyer)).json()["total"]["paid_calls"] == 0


def test_keys_authenticate_and_revocation_takes_effect(client):
    _, buyer = signup(client, "buyer")
    key = new_key(client, buyer)
    url = "/v2/models/iris-species/infer"
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                        "data": [5.1, 3.5, 1.4, 0.2]}]}
    assert error_of(client.post(url, json=body))["code"] == "missing_key"
    r = client.post(url, json=body, headers=bearer("amk_000000000000_nope"))
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_key"
    assert client.post(url, json=body, headers=bearer(key)).status_code == 200
    keys = client.get("/v1/keys", headers=bearer(buyer)).json()["items"]
    assert len(keys) == 1 and "key" not in keys[0]
    assert client.delete(f"/v1/keys/{keys[0]['id']}", headers=bearer(buyer)).status_code == 200
    r = client.post(url, json=body, headers=bearer(key))
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_key"
    _, other = signup(client, "buyer")
    assert client.delete(f"/v1/keys/{keys[0]['id']}", headers=bearer(other)).status_code == 404


def test_unknown_model_is_404_with_envelope(client):
    _, buyer = signup(client, "buyer")
    key = new_key(client, buyer)
    r = client.post("/v2/models/no-such-model/infer", json=v2_body(), headers=bearer(key))
    assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"
    r = client.post("/v2/models/handwritten-digits/versions/99/infer", json=v2_body(),
                    headers=bearer(key))
    assert r.status_code == 404
    assert client.post("/v2/models/handwritten-digits/versions/1/infer", json=v2_body(),
                       headers=bearer(key)).status_code == 200


def _digit_png() -> str:
    pixels = 255 - np.asarray(DIGIT_ZERO, dtype=float).reshape(8, 8) * 255 / 16
    img = Image.fromarray(pixels.astype(np.uint8)).resize((64, 64), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_task_level_predict_for_every_demo_task(client):
    _, buyer = signup(client, "buyer")
    key = new_key(client, buyer)
    r = client.post("/v1/models/handwritten-digits/predict", json={"image": _digit_png()},
                    headers=bearer(key))
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["label"] == "0"
    r = client.post("/v1/models/iris-species/predict", headers=bearer(key), json={"rows": [
        {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
        [6.7, 3.0, 5.2, 2.3]]})
    assert [p["label"] for p in r.json()["predictions"]] == ["setosa", "virginica"]
    r = client.post("/v1/models/diabetes-progression/predict", headers=bearer(key),
                    json={"rows": [[0.0] * 10]})
    assert 100 < r.json()["predictions"][0]["value"] < 200
    r = client.post("/v1/models/iris-species/predict", headers=bearer(key),
                    json={"rows": [{"sepal_length": 1}]})
    assert r.status_code == 422 and "missing features" in error_of(r)["message"]


def test_upload_refusals_name_the_problem(client, digits_model):
    data, manifest = digits_model
    _, seller = signup(client, "seller")
    _, buyer = signup(client, "buyer")
    assert upload(client, buyer, data, manifest).status_code == 403
    r = client.post("/v1/models", files={"model": ("m.onnx", data)})
    assert r.status_code == 401 and error_of(r)["code"] == "not_authenticated"
    cases = [
        (pickle.dumps({"w": [1, 2]}), manifest, "pickle_refused"),
        (b"PK\x03\x04" + b"\0" * 100, manifest, "invalid_archive"),
        (data[: len(data) // 2], manifest, "invalid_onnx"),
        (data, {**manifest, "inputs": [{"name": "pixels", "dtype": "float32",
                                        "shape": [-1, 64]}]}, "manifest_mismatch"),
        (data, {**manifest, "outputs": [{"name": "label", "dtype": "float32",
                                         "shape": [-1]}]}, "manifest_mismatch"),
        (data, "title: [unclosed", "invalid_manifest"),
    ]
    for blob, man, code in cases:
        r = upload(client, seller, blob, man)
        assert r.status_code == 422, r.text
        assert error_of(r)["code"] == code
    r = client.post("/v1/models", headers=bearer(seller), data={"attest_rights": "true"},
                    files={"model": ("m.onnx", data)})
    assert r.status_code == 422 and error_of(r)["code"] == "missing_manifest"
    r = client.post("/v1/models", headers=bearer(seller),
                    files={"model": ("m.onnx", data), "manifest": ("m.yaml", "title: x")})
    assert r.status_code == 422 and error_of(r)["code"] == "rights_not_attested"
    # the manifest may also come as a plain text field
    r = upload(client, seller, data, {**manifest, "title": "Text field digits"}, as_text=True)
    assert r.status_code == 201, r.text


def test_pickles_are_refused_with_conversion_advice(client, digits_model):
    _, seller = signup(client, "seller")
    r = upload(client, seller, pickle.dumps(object), digits_model[1])
    err = error_of(r)
    assert "pickle" in err["message"] and "skl2onnx" in err["message"]


def test_review_reject_then_new_version(client, digits_model):
    data, manifest = digits_model
    _, seller = signup(client, "seller")
    _, buyer = signup(client, "buyer")
    slug = upload(client, seller, data, {**manifest, "title": "Rejected digits"}).json()["slug"]
    assert client.post(f"/v1/admin/models/{slug}/approve",
                       headers=bearer(buyer)).status_code == 403
    admin = admin_token(client)
    r = client.post(f"/v1/admin/models/{slug}/reject", headers=bearer(admin), json={})
    assert r.status_code == 422
    r = client.post(f"/v1/admin/models/{slug}/reject", headers=bearer(admin),
                    json={"reason": "labels are wrong"})
    assert r.status_code == 200
    mine = client.get("/v1/seller/models", headers=bearer(seller)).json()["items"]
    assert mine[0]["versions"][0]["status"] == "rejected"
    assert mine[0]["versions"][0]["review_reason"] == "labels are wrong"
    r = upload(client, seller, data, {**manifest, "title": "Rejected digits"})
    assert (r.json()["slug"], r.json()["version"]) == (slug, 2)
    queue = client.get("/v1/admin/review-queue", headers=bearer(admin)).json()["items"]
    assert any(i["slug"] == slug and i["version"] == 2 for i in queue)
    r = client.post(f"/v1/admin/models/{slug}/approve", headers=bearer(admin),
                    json={"version": 1})
    assert r.status_code == 409 and error_of(r)["code"] == "already_reviewed"
    # someone else cannot add versions to this listing
    _, other = signup(client, "seller")
    assert upload(client, other, data, manifest, slug=slug).status_code == 403


def test_new_version_is_served_beside_the_old(client, digits_model):
    data, manifest = digits_model
    _, seller = signup(client, "seller")
    admin = admin_token(client)
    m1 = {**manifest, "title": "Versioned digits"}
    slug = upload(client, seller, data, m1).json()["slug"]
    client.post(f"/v1/admin/models/{slug}/approve", headers=bearer(admin))
    m2 = {**m1, "pricing": {"per_call": "0.003", "trial_calls": 5}}
    assert upload(client, seller, data, m2).json()["version"] == 2
    client.post(f"/v1/admin/models/{slug}/approve", headers=bearer(admin))
    _, buyer = signup(client, "buyer")
    key = new_key(client, buyer)
    r = client.post(f"/v2/models/{slug}/infer", json=v2_body(), headers=bearer(key))
    assert r.headers["X-Model-Version"] == "2" and r.json()["model_version"] == "2"
    r = client.post(f"/v2/models/{slug}/versions/1/infer", json=v2_body(), headers=bearer(key))
    assert r.headers["X-Model-Version"] == "1"
    assert [v["version"] for v in client.get(f"/v1/models/{slug}").json()["versions"]] == [2, 1]


def _fails_at_batch_2() -> tuple[bytes, dict]:
    """A model that passes the batch-1 smoke test but fails inside onnxruntime for batch 2."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 4])
    shape = helper.make_tensor("s", TensorProto.INT64, [2], [1, 4])
    graph = helper.make_graph([helper.make_node("Reshape", ["X", "s"], ["Y"])], "g", [x], [y],
                              [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    manifest = {"title": "Fragile", "category": "test", "task": "tensor",
                "inputs": [{"name": "X", "dtype": "float32", "shape": [-1, 4]}],
                "outputs": [{"name": "Y", "dtype": "float32", "shape": [-1, 4]}],
                "pricing": {"per_call": "0.5", "trial_calls": 0}}
    return model.SerializeToString(), manifest


def test_a_model_failure_is_not_charged(client):
    data, manifest = _fails_at_batch_2()
    _, seller = signup(client, "seller")
    slug = upload(client, seller, data, manifest).json()["slug"]
    client.post(f"/v1/admin/models/{slug}/approve", headers=bearer(admin_token(client)))
    email, buyer = signup(client, "buyer")
    key = new_key(client, buyer)
    grant(client, email, "1.00")
    ok = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    r = client.post(f"/v2/models/{slug}/infer", json=ok, headers=bearer(key))
    assert r.status_code == 200 and r.headers["X-Credits-Remaining"] == "0.50"
    bad = {"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": [0] * 8}]}
    r = client.post(f"/v2/models/{slug}/infer", json=bad, headers=bearer(key))
    assert r.status_code in (422, 502), r.text
    assert error_of(r)["code"] in ("invalid_input", "inference_failed")
    assert client.get("/v1/account", headers=bearer(buyer)).json()["credits"] == "0.50"


def test_catalog_search_filters_sort_and_pages(client):
    items = client.get("/v1/models", params={"sort": "price", "page_size": 100}).json()["items"]
    prices = [float(i["price_per_call"]) for i in items]
    assert prices == sorted(prices)
    r = client.get("/v1/models", params={"task": "tabular-regression"}).json()
    assert {i["slug"] for i in r["items"]} >= {"diabetes-progression"}
    assert all(i["task"] == "tabular-regression" for i in r["items"])
    r = client.get("/v1/models", params={"category": "botany", "q": "iris"}).json()
    assert "iris-species" in {i["slug"] for i in r["items"]}  # (other tests list iris too)
    assert all(i["category"] == "botany" for i in r["items"])
    assert client.get("/v1/models", params={"category": "botany", "q": "diabetes"}
                      ).json()["total"] == 0
    page1 = client.get("/v1/models", params={"page_size": 2, "sort": "title"}).json()
    page2 = client.get("/v1/models", params={"page_size": 2, "page": 2, "sort": "title"}).json()
    assert len(page1["items"]) == 2 and page1["total"] == page2["total"] >= 4
    assert not {i["slug"] for i in page1["items"]} & {i["slug"] for i in page2["items"]}
    r = client.get("/v1/models", params={"sort": "cheapest"})
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_input"
    assert client.get("/v1/models", params={"q": "%_"}).json()["total"] == 0


def test_account_errors(client):
    addr, _ = signup(client, "buyer")
    r = client.post("/v1/accounts", json={"email": addr, "password": "password-456",
                                          "role": "seller"})
    assert r.status_code == 201  # as for a new e-mail: sign-up does not reveal who exists
    r = client.post("/v1/auth/token", data={"username": addr, "password": "password-456"})
    assert r.status_code == 401  # ...and the existing account is untouched
    r = client.post("/v1/accounts", json={"email": "x@example.com", "password": "short",
                                          "role": "buyer"})
    assert r.status_code == 422
    r = client.post("/v1/accounts", json={"email": "y@example.com", "password": "password-123",
                                          "role": "admin"})
    assert r.status_code == 422  # nobody signs up as admin
    r = client.post("/v1/auth/token", data={"username": addr, "password": "wrong-password"})
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_credentials"
    r = client.get("/v1/usage", headers=bearer("not-a-token"))
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_token"


def test_credit_grants_are_admin_only_and_validated(client):
    addr, buyer = signup(client, "buyer")
    body = {"account_email": addr, "amount": "5.00"}
    assert client.post("/v1/admin/credits", json=body, headers=bearer(buyer)).status_code == 403
    admin = bearer(admin_token(client))
    for amount in ("-1", "0", "1.0000001", "lots"):
        r = client.post("/v1/admin/credits", json={**body, "amount": amount}, headers=admin)
        assert r.status_code == 422 and error_of(r)["code"] == "invalid_amount"
    r = client.post("/v1/admin/credits", json={**body, "account_email": "ghost@example.com"},
                    headers=admin)
    assert r.status_code == 404
    once = {**body, "reference": "invoice-42"}
    assert client.post("/v1/admin/credits", json=once, headers=admin).json()["credits"] == "5.00"
    assert client.post("/v1/admin/credits", json=once, headers=admin).json()["credits"] == "5.00"


def scrape(client) -> dict[tuple[str, frozenset], float]:
    """The /metrics page, parsed: (sample name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_and_health(client):
    assert client.get("/healthz").json()["status"] == "ok"
    addr, buyer = signup(client, "buyer")
    key = new_key(client, buyer)
    grant(client, addr, "1.00")
    slug = "handwritten-digits"
    paid = ("aimarket_calls_total", frozenset({"listing": slug, "kind": "paid"}.items()))
    trial = ("aimarket_calls_total", frozenset({"listing": slug, "kind": "trial"}.items()))
    flushed = ("aimarket_ledger_events_flushed_total", frozenset())
    client.app.state.services.flusher.drain()
    before = scrape(client)
    costs = []
    for _ in range(6):  # the listing's 5 trial calls, then one paid call
        r = client.post(f"/v2/models/{slug}/infer", json=v2_body(), headers=bearer(key))
        assert r.status_code == 200, r.text
        costs.append(r.headers["X-Cost"])
    assert costs == ["0.00"] * 5 + ["0.002"]
    client.app.state.services.flusher.drain()
    after = scrape(client)
    assert after[paid] == before.get(paid, 0) + 1
    assert after[trial] == before.get(trial, 0) + 5
    assert after[("aimarket_ledger_flush_lag_events", frozenset())] == 0
    # counted by every flusher (in other processes too); ours wrote our 6 events
    assert after[flushed] >= before.get(flushed, 0) + 6
    latency = ("aimarket_call_latency_seconds_count", frozenset({"listing": slug}.items()))
    assert after[latency] == before.get(latency, 0) + 6
