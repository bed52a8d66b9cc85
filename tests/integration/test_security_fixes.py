"""Regression tests of the security findings, through the HTTP API on both stacks."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.helpers import admin_token, bearer, new_key, signup

HUGE = 2**64  # above any int64 column
SLUG = "handwritten-digits"


def error_of(r) -> dict:  # type: ignore[no-untyped-def]
    body = r.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    return body["error"]


def _quiet(settings, **update):  # type: ignore[no-untyped-def]
    """Another app on the same servers: no demo seeding, no flusher."""
    return settings.model_copy(update={"seed_demo": False, "run_flusher": False, **update})


# 1. The admin bootstrap never takes over an account it did not create.

def test_bootstrap_refuses_to_promote_an_existing_account(client, settings):
    from storefront.app import create_app

    addr, token = signup(client, "buyer")
    other = _quiet(settings, admin_email=addr, admin_password=SecretStr("bootstrap-pass-1"))
    with pytest.raises(RuntimeError, match="AIMARKET_ADMIN_EMAIL"), \
            TestClient(create_app(other)):
        pass
    assert client.get("/v1/account", headers=bearer(token)).json()["role"] == "buyer"
    r = client.post("/v1/auth/token", data={"username": addr, "password": "bootstrap-pass-1"})
    assert r.status_code == 401


def test_bootstrap_leaves_an_existing_admin_alone(client, settings):
    from storefront.app import create_app

    with TestClient(create_app(_quiet(settings, admin_password=SecretStr("other-pass-123")))):
        pass
    assert admin_token(client)  # the admin's own password still works


# 8. Ids above int64 are invalid input, not a server error.

@pytest.mark.parametrize("method,path,body", [
    ("GET", f"/v1/kit-orders/{HUGE}", None),
    ("PATCH", f"/v1/keys/{HUGE}", {"name": "x"}),
    ("DELETE", f"/v1/keys/{HUGE}", None),
    ("POST", "/v1/exports", {"slug": "iris-species", "version": HUGE, "target": "onnx"}),
])
def test_huge_ids_of_a_buyer_are_422(client, method, path, body):
    _, token = signup(client, "buyer")
    r = client.request(method, path, headers=bearer(token), json=body)
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_input", r.text


@pytest.mark.parametrize("path,body", [
    (f"/v1/admin/kit-orders/{HUGE}/advance", {"state": "flashed"}),
    (f"/v1/admin/models/{SLUG}/approve", {"version": HUGE}),
    (f"/v1/admin/models/{SLUG}/reject", {"version": HUGE, "reason": "no"}),
])
def test_huge_ids_of_an_admin_are_422(client, path, body):
    r = client.post(path, headers=bearer(admin_token(client)), json=body)
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_input", r.text


def test_huge_v2_versions_are_422(client):
    _, token = signup(client, "buyer")
    key = bearer(new_key(client, token))
    for path in (f"/v2/models/{SLUG}/versions/{HUGE}", f"/v2/models/{SLUG}/versions/{HUGE}/ready"):
        r = client.get(path, headers=key)
        assert r.status_code == 422 and error_of(r)["code"] == "invalid_input", r.text


# 9. The binary extension's header length is ASCII digits of a sane length.

@pytest.mark.parametrize("length", [b"\xb2", b"9" * 5000])
def test_odd_binary_header_lengths_are_422(client, length):
    _, token = signup(client, "buyer")
    r = client.post(f"/v2/models/{SLUG}/infer", content=b"{}",
                    headers={**bearer(new_key(client, token)),
                             "Inference-Header-Content-Length": length})
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_input", r.text


# 10. Money beyond int64 micro-units is invalid input.

def test_a_spend_cap_beyond_int64_is_422(client):
    _, token = signup(client, "buyer")
    r = client.post("/v1/keys", headers=bearer(token), json={"spend_cap_day": "10000000000000"})
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_amount", r.text
    key = client.post("/v1/keys", headers=bearer(token), json={}).json()
    r = client.patch(f"/v1/keys/{key['id']}", headers=bearer(token),
                     json={"spend_cap_month": "-10000000000000"})
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_amount", r.text


