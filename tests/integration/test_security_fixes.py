"""Regression tests of the security findings, through the HTTP API on both stacks."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from serving import parse_manifest
from storefront import filemodes
from tests.helpers import DIGIT_ZERO, admin_token, bearer, email, grant, new_key, signup

HUGE = 2**64  # above any int64 column
SLUG = "handwritten-digits"


def error_of(r) -> dict:  # type: ignore[no-untyped-def]
    body = r.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    return body["error"]


@pytest.fixture
def keep_umask() -> Iterator[None]:
    """An app sets the process umask at start; give the test process its own back."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)
    filemodes._shared_models = None  # the next app's start sets it again


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


# 15. The data dir is private; model files may be made group-readable.

def _mode(path) -> int:  # type: ignore[no-untyped-def]
    return stat.S_IMODE(os.stat(path).st_mode)


def test_data_files_are_private_by_default(settings, tmp_path, keep_umask):
    from storefront.app import create_app

    data = tmp_path / "fresh"
    with TestClient(create_app(_quiet(settings, data_dir=data, database_url=None))) as c:
        assert c.get("/healthz").status_code == 200
        (data / "exports").mkdir()
        (data / "exports" / "x.zip").write_bytes(b"zip")  # as the export route writes
    assert _mode(data) == 0o700
    assert _mode(data / "aimarket.db") == 0o600
    assert _mode(data / "exports") == 0o700 and _mode(data / "exports" / "x.zip") == 0o600


def test_group_readable_models_setting(settings, tmp_path, keep_umask):
    from storefront.app import create_app
    from storefront.models import Listing, ListingVersion
    from storefront.registry import model_path, to_live
    from tests.unit.test_manifest import DIGITS_YAML

    data = tmp_path / "shared"
    sha = "ab" + "0" * 62
    with TestClient(create_app(_quiet(settings, data_dir=data, database_url=None,
                                      group_readable_models=True))):
        model = model_path(data, sha)
        model.parent.mkdir(parents=True)
        model.write_bytes(b"onnx")
        model.chmod(0o600)  # as the content-addressed store writes it (mkstemp)
        manifest = parse_manifest(DIGITS_YAML).model_dump_json()
        to_live(Listing(id=1, slug="m", seller_id=1),
                ListingVersion(id=1, version=1, price=0, trial_calls=0, latency_us=0,
                               manifest_json=manifest, model_sha256=sha), data)
    assert _mode(data) == 0o710  # the group may pass through, not list
    assert _mode(data / "aimarket.db") == 0o600
    assert _mode(data / "models") == _mode(model.parent) == 0o750
    assert _mode(model) == 0o640


# 16. Integer tensors, rate limits, grant references, sign-up.

def test_out_of_range_integer_inputs_are_422(client):
    _, token = signup(client, "buyer")
    key = bearer(new_key(client, token))
    body = {"inputs": [{"name": "X", "shape": [1, 64], "datatype": "INT64",
                        "data": [0.5] + [float(v) for v in DIGIT_ZERO[1:]]}]}
    r = client.post(f"/v2/models/{SLUG}/infer", json=body, headers=key)
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_input", r.text


@pytest.mark.parametrize("rps", [1e-300, 0.0001, 0])
def test_tiny_key_rates_are_refused(client, rps):
    _, token = signup(client, "buyer")
    r = client.post("/v1/keys", headers=bearer(token), json={"rate_limit_rps": rps})
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_input", r.text
    key = client.post("/v1/keys", headers=bearer(token), json={}).json()
    r = client.patch(f"/v1/keys/{key['id']}", headers=bearer(token),
                     json={"rate_limit_rps": rps})
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_input", r.text
    r = client.patch(f"/v1/keys/{key['id']}", headers=bearer(token),
                     json={"rate_limit_rps": 0.001})
    assert r.status_code == 200 and r.json()["rate_limit_rps"] == 0.001


def test_a_grant_reference_is_bound_to_its_amount(client):
    addr, token = signup(client, "buyer")
    admin = bearer(admin_token(client))
    body = {"account_email": addr, "amount": "5.00", "reference": f"inv-{uuid.uuid4().hex}"}
    first = client.post("/v1/admin/credits", json=body, headers=admin)
    assert first.status_code == 201 and first.json()["credits"] == "5.00"
    again = client.post("/v1/admin/credits", json=body, headers=admin)
    assert again.status_code == 201 and again.json() == first.json()  # an idempotent replay
    r = client.post("/v1/admin/credits", json={**body, "amount": "500.00"}, headers=admin)
    assert r.status_code == 409 and error_of(r)["code"] == "reference_conflict", r.text
    assert "5.00" in error_of(r)["message"]
    other, _ = signup(client, "buyer")
    r = client.post("/v1/admin/credits", json={**body, "account_email": other}, headers=admin)
    assert r.status_code == 409 and error_of(r)["code"] == "reference_conflict", r.text
    assert client.get("/v1/account", headers=bearer(token)).json()["credits"] == "5.00"


def test_sign_up_does_not_reveal_whether_an_email_exists(client):
    taken, token = signup(client, "buyer")
    fresh = email("buyer")
    answers = [client.post("/v1/accounts", json={"email": e, "password": "another-pass-1",
                                                 "role": "buyer"}) for e in (taken, fresh)]
    assert [a.status_code for a in answers] == [201, 201]
    same = [{k: v for k, v in a.json().items() if k not in ("email", "name")} for a in answers]
    assert same[0] == same[1] and answers[0].json()["email"] == taken
    # The existing account is untouched: its own password works, the new one does not.
    r = client.post("/v1/auth/token", data={"username": taken, "password": "another-pass-1"})
    assert r.status_code == 401
    r = client.post("/v1/auth/token", data={"username": taken, "password": "password-123"})
    assert r.status_code == 200
    assert grant(client, fresh, "1.00")["credits"] == "1.00"  # the new account exists
