"""Regression tests of issue 16's findings 3-7 and 14, through HTTP on both stacks."""

from __future__ import annotations

import os
import re
import time
import uuid
from typing import Any

import numpy as np
import pytest
import yaml
from onnx import numpy_helper
from pydantic import SecretStr

from sandbox_ui.uploads import count_files, prune
from storefront.throttle import client_address
from storefront.tryit import Visitor, demo_call
from tests.helpers import admin_token, bearer, email, fresh_address, signup
from tests.integration.test_hostile_uploads import helper, tiny, vi

HOSTILE = ('Reads digits. <img src="http://203.0.113.9/x.png"> '
           '<form action="http://203.0.113.9/steal"><input type="password" name="pw"></form> '
           '![pixel](http://203.0.113.9/y.png) <script>alert(1)</script> '
           '[docs](https://example.com/docs) [bad](javascript:alert(1))')


def error_of(r: Any) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    return body["error"]  # type: ignore[no-any-return]


@pytest.fixture
def svc(client: Any) -> Any:
    client.cookies.clear()
    yield client.app.state.services
    client.cookies.clear()


def spoofed() -> str:
    return fresh_address()


def _model() -> bytes:
    w = numpy_helper.from_array(np.random.default_rng(uuid.uuid4().int % 2**32)
                                .normal(size=(8, 8)).astype(np.float32), "W")
    return tiny([helper.make_node("MatMul", ["X", "W"], ["Y"])], [vi("X", [None, 8])],
                [vi("Y", [None, 8])], [w]).SerializeToString()


def _upload(client: Any, token: str, blob: bytes, **manifest: Any) -> Any:
    man = {"title": f"Hardening {uuid.uuid4().hex[:6]}", "category": "test", "task": "tensor",
           "inputs": [{"name": "X", "dtype": "float32", "shape": [-1, 8]}],
           "outputs": [{"name": "Y", "dtype": "float32", "shape": [-1, 8]}],
           "pricing": {"per_call": "0.001", "trial_calls": 1}, **manifest}
    r = client.post("/v1/models", headers=bearer(token),
                    data={"attest_rights": "true", "license": "MIT"},
                    files={"model": ("m.onnx", blob), "manifest": ("m.yaml", yaml.safe_dump(man))})
    assert r.status_code == 201, r.text
    return r.json()


# 3. Demo uploads are bounded per request, per address and day, and in total.

def _files(n: int, size: int = 1000) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"f{i}.png", os.urandom(size), "image/png")) for i in range(n)]


UPLOAD = "/try/iris-species/gradio_api/upload"


def test_a_demo_upload_holds_few_files(client, svc):
    assert client.post(UPLOAD, files=_files(1)).status_code == 200
    r = client.post(UPLOAD, files=_files(svc.settings.demo_upload_files + 1))
    assert r.status_code == 413 and error_of(r)["code"] == "upload_too_large", r.text


def test_demo_uploads_per_address_and_day(client, svc, monkeypatch):
    monkeypatch.setattr(svc.settings, "demo_upload_mb_per_day", 1)
    monkeypatch.setattr(svc.settings, "trusted_proxies", "127.0.0.1")
    me = {"X-Forwarded-For": spoofed()}
    assert client.post(UPLOAD, files=_files(1, 600_000), headers=me).status_code == 200
    r = client.post(UPLOAD, files=_files(1, 600_000), headers=me)
    assert r.status_code == 429 and error_of(r)["code"] == "upload_quota_exhausted", r.text
    assert int(r.headers["Retry-After"]) > 0
    # another address has its own allowance...
    assert client.post(UPLOAD, files=_files(1, 600_000),
                       headers={"X-Forwarded-For": spoofed()}).status_code == 200
    # ...but a peer that is no trusted proxy cannot claim one by sending the header
    monkeypatch.setattr(svc.settings, "trusted_proxies", "")
    assert client.post(UPLOAD, files=_files(1, 600_000),
                       headers={"X-Forwarded-For": spoofed()}).status_code == 200
    r = client.post(UPLOAD, files=_files(1, 600_000), headers={"X-Forwarded-For": spoofed()})
    assert r.status_code == 429, r.text


def test_the_upload_folder_is_pruned_oldest_first(tmp_path):
    for i in range(5):
        path = tmp_path / f"sub{i % 2}" / f"f{i}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x" * 100)
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))
    assert prune(str(tmp_path), 250) == 300
    left = sorted(p.name for p in tmp_path.rglob("f*"))
    assert left == ["f3", "f4"]


def test_files_of_a_multipart_body_are_counted():
    body = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a\"\r\n\r\nx\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\n1\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"b\"\r\n\r\ny\r\n"
            b"--b--\r\n")
    assert count_files("multipart/form-data; boundary=b", body) == 2


# 4. Descriptions are sanitized wherever shown; security headers on every response.

@pytest.fixture(scope="module")
def hostile_listing(client: Any) -> str:
    _, seller = signup(client, "seller")
    slug = _upload(client, seller, _model(), description=HOSTILE)["slug"]
    r = client.post(f"/v1/admin/models/{slug}/approve", headers=bearer(admin_token(client)),
                    json={"reason": "test"})
    assert r.status_code == 200, r.text
    return str(slug)


def _no_hostile_html(text: str) -> None:
    for bad in ("<img", "<form", "<input", "<script", 'href="javascript', "203.0.113.9"):
        assert bad not in text, (bad, text)


def test_a_description_is_sanitized_on_the_pages_and_in_the_demo(client, hostile_listing):
    page = client.get(f"/models/{hostile_listing}").text
    description = re.search(r'<div class="description">(.*?)</div>', page, re.S)
    assert description is not None, page
    _no_hostile_html(description.group(1))
    assert "203.0.113.9" not in page
    assert '<a href="https://example.com/docs" rel="noopener nofollow">docs</a>' in page
    catalog = client.get(f"/?q={hostile_listing}").text
    assert "Reads digits." in catalog and "203.0.113.9" not in catalog
    config = client.get(f"/try/{hostile_listing}/config").text
    _no_hostile_html(config)
    assert "Reads digits." in config


@pytest.mark.parametrize("path", ["/", "/models/iris-species", "/login", "/account",
                                  "/v1/models", "/healthz", "/try/iris-species/",
                                  "/no-such-page"])
def test_security_headers_on_every_response(client, path):
    r = client.get(path, follow_redirects=False)
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "http:" not in csp and "*" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "same-origin"
    if path.startswith("/try/"):  # framed by the model page, by nothing else
        assert "frame-ancestors 'self'" in csp and r.headers["X-Frame-Options"] == "SAMEORIGIN"
    else:
        assert "frame-ancestors 'none'" in csp and r.headers["X-Frame-Options"] == "DENY"


def test_security_headers_on_the_paid_call(client):
    r = client.post("/v2/models/iris-species/infer", json={})
    assert r.status_code == 401 and "Content-Security-Policy" in r.headers
    assert r.headers["X-Content-Type-Options"] == "nosniff"


# 5. Logins, sign-ups and demo calls are throttled per address; X-Forwarded-For counts only
#    from trusted proxies.

def test_failed_logins_back_off_without_locking_the_user_out(client, svc, monkeypatch):
    monkeypatch.setattr(svc.settings, "trusted_proxies", "127.0.0.1/32")
    addr, _ = signup(client, "buyer")
    attacker = {"X-Forwarded-For": spoofed()}
    for _ in range(svc.settings.login_failures_burst):
        r = client.post("/v1/auth/token", data={"username": addr, "password": "wrong-pass"},
                        headers=attacker)
        assert r.status_code == 401, r.text
    r = client.post("/v1/auth/token", data={"username": addr, "password": "password-123"},
                    headers=attacker)
    assert r.status_code == 429 and error_of(r)["code"] == "too_many_logins", r.text
    assert int(r.headers["Retry-After"]) >= 1
    # the real user, from their own address, logs in at once
    r = client.post("/v1/auth/token", data={"username": addr, "password": "password-123"},
                    headers={"X-Forwarded-For": spoofed()})
    assert r.status_code == 200, r.text
    # the web form shares the throttle
    html = client.get("/login").text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)  # type: ignore[union-attr]
    r = client.post("/login", data={"email": addr, "password": "password-123", "csrf": csrf},
                    headers=attacker, follow_redirects=False)
    assert r.status_code == 429 and "Retry-After" in r.headers


def test_sign_ups_are_throttled_per_address(client, svc, monkeypatch):
    monkeypatch.setattr(svc.settings, "trusted_proxies", "127.0.0.1")
    monkeypatch.setattr(svc.settings, "signup_burst", 3)
    me = {"X-Forwarded-For": spoofed()}
    body = {"password": "password-123", "role": "buyer"}
    for _ in range(3):
        assert client.post("/v1/accounts", json={**body, "email": email("b")},
                           headers=me).status_code == 201
    r = client.post("/v1/accounts", json={**body, "email": email("b")}, headers=me)
    assert r.status_code == 429 and error_of(r)["code"] == "too_many_signups", r.text
    html = client.get("/signup").text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)  # type: ignore[union-attr]
    r = client.post("/signup", data={**body, "email": email("b"), "csrf": csrf}, headers=me,
                    follow_redirects=False)
    assert r.status_code == 429 and "Retry-After" in r.headers
    assert client.post("/v1/accounts", json={**body, "email": email("b")},
                       headers={"X-Forwarded-For": spoofed()}).status_code == 201


def test_demo_calls_are_throttled_per_address(client, svc, monkeypatch):
    monkeypatch.setattr(svc.settings, "demo_burst", 2)
    who = spoofed()
    row = {"rows": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4,
                     "petal_width": 0.2}]}
    for account in (None, None):
        client.portal.call(demo_call, svc, "iris-species", row, Visitor(account, who))
    from serving import TooManyRequests
    with pytest.raises(TooManyRequests) as refused:  # a fresh account does not help either
        client.portal.call(demo_call, svc, "iris-species", row, Visitor(10**9, who))
    assert refused.value.code == "demo_throttled"


def test_forwarded_for_counts_only_from_trusted_proxies():
    xff = {"x-forwarded-for": "203.0.113.7, 10.0.0.2"}
    assert client_address("198.51.100.1", xff, "") == "198.51.100.1"
    assert client_address("198.51.100.1", xff, "10.0.0.0/8") == "198.51.100.1"
    assert client_address("10.0.0.1", xff, "10.0.0.0/8") == "203.0.113.7"
    assert client_address("10.0.0.1", {}, "10.0.0.0/8") == "10.0.0.1"


# 6. Copy findings never name another seller's unreleased listing.

def test_copy_findings_do_not_name_an_unreleased_listing(client):
    blob = _model()
    _, first = signup(client, "seller")
    pending = _upload(client, first, blob)["slug"]
    _, second = signup(client, "seller")
    findings = _upload(client, second, blob)["findings"]
    flag = next(f for f in findings if f["code"] == "possible_copy")
    assert pending not in str(findings)
    assert flag["evidence"]["listing"] is None and flag["evidence"]["unreleased"]
    assert "an unreleased listing" in flag["message"]


# 7. /metrics: a token when configured, else loopback peers only.

def test_metrics_is_not_public(client, svc, monkeypatch):
    assert client.get("/metrics").status_code == 200  # the test client is a loopback peer
    r = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.7"})  # a local proxy
    assert r.status_code == 403 and error_of(r)["code"] == "metrics_forbidden"
    remote = client  # the same app and event loop, seen from another host
    monkeypatch.setattr(client._transport, "client", ("203.0.113.7", 40000))
    assert remote.get("/metrics").status_code == 403
    token = "m" * 40
    monkeypatch.setattr(svc.settings, "metrics_token", SecretStr(token))
    assert remote.get("/metrics").status_code == 401
    assert remote.get("/metrics", headers=bearer("wrong")).status_code == 401
    r = remote.get("/metrics", headers=bearer(token))
    assert r.status_code == 200 and "aimarket_" in r.text


# 14. Sessions are revocable on the server.

def test_api_logout_revokes_the_token(client):
    addr, token = signup(client, "buyer")
    assert client.get("/v1/account", headers=bearer(token)).status_code == 200
    assert client.post("/v1/auth/logout", headers=bearer(token)).status_code == 200
    r = client.get("/v1/account", headers=bearer(token))
    assert r.status_code == 401 and error_of(r)["code"] == "session_revoked"
    r = client.post("/v1/auth/token", data={"username": addr, "password": "password-123"})
    assert client.get("/v1/account", headers=bearer(r.json()["access_token"])).status_code == 200


def test_web_logout_ends_the_cookie_and_its_bearer_use(client):
    addr, _ = signup(client, "buyer")
    client.cookies.clear()
    html = client.get("/login").text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)  # type: ignore[union-attr]
    r = client.post("/login", data={"email": addr, "password": "password-123", "csrf": csrf},
                    follow_redirects=False)
    assert r.status_code == 303
    cookie = client.cookies["am_session"]
    assert client.get("/account", follow_redirects=False).status_code == 200
    r = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    client.cookies.set("am_session", cookie)  # the old cookie, kept by an attacker
    r = client.get("/account", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert client.get("/v1/account", headers=bearer(cookie)).status_code == 401
    client.cookies.clear()


def test_password_change_and_the_admin_revoke_sessions(client):
    addr, token = signup(client, "buyer")
    r = client.post("/v1/account/password", headers=bearer(token),
                    json={"current_password": "wrong-pass", "new_password": "new-pass-123"})
    assert r.status_code == 401
    r = client.post("/v1/account/password", headers=bearer(token),
                    json={"current_password": "password-123", "new_password": "new-pass-123"})
    assert r.status_code == 200, r.text
    assert client.get("/v1/account", headers=bearer(token)).status_code == 401
    r = client.post("/v1/auth/token", data={"username": addr, "password": "new-pass-123"})
    fresh = r.json()["access_token"]
    assert client.get("/v1/account", headers=bearer(fresh)).status_code == 200
    r = client.post("/v1/admin/sessions/revoke", headers=bearer(admin_token(client)),
                    json={"account_email": addr})
    assert r.status_code == 200, r.text
    assert client.get("/v1/account", headers=bearer(fresh)).status_code == 401
    _, buyer = signup(client, "buyer")
    r = client.post("/v1/admin/sessions/revoke", headers=bearer(buyer),
                    json={"account_email": addr})
    assert r.status_code == 403


