"""Edge delivery through the API: jetson-orin exports at a precision, the seller's calibration
inputs, tracing a leaked export to its licence (POST /v1/trace), and the compatibility table."""

from __future__ import annotations

import io
import uuid
import zipfile
from typing import Any

import numpy as np
import pytest
import yaml

from tests.helpers import admin_token, bearer, grant, signup
from tests.unit.test_watermark import strip


@pytest.fixture(scope="module")
def shop(client: Any) -> dict[str, Any]:
    """A seller's live digits listing, a buyer holding its export licence, another seller."""
    from storefront.demo import digits

    data, manifest = digits()
    seller, seller_token = signup(client, "seller")
    _, other_seller = signup(client, "seller")
    manifest = {**manifest, "title": f"Edge digits {uuid.uuid4().hex[:6]}",
                "pricing": {"per_call": "0.001", "trial_calls": 10, "export_price": "2.00"}}
    files = {"model": ("m.onnx", data, "application/octet-stream"),
             "manifest": ("manifest.yaml", yaml.safe_dump(manifest).encode(), "application/yaml")}
    r = client.post("/v1/models", headers=bearer(seller_token), files=files,
                    data={"attest_rights": "true", "license": "MIT"})
    assert r.status_code == 201, r.text
    slug = r.json()["slug"]
    admin = admin_token(client)
    assert client.post(f"/v1/admin/models/{slug}/approve", headers=bearer(admin)).status_code == 200
    buyer, buyer_token = signup(client, "buyer")
    grant(client, buyer, "20.00")
    r = client.post(f"/v1/models/{slug}/purchase", headers=bearer(buyer_token))
    assert r.status_code == 201, r.text
    return {"slug": slug, "model": data, "seller": seller_token, "other_seller": other_seller,
            "buyer": buyer, "buyer_token": buyer_token, "admin": admin}


def _export(client: Any, shop: dict[str, Any], **body: Any) -> Any:
    return client.post("/v1/exports", headers=bearer(shop["buyer_token"]),
                       json={"slug": shop["slug"], **body})


def _model_of(client: Any, shop: dict[str, Any], export: dict[str, Any]) -> bytes:
    blob = client.get(export["download"], headers=bearer(shop["buyer_token"]))
    assert blob.status_code == 200
    return zipfile.ZipFile(io.BytesIO(blob.content)).read("model.onnx")


def test_orin_exports_take_a_precision(client, shop):
    r = _export(client, shop, target="jetson-orin")
    assert r.status_code == 201, r.text
    assert r.json()["precision"] == "fp16" and r.json()["watermarked"] is True
    r = _export(client, shop, target="jetson-orin", precision="int8")
    assert r.status_code == 201, r.text
    exp = r.json()
    assert exp["precision"] == "int8" and exp["agreement"] >= 0.95
    assert "calibrated on 4 example inputs of the listing" in exp["notes"]
    assert client.get(f"/v1/exports/{exp['id']}", headers=bearer(shop["buyer_token"])
                      ).json()["precision"] == "int8"
    for target, precision in (("onnx", "int8"), ("jetson-orin", "fp32")):
        r = _export(client, shop, target=target, precision=precision)
        assert r.status_code == 422 and r.json()["error"]["code"] == "precision_unsupported"
    r = _export(client, shop, target="jetson-orin", precision="int4")
    assert r.status_code == 422 and "error" in r.json()


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_the_seller_uploads_calibration_inputs(client, shop):
    slug, url = shop["slug"], f"/v1/models/{shop['slug']}/calibration"
    rows = np.random.default_rng(0).random((12, 64)).astype(np.float32) * 16
    raw = {**bearer(shop["seller"]), "Content-Type": "application/octet-stream"}
    r = client.post(url, headers=raw, content=_npz(X=rows))
    assert r.status_code == 201, r.text
    assert r.json() == {"slug": slug, "inputs": 12, "used_for": r.json()["used_for"]}
    r = client.post(url, headers=bearer(shop["seller"]), files={"file": ("c.npz", _npz(X=rows))})
    assert r.status_code == 201 and r.json()["inputs"] == 12
    for bad in (b"junk", _npz(X=rows[:, :10]), _npz(X=np.array([{"a": 1}], dtype=object))):
        r = client.post(url, headers=raw, content=bad)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_calibration"
    r = client.post(url, headers=bearer(shop["seller"]), json={"bodies": "nope"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_calibration"
    r = client.post(url, headers={**bearer(shop["other_seller"]),
                                  "Content-Type": "application/octet-stream"},
                    content=_npz(X=rows))
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_your_listing"
    exp = _export(client, shop, target="jetson-orin", precision="int8").json()
    assert ("calibrated on 4 example inputs of the listing and 12 calibration inputs "
            "uploaded by the seller") in exp["notes"]


def _trace(client: Any, token: str | None, data: bytes) -> Any:
    headers = {"Content-Type": "application/octet-stream", **(bearer(token) if token else {})}
    return client.post("/v1/trace", headers=headers, content=data)


def test_a_leaked_export_is_traced_to_its_licence(client, shop):
    exp = _export(client, shop, target="onnx").json()
    leaked = strip(_model_of(client, shop, exp))
    for token in (shop["admin"], shop["seller"]):
        r = _trace(client, token, leaked)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["traced"] is True and got["license_id"] == exp["license_id"]
        assert got["licensee"] == shop["buyer"] and got["listing"] == shop["slug"]
        assert got["confidence"] > 0.999999
    # as a multipart upload too
    r = client.post("/v1/trace", headers=bearer(shop["admin"]),
                    files={"model": ("leak.onnx", leaked)})
    assert r.json()["license_id"] == exp["license_id"]
    # another seller learns nothing about this listing's licensees
    r = _trace(client, shop["other_seller"], leaked)
    assert r.status_code == 200 and r.json()["traced"] is False
    assert shop["buyer"] not in r.text
    assert _trace(client, shop["buyer_token"], leaked).status_code == 403
    assert _trace(client, None, leaked).status_code == 401
    # the listed model itself, and another listing's model, are untraceable
    from storefront.demo import wine

    for clean in (shop["model"], strip(shop["model"]), wine()[0]):
        r = _trace(client, shop["admin"], clean)
        assert r.status_code == 200 and r.json()["traced"] is False
    r = _trace(client, shop["admin"], b"not an onnx model")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_model"


def test_a_reuploaded_leak_names_its_licence_to_the_moderator_only(client, shop):
    exp = _export(client, shop, target="onnx").json()
    leaked = strip(_model_of(client, shop, exp))  # licence and metadata stripped, renamed
    _, pirate = signup(client, "seller")
    from storefront.demo import digits

    manifest = {**digits()[1], "title": f"My digits {uuid.uuid4().hex[:6]}"}
    r = client.post("/v1/models", headers=bearer(pirate), data={
        "attest_rights": "true", "license": "MIT"}, files={
        "model": ("mine.onnx", leaked, "application/octet-stream"),
        "manifest": ("m.yaml", yaml.safe_dump(manifest).encode(), "application/yaml")})
    assert r.status_code == 201, r.text
    codes = {f["code"] for f in r.json()["findings"]}
    assert "possible_copy" in codes and "leaked_export" not in codes  # the uploader's view
    assert exp["license_id"] not in r.text and shop["buyer"] not in r.text
    mine = client.get("/v1/seller/models", headers=bearer(pirate))
    assert mine.status_code == 200 and exp["license_id"] not in mine.text
    queue = client.get("/v1/admin/review-queue", headers=bearer(shop["admin"])).json()
    item = next(i for i in queue["items"] if i["slug"] == r.json()["slug"])
    leak = next(f for f in item["findings"] if f["code"] == "leaked_export")
    assert leak["evidence"]["license_id"] == exp["license_id"]
    assert leak["evidence"]["licensee"] == shop["buyer"]
    assert leak["evidence"]["listing"] == shop["slug"]


def test_the_export_compatibility_table(client, shop):
    r = client.get(f"/v1/models/{shop['slug']}/export-compatibility")
    assert r.status_code == 200, r.text
    rows = {row["target"]: row for row in r.json()["targets"]}
    assert list(rows) == ["onnx", "onnx-int8", "onnx-fp16", "nano-kit", "jetson-orin"]
    orin = rows["jetson-orin"]
    assert orin["exportable"] and orin["precisions"] == ["fp16", "int8"]
    assert orin["measure"] == "top1_agreement" and orin["max_opset"] == 20
    assert orin["results"]["int8"]["agreement"] >= 0.95
    iris = {row["target"]: row for row in client.get(
        "/v1/models/iris-species/export-compatibility").json()["targets"]}
    assert iris["jetson-orin"]["precisions"] == ["fp16"]
    assert any(n.startswith("int8:") for n in iris["jetson-orin"]["notes"])
    assert not iris["onnx-int8"]["exportable"]
    assert "ai.onnx.ml:LinearClassifier" in iris["jetson-orin"]["engine_fallback_ops"]


def test_the_model_page_shows_the_compatibility_table(client, shop):
    r = client.get(f"/models/{shop['slug']}")
    assert r.status_code == 200
    section = r.text.split('id="export-compatibility"', 1)[1].split("</section>", 1)[0]
    assert "<td>jetson-orin</td>" in section and "fp16, int8" in section
    assert "could not be measured" not in section
